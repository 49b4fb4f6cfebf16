"""A V2 gRPC client on kserve's own protos, for the one process where tritonclient's cannot be.

`neuromask serve --predictor-host grpc://HOST:PORT` runs the NeuroMask loop inside KServe's
model server, which has registered kserve's `inference.*` V2 messages in protobuf's default
pool; tritonclient.grpc registers the same names from its own files, and the second import
fails. This module is the subset of `tritonclient.grpc` that `remote.Client` uses
(`InferenceServerClient` with is_server_live, is_model_ready, get_model_metadata,
get_model_config, infer; `InferInput`, `InferRequestedOutput`, `InferenceServerException`),
over a plain synchronous grpc channel with kserve's `grpc_predict_v2_pb2` and, for Triton's
ModelConfig RPC (which kserve's proto lacks), `serve_v2`'s wire-compatible messages in a
private pool. Same wire protocol, so it talks to Triton, KServe and `neuromask serve` alike.
Calls run in the caller's thread (the serve slot threads), never on an event loop.
"""

from __future__ import annotations

from typing import Any

import numpy as np

_NP = {"FP32": np.float32, "FP64": np.float64, "FP16": np.float16, "INT64": np.int64,
       "INT32": np.int32, "BOOL": np.bool_}
_CONTENTS = {"FP32": "fp32_contents", "FP64": "fp64_contents", "INT64": "int64_contents",
             "INT32": "int_contents", "BOOL": "bool_contents", "FP16": "fp32_contents"}
_SERVICE = "/inference.GRPCInferenceService/"


class InferenceServerException(Exception):
    """A failed call: `status()` is the gRPC code as tritonclient spells it."""

    def __init__(self, code: Any, details: str) -> None:
        super().__init__(f"[{code}] {details}")
        self._status, self._message = str(code), details

    def status(self) -> str:
        return self._status

    def message(self) -> str:
        return self._message


class InferInput:
    def __init__(self, name: str, shape: list[int], datatype: str) -> None:
        self.name, self.shape, self.datatype = name, list(shape), datatype
        self.raw = b""

    def set_data_from_numpy(self, arr: np.ndarray) -> None:
        self.raw = np.ascontiguousarray(arr, _NP[self.datatype]).tobytes()


class InferRequestedOutput:
    def __init__(self, name: str) -> None:
        self.name = name


class InferResult:
    def __init__(self, response: Any) -> None:
        self.arrays: dict[str, np.ndarray] = {}
        raws = list(response.raw_output_contents)
        for i, out in enumerate(response.outputs):
            dtype = _NP[out.datatype]
            flat: np.ndarray
            if i < len(raws):
                flat = np.frombuffer(raws[i], dtype)
            else:  # typed contents instead of raw bytes
                flat = np.asarray(getattr(out.contents, _CONTENTS[out.datatype]), dtype)
            self.arrays[out.name] = flat.reshape([int(d) for d in out.shape])

    def as_numpy(self, name: str) -> np.ndarray | None:
        return self.arrays.get(name)


class InferenceServerClient:
    def __init__(self, where: str) -> None:
        import grpc
        from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb

        from .serve_v2 import config_messages

        self.pb = pb
        self.channel = grpc.insecure_channel(where)
        self.config_request, config_response = config_messages()
        names = {"ServerLive": pb.ServerLiveResponse, "ModelReady": pb.ModelReadyResponse,
                 "ModelMetadata": pb.ModelMetadataResponse, "ModelInfer": pb.ModelInferResponse,
                 "ModelConfig": config_response}
        self.rpc = {name: self.channel.unary_unary(
            _SERVICE + name, request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=resp.FromString) for name, resp in names.items()}

    def _call(self, name: str, request: Any, timeout: float | None) -> Any:
        import grpc

        try:
            return self.rpc[name](request, timeout=timeout)
        except grpc.RpcError as exc:
            raise InferenceServerException(exc.code(), exc.details() or "") from None

    @staticmethod
    def _json(message: Any) -> dict[str, Any]:
        from google.protobuf.json_format import MessageToDict

        doc: dict[str, Any] = MessageToDict(message, preserving_proto_field_name=True)
        return doc

    def is_server_live(self, client_timeout: float | None = None) -> bool:
        return bool(self._call("ServerLive", self.pb.ServerLiveRequest(), client_timeout).live)

    def is_model_ready(self, name: str, client_timeout: float | None = None) -> bool:
        resp = self._call("ModelReady", self.pb.ModelReadyRequest(name=name), client_timeout)
        return bool(resp.ready)

    def get_model_metadata(self, name: str, as_json: bool = True,  # noqa: ARG002
                           client_timeout: float | None = None) -> dict[str, Any]:
        return self._json(self._call("ModelMetadata", self.pb.ModelMetadataRequest(name=name),
                                     client_timeout))

    def get_model_config(self, name: str, as_json: bool = True,  # noqa: ARG002
                         client_timeout: float | None = None) -> dict[str, Any]:
        return self._json(self._call("ModelConfig", self.config_request(name=name),
                                     client_timeout))

    def get_model_repository_index(self, **_: Any) -> Any:
        code, msg = "StatusCode.UNIMPLEMENTED", "kserve's V2 gRPC service has no repository index"
        raise InferenceServerException(code, msg)

    def infer(self, name: str, inputs: list[InferInput],
              outputs: list[InferRequestedOutput] | None = None,
              client_timeout: float | None = None) -> InferResult:
        pb = self.pb.ModelInferRequest
        req = pb(model_name=name,
                 inputs=[pb.InferInputTensor(name=i.name, datatype=i.datatype, shape=i.shape)
                         for i in inputs],
                 outputs=[pb.InferRequestedOutputTensor(name=o.name) for o in outputs or []],
                 raw_input_contents=[i.raw for i in inputs])
        return InferResult(self._call("ModelInfer", req, client_timeout))

    def close(self) -> None:
        self.channel.close()

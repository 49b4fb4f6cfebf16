"""The instrumented model over KServe's V2 inference protocol, next to `neuromask serve`'s V1.

`neuromask serve MODEL` also serves the model that `instrument --triton` writes (the
batch-polymorphic `triton.batch_loop` of the batch-1 instrumented graph, same inputs, outputs
and parameters), so `neuromask explain --server URL --served-model NAME` runs its loop against
`neuromask serve` as it does against Triton:

- `POST /v2/models/NAME/infer` (REST, JSON or binary tensors; gRPC `ModelInfer` with
  `--grpc-port`): `V2Model.infer`, one onnxruntime run per request. Everything wrong with a
  request (names, datatypes, shapes, batch, target range, body size) is a
  `kserve.errors.InvalidInput`: a 400 (gRPC INVALID_ARGUMENT) with one sentence.
- `GET /v2/models/NAME`: KServe's metadata from `V2Model.metadata` (batch axis -1, as Triton
  reports it).
- The config parameters `remote.ServedModel` reads (`neuromask.objective`, `.mask_axes`,
  `.num_classes`, `.layout`, `.preprocess`, `.labels`) and `max_batch_size`: KServe's V2
  metadata has no place for them (its response model drops extra fields), so they are served
  as Triton's model-configuration extension, the same route and message Triton answers and
  tritonclient's `get_model_config` reads: `GET /v2/models/NAME/config` (`add_routes`)
  and gRPC `inference.GRPCInferenceService/ModelConfig` (`LoopbackGRPCServer`, with the few
  ModelConfig fields built in a private descriptor pool: kserve's and tritonclient's protos
  cannot share the default one).
- `LoopbackGRPCServer` is KServe's gRPC server bound to the given host instead of its fixed
  `[::]`.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import onnx

from .errors import InputError
from .io_names import PROBS, TARGET
from .preprocess import Preprocessing

_V2_TYPES: dict[int, str] = {onnx.TensorProto.FLOAT: "FP32", onnx.TensorProto.DOUBLE: "FP64",
             onnx.TensorProto.FLOAT16: "FP16", onnx.TensorProto.INT64: "INT64",
             onnx.TensorProto.INT32: "INT32"}
PLATFORM = "onnxruntime_onnx"
BINARY_HEADER = "Inference-Header-Content-Length"


def _invalid(msg: str) -> Exception:
    from kserve.errors import InvalidInput

    err: Exception = InvalidInput(msg)
    return err


def _one_line(text: object, limit: int = 300) -> str:
    return " ".join(str(text).split())[:limit]


@dataclasses.dataclass
class _Tensor:
    name: str
    datatype: str
    dims: list[int]
    """Without the batch axis."""


class V2Model:
    """One batch-polymorphic instrumented model and its onnxruntime session."""

    def __init__(self, name: str, served: onnx.ModelProto, params: dict[str, str], *,
                 max_batch_size: int, threads: int = 1) -> None:
        from .runtime import session

        self.name = name
        self.params = params
        self.max_batch_size = max_batch_size
        self.session = session(served, threads=threads)

        def tensor(vi: onnx.ValueInfoProto) -> _Tensor:
            t = vi.type.tensor_type
            dims = [d.dim_value for d in t.shape.dim][1:]
            if t.elem_type not in _V2_TYPES:
                kind = onnx.TensorProto.DataType.Name(t.elem_type)
                msg = f"{vi.name!r} is {kind}, which V2 infer here does not serve"
                raise InputError(msg)
            return _Tensor(vi.name, _V2_TYPES[t.elem_type], dims)

        init = {t.name for t in served.graph.initializer}
        self.inputs = [tensor(vi) for vi in served.graph.input if vi.name not in init]
        self.outputs = [tensor(vi) for vi in served.graph.output]
        self.classes = next(t.dims[-1] for t in self.outputs if t.name == PROBS)

    @classmethod
    def build(cls, proto: onnx.ModelProto, name: str, *, preprocessing: Preprocessing | None,
              labels: Sequence[str] | None, objective: str = "probability",
              max_batch_size: int = 8, threads: int = 1) -> V2Model:
        """The model `instrument --triton` would write for `proto` (with nm_baseline)."""
        from .rewrite import instrument
        from .triton import batch_loop, served_parameters

        one = instrument(proto, batch_size=1, baseline=True,
                         objective=objective)  # type: ignore[arg-type]
        served = batch_loop(one)
        params = served_parameters(served, proto, preprocessing, labels)
        return cls(name, served, params, max_batch_size=max_batch_size, threads=threads)

    # ------------------------------------------------------------------ what it says

    def metadata(self, which: str) -> list[dict[str, Any]]:
        """KServe's `get_input_types` / `get_output_types`: the batch axis is -1."""
        ts = self.inputs if which == "inputs" else self.outputs
        return [{"name": t.name, "datatype": t.datatype, "shape": [-1, *t.dims]} for t in ts]

    def config(self) -> dict[str, Any]:
        """Triton's model configuration, the fields a client reads (JSON as Triton's HTTP
        `GET /v2/models/NAME/config` answers)."""
        return {"name": self.name, "platform": PLATFORM, "backend": "onnxruntime",
                "max_batch_size": self.max_batch_size,
                "parameters": {k: {"string_value": v} for k, v in self.params.items()}}

    # ------------------------------------------------------------------ one request

    def feeds(self, request: Any, *, body_bytes: int = 0, max_body_bytes: int = 0
              ) -> tuple[dict[str, np.ndarray], list[str]]:
        """The session feeds and output names of a kserve `InferRequest`, checked: every
        fault is an InvalidInput with one sentence."""
        if max_body_bytes and body_bytes > max_body_bytes:
            msg = f"request body is {body_bytes} bytes; the limit is {max_body_bytes}"
            raise _invalid(msg)
        want = {t.name: t for t in self.inputs}
        got: dict[str, Any] = {}
        for inp in request.inputs or []:
            if inp.name not in want:
                msg = (f"model {self.name!r} has no input {inp.name!r}; its inputs are "
                       f"{', '.join(want)}")
                raise _invalid(msg)
            got[inp.name] = inp
        missing = [n for n in want if n not in got]
        if missing:
            msg = (f"the request lacks input {missing[0]!r}; model {self.name!r} takes "
                   f"{', '.join(want)}")
            raise _invalid(msg)
        feeds: dict[str, np.ndarray] = {}
        batch: int | None = None
        for name, t in want.items():
            inp = got[name]
            if inp.datatype != t.datatype:
                msg = f"input {name!r} has datatype {inp.datatype}; the model takes {t.datatype}"
                raise _invalid(msg)
            shape = [int(d) for d in inp.shape]
            ok = shape[1:] == t.dims or (name == TARGET and shape[1:] == [1])
            if len(shape) < 1 or not ok:
                msg = (f"input {name!r} has shape {shape}; the model takes "
                       f"[batch, {', '.join(map(str, t.dims))}]".replace(", ]", "]"))
                raise _invalid(msg)
            if batch is None:
                batch = shape[0]
                if not 1 <= batch <= self.max_batch_size:
                    msg = (f"batch {batch}; the model takes 1 to {self.max_batch_size} "
                           "per request")
                    raise _invalid(msg)
            if shape[0] != batch:
                msg = (f"input {name!r} has batch {shape[0]} but {next(iter(want))!r} has "
                       f"{batch}; every input needs the same batch")
                raise _invalid(msg)
            try:
                value = inp.as_numpy()
            except (ValueError, TypeError) as exc:
                msg = f"input {name!r}: its data does not fill shape {shape} ({_one_line(exc)})"
                raise _invalid(msg) from None
            feeds[name] = value.reshape(shape[0], *t.dims)
        tgt = feeds[TARGET]
        if tgt.size and (tgt.min() < 0 or tgt.max() >= max(self.classes, 2)):
            msg = (f"nm_target holds {int(tgt.min())}..{int(tgt.max())}; class indices run "
                   f"0..{max(self.classes, 2) - 1}")
            raise _invalid(msg)
        names = [t.name for t in self.outputs]
        asked = [o.name for o in (request.request_outputs or [])]
        for o in asked:
            if o not in names:
                msg = f"model {self.name!r} has no output {o!r}; its outputs are {', '.join(names)}"
                raise _invalid(msg)
        return feeds, names

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """One session run (thread-safe); an onnxruntime refusal is an InvalidInput."""
        try:
            out: list[np.ndarray] = self.session.run([t.name for t in self.outputs], feeds)
        except Exception as exc:  # noqa: BLE001 (onnxruntime's Fail / InvalidArgument)
            msg = f"the model refused the request's tensors: {_one_line(exc)}"
            raise _invalid(msg) from None
        return out

    def response(self, request: Any, values: list[np.ndarray]) -> Any:
        """The kserve `InferResponse` (binary or JSON as the request asked)."""
        from kserve.protocol.infer_type import InferOutput, InferResponse

        outs = [InferOutput(t.name, list(v.shape), t.datatype, data=np.ascontiguousarray(v))
                for t, v in zip(self.outputs, values, strict=True)]
        if request.from_grpc:  # raw contents (kserve's to_grpc cannot take numpy data)
            for o in outs:
                o.set_data_from_numpy(o.data, binary_data=True)
        rid = request.id or str(uuid.uuid4())  # the V2 response needs an id
        return InferResponse(rid, self.name, outs, from_grpc=request.from_grpc,
                             use_binary_outputs=request.use_binary_outputs,
                             requested_outputs=request.request_outputs)


# --------------------------------------------------------------------------- config routes


def add_routes(app: Any, config_for: Callable[[str], dict[str, Any] | None]) -> None:
    """On KServe's FastAPI app: `GET /v2/models/{name}/config` (Triton's config extension),
    and a 400 with one sentence for a body that is not a V2 request (FastAPI's own answer
    is a 422 listing every union member's complaint, echoing the body)."""
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse

    async def model_config(model_name: str) -> Any:
        cfg = config_for(model_name)
        if cfg is None:
            return JSONResponse({"error": f"no model {model_name!r} with a V2 config here"},
                                status_code=404)
        return JSONResponse(cfg)

    async def not_a_request(request: Any, exc: RequestValidationError) -> Any:
        errs = list(exc.errors())
        # the body is InferenceRequest | bytes: the first's complaint is the useful one
        err = next((e for e in errs if "InferenceRequest" in e.get("loc", ())), errs[0]) \
            if errs else {"msg": "unreadable", "loc": ()}
        where = ".".join(str(p) for p in err.get("loc", ())
                         if p not in ("body", "InferenceRequest"))
        at = f" at {where}" if where and err.get("type") != "json_invalid" else ""
        msg = (f"the body is not a V2 inference request{at}: {_one_line(err.get('msg', ''))}"
               ' (see {"inputs": [{"name", "datatype", "shape", "data"}]})')
        return JSONResponse({"error": msg}, status_code=400)

    async def binary_header(request: Any, call_next: Any) -> Any:
        # kserve int()s this header unchecked: a 500 otherwise
        size = request.headers.get(BINARY_HEADER)
        if size is not None and not size.strip().isdigit():
            msg = (f"the {BINARY_HEADER} header must be the JSON part's length in bytes, "
                   f"got {_one_line(size, 40)!r}")
            return JSONResponse({"error": msg}, status_code=400)
        return await call_next(request)

    app.add_api_route("/v2/models/{model_name}/config", model_config, methods=["GET"])
    app.add_exception_handler(RequestValidationError, not_a_request)
    app.middleware("http")(binary_header)


def config_messages() -> tuple[Any, Any]:
    """ModelConfigRequest and ModelConfigResponse, wire-compatible with Triton's
    (grpc_service.proto / model_config.proto field numbers), in a private pool."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    F = descriptor_pb2.FieldDescriptorProto
    f = descriptor_pb2.FileDescriptorProto(name="neuromask/triton_model_config.proto",
                                           package="inference", syntax="proto3")

    def add(msg: Any, name: str, number: int, kind: int, type_name: str = "",
            repeated: bool = False) -> None:
        fd = msg.field.add(name=name, number=number, type=kind,
                           label=F.LABEL_REPEATED if repeated else F.LABEL_OPTIONAL)
        if type_name:
            fd.type_name = type_name

    req = f.message_type.add(name="ModelConfigRequest")
    add(req, "name", 1, F.TYPE_STRING)
    add(req, "version", 2, F.TYPE_STRING)
    par = f.message_type.add(name="ModelParameter")
    add(par, "string_value", 1, F.TYPE_STRING)
    cfg = f.message_type.add(name="ModelConfig")
    add(cfg, "name", 1, F.TYPE_STRING)
    add(cfg, "platform", 2, F.TYPE_STRING)
    add(cfg, "max_batch_size", 4, F.TYPE_INT32)
    add(cfg, "parameters", 14, F.TYPE_MESSAGE, ".inference.ModelConfig.ParametersEntry",
        repeated=True)
    add(cfg, "backend", 17, F.TYPE_STRING)
    entry = cfg.nested_type.add(name="ParametersEntry")
    entry.options.map_entry = True
    add(entry, "key", 1, F.TYPE_STRING)
    add(entry, "value", 2, F.TYPE_MESSAGE, ".inference.ModelParameter")
    resp = f.message_type.add(name="ModelConfigResponse")
    add(resp, "config", 1, F.TYPE_MESSAGE, ".inference.ModelConfig")
    pool = descriptor_pool.DescriptorPool()
    pool.Add(f)
    get = message_factory.GetMessageClass
    return (get(pool.FindMessageTypeByName("inference.ModelConfigRequest")),
            get(pool.FindMessageTypeByName("inference.ModelConfigResponse")))


def grpc_config_handler(config_for: Callable[[str], dict[str, Any] | None]) -> Any:
    """A grpc generic handler answering `inference.GRPCInferenceService/ModelConfig`."""
    import grpc

    Request, Response = config_messages()

    async def model_config(request: Any, context: Any) -> Any:
        cfg = config_for(request.name)
        if cfg is None:  # abort raises
            await context.abort(grpc.StatusCode.NOT_FOUND,
                                f"no model {request.name!r} with a V2 config here")
            raise AssertionError  # pragma: no cover
        resp = Response()
        c = resp.config
        c.name, c.platform, c.backend = cfg["name"], cfg["platform"], cfg["backend"]
        c.max_batch_size = int(cfg["max_batch_size"])
        for k, v in cfg["parameters"].items():
            c.parameters[k].string_value = v["string_value"]
        return resp

    return grpc.method_handlers_generic_handler("inference.GRPCInferenceService", {
        "ModelConfig": grpc.unary_unary_rpc_method_handler(
            model_config, request_deserializer=Request.FromString,
            response_serializer=Response.SerializeToString)})


def loopback_grpc_server(host: str, port: int, dataplane: Any, repository: Any,
                         config_for: Callable[[str], dict[str, Any] | None],
                         kwargs: dict[str, Any], grace_period: int = 2) -> Any:
    """KServe's GRPCServer, listening on host:port (KServe's own binds [::]) and answering
    ModelConfig too."""
    from concurrent import futures

    from grpc import aio
    from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc
    from kserve.protocol.grpc.interceptors import (
        ExceptionToStatusInterceptor,
        LoggingInterceptor,
    )
    from kserve.protocol.grpc.server import GRPCServer
    from kserve.protocol.grpc.servicer import InferenceServicer

    class LoopbackGRPCServer(GRPCServer):  # type: ignore[misc]
        async def start(self, max_workers: int) -> None:
            servicer = InferenceServicer(self._data_plane, self._model_repository_extension)
            self._server = aio.server(
                futures.ThreadPoolExecutor(max_workers=max_workers),
                interceptors=(LoggingInterceptor(), ExceptionToStatusInterceptor()),
                options=[(f"grpc.{k}", self._kwargs[f"grpc_{k}"])
                         for k in ("max_send_message_length", "max_receive_message_length")
                         if self._kwargs.get(f"grpc_{k}")])
            grpc_predict_v2_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(
                servicer, self._server)
            self._server.add_generic_rpc_handlers((grpc_config_handler(config_for),))
            self._server.add_insecure_port(f"{host}:{port}")
            await self._server.start()
            await self._server.wait_for_termination()

    return LoopbackGRPCServer(port, dataplane, repository, kwargs, grace_period)


"""NeuroMask against an instrumented model served elsewhere, over the KServe V2 protocol.

The instrumented model needs only an inference server: `neuromask instrument MODEL --triton
REPO` writes it for Triton, and this module runs the optimisation loop as a client. Each step
is one V2 `infer` (inputs x, nm_mask, nm_target[, nm_baseline]; outputs nm_loss,
nm_grad_mask, nm_probs) through `tritonclient`, which Triton, KServe and MLServer all speak,
over gRPC (`grpc://host:port`) or HTTP (`http://host:port`, binary tensors).

- `ServedModel.connect` reads names, shapes and dtypes from the server's model metadata, and
  the NeuroMask metadata, preprocessing and labels from the model config's parameters where
  the server has Triton's config endpoint (flags fill in elsewhere). A server that is down,
  a model that is not there, or one that is not instrumented is one `ServerError` line.
- `RemoteRunner` is a `runtime.Runner` (bind once per chunk, run(mask) ->
  loss, grad_mask, probs), so `RemoteNeuroMask` is `NeuroMask` with the runner swapped at its
  `_new_runner` hook: same jobs, batching, seeds and optimisation, hence the same masks as a
  local run to float32 noise.
- Every call has a timeout; transient failures (unavailable, deadline, connection reset) are
  retried with exponential backoff, anything else fails at once.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlparse

import numpy as np
import onnx

from .contract import InputSpec, detect_layout
from .errors import InputError, NeuromaskError
from .explain import NeuroMask
from .io_names import BASELINE, GRAD_MASK, LOSS, MASK, PROBS, TARGET
from .optimize import NeuroMaskConfig
from .preprocess import PREPROCESSING_PRESETS, Preprocessing, preprocessing_preset

T = TypeVar("T")
_DTYPES = {"FP32": np.float32, "FP64": np.float64, "FP16": np.float16, "INT64": np.int64}
_TRANSIENT = ("unavailable", "deadline", "resource_exhausted", "connection", "reset",
              "broken pipe", "timed out", "timeout", "503", "429")


class ServerError(NeuromaskError):
    """The inference server is unreachable, lacks the model, or serves something else."""


def parse_url(url: str) -> tuple[str, str]:
    """grpc://host:port or http://host:port -> (protocol, host:port)."""
    u = urlparse(url if "://" in url else f"grpc://{url}")
    if u.scheme not in ("grpc", "http") or not u.hostname or not u.port:
        msg = (f"--server takes grpc://HOST:PORT or http://HOST:PORT, got {url!r} "
               "(https and paths are not supported)")
        raise InputError(msg)
    return u.scheme, f"{u.hostname}:{u.port}"


def _transient(exc: BaseException) -> bool:
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    status = getattr(exc, "status", None)
    text = f"{status() if callable(status) else ''} {exc}".lower()
    return any(t in text for t in _TRANSIENT)


def _short(exc: BaseException) -> str:
    msg = getattr(exc, "message", None)
    text = msg() if callable(msg) else str(exc)
    return " ".join(str(text).split())[:300] or type(exc).__name__


@dataclass
class Client:
    """One tritonclient connection with timeouts and retries."""

    url: str
    timeout: float = 30.0
    retries: int = 3
    backoff: float = 0.2
    kserve_protos: bool = False
    """gRPC over kserve's protos (`v2grpc`), in a process that has imported kserve."""
    protocol: str = field(init=False)
    raw: Any = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.protocol, where = parse_url(self.url)
        import importlib

        name = {"grpc": "tritonclient.grpc", "http": "tritonclient.http"}[self.protocol]
        if self.protocol == "grpc" and self.kserve_protos:
            name = "neuromask_onnx.v2grpc"
        try:
            tc: Any = importlib.import_module(name)
        except ImportError:
            msg = "talking to a server needs tritonclient; pip install 'neuromask-onnx[serve]'"
            raise InputError(msg) from None
        self.module: Any = tc
        if self.protocol == "grpc":
            self.raw = tc.InferenceServerClient(where)
        else:
            self.raw = tc.InferenceServerClient(where, connection_timeout=self.timeout,
                                                network_timeout=self.timeout)

    def call(self, what: str, fn: Callable[[], T]) -> T:
        for attempt in range(self.retries + 1):
            try:
                return fn()
            except Exception as exc:  # noqa: BLE001 (tritonclient, grpc and gevent errors)
                if _transient(exc) and attempt < self.retries:
                    time.sleep(self.backoff * 2**attempt)
                    continue
                if _transient(exc):
                    msg = (f"cannot {what} at {self.url} after {attempt + 1} tries "
                           f"({_short(exc)}); is the server running? check --server")
                else:
                    msg = f"the server at {self.url} refused to {what}: {_short(exc)}"
                raise ServerError(msg) from None
        raise AssertionError  # pragma: no cover

    def kw(self) -> dict[str, Any]:
        return {"client_timeout": self.timeout} if self.protocol == "grpc" else {}

    def close(self) -> None:
        self.raw.close()


@dataclass
class ServedModel:
    """What the server says about one instrumented model."""

    client: Client
    name: str
    inputs: dict[str, tuple[str, list[int]]]
    outputs: dict[str, tuple[str, list[int]]]
    params: dict[str, str]
    max_batch_size: int | None

    @classmethod
    def connect(cls, url: str, name: str, *, timeout: float = 30.0, retries: int = 3,
                kserve_protos: bool = False) -> ServedModel:
        client = Client(url, timeout, retries, kserve_protos=kserve_protos)
        live = client.call("reach the server", lambda: client.raw.is_server_live(**client.kw()))
        if not live:
            msg = f"the server at {url} is not live; wait for it or check --server"
            raise ServerError(msg)
        ready = client.call("ask whether the model is ready",
                            lambda: client.raw.is_model_ready(name, **client.kw()))
        if not ready:
            msg = (f"the server at {url} has no ready model {name!r}{_index(client)}; "
                   "check --served-model")
            raise ServerError(msg)
        if client.protocol == "grpc":
            md = client.call("read the model metadata", lambda: client.raw.get_model_metadata(
                name, as_json=True, **client.kw()))
        else:
            md = client.call("read the model metadata",
                             lambda: client.raw.get_model_metadata(name))

        def tensors(key: str) -> dict[str, tuple[str, list[int]]]:
            return {t["name"]: (t["datatype"], [int(d) for d in t["shape"]])
                    for t in md.get(key, [])}

        ins, outs = tensors("inputs"), tensors("outputs")
        missing = [n for n in (MASK, TARGET) if n not in ins] + \
                  [n for n in (LOSS, GRAD_MASK, PROBS) if n not in outs]
        if missing:
            msg = (f"served model {name!r} is not an instrumented model (no {missing[0]!r}; "
                   f"it has inputs {sorted(ins)}); serve the repository that `neuromask "
                   "instrument MODEL --triton REPO` writes")
            raise ServerError(msg)
        params, max_batch = _config(client, name)
        return cls(client, name, ins, outs, params, max_batch)

    # ----------------------------------------------------------------- the model's facts

    @property
    def input_name(self) -> str:
        names = [n for n in self.inputs if n not in (MASK, TARGET, BASELINE)]
        if len(names) != 1:
            msg = f"served model {self.name!r} has inputs {sorted(self.inputs)}; expected one " \
                  "to explain besides nm_mask, nm_target and nm_baseline"
            raise ServerError(msg)
        return names[0]

    def dims(self) -> tuple[int | None, ...]:
        return tuple(d if d > 0 else None for d in self.inputs[self.input_name][1])

    def spec(self, layout: str | None = None) -> InputSpec:
        lay = layout or self.params.get("neuromask.layout")
        if lay not in ("NCHW", "NHWC"):
            lay = layout
        dims = self.dims()
        return InputSpec(self.input_name, dims,
                         detect_layout(dims, lay, self.input_name, purpose="read"))

    def preprocessing(self, name: str | None) -> Preprocessing:
        if name is not None:
            return preprocessing_preset(name)
        raw = self.params.get("neuromask.preprocess")
        if raw is None:
            return PREPROCESSING_PRESETS["torchvision-imagenet"]
        try:
            fields = json.loads(raw)
            for key in ("size", "mean", "std"):
                if fields.get(key) is not None:
                    fields[key] = tuple(fields[key])
            return Preprocessing(**fields)
        except (ValueError, TypeError) as exc:
            msg = f"the served model's neuromask.preprocess is malformed ({exc}); pass " \
                  "--preprocess"
            raise ServerError(msg) from None

    def labels(self) -> list[str] | None:
        raw = self.params.get("neuromask.labels")
        try:
            got = json.loads(raw) if raw else None
        except ValueError:
            return None
        return [str(v) for v in got] if isinstance(got, list) else None

    def num_classes(self) -> int:
        if "neuromask.num_classes" in self.params:
            return int(self.params["neuromask.num_classes"])
        k = self.outputs[PROBS][1][-1]
        return 1 if k == 2 else k  # a binary (sigmoid) head serves 2 probabilities

    def mask_axes(self) -> tuple[int, ...]:
        if "neuromask.mask_axes" in self.params:
            return tuple(int(a) for a in self.params["neuromask.mask_axes"].split(","))
        m = self.inputs[MASK][1]
        return tuple(i for i, d in enumerate(m) if i > 0 and d != 1)


def remote_model(server: str, served_model: str | None, timeout: float = 30.0) -> ServedModel:
    """The served model behind `explain --server` (errors are NeuromaskErrors)."""
    if not served_model:
        msg = "--server needs --served-model NAME (the instrumented model's name there)"
        raise InputError(msg)
    return ServedModel.connect(server, served_model, timeout=timeout)


def _index(client: Client) -> str:
    try:
        if client.protocol == "grpc":
            idx = client.raw.get_model_repository_index(as_json=True, **client.kw())
            models = idx.get("models", [])
        else:
            models = client.raw.get_model_repository_index()
        names = sorted({m["name"] for m in models})
    except Exception:  # noqa: BLE001 (not every V2 server has Triton's repository extension)
        return ""
    return f" (it serves {', '.join(names)})" if names else " (it serves no model)"


def _config(client: Client, name: str) -> tuple[dict[str, str], int | None]:
    """Triton's model config: parameters and max_batch_size ({} and None elsewhere)."""
    try:
        if client.protocol == "grpc":
            cfg = client.raw.get_model_config(name, as_json=True, **client.kw())["config"]
        else:
            cfg = client.raw.get_model_config(name)
    except Exception:  # noqa: BLE001 (only Triton has the config extension)
        return {}, None
    params = {k: v.get("string_value", "") for k, v in cfg.get("parameters", {}).items()}
    mb = cfg.get("max_batch_size")
    return params, int(mb) if mb else None


class RemoteRunner:
    """A `runtime.Runner` over one served model, at one batch size."""

    def __init__(self, served: ServedModel, batch: int) -> None:
        t0 = time.perf_counter()
        self.served = served
        self.client = served.client
        self.batch = batch
        mshape = served.inputs[MASK][1]
        self.mask_shape = (batch, *mshape[1:])
        self.has_baseline = BASELINE in served.inputs
        self.provider = f"{served.name} at {self.client.url}"
        self.target_rank = len(served.inputs[TARGET][1])
        tc = self.client.module
        self.outputs = [tc.InferRequestedOutput(n) for n in (LOSS, GRAD_MASK, PROBS)]
        self.fixed: list[Any] = []
        self.seconds = time.perf_counter() - t0

    def _input(self, name: str, value: np.ndarray) -> Any:
        dtype = self.served.inputs[name][0]
        arr = np.ascontiguousarray(value, _DTYPES.get(dtype, np.float32))
        inp = self.client.module.InferInput(name, list(arr.shape), dtype)
        inp.set_data_from_numpy(arr)
        return inp

    def bind(self, x_name: str, x: np.ndarray, target: np.ndarray,
             baseline: np.ndarray | None) -> None:
        t = target.reshape(len(target), *([1] * (self.target_rank - 1)))
        self.fixed = [self._input(x_name, x), self._input(TARGET, t)]
        if self.has_baseline:  # the zero baseline is x * mask: b = 0
            b = np.zeros_like(x) if baseline is None else baseline
            self.fixed.append(self._input(BASELINE, b))

    def run(self, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        inputs = [*self.fixed, self._input(MASK, mask)]
        c = self.client
        res = c.call("run the model", lambda: c.raw.infer(
            self.served.name, inputs, outputs=self.outputs, **c.kw()))
        loss = res.as_numpy(LOSS).reshape(-1)
        grad = res.as_numpy(GRAD_MASK).reshape(mask.shape)
        probs = res.as_numpy(PROBS).reshape(len(loss), -1)
        return loss, grad, probs


class RemoteNeuroMask(NeuroMask):
    """`NeuroMask` whose model runs on an inference server (see the module docstring)."""

    def __init__(self, served: ServedModel, config: NeuroMaskConfig | None = None, *,
                 batch_size: int = 8, labels: Sequence[str] | None = None) -> None:
        # NeuroMask.__init__ instruments a local file; here the served model says it all.
        if batch_size < 1:
            msg = f"batch size must be at least 1, got {batch_size}"
            raise InputError(msg)
        if config is not None and config.baseline != "zero" and BASELINE not in served.inputs:
            msg = (f"--baseline {config.baseline} needs a model served with an nm_baseline "
                   "input; write the repository with `instrument --triton REPO --baseline`")
            raise ServerError(msg)
        self.served = served
        self.model = onnx.ModelProto()
        self.config = config or NeuroMaskConfig()
        self.provider_name = self.served.client.url
        self.batch_size = min(batch_size, served.max_batch_size or batch_size)
        self.labels = list(labels) if labels is not None else served.labels()
        self.threads = None
        self.spec = None  # the served model's facts come from the server, below
        self._may_estimate = False
        self.input_name = served.input_name
        self.num_classes = served.num_classes()
        self.mask_axes = served.mask_axes()
        self.layout = served.params.get("neuromask.layout", "custom")
        self.dims = served.dims()
        self.fixed_batch = self.dims[0] if self.dims else None
        self.dtype = _DTYPES.get(served.inputs[self.input_name][0], np.float32)  # type: ignore[assignment]
        if self.labels is not None and len(self.labels) != max(self.num_classes, 2):
            msg = (f"the labels list has {len(self.labels)} names but the served model has "
                   f"{self.num_classes} classes")
            raise InputError(msg)
        self._runners = {}
        self._timings = {"instrument": 0.0, "session": 0.0}
        self.model_runs = 0
        self.rows_per_run = None
        self.gradient = "exact"
        served_objective = served.params.get("neuromask.objective", "cross_entropy")
        wanted = "cross_entropy" if self.config.mode == "classic" else "probability"
        if served_objective != wanted:
            msg = (f"the served model was instrumented with objective {served_objective!r} but "
                   f"NeuroMask mode {self.config.mode!r} needs {wanted!r}; write the repository "
                   f"again with `neuromask instrument MODEL --triton REPO --objective {wanted}`")
            raise InputError(msg)
        if self.config.mode == "areas" and BASELINE not in served.inputs:
            msg = ("the served model has no nm_baseline input, which the default NeuroMask "
                   "needs; write the repository again with `neuromask instrument --triton`")
            raise InputError(msg)

    def _new_runner(self, batch: int, shape: tuple[int, ...]) -> RemoteRunner:  # noqa: ARG002
        return RemoteRunner(self.served, batch)

"""`neuromask serve MODEL`: an explainer endpoint on KServe's Python model server.

A `kserve.Model` named after the model answers the V1 protocol:

- `POST /v1/models/NAME:predict` `{"instances": [INPUT, ...]}` ->
  `{"predictions": [{"target", "label", "probabilities", "top5"}]}`
- `POST /v1/models/NAME:explain` `{"instances": [INPUT, ...], "parameters": {...}}` ->
  `{"explanations": [{"mask", "mask_shape", "target", "label", "prob_before", "prob_after",
  "top5", "steps", "seconds"[, "overlay_png"]}]}`

INPUT is `{"image_b64": "<base64 PNG/JPEG/...>"}` or `{"tensor": nested list}` (the model's
input without the batch axis), optionally with `"target"` (index or label). `parameters` (or
the instance) may carry `preset`, `steps`, `seed` and `overlay` (true: a base64 overlay PNG).
Everything wrong with a request is a 400 with one sentence (`kserve.errors.InvalidInput`):
body size, instance count, image pixels and steps have limits (`Limits`).

Requests are independent: each takes one worker slot (`workers` of them) for the whole
request and runs in that slot's own thread, so concurrent requests never share a session
binding. With `predictor` the slots hold `remote.RemoteNeuroMask`s against a V2 server
(over gRPC with `v2grpc`: kserve's and tritonclient's gRPC protos cannot share a process).

With a local model, V2 infer serves its instrumented model too (`serve_v2`), for `neuromask
explain --server`. The REST server binds 127.0.0.1 unless told otherwise, and gRPC (off
unless `grpc_port`) the same host (KServe's own `ModelServer.start` binds 0.0.0.0 and [::],
so `run` starts KServe's servers itself with the host set).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import dataclasses
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ConvergenceWarning, InputError, NeuromaskError
from .explain import NeuroMask
from .optimize import preset
from .preprocess import Preprocessing
from .serve_v2 import V2Model


@dataclass(frozen=True)
class Limits:
    max_body_bytes: int = 20 << 20
    max_instances: int = 8
    max_pixels: int = 16_000_000
    max_steps: int = 1000


def _invalid(msg: str) -> Exception:
    from kserve.errors import InvalidInput

    err: Exception = InvalidInput(msg)
    return err


class _Slot:
    """One worker: its explainers and the one thread that ever touches them (a session
    binding is per call, and tritonclient's HTTP client is bound to its gevent thread)."""

    def __init__(self) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self.thread = ThreadPoolExecutor(1, thread_name_prefix="neuromask")
        self.nms: dict[bool, NeuroMask] = {}


def model(path: str | Path | None, *, name: str, preprocessing: Preprocessing | None = None,
          labels: list[str] | None = None, workers: int = 1,
          limits: Limits | None = None, predictor: str | None = None,
          served_model: str | None = None, objective: str = "probability") -> Any:
    """The kserve.Model serving `path`'s explanations, or those of `served_model` on the
    V2 server `predictor` (http://HOST:PORT; the loop runs here, each step is one infer
    there, as KServe's own explainers do with --predictor_host). With `path`, V2 infer
    serves its instrumented model too (`serve_v2`; `objective` as `instrument --triton`)."""
    from concurrent.futures import ThreadPoolExecutor

    import kserve
    from kserve.protocol.infer_type import InferRequest
    from PIL import Image

    from .contract import describe_input
    from .graph import load_model
    from .outputs import heat, overlay, png_bytes
    from .preprocess import load_inputs, model_labels, resolve_preprocessing

    lim = limits or Limits()
    base = preset("default")
    if predictor is not None:
        from .remote import RemoteNeuroMask, ServedModel, parse_url

        parse_url(predictor)  # grpc://HOST:PORT or http://HOST:PORT
        if not served_model:
            msg = "--predictor-host needs --served-model NAME (the instrumented model there)"
            raise InputError(msg)
        served = ServedModel.connect(predictor, served_model, kserve_protos=True)
        spec = served.spec()
        prep = preprocessing or served.preprocessing(None)
        names = labels if labels is not None else served.labels()

        def make(cfg: Any) -> NeuroMask:
            return RemoteNeuroMask(ServedModel.connect(predictor, served_model,
                                                       kserve_protos=True), cfg,
                                   batch_size=lim.max_instances, labels=names)

        v2: V2Model | None = None
        no_v2 = (f"this server explains {served_model!r} served at {predictor}; send V2 "
                 "infer requests there")
    else:
        if path is None:
            msg = "serve needs MODEL, or --predictor-host URL --served-model NAME"
            raise InputError(msg)
        proto = load_model(path)
        spec = describe_input(proto)
        prep = preprocessing or resolve_preprocessing(None, proto)
        names = labels if labels is not None else model_labels(proto)

        def make(cfg: Any) -> NeuroMask:
            return NeuroMask(proto, cfg, provider="cpu", batch_size=lim.max_instances,
                             labels=names, threads=1)

        try:
            v2 = V2Model.build(proto, name, preprocessing=prep, labels=names,
                               objective=objective, max_batch_size=lim.max_instances)
            no_v2 = ""
        except NeuromaskError as exc:  # V1 still works; V2 requests get the reason
            v2, no_v2 = None, f"V2 infer is off for this model: {exc}"

    v2_pool = ThreadPoolExecutor(workers, thread_name_prefix="neuromask-v2")

    class Model(kserve.Model):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__(name)
            self.pool: asyncio.Queue[_Slot] | None = None
            self.load()

        def load(self) -> bool:
            # one explainer per worker and per baseline kind (the session's inputs differ)
            self.slots = [_Slot() for _ in range(workers)]
            for slot in self.slots:  # built in the slot's own thread (see _Slot)
                slot.nms[True] = slot.thread.submit(self._explainer, True).result()
            self.ready = True
            return True

        # ------------------------------------------------------------- V2 (serve_v2)

        def get_input_types(self) -> list[dict[str, Any]]:
            return v2.metadata("inputs") if v2 else []

        def get_output_types(self) -> list[dict[str, Any]]:
            return v2.metadata("outputs") if v2 else []

        def v2_config(self) -> dict[str, Any] | None:
            return v2.config() if v2 else None

        async def _infer(self, request: Any, headers: dict[str, str] | None) -> Any:
            if v2 is None:
                raise _invalid(no_v2)
            size = int((headers or {}).get("content-length", "0") or 0)
            feeds, _ = v2.feeds(request, body_bytes=size, max_body_bytes=lim.max_body_bytes)
            values = await asyncio.get_running_loop().run_in_executor(v2_pool, v2.run, feeds)
            return v2.response(request, values)

        def _explainer(self, with_baseline: bool) -> NeuroMask:
            return make(base.replace(baseline="blur" if with_baseline else "zero"))

        async def _borrow(self) -> _Slot:
            if self.pool is None:
                self.pool = asyncio.Queue()
                for s in self.slots:
                    self.pool.put_nowait(s)
            return await self.pool.get()

        # ------------------------------------------------------------- requests

        def _instances(self, payload: Any, headers: dict[str, str] | None) -> list[Any]:
            size = int((headers or {}).get("content-length", "0") or 0)
            if size > lim.max_body_bytes:
                msg = (f"request body is {size} bytes; the limit is "
                       f"{lim.max_body_bytes}")
                raise _invalid(msg)
            if not isinstance(payload, dict) or not isinstance(payload.get("instances"), list):
                msg = 'the body must be a JSON object {"instances": [...]}'
                raise _invalid(msg)
            inst = payload["instances"]
            if not inst:
                msg = "instances is empty; send at least one input"
                raise _invalid(msg)
            if len(inst) > lim.max_instances:
                msg = (f"{len(inst)} instances; the limit is {lim.max_instances} "
                       "per request")
                raise _invalid(msg)
            return list(inst)

        def _tensor(self, inst: Any, tmp: Path, i: int) -> tuple[np.ndarray, Any]:
            if not isinstance(inst, dict):
                msg = f"instance {i} must be an object with image_b64 or tensor"
                raise _invalid(msg)
            if "image_b64" in inst:
                try:
                    data = base64.b64decode(str(inst["image_b64"]), validate=True)
                except (binascii.Error, ValueError):
                    msg = f"instance {i}: image_b64 is not valid base64"
                    raise _invalid(msg) from None
                f = tmp / f"input{i}.img"
                f.write_bytes(data)
                try:
                    with Image.open(f) as im:
                        if im.width * im.height > lim.max_pixels:
                            msg = (f"instance {i}: the image has {im.width}x{im.height}"
                                   f" pixels; the limit is {lim.max_pixels}")
                            raise _invalid(msg)
                except (OSError, Image.DecompressionBombError):
                    msg = (f"instance {i}: image_b64 is not an image PIL can read "
                           "(PNG, JPEG, BMP, TIFF, WebP)")
                    raise _invalid(msg) from None
                (inp,) = load_inputs([f], spec, prep)
                return inp.tensor, inp
            if "tensor" in inst:
                try:
                    x = np.asarray(inst["tensor"], np.float32)
                except (ValueError, TypeError):
                    msg = f"instance {i}: tensor is not a numeric array"
                    raise _invalid(msg) from None
                if x.size > lim.max_pixels * 4:
                    msg = f"instance {i}: tensor has {x.size} values; too large"
                    raise _invalid(msg)
                return x, None
            msg = f"instance {i} has neither image_b64 nor tensor"
            raise _invalid(msg)

        def _config(self, payload: dict[str, Any]) -> Any:
            p = payload.get("parameters") or {}
            if not isinstance(p, dict):
                msg = "parameters must be an object"
                raise _invalid(msg)
            cfg = preset(str(p.get("preset", "default")))
            steps = p.get("steps")
            if steps is not None:
                if not isinstance(steps, int) or not 1 <= steps <= lim.max_steps:
                    msg = (f"steps must be an integer in 1..{lim.max_steps}, "
                           f"got {steps!r}")
                    raise _invalid(msg)
                cfg = cfg.replace(steps=steps)
            if p.get("seed") is not None:
                cfg = cfg.replace(seed=int(p["seed"]))
            if cfg.steps > lim.max_steps:
                msg = (f"preset {p.get('preset')!r} runs {cfg.steps} steps; the limit "
                       f"is {lim.max_steps}")
                raise _invalid(msg)
            return cfg

        async def _run(self, fn: Any) -> Any:
            def guarded(slot: dict[bool, NeuroMask]) -> Any:
                try:
                    return fn(slot)
                except NeuromaskError as exc:  # the request's fault: 400, one sentence
                    raise _invalid(str(exc)) from None

            slot = await self._borrow()
            try:
                return await asyncio.get_running_loop().run_in_executor(slot.thread, guarded,
                                                                        slot.nms)
            finally:
                assert self.pool is not None
                self.pool.put_nowait(slot)

        def _parse(self, payload: Any, headers: Any, tmp: Path) -> tuple[list[Any], list[Any],
                                                                         list[Any]]:
            inst = self._instances(payload, headers)
            xs, shown, targets = [], [], []
            for i, item in enumerate(inst):
                x, loaded = self._tensor(item, tmp, i)
                xs.append(x)
                shown.append(loaded)
                targets.append(item.get("target"))
            return xs, shown, targets

        async def predict(self, payload: Any, headers: Any = None,
                          response_headers: Any = None) -> Any:  # noqa: ARG002
            if isinstance(payload, InferRequest):  # V2 infer: the instrumented model
                return await self._infer(payload, headers)

            def work(slot: dict[bool, NeuroMask]) -> dict[str, Any]:
                with tempfile.TemporaryDirectory() as t:
                    xs, _, _ = self._parse(payload, headers, Path(t))
                    nm = slot[True]
                    probs = nm.predict(np.stack(xs)) if len({x.shape for x in xs}) == 1 \
                        else np.stack([nm.predict(x[None])[0] for x in xs])
                out = []
                for p in probs:
                    order = np.argsort(-p, kind="stable")[:5]
                    top = int(order[0])
                    out.append({"target": top, "label": nm.labels[top] if nm.labels else None,
                                "probabilities": [float(v) for v in p],
                                "top5": [{"index": int(k), "prob": float(p[k])} for k in order]})
                return {"predictions": out}

            return dict(await self._run(work))

        async def explain(self, payload: Any, headers: Any = None) -> dict[str, Any]:
            try:
                cfg = self._config(payload if isinstance(payload, dict) else {})
            except NeuromaskError as exc:
                raise _invalid(str(exc)) from None
            params = (payload.get("parameters") or {}) if isinstance(payload, dict) else {}

            def work(slot: dict[bool, NeuroMask]) -> dict[str, Any]:
                with tempfile.TemporaryDirectory() as t:
                    xs, shown, targets = self._parse(payload, headers, Path(t))
                    key = cfg.baseline != "zero"
                    if key not in slot:
                        slot[key] = self._explainer(key)
                    nm = slot[key]
                    nm.config = cfg  # this slot is ours for the whole request
                    t0 = time.perf_counter()
                    if len({x.shape for x in xs}) != 1:
                        msg = "all instances of a request need the same shape"
                        raise InputError(msg)
                    with warnings.catch_warnings():  # notes travel in ex.warnings
                        warnings.simplefilter("ignore", ConvergenceWarning)
                        rows = nm.explain_many(xs, targets)
                    seconds = time.perf_counter() - t0
                out = []
                for (ex,), inp in zip(rows, shown, strict=True):
                    doc: dict[str, Any] = {
                        "mask": ex.mask.tolist(), "mask_shape": list(ex.mask.shape),
                        "target": ex.target, "label": ex.label, "prob_before": ex.prob_before,
                        "prob_after": ex.prob_after, "steps": ex.steps,
                        "top5": [{"index": c.index, "label": c.label, "prob": c.prob}
                                 for c in ex.top_k[:5]],
                        "seconds": seconds, "warnings": list(ex.warnings)}
                    if params.get("overlay") and inp is not None and inp.image is not None \
                            and inp.geometry is not None:
                        png = png_bytes(overlay(inp.image, inp.geometry.to_original(heat(ex.mask))))
                        doc["overlay_png"] = base64.b64encode(png).decode()
                    out.append(doc)
                return {"explanations": out, "config": dataclasses.asdict(cfg)}

            return dict(await self._run(work))

    return Model()


def run(m: Any, *, host: str = "127.0.0.1", port: int = 8080,
        grpc_port: int | None = None) -> None:
    """Serve `m` with KServe's REST server on host:port until SIGINT/SIGTERM, and its gRPC
    server on host:grpc_port when given (both with `serve_v2`'s model-config route)."""
    import kserve
    from kserve import model_server
    from kserve.model_server import FASTAPI_APP_IMPORT_STRING
    from kserve.protocol.rest.server import RESTServer

    from .serve_v2 import add_routes, loopback_grpc_server

    def config_for(name: str) -> dict[str, Any] | None:
        return m.v2_config() if name == m.name else None

    server = kserve.ModelServer(http_port=port, enable_grpc=False, workers=1)
    server.register_model(m)
    add_routes(model_server.app, config_for)  # before KServe's own
    rest = RESTServer(FASTAPI_APP_IMPORT_STRING, server.dataplane,
                      server.model_repository_extension, port, workers=1, grace_period=2)
    rest.config.host = host  # KServe's default is 0.0.0.0
    server._rest_server = rest
    server.servers.append(rest.start())
    if grpc_port is not None:
        grpc = loopback_grpc_server(host, grpc_port, server.dataplane,
                                    server.model_repository_extension, config_for,
                                    vars(model_server.args))
        server._grpc_server = grpc
        server.servers.append(grpc.start(server.max_threads))
    server.setup_event_loop()
    server.register_signal_handler()
    asyncio.run(server._serve())

"""Check a gradient graph against finite differences with the dot-product test.

For random directions u (inputs) and v (output cotangents), a correct VJP satisfies
<u, VJP(v)> = <v, J u>, and J u is approximated by central differences
(f(x + eps u) - f(x - eps u)) / 2 eps. One test costs three model runs whatever the sizes.
Run it in float64 on onnx's reference evaluator (every op, any dtype) for the rules, and in
float32 on onnxruntime for whole models.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import onnx

from .graph import load_model
from .reverse import vjp

Runner = Callable[[dict[str, np.ndarray]], list[np.ndarray]]


@dataclass(frozen=True)
class GradCheck:
    """The two sides of the dot-product test; `error` is their relative difference."""

    analytic: float
    numeric: float

    @property
    def error(self) -> float:
        scale = max(abs(self.analytic), abs(self.numeric), 1e-30)
        return abs(self.analytic - self.numeric) / scale


def runner(model: onnx.ModelProto, backend: Literal["reference", "onnxruntime"]) -> Runner:
    if backend == "reference":
        from onnx.reference import ReferenceEvaluator

        ref = ReferenceEvaluator(model)

        def run(feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
            # float32 masks are HardSigmoid steps with a slope near 2^127 (Emitter.step):
            # numpy overflows alpha * x to +-inf, which the clip turns into the exact 0 / 1.
            with np.errstate(over="ignore"):
                return [np.asarray(v) for v in ref.run(None, feeds)]

        return run
    from .runtime import session

    sess = session(model)
    return lambda feeds: [np.asarray(v) for v in sess.run(None, feeds)]


def check_vjp(
    model: onnx.ModelProto | str | Path,
    feeds: dict[str, np.ndarray],
    *,
    rng: np.random.Generator,
    wrt: Sequence[str] | None = None,
    eps: float = 1e-6,
    backend: Literal["reference", "onnxruntime"] = "reference",
    reference: onnx.ModelProto | str | Path | None = None,
) -> GradCheck:
    """Dot-product test of the VJP graph of `model` at `feeds` in one random direction.

    With `reference`, the numeric side is the finite difference of that model instead (same
    input and output names; it runs on the reference evaluator, on the feeds cast to its own
    input types, float64 where it is a float64 model). This checks a
    convention that is not the derivative of `model`'s function: the straight-through rule of
    a quantized model against its dequantized float equivalent, a half-precision model's
    float32 gradient against the same weights computed in float64.
    """
    m = load_model(model)
    wrt = list(wrt) if wrt is not None else [
        k for k, v in feeds.items() if np.issubdtype(v.dtype, np.floating)]
    outs = [o.name for o in m.graph.output]
    vm = vjp(m, wrt=wrt, of=outs)
    backward = runner(vm, backend)
    forward = runner(m, backend) if reference is None else _cast_feeds(load_model(reference))
    base = forward(feeds)
    us = {w: rng.standard_normal(feeds[w].shape) for w in wrt}
    if reference is None:
        us = {w: u.astype(feeds[w].dtype) for w, u in us.items()}
    vs = [rng.standard_normal(b.shape).astype(b.dtype) for b in base]
    plus = forward({**feeds, **{w: feeds[w] + eps * u for w, u in us.items()}})
    minus = forward({**feeds, **{w: feeds[w] - eps * u for w, u in us.items()}})
    numeric = sum(float(np.sum(v.astype(np.float64) * (p.astype(np.float64) - q) / (2 * eps)))
                  for v, p, q in zip(vs, plus, minus, strict=True))
    vfeeds = {**feeds, **{f"nm_cot_{o}": v.astype(o_t) for o, v, o_t
                          in zip(outs, vs, _output_types(m), strict=True)}}
    grads = backward(vfeeds)[len(outs):]
    analytic = sum(float(np.sum(us[w].astype(np.float64) * gw))
                   for w, gw in zip(wrt, grads, strict=True))
    return GradCheck(analytic=analytic, numeric=numeric)


def _output_types(model: onnx.ModelProto) -> list[np.dtype]:
    return [np.dtype(onnx.helper.tensor_dtype_to_np_dtype(o.type.tensor_type.elem_type))
            for o in model.graph.output]


def _cast_feeds(model: onnx.ModelProto) -> Runner:
    """A reference-evaluator runner of `model` that casts each feed to its input's type."""
    run = runner(model, "reference")
    types = {i.name: np.dtype(onnx.helper.tensor_dtype_to_np_dtype(i.type.tensor_type.elem_type))
             for i in model.graph.input}
    return lambda feeds: run({k: np.asarray(v).astype(types.get(k, np.asarray(v).dtype))
                              for k, v in feeds.items()})

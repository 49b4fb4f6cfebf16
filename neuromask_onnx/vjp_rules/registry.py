"""Vector-Jacobian rules: one function per ONNX op, emitting standard ONNX ops only.

A rule receives the emitter, the primal node and the incoming gradient `gy` (one per output
for multi-output rules) and returns one gradient name per node input, `None` where the input
gets no gradient (integer, shape or constant operands). Rules read primal values by name from
the graph; they never recompute the forward pass except where an op hides what the gradient
needs (MaxPool's argmax indices). Shapes are static: `graph.prepare` pinned and folded them.

Conventions at kinks follow PyTorch: Relu'(0) = 0, Clip and HardSigmoid pass no gradient at
their bounds, MaxPool routes to the first maximal element, Max/Min/ReduceMax split the gradient
evenly between ties.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import onnx

from ..graph import Emitter

Grads = Sequence[str | None]
VjpRule = Callable[[Emitter, onnx.NodeProto, Sequence[str | None]], Grads]
VJP_RULES: dict[str, VjpRule] = {}

# Values computed by these ops carry no gradient even when their inputs depend on the mask:
# their outputs are integers, booleans or piecewise constants.
ZERO_GRAD_OPS = frozenset({
    "Shape", "Size", "Equal", "Greater", "GreaterOrEqual", "Less", "LessOrEqual", "Not", "And",
    "Or", "Xor", "ArgMax", "ArgMin", "Sign", "Floor", "Ceil", "Round", "IsNaN", "IsInf",
    "NonZero", "ConstantOfShape", "EyeLike", "RandomNormalLike", "RandomUniformLike",
    "Bernoulli", "OneHot", "BitShift", "Mod",
    # ONNX-ML ops outside the default domain are keyed "domain::op_type" (see `op_key`).
    "ai.onnx.ml::Binarizer", "ai.onnx.ml::LabelEncoder", "ai.onnx.ml::OneHotEncoder",
})

# Ops whose outputs are piecewise constant in the input but whose jumps carry the model's
# whole decision (tree ensembles): their exact gradient is zero almost everywhere, so the mask
# gradient is estimated from model runs instead (`neuromask_onnx.estimate`).
NO_GRADIENT_OPS = frozenset({
    "ai.onnx.ml::TreeEnsembleClassifier", "ai.onnx.ml::TreeEnsembleRegressor",
    "ai.onnx.ml::TreeEnsemble",
})


def op_key(node: onnx.NodeProto) -> str:
    """The registry key of a node: its op type, prefixed "domain::" outside the default domain."""
    if node.domain in ("", "ai.onnx"):
        return str(node.op_type)
    return f"{node.domain}::{node.op_type}"


def vjp_rule(*op_types: str, multi_output: bool = False) -> Callable[[Callable[..., Grads]],
                                                                     Callable[..., Grads]]:
    """Register a rule for `op_types`; single-output rules receive `gy` as a plain name."""

    def register(fn: Callable[..., Grads]) -> Callable[..., Grads]:
        def rule(op: Emitter, node: onnx.NodeProto, gys: Sequence[str | None]) -> Grads:
            if multi_output:
                return fn(op, node, gys)
            if any(g is not None for g in gys[1:]):
                msg = f"{node.op_type} passes no gradient from its output 2 or later"
                raise NotImplementedError(msg)
            assert gys[0] is not None
            return fn(op, node, gys[0])

        for t in op_types:
            if t in VJP_RULES:
                msg = f"a VJP rule for {t} is already registered"
                raise ValueError(msg)
            VJP_RULES[t] = rule
        return fn

    return register


def elementwise_rule(*op_types: str) -> Callable[[Callable[..., str]], Callable[..., str]]:
    """Register dy/dx of a unary op; the rule multiplies it by gy. Extra inputs get None."""

    def register(fn: Callable[..., str]) -> Callable[..., str]:
        def rule(op: Emitter, node: onnx.NodeProto, gy: str) -> Grads:
            d = fn(op, node, node.input[0], node.output[0])
            return [op.Mul(gy, d), *[None] * (len(node.input) - 1)]

        vjp_rule(*op_types)(rule)
        return fn

    return register


def _k(op: Emitter, value: float, like: str) -> str:
    return op.const(value, like=like)




# Rules for node groups the driver merges for the reverse pass (rewrite.fuse_for_backward).
# They are not ONNX ops, so they live apart from VJP_RULES.
FUSED_RULES: dict[str, VjpRule] = {}


def supported_ops() -> list[str]:
    """Every op type with a rule or a zero gradient, sorted."""
    return sorted(set(VJP_RULES) | ZERO_GRAD_OPS)


def describe() -> dict[str, Any]:
    return {"rules": sorted(VJP_RULES), "zero_gradient": sorted(ZERO_GRAD_OPS)}

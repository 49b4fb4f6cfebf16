"""VJP rules of the remaining standard elementwise math: Mod, Tan, the inverse trigonometric
and hyperbolic functions, Shrink, ThresholdedRelu, Swish (the ONNX op).

Same conventions as `elementwise`: each rule states dy/dx; at a kink the derivative is that
of the piece the kink belongs to in the op's definition (Shrink and ThresholdedRelu pass no
gradient at their thresholds, as torch's hardshrink does).
"""

from __future__ import annotations

import onnx

from ..graph import Emitter, attrs_of
from .registry import Grads, Needs, elementwise_rule, scalar_like, vjp_rule


@vjp_rule("Mod")
def _vjp_mod(op: Emitter, node: onnx.NodeProto, gy: str, needs: Needs) -> Grads:
    """y = a - b q with q = trunc(a / b) (fmod=1) or floor(a / b) (fmod=0), an integer that is
    locally constant: d/da = 1, d/db = -q (q read back as round((a - y) / b)).

    Only float Mod reaches this rule (integer values carry no gradient).
    """
    a, b = node.input
    ys, sa, sb = op.g.shape(node.output[0]), op.g.shape(a), op.g.shape(b)
    ga = op.sum_to(gy, ys, sa) if a in needs else None
    gb = None
    if b in needs:
        q = op.Round(op.Div(op.Sub(a, node.output[0]), b))
        gb = op.sum_to(op.Neg(op.Mul(gy, q)), ys, sb)
    return [ga, gb]


@elementwise_rule("Tan")
def _d_tan(op: Emitter, node: onnx.NodeProto, x: str, y: str) -> str:
    """d tan(x) = 1 + y^2."""
    return op.Add(scalar_like(op, 1.0, y), op.Mul(y, y))


@elementwise_rule("Asin", "Acos")
def _d_asin(op: Emitter, node: onnx.NodeProto, x: str, y: str) -> str:
    """d asin(x) = 1 / sqrt(1 - x^2) = -d acos(x)."""
    d = op.Reciprocal(op.Sqrt(op.Sub(scalar_like(op, 1.0, x), op.Mul(x, x))))
    return op.Neg(d) if node.op_type == "Acos" else d


@elementwise_rule("Atan")
def _d_atan(op: Emitter, node: onnx.NodeProto, x: str, y: str) -> str:
    """d atan(x) = 1 / (1 + x^2)."""
    return op.Reciprocal(op.Add(scalar_like(op, 1.0, x), op.Mul(x, x)))


@elementwise_rule("Sinh")
def _d_sinh(op: Emitter, node: onnx.NodeProto, x: str, y: str) -> str:
    """d sinh(x) = cosh(x)."""
    return op.Cosh(x)


@elementwise_rule("Cosh")
def _d_cosh(op: Emitter, node: onnx.NodeProto, x: str, y: str) -> str:
    """d cosh(x) = sinh(x)."""
    return op.Sinh(x)


@elementwise_rule("Asinh")
def _d_asinh(op: Emitter, node: onnx.NodeProto, x: str, y: str) -> str:
    """d asinh(x) = 1 / sqrt(x^2 + 1)."""
    return op.Reciprocal(op.Sqrt(op.Add(op.Mul(x, x), scalar_like(op, 1.0, x))))


@elementwise_rule("Acosh")
def _d_acosh(op: Emitter, node: onnx.NodeProto, x: str, y: str) -> str:
    """d acosh(x) = 1 / sqrt(x^2 - 1)."""
    return op.Reciprocal(op.Sqrt(op.Sub(op.Mul(x, x), scalar_like(op, 1.0, x))))


@elementwise_rule("Atanh")
def _d_atanh(op: Emitter, node: onnx.NodeProto, x: str, y: str) -> str:
    """d atanh(x) = 1 / (1 - x^2)."""
    return op.Reciprocal(op.Sub(scalar_like(op, 1.0, x), op.Mul(x, x)))


@elementwise_rule("Shrink")
def _d_shrink(op: Emitter, node: onnx.NodeProto, x: str, y: str) -> str:
    """y = x -+ bias outside [-lambd, lambd], 0 inside: dy/dx = [|x| > lambd]."""
    lambd = float(attrs_of(node).get("lambd", 0.5))
    return op.mask_of(op.Greater(op.Abs(x), scalar_like(op, lambd, x)), x)


@elementwise_rule("ThresholdedRelu")
def _d_thresholded_relu(op: Emitter, node: onnx.NodeProto, x: str, y: str) -> str:
    """y = x [x > alpha]: dy/dx = [x > alpha]."""
    alpha = float(attrs_of(node).get("alpha", 1.0))
    return op.mask_of(op.Greater(x, scalar_like(op, alpha, x)), x)


@elementwise_rule("Swish")
def _d_swish(op: Emitter, node: onnx.NodeProto, x: str, y: str) -> str:
    """y = x s, s = sigmoid(alpha x): dy/dx = s + alpha y (1 - s)."""
    alpha = float(attrs_of(node).get("alpha", 1.0))
    s = op.Sigmoid(op.Mul(x, scalar_like(op, alpha, x)) if alpha != 1.0 else x)
    return op.Add(s, op.Mul(op.Mul(y, scalar_like(op, alpha, y)), op.Sub(scalar_like(op, 1.0, s), s)))

"""VJP rules of elementwise and broadcasting ops: one derivative per op."""

from __future__ import annotations

import math

import numpy as np
import onnx

from ..graph import Emitter, Shape, attrs_of
from .registry import (
    Grads,
    Needs,
    balanced_eq,
    bilinear,
    elementwise_rule,
    first_only,
    scalar_like,
    vjp_rule,
)

# --------------------------------------------------------------------------- elementwise


@vjp_rule("Identity")
def _vjp_identity(op: Emitter, node: onnx.NodeProto, gy: str, needs: Needs) -> Grads:
    """gx = gy (Dropout's rule is in `nn`)."""
    return [gy]


@vjp_rule("Neg")
def _vjp_neg(op: Emitter, node: onnx.NodeProto, gy: str, needs: Needs) -> Grads:
    """gx = -gy."""
    return [op.Neg(gy)]


@vjp_rule("Cast", "CastLike")
def _vjp_cast(op: Emitter, node: onnx.NodeProto, gy: str, needs: Needs) -> Grads:
    """gx = Cast(gy) back to the input's float type (a quantized integer's stays gy's)."""
    x = node.input[0]
    dt = op.g.dtypes[x]
    if not op.g.is_float(x):  # Cast(MatMulInteger(...)): see quant, INTEGER_GRAD_OPS
        return first_only(node, gy)
    return first_only(node, op.Cast(gy, to=dt, _dtype=dt))


@elementwise_rule("Abs")
def _d_abs(op: Emitter, node: onnx.NodeProto, x: str, y: str) -> str:
    """d|x| = sign(x); Abs'(0) = 0 as in PyTorch."""
    return op.Sign(x)


@elementwise_rule("Sqrt")
def _d_sqrt(op: Emitter, node: onnx.NodeProto, x: str, y: str) -> str:
    """d sqrt(x) = 0.5 / y."""
    return op.Div(scalar_like(op, 0.5, y), y)


@elementwise_rule("Exp")
def _d_exp(op: Emitter, node: onnx.NodeProto, x: str, y: str) -> str:
    """d exp(x) = y."""
    return y


@elementwise_rule("Log")
def _d_log(op: Emitter, node: onnx.NodeProto, x: str, y: str) -> str:
    """d log(x) = 1 / x."""
    return op.Reciprocal(x)


@elementwise_rule("Reciprocal")
def _d_reciprocal(op: Emitter, node: onnx.NodeProto, x: str, y: str) -> str:
    """d (1/x) = -y^2."""
    return op.Neg(op.Mul(y, y))


# Relu'(0) = 0. The mask reads y, not x ([y > 0] == [x > 0]): when nothing but the Relu reads
# x, onnxruntime can still fuse the producing Conv with the Relu in the forward pass.
@elementwise_rule("Relu")
def _d_relu(op: Emitter, node: onnx.NodeProto, x: str, y: str) -> str:
    """d relu(x) = [y > 0]."""
    return op.step(y, 0.0, above=True)


@elementwise_rule("LeakyRelu")
def _d_leaky_relu(op: Emitter, node: onnx.NodeProto, x: str, y: str) -> str:
    """d = 1 where x > 0 else alpha."""
    alpha = attrs_of(node).get("alpha", 0.01)
    pos = op.mask_of(op.Greater(x, scalar_like(op, 0.0, x)), x)
    return op.Add(scalar_like(op, alpha, x), op.Mul(pos, scalar_like(op, 1.0 - alpha, x)))


@elementwise_rule("Elu")
def _d_elu(op: Emitter, node: onnx.NodeProto, x: str, y: str) -> str:
    """d = 1 where x > 0 else y + alpha."""
    alpha = attrs_of(node).get("alpha", 1.0)
    pos = op.mask_of(op.Greater(x, scalar_like(op, 0.0, x)), x)
    neg = op.Add(y, scalar_like(op, alpha, y))
    return op.Add(pos, op.Mul(op.Sub(scalar_like(op, 1.0, x), pos), neg))


@elementwise_rule("Celu")
def _d_celu(op: Emitter, node: onnx.NodeProto, x: str, y: str) -> str:
    """d = 1 where x > 0 else exp(x / alpha)."""
    alpha = attrs_of(node).get("alpha", 1.0)
    pos = op.mask_of(op.Greater(x, scalar_like(op, 0.0, x)), x)
    neg = op.Exp(op.Div(op.Min(x, scalar_like(op, 0.0, x)), scalar_like(op, alpha, x)))
    return op.Add(pos, op.Mul(op.Sub(scalar_like(op, 1.0, x), pos), neg))


@elementwise_rule("Selu")
def _d_selu(op: Emitter, node: onnx.NodeProto, x: str, y: str) -> str:
    """d = gamma where x > 0 else y + gamma * alpha."""
    a = attrs_of(node)
    alpha, gamma = a.get("alpha", 1.67326319217681884765625), a.get("gamma", 1.05070102214813232421875)
    pos = op.mask_of(op.Greater(x, scalar_like(op, 0.0, x)), x)
    neg = op.Add(y, scalar_like(op, gamma * alpha, y))
    return op.Add(op.Mul(pos, scalar_like(op, gamma, x)), op.Mul(op.Sub(scalar_like(op, 1.0, x), pos), neg))


@elementwise_rule("Sigmoid")
def _d_sigmoid(op: Emitter, node: onnx.NodeProto, x: str, y: str) -> str:
    """d sigmoid(x) = y (1 - y)."""
    return op.Mul(y, op.complement(y))


@elementwise_rule("Tanh")
def _d_tanh(op: Emitter, node: onnx.NodeProto, x: str, y: str) -> str:
    """d tanh(x) = 1 - y^2."""
    return op.Sub(scalar_like(op, 1.0, y), op.Mul(y, y))


# Zero gradient at both bounds, like torch.nn.functional.hardsigmoid.
@elementwise_rule("HardSigmoid")
def _d_hard_sigmoid(op: Emitter, node: onnx.NodeProto, x: str, y: str) -> str:
    """d = alpha where 0 < alpha x + beta < 1 else 0."""
    a = attrs_of(node)
    alpha, beta = a.get("alpha", 0.2), a.get("beta", 0.5)
    lo, hi = (-beta) / alpha, (1.0 - beta) / alpha
    inside = op.And(op.Greater(x, scalar_like(op, min(lo, hi), x)), op.Less(x, scalar_like(op, max(lo, hi), x)))
    return op.Mul(op.mask_of(inside, x), scalar_like(op, alpha, x))


# torch.nn.functional.hardswish backward: 0 below -3, x/3 + 1/2 up to 3 inclusive, 1 above.
@elementwise_rule("HardSwish")
def _d_hard_swish(op: Emitter, node: onnx.NodeProto, x: str, y: str) -> str:
    """d = 0 (x < -3), x/3 + 1/2 (-3 <= x <= 3), 1 (x > 3)."""
    shape = op.g.shapes.get(x)
    if op.g.dtypes.get(x) == onnx.TensorProto.FLOAT and shape is not None and len(shape) == 4:
        return _d_hard_swish_nchwc(op, x, shape[1])
    mid = op.Add(op.Mul(x, scalar_like(op, 1.0 / 3.0, x)), scalar_like(op, 0.5, x))
    above = op.Greater(x, scalar_like(op, 3.0, x))
    below = op.Less(x, scalar_like(op, -3.0, x))
    return op.Where(below, scalar_like(op, 0.0, x), op.Where(above, scalar_like(op, 1.0, x), mid))


def _d_hard_swish_nchwc(op: Emitter, x: str, c: int) -> str:
    """The same derivative from ops onnxruntime runs in its blocked NCHWc layout (the
    Where / Less / Greater form forces a reorder on each side of every activation, and Where
    alone cost 37 of 137 ms in a paddle-style MobileNet): three depthwise 1x1 Convs with a
    fused Clip and one Sum,
        clip(x/3 + 1/2, -1/2, 3/2) + clip(-A (x + 3), 0, 1/2) + clip(-A (x - 3), -1/2, 0).
    A is a power of two so large that any x one float32 step away from -3 or 3 saturates its
    clip; A x is exact and A (x -+ 3) = A x -+ 3A is rounded once, so its sign is exact: the
    middle form holds at x = -3 and x = 3 as in torch."""
    a = 2.0**100

    def affine_clip(wv: float, bv: float, lo: float, hi: float) -> str:
        wk = op.const(np.full((c, 1, 1, 1), wv), like=x)
        bk = op.const(np.full(c, bv), like=x)
        return op.Clip(op.Conv(x, wk, bk, group=c), op.const(lo, like=x), op.const(hi, like=x))

    return op.Sum(affine_clip(1.0 / 3.0, 0.5, -0.5, 1.5), affine_clip(-a, -3.0 * a, 0.0, 0.5),
                  affine_clip(-a, 3.0 * a, -0.5, 0.0))


@elementwise_rule("Erf")
def _d_erf(op: Emitter, node: onnx.NodeProto, x: str, y: str) -> str:
    """d erf(x) = 2/sqrt(pi) exp(-x^2)."""
    return op.Mul(scalar_like(op, 2.0 / math.sqrt(math.pi), x), op.Exp(op.Neg(op.Mul(x, x))))


@elementwise_rule("Gelu")
def d_gelu(op: Emitter, node: onnx.NodeProto, x: str, y: str) -> str:
    """exact: Phi(x) + x phi(x); tanh: 0.5(1+t) + 0.5 x (1-t^2) c (1 + 3 k x^2)."""
    if attrs_of(node).get("approximate", "none") in ("tanh", b"tanh"):
        c, kk = math.sqrt(2.0 / math.pi), 0.044715
        x2 = op.Mul(x, x)
        inner = op.Mul(scalar_like(op, c, x), op.Add(x, op.Mul(scalar_like(op, kk, x), op.Mul(x2, x))))
        t = op.Tanh(inner)
        dinner = op.Mul(scalar_like(op, c, x), op.Add(scalar_like(op, 1.0, x), op.Mul(scalar_like(op, 3 * kk, x), x2)))
        left = op.Mul(scalar_like(op, 0.5, x), op.Add(scalar_like(op, 1.0, x), t))
        right = op.Mul(op.Mul(scalar_like(op, 0.5, x), x), op.Mul(op.Sub(scalar_like(op, 1.0, x), op.Mul(t, t)),
                                                         dinner))
        return op.Add(left, right)
    cdf = op.Mul(scalar_like(op, 0.5, x), op.Add(scalar_like(op, 1.0, x), op.Erf(op.Mul(x, scalar_like(op, 1 / math.sqrt(2), x)))))
    pdf = op.Mul(scalar_like(op, 1 / math.sqrt(2 * math.pi), x),
                 op.Exp(op.Mul(op.Mul(x, x), scalar_like(op, -0.5, x))))
    return op.Add(cdf, op.Mul(x, pdf))


@elementwise_rule("Softplus")
def _d_softplus(op: Emitter, node: onnx.NodeProto, x: str, y: str) -> str:
    """d softplus(x) = sigmoid(x)."""
    return op.Sigmoid(x)


@elementwise_rule("Softsign")
def _d_softsign(op: Emitter, node: onnx.NodeProto, x: str, y: str) -> str:
    """d x/(1+|x|) = 1/(1+|x|)^2."""
    d = op.Add(scalar_like(op, 1.0, x), op.Abs(x))
    return op.Reciprocal(op.Mul(d, d))


@elementwise_rule("Sin")
def _d_sin(op: Emitter, node: onnx.NodeProto, x: str, y: str) -> str:
    """d sin(x) = cos(x)."""
    return op.Cos(x)


@elementwise_rule("Cos")
def _d_cos(op: Emitter, node: onnx.NodeProto, x: str, y: str) -> str:
    """d cos(x) = -sin(x)."""
    return op.Neg(op.Sin(x))


@elementwise_rule("Mish")
def _d_mish(op: Emitter, node: onnx.NodeProto, x: str, y: str) -> str:
    """d x tanh(softplus(x)) = t + x (1 - t^2) sigmoid(x)."""
    t = op.Tanh(op.Softplus(x))
    return op.Add(t, op.Mul(op.Mul(x, op.Sub(scalar_like(op, 1.0, x), op.Mul(t, t))), op.Sigmoid(x)))


# Clip passes no gradient at its bounds, like torch.clamp's hardtanh/relu6 use.
@vjp_rule("Clip")
def _vjp_clip(op: Emitter, node: onnx.NodeProto, gy: str, needs: Needs) -> Grads:
    """gx = gy [min < y < max] for the bounds that are present.

    [min < y < max] == [min < x < max] for y = clip(x) (both empty when min >= max); reading
    y keeps x private to the Clip, so onnxruntime still fuses Conv + Clip in the forward pass.
    """
    x, y = node.input[0], node.output[0]
    lo = node.input[1] if len(node.input) > 1 and node.input[1] else None
    hi = node.input[2] if len(node.input) > 2 and node.input[2] else None
    lo_v, hi_v = (op.g.const(b) if b else None for b in (lo, hi))
    if (lo is None or lo_v is not None) and (hi is None or hi_v is not None):
        # Constant bounds (every exporter's ReLU6): masks onnxruntime keeps in NCHWc.
        gx = gy
        if lo_v is not None:
            gx = op.Mul(gx, op.step(y, float(lo_v), above=True))
        if hi_v is not None:
            gx = op.Mul(gx, op.step(y, float(hi_v), above=False))
        return first_only(node, gx)
    cond = None
    if lo is not None:
        cond = op.Greater(y, lo)
    if hi is not None:
        below = op.Less(y, hi)
        cond = below if cond is None else op.And(cond, below)
    gx = gy if cond is None else op.Mul(gy, op.mask_of(cond, x))
    # A bound computed from the data gets the gradient where it is the output, y == bound
    # (min > max gives everything to max, as min(max(x, lo), hi) does; x on a bound gives
    # the bound the gradient, x none).
    gb: list[str | None] = [None, None]
    for k, b in enumerate((lo, hi)):
        if b is not None and b in needs:
            hit = op.mask_of(op.Equal(y, b), x)
            gb[k] = op.sum_to(op.Mul(gy, hit), op.g.shape(y), op.g.shape(b))
    return [gx, *gb[:len(node.input) - 1]]


# --------------------------------------------------------------------------- broadcasting binary


def _shapes(op: Emitter, node: onnx.NodeProto) -> tuple[Shape, list[Shape]]:
    return op.g.shape(node.output[0]), [op.g.shape(i) for i in node.input]


@vjp_rule("Add", "Sub")
def _vjp_add(op: Emitter, node: onnx.NodeProto, gy: str, needs: Needs) -> Grads:
    """d(a ± b) = (gy, ±gy), each summed back over its broadcast axes."""
    ys, (sa, sb) = _shapes(op, node)
    a, b = node.input
    ga = op.sum_to(gy, ys, sa) if a in needs else None
    gb = None
    if b in needs:
        gb = op.sum_to(op.Neg(gy) if node.op_type == "Sub" else gy, ys, sb)
    return [ga, gb]


@vjp_rule("Mul")
def _vjp_mul(op: Emitter, node: onnx.NodeProto, gy: str, needs: Needs) -> Grads:
    """d(a b) = (gy b, gy a), each summed back over its broadcast axes."""
    ys, (sa, sb) = _shapes(op, node)
    a, b = node.input
    return bilinear(needs, lambda: op.sum_to(op.Mul(gy, b), ys, sa),
                    lambda: op.sum_to(op.Mul(gy, a), ys, sb))


@vjp_rule("Div")
def _vjp_div(op: Emitter, node: onnx.NodeProto, gy: str, needs: Needs) -> Grads:
    """d(a / b) = (gy / b, -gy y / b)."""
    ys, (sa, sb) = _shapes(op, node)
    a, b = node.input
    ga = op.sum_to(op.Div(gy, b), ys, sa) if a in needs else None
    gb = None
    if b in needs:
        gb = op.sum_to(op.Neg(op.Div(op.Mul(gy, node.output[0]), b)), ys, sb)
    return [ga, gb]


@vjp_rule("Pow")
def _vjp_pow(op: Emitter, node: onnx.NodeProto, gy: str, needs: Needs) -> Grads:
    """d(a^b) = (gy b a^(b-1), gy y log a)."""
    ys, (sa, sb) = _shapes(op, node)
    a, b = node.input
    ga = gb = None
    if a in needs:
        bb = b if op.g.dtypes[b] == op.g.dtypes[a] else op.cast_like(b, a)
        const_b = op.g.const(b)
        if const_b is not None and const_b.size == 1 and float(const_b) == 2.0:
            d = op.Mul(a, scalar_like(op, 2.0, a))  # the common square: no Pow in the gradient
        else:
            d = op.Mul(bb, op.Pow(a, op.Sub(bb, scalar_like(op, 1.0, a))))
        ga = op.sum_to(op.Mul(gy, d), ys, sa)
    if b in needs:
        aa = a if op.g.dtypes[a] == op.g.dtypes[b] else op.cast_like(a, b)
        y = node.output[0] if op.g.dtypes[a] == op.g.dtypes[b] else op.cast_like(node.output[0], b)
        gb = op.sum_to(op.Mul(gy, op.Mul(y, op.Log(aa))), ys, sb)
    return [ga, gb]


@vjp_rule("PRelu")
def _vjp_prelu(op: Emitter, node: onnx.NodeProto, gy: str, needs: Needs) -> Grads:
    """d prelu(x, s) = (gy where x > 0 else gy s, gy x where x <= 0)."""
    ys, (sx, ss) = _shapes(op, node)
    x, s = node.input
    pos = op.mask_of(op.Greater(x, scalar_like(op, 0.0, x)), x)
    neg = op.Sub(scalar_like(op, 1.0, x), pos)
    gx = op.sum_to(op.Mul(gy, op.Add(pos, op.Mul(neg, s))), ys, sx) if x in needs else None
    gs = op.sum_to(op.Mul(gy, op.Mul(neg, x)), ys, ss) if s in needs else None
    return [gx, gs]


@vjp_rule("Where")
def _vjp_where(op: Emitter, node: onnx.NodeProto, gy: str, needs: Needs) -> Grads:
    """d where(c, a, b) = (None, gy [c], gy [not c])."""
    ys, (_, sa, sb) = _shapes(op, node)
    c, a, b = node.input
    zero = scalar_like(op, 0.0, gy)
    dt = op.g.dtypes[gy]  # not the condition's bool (the emitter's default: input 0)
    ga = op.sum_to(op.Where(c, gy, zero, _dtype=dt), ys, sa) if a in needs else None
    gb = op.sum_to(op.Where(c, zero, gy, _dtype=dt), ys, sb) if b in needs else None
    return [None, ga, gb]


@vjp_rule("Sum", "Mean")
def _vjp_sum(op: Emitter, node: onnx.NodeProto, gy: str, needs: Needs) -> Grads:
    """d sum(x_i) = gy each; mean divides by the count."""
    ys, shapes = _shapes(op, node)
    if node.op_type == "Mean":
        gy = op.Mul(gy, scalar_like(op, 1.0 / len(node.input), gy))
    return [op.sum_to(gy, ys, s) if i in needs else None
            for i, s in zip(node.input, shapes, strict=True)]


# Ties split the gradient evenly, like torch.maximum / torch.minimum.
@vjp_rule("Max", "Min")
def _vjp_max(op: Emitter, node: onnx.NodeProto, gy: str, needs: Needs) -> Grads:
    """d max(x_i) = gy [x_i == y] / #ties."""
    ys, shapes = _shapes(op, node)
    y = node.output[0]
    share, hits = balanced_eq(op, gy, [(i, y) for i in node.input],
                              lambda h: op.Sum(*h) if len(h) > 1 else None)
    return [op.sum_to(op.Mul(share, h), ys, s) if i in needs else None
            for i, h, s in zip(node.input, hits, shapes, strict=True)]

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

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import onnx

from .graph import Emitter, Shape, attrs_of, normalize_axes

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
})


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


# --------------------------------------------------------------------------- elementwise


@vjp_rule("Identity", "Dropout")
def _vjp_identity(op: Emitter, node: onnx.NodeProto, gy: str) -> Grads:
    """gx = gy (Dropout is the identity at inference)."""
    return [gy, *[None] * (len(node.input) - 1)]


@vjp_rule("Neg")
def _vjp_neg(op: Emitter, node: onnx.NodeProto, gy: str) -> Grads:
    """gx = -gy."""
    return [op.Neg(gy)]


@vjp_rule("Cast", "CastLike")
def _vjp_cast(op: Emitter, node: onnx.NodeProto, gy: str) -> Grads:
    """gx = Cast(gy) back to the input's float type."""
    x = node.input[0]
    dt = op.g.dtypes[x]
    return [op.Cast(gy, to=dt, _dtype=dt), *[None] * (len(node.input) - 1)]


@elementwise_rule("Abs")
def _d_abs(op: Emitter, node: onnx.NodeProto, x: str, y: str) -> str:
    """d|x| = sign(x); Abs'(0) = 0 as in PyTorch."""
    return op.Sign(x)


@elementwise_rule("Sqrt")
def _d_sqrt(op: Emitter, node: onnx.NodeProto, x: str, y: str) -> str:
    """d sqrt(x) = 0.5 / y."""
    return op.Div(_k(op, 0.5, y), y)


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
    return op.mask_of(op.Greater(y, _k(op, 0.0, y)), y)


@elementwise_rule("LeakyRelu")
def _d_leaky_relu(op: Emitter, node: onnx.NodeProto, x: str, y: str) -> str:
    """d = 1 where x > 0 else alpha."""
    alpha = attrs_of(node).get("alpha", 0.01)
    pos = op.mask_of(op.Greater(x, _k(op, 0.0, x)), x)
    return op.Add(_k(op, alpha, x), op.Mul(pos, _k(op, 1.0 - alpha, x)))


@elementwise_rule("Elu")
def _d_elu(op: Emitter, node: onnx.NodeProto, x: str, y: str) -> str:
    """d = 1 where x > 0 else y + alpha."""
    alpha = attrs_of(node).get("alpha", 1.0)
    pos = op.mask_of(op.Greater(x, _k(op, 0.0, x)), x)
    neg = op.Add(y, _k(op, alpha, y))
    return op.Add(pos, op.Mul(op.Sub(_k(op, 1.0, x), pos), neg))


@elementwise_rule("Celu")
def _d_celu(op: Emitter, node: onnx.NodeProto, x: str, y: str) -> str:
    """d = 1 where x > 0 else exp(x / alpha)."""
    alpha = attrs_of(node).get("alpha", 1.0)
    pos = op.mask_of(op.Greater(x, _k(op, 0.0, x)), x)
    neg = op.Exp(op.Div(op.Min(x, _k(op, 0.0, x)), _k(op, alpha, x)))
    return op.Add(pos, op.Mul(op.Sub(_k(op, 1.0, x), pos), neg))


@elementwise_rule("Selu")
def _d_selu(op: Emitter, node: onnx.NodeProto, x: str, y: str) -> str:
    """d = gamma where x > 0 else y + gamma * alpha."""
    a = attrs_of(node)
    alpha, gamma = a.get("alpha", 1.67326319217681884765625), a.get("gamma", 1.05070102214813232421875)
    pos = op.mask_of(op.Greater(x, _k(op, 0.0, x)), x)
    neg = op.Add(y, _k(op, gamma * alpha, y))
    return op.Add(op.Mul(pos, _k(op, gamma, x)), op.Mul(op.Sub(_k(op, 1.0, x), pos), neg))


@elementwise_rule("Sigmoid")
def _d_sigmoid(op: Emitter, node: onnx.NodeProto, x: str, y: str) -> str:
    """d sigmoid(x) = y (1 - y)."""
    return op.Mul(y, op.Sub(_k(op, 1.0, y), y))


@elementwise_rule("Tanh")
def _d_tanh(op: Emitter, node: onnx.NodeProto, x: str, y: str) -> str:
    """d tanh(x) = 1 - y^2."""
    return op.Sub(_k(op, 1.0, y), op.Mul(y, y))


# Zero gradient at both bounds, like torch.nn.functional.hardsigmoid.
@elementwise_rule("HardSigmoid")
def _d_hard_sigmoid(op: Emitter, node: onnx.NodeProto, x: str, y: str) -> str:
    """d = alpha where 0 < alpha x + beta < 1 else 0."""
    a = attrs_of(node)
    alpha, beta = a.get("alpha", 0.2), a.get("beta", 0.5)
    lo, hi = (-beta) / alpha, (1.0 - beta) / alpha
    inside = op.And(op.Greater(x, _k(op, min(lo, hi), x)), op.Less(x, _k(op, max(lo, hi), x)))
    return op.Mul(op.mask_of(inside, x), _k(op, alpha, x))


# torch.nn.functional.hardswish backward: 0 below -3, x/3 + 1/2 up to 3 inclusive, 1 above.
@elementwise_rule("HardSwish")
def _d_hard_swish(op: Emitter, node: onnx.NodeProto, x: str, y: str) -> str:
    """d = 0 (x < -3), x/3 + 1/2 (-3 <= x <= 3), 1 (x > 3)."""
    mid = op.Add(op.Mul(x, _k(op, 1.0 / 3.0, x)), _k(op, 0.5, x))
    above = op.Greater(x, _k(op, 3.0, x))
    below = op.Less(x, _k(op, -3.0, x))
    return op.Where(below, _k(op, 0.0, x), op.Where(above, _k(op, 1.0, x), mid))


@elementwise_rule("Erf")
def _d_erf(op: Emitter, node: onnx.NodeProto, x: str, y: str) -> str:
    """d erf(x) = 2/sqrt(pi) exp(-x^2)."""
    return op.Mul(_k(op, 2.0 / math.sqrt(math.pi), x), op.Exp(op.Neg(op.Mul(x, x))))


@elementwise_rule("Gelu")
def _d_gelu(op: Emitter, node: onnx.NodeProto, x: str, y: str) -> str:
    """exact: Phi(x) + x phi(x); tanh: 0.5(1+t) + 0.5 x (1-t^2) c (1 + 3 k x^2)."""
    if attrs_of(node).get("approximate", "none") in ("tanh", b"tanh"):
        c, kk = math.sqrt(2.0 / math.pi), 0.044715
        x2 = op.Mul(x, x)
        inner = op.Mul(_k(op, c, x), op.Add(x, op.Mul(_k(op, kk, x), op.Mul(x2, x))))
        t = op.Tanh(inner)
        dinner = op.Mul(_k(op, c, x), op.Add(_k(op, 1.0, x), op.Mul(_k(op, 3 * kk, x), x2)))
        left = op.Mul(_k(op, 0.5, x), op.Add(_k(op, 1.0, x), t))
        right = op.Mul(op.Mul(_k(op, 0.5, x), x), op.Mul(op.Sub(_k(op, 1.0, x), op.Mul(t, t)),
                                                         dinner))
        return op.Add(left, right)
    cdf = op.Mul(_k(op, 0.5, x), op.Add(_k(op, 1.0, x), op.Erf(op.Mul(x, _k(op, 1 / math.sqrt(2), x)))))
    pdf = op.Mul(_k(op, 1 / math.sqrt(2 * math.pi), x),
                 op.Exp(op.Mul(op.Mul(x, x), _k(op, -0.5, x))))
    return op.Add(cdf, op.Mul(x, pdf))


@elementwise_rule("Softplus")
def _d_softplus(op: Emitter, node: onnx.NodeProto, x: str, y: str) -> str:
    """d softplus(x) = sigmoid(x)."""
    return op.Sigmoid(x)


@elementwise_rule("Softsign")
def _d_softsign(op: Emitter, node: onnx.NodeProto, x: str, y: str) -> str:
    """d x/(1+|x|) = 1/(1+|x|)^2."""
    d = op.Add(_k(op, 1.0, x), op.Abs(x))
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
    return op.Add(t, op.Mul(op.Mul(x, op.Sub(_k(op, 1.0, x), op.Mul(t, t))), op.Sigmoid(x)))


# Clip passes no gradient at its bounds, like torch.clamp's hardtanh/relu6 use.
@vjp_rule("Clip")
def _vjp_clip(op: Emitter, node: onnx.NodeProto, gy: str) -> Grads:
    """gx = gy [min < y < max] for the bounds that are present.

    [min < y < max] == [min < x < max] for y = clip(x) (both empty when min >= max); reading
    y keeps x private to the Clip, so onnxruntime still fuses Conv + Clip in the forward pass.
    """
    x, y = node.input[0], node.output[0]
    lo = node.input[1] if len(node.input) > 1 and node.input[1] else None
    hi = node.input[2] if len(node.input) > 2 and node.input[2] else None
    cond = None
    if lo is not None:
        cond = op.Greater(y, lo)
    if hi is not None:
        below = op.Less(y, hi)
        cond = below if cond is None else op.And(cond, below)
    gx = gy if cond is None else op.Mul(gy, op.mask_of(cond, x))
    return [gx, *[None] * (len(node.input) - 1)]


# --------------------------------------------------------------------------- broadcasting binary


def _shapes(op: Emitter, node: onnx.NodeProto) -> tuple[Shape, list[Shape]]:
    return op.g.shape(node.output[0]), [op.g.shape(i) for i in node.input]


@vjp_rule("Add", "Sub")
def _vjp_add(op: Emitter, node: onnx.NodeProto, gy: str) -> Grads:
    """d(a ± b) = (gy, ±gy), each summed back over its broadcast axes."""
    ys, (sa, sb) = _shapes(op, node)
    a, b = node.input
    ga = op.sum_to(gy, ys, sa) if a in op.wanted else None
    gb = None
    if b in op.wanted:
        gb = op.sum_to(op.Neg(gy) if node.op_type == "Sub" else gy, ys, sb)
    return [ga, gb]


@vjp_rule("Mul")
def _vjp_mul(op: Emitter, node: onnx.NodeProto, gy: str) -> Grads:
    """d(a b) = (gy b, gy a), each summed back over its broadcast axes."""
    ys, (sa, sb) = _shapes(op, node)
    a, b = node.input
    ga = op.sum_to(op.Mul(gy, b), ys, sa) if a in op.wanted else None
    gb = op.sum_to(op.Mul(gy, a), ys, sb) if b in op.wanted else None
    return [ga, gb]


@vjp_rule("Div")
def _vjp_div(op: Emitter, node: onnx.NodeProto, gy: str) -> Grads:
    """d(a / b) = (gy / b, -gy y / b)."""
    ys, (sa, sb) = _shapes(op, node)
    a, b = node.input
    ga = op.sum_to(op.Div(gy, b), ys, sa) if a in op.wanted else None
    gb = None
    if b in op.wanted:
        gb = op.sum_to(op.Neg(op.Div(op.Mul(gy, node.output[0]), b)), ys, sb)
    return [ga, gb]


@vjp_rule("Pow")
def _vjp_pow(op: Emitter, node: onnx.NodeProto, gy: str) -> Grads:
    """d(a^b) = (gy b a^(b-1), gy y log a)."""
    ys, (sa, sb) = _shapes(op, node)
    a, b = node.input
    ga = gb = None
    if a in op.wanted:
        bb = b if op.g.dtypes[b] == op.g.dtypes[a] else op.cast_like(b, a)
        const_b = op.g.const(b)
        if const_b is not None and const_b.size == 1 and float(const_b) == 2.0:
            d = op.Mul(a, _k(op, 2.0, a))  # the common square: no Pow in the gradient
        else:
            d = op.Mul(bb, op.Pow(a, op.Sub(bb, _k(op, 1.0, a))))
        ga = op.sum_to(op.Mul(gy, d), ys, sa)
    if b in op.wanted:
        aa = a if op.g.dtypes[a] == op.g.dtypes[b] else op.cast_like(a, b)
        y = node.output[0] if op.g.dtypes[a] == op.g.dtypes[b] else op.cast_like(node.output[0], b)
        gb = op.sum_to(op.Mul(gy, op.Mul(y, op.Log(aa))), ys, sb)
    return [ga, gb]


@vjp_rule("PRelu")
def _vjp_prelu(op: Emitter, node: onnx.NodeProto, gy: str) -> Grads:
    """d prelu(x, s) = (gy where x > 0 else gy s, gy x where x <= 0)."""
    ys, (sx, ss) = _shapes(op, node)
    x, s = node.input
    pos = op.mask_of(op.Greater(x, _k(op, 0.0, x)), x)
    neg = op.Sub(_k(op, 1.0, x), pos)
    gx = op.sum_to(op.Mul(gy, op.Add(pos, op.Mul(neg, s))), ys, sx) if x in op.wanted else None
    gs = op.sum_to(op.Mul(gy, op.Mul(neg, x)), ys, ss) if s in op.wanted else None
    return [gx, gs]


@vjp_rule("Where")
def _vjp_where(op: Emitter, node: onnx.NodeProto, gy: str) -> Grads:
    """d where(c, a, b) = (None, gy [c], gy [not c])."""
    ys, (_, sa, sb) = _shapes(op, node)
    c, a, b = node.input
    zero = _k(op, 0.0, gy)
    ga = op.sum_to(op.Where(c, gy, zero), ys, sa) if a in op.wanted else None
    gb = op.sum_to(op.Where(c, zero, gy), ys, sb) if b in op.wanted else None
    return [None, ga, gb]


@vjp_rule("Sum", "Mean")
def _vjp_sum(op: Emitter, node: onnx.NodeProto, gy: str) -> Grads:
    """d sum(x_i) = gy each; mean divides by the count."""
    ys, shapes = _shapes(op, node)
    if node.op_type == "Mean":
        gy = op.Mul(gy, _k(op, 1.0 / len(node.input), gy))
    return [op.sum_to(gy, ys, s) if i in op.wanted else None
            for i, s in zip(node.input, shapes, strict=True)]


# Ties split the gradient evenly, like torch.maximum / torch.minimum.
@vjp_rule("Max", "Min")
def _vjp_max(op: Emitter, node: onnx.NodeProto, gy: str) -> Grads:
    """d max(x_i) = gy [x_i == y] / #ties."""
    ys, shapes = _shapes(op, node)
    y = node.output[0]
    hits = [op.mask_of(op.Equal(i, y), y) for i in node.input]
    count = hits[0] if len(hits) == 1 else op.Sum(*hits)
    share = op.Div(gy, count) if len(hits) > 1 else gy
    return [op.sum_to(op.Mul(share, h), ys, s) if i in op.wanted else None
            for i, h, s in zip(node.input, hits, shapes, strict=True)]


# --------------------------------------------------------------------------- linear algebra


def _swap_last(op: Emitter, x: str, rank: int) -> str:
    perm = list(range(rank))
    perm[-1], perm[-2] = perm[-2], perm[-1]
    return op.Transpose(x, perm=perm)


@vjp_rule("MatMul")
def _vjp_matmul(op: Emitter, node: onnx.NodeProto, gy: str) -> Grads:
    """d(a @ b) = (gy @ b^T, a^T @ gy), summed over broadcast batch axes."""
    a, b = node.input
    sa, sb = op.g.shape(a), op.g.shape(b)
    # Promote rank-1 operands to matrices, as numpy's matmul does, and restore at the end.
    a2, sa2 = (op.reshape(a, (1, sa[0])), (1, sa[0])) if len(sa) == 1 else (a, sa)
    b2, sb2 = (op.reshape(b, (sb[0], 1)), (sb[0], 1)) if len(sb) == 1 else (b, sb)
    batch = np.broadcast_shapes(sa2[:-2], sb2[:-2])
    gshape = (*batch, sa2[-2], sb2[-1])
    g2 = op.reshape(gy, gshape) if gshape != op.g.shape(node.output[0]) else gy
    ga = gb = None
    if a in op.wanted:
        full = op.MatMul(g2, _swap_last(op, b2, len(sb2)))
        ga = op.sum_to(full, (*batch, sa2[-2], sa2[-1]), sa2)
        if sa2 != sa:
            ga = op.reshape(ga, sa)
    if b in op.wanted:
        full = op.MatMul(_swap_last(op, a2, len(sa2)), g2)
        gb = op.sum_to(full, (*batch, sb2[-2], sb2[-1]), sb2)
        if sb2 != sb:
            gb = op.reshape(gb, sb)
    return [ga, gb]


@vjp_rule("Gemm")
def _vjp_gemm(op: Emitter, node: onnx.NodeProto, gy: str) -> Grads:
    """Y = alpha A'B' + beta C: gA' = alpha gy B'^T, gB' = alpha A'^T gy, gC = beta gy."""
    at = attrs_of(node)
    alpha, beta = at.get("alpha", 1.0), at.get("beta", 1.0)
    ta, tb = at.get("transA", 0), at.get("transB", 0)
    a, b = node.input[:2]
    c = node.input[2] if len(node.input) > 2 and node.input[2] else None
    ga = gb = gc = None
    if a in op.wanted:
        ga = (op.Gemm(gy, b, alpha=alpha, transB=1 - tb) if not ta
              else op.Gemm(b, gy, alpha=alpha, transA=tb, transB=1))
    if b in op.wanted:
        gb = (op.Gemm(a, gy, alpha=alpha, transA=1 - ta) if not tb
              else op.Gemm(gy, a, alpha=alpha, transA=1, transB=ta))
    if c is not None and c in op.wanted:
        gcb = op.Mul(gy, _k(op, beta, gy)) if beta != 1.0 else gy
        gc = op.sum_to(gcb, op.g.shape(node.output[0]), op.g.shape(c))
    return [ga, gb, gc] if len(node.input) > 2 else [ga, gb]


def conv_pads(op: Emitter, node: onnx.NodeProto, in_spatial: Shape, kernel: Sequence[int],
              strides: Sequence[int], dilations: Sequence[int],
              out_spatial: Shape) -> list[int]:
    """Explicit [begin..., end...] pads, resolving auto_pad from the static shapes."""
    at = attrs_of(node)
    n = len(in_spatial)
    auto = at.get("auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    if auto in ("NOTSET", ""):
        return list(at.get("pads", [0] * (2 * n)))
    if auto == "VALID":
        return [0] * (2 * n)
    begin, end = [], []
    for i in range(n):
        span = (kernel[i] - 1) * dilations[i] + 1
        total = max((out_spatial[i] - 1) * strides[i] + span - in_spatial[i], 0)
        small, big = total // 2, total - total // 2
        begin.append(small if auto == "SAME_UPPER" else big)
        end.append(big if auto == "SAME_UPPER" else small)
    return begin + end


def transpose_fit(in_spatial: Shape, out_spatial: Shape, pads: Sequence[int],
                  kernel: Sequence[int], strides: Sequence[int],
                  dilations: Sequence[int]) -> tuple[list[int], list[int]]:
    """Pads and output_padding that make a ConvTranspose over `out` land exactly on `in`.

    The windows span (out-1) s + (k-1) d + 1 positions from -pad_begin; the input positions
    past the last window get no gradient, which output_padding adds as zeros. Never use
    ConvTranspose's output_shape: it re-splits the padding and breaks asymmetric pads.
    """
    n = len(in_spatial)
    new_pads, out_pad = list(pads[:n]) + [0] * n, [0] * n
    for i in range(n):
        span = (out_spatial[i] - 1) * strides[i] + (kernel[i] - 1) * dilations[i] + 1
        end = span - pads[i] - in_spatial[i]
        if end >= 0:
            new_pads[n + i] = end
        else:
            out_pad[i] = -end
    return new_pads, out_pad


@vjp_rule("Conv")
def _vjp_conv(op: Emitter, node: onnx.NodeProto, gy: str) -> Grads:
    """gx = ConvTranspose(gy, W) with the conv's explicit pads; gb = sum of gy."""
    x, w = node.input[:2]
    sx, sw, sy = op.g.shape(x), op.g.shape(w), op.g.shape(node.output[0])
    if w in op.wanted:
        msg = f"Conv {node.name!r}: gradients through conv weights that depend on the input"
        raise NotImplementedError(msg)
    at = attrs_of(node)
    n = len(sx) - 2
    kernel = list(at.get("kernel_shape", sw[2:]))
    strides = list(at.get("strides", [1] * n))
    dil = list(at.get("dilations", [1] * n))
    pads = conv_pads(op, node, sx[2:], kernel, strides, dil, sy[2:])
    group = at.get("group", 1)
    gx = _conv_grad_as_conv(op, gy, w, sx, sy, kernel, strides, dil, pads, group)
    if gx is None:
        tpads, out_pad = transpose_fit(sx[2:], sy[2:], pads, kernel, strides, dil)
        gx = op.ConvTranspose(gy, w, strides=strides, dilations=dil, group=group,
                              pads=tpads, output_padding=out_pad, kernel_shape=kernel)
    grads: list[str | None] = [gx, None]
    if len(node.input) > 2:
        b = node.input[2]
        grads.append(op.ReduceSum(gy, op.ints([0, *range(2, n + 2)]), keepdims=0)
                     if b and b in op.wanted else None)
    return grads


def _conv_grad_as_conv(op: Emitter, gy: str, w: str, sx: Shape, sy: Shape,
                       kernel: Sequence[int], strides: Sequence[int], dil: Sequence[int],
                       pads: Sequence[int], group: int) -> str | None:
    """gx of a stride-1 conv as a forward Conv of gy with the flipped, channel-swapped kernel.

    gx[i] = sum_j gy[i - pb' + j d] Wflip[j] with pads pb' = (k-1) d - pb, pe' = (k-1) d - pe.
    onnxruntime's CPU ConvTranspose has no depthwise or NCHWc kernel; its Conv has both, so
    this form is ~3x faster on depthwise layers and keeps the gradient chain in the blocked
    layout. Strided convs stay ConvTranspose: it skips the zeros a stride-1 Conv would read
    (measured: depthwise 3x3 stride 2, 144 channels at 112 px: ConvTranspose 11-13 ms, zero
    insertion + Conv 15-31 ms). None when the conv is strided, the kernel is not a constant
    or a pad exceeds the kernel's reach.
    """
    wv = op.g.const(w)
    if wv is None or any(s != 1 for s in strides):
        return None
    n = len(kernel)
    begin = [(kernel[i] - 1) * dil[i] - pads[i] for i in range(n)]
    end = [sx[2 + i] - sy[2 + i] - begin[i] + (kernel[i] - 1) * dil[i] for i in range(n)]
    if any(p < 0 for p in begin + end):
        return None
    # [C_out, C_in/g, k...] -> [C_in, C_out/g, k...], spatially flipped.
    c_in, c_out = sx[1], sy[1]
    per_out, per_in = c_out // group, c_in // group
    wt = wv.reshape(group, per_out, per_in, *wv.shape[2:]).swapaxes(1, 2)
    wt = wt.reshape(c_in, per_out, *wv.shape[2:])[(slice(None), slice(None),
                                                    *[slice(None, None, -1)] * n)]
    return op.Conv(gy, op.const(np.ascontiguousarray(wt), like=w), dilations=list(dil),
                   group=group, pads=begin + end, kernel_shape=list(kernel))


@vjp_rule("ConvTranspose")
def _vjp_conv_transpose(op: Emitter, node: onnx.NodeProto, gy: str) -> Grads:
    """gx = Conv(gy, W) with the same strides, dilations, pads and groups."""
    x, w = node.input[:2]
    sx, sw, sy = op.g.shape(x), op.g.shape(w), op.g.shape(node.output[0])
    if w in op.wanted:
        msg = f"ConvTranspose {node.name!r}: gradients through weights that depend on the input"
        raise NotImplementedError(msg)
    at = attrs_of(node)
    n = len(sx) - 2
    kernel = list(at.get("kernel_shape", sw[2:]))
    strides = list(at.get("strides", [1] * n))
    dil = list(at.get("dilations", [1] * n))
    auto = at.get("auto_pad", b"NOTSET")
    if "output_shape" in at or (auto not in (b"NOTSET", "NOTSET", b"", "")):
        # Recover the pads the forward op used from the static shapes; whatever split the
        # runtime chose, the begin pads are what the output cropped at the start.
        pads = []
        totals = [strides[i] * (sx[2 + i] - 1) + at.get("output_padding", [0] * n)[i]
                  + (kernel[i] - 1) * dil[i] + 1 - sy[2 + i] for i in range(n)]
        upper = auto in (b"SAME_UPPER", "SAME_UPPER")
        begins = [t - t // 2 if not upper else t // 2 for t in totals]
        pads = begins + [t - b for t, b in zip(totals, begins, strict=True)]
    else:
        pads = list(at.get("pads", [0] * (2 * n)))
    gx = op.Conv(gy, w, strides=strides, dilations=dil, group=at.get("group", 1), pads=pads,
                 kernel_shape=kernel)
    grads: list[str | None] = [gx, None]
    if len(node.input) > 2:
        b = node.input[2]
        grads.append(op.ReduceSum(gy, op.ints([0, *range(2, n + 2)]), keepdims=0)
                     if b and b in op.wanted else None)
    return grads


def _parse_einsum(eq: str, shapes: Sequence[Shape]) -> tuple[list[str], str]:
    """Split an equation and spell out '...' with fresh letters (right-aligned)."""
    eq = eq.replace(" ", "")
    lhs, _, rhs = eq.partition("->")
    terms = lhs.split(",")
    used = set(eq)
    spare = [c for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZ" if c not in used]
    ell_rank = max((len(s) - (len(t) - 3) for t, s in zip(terms, shapes, strict=True)
                    if "..." in t), default=0)
    ell = "".join(spare[:ell_rank])
    out_terms = []
    for t, s in zip(terms, shapes, strict=True):
        if "..." in t:
            k = len(s) - (len(t) - 3)
            t = t.replace("...", ell[ell_rank - k:])
        out_terms.append(t)
    if "->" not in eq:
        counts = {c: sum(t.count(c) for t in out_terms) for c in set("".join(out_terms))}
        rhs = ell + "".join(sorted(c for c, k in counts.items() if k == 1 and c not in ell))
    else:
        rhs = rhs.replace("...", ell)
    return out_terms, rhs


def _expand_full(op: Emitter, x: str, term: str, shape: Shape, sizes: dict[str, int]) -> str:
    full = [sizes[c] for c in term]
    return x if list(shape) == full else op.Expand(x, op.ints(full))


@vjp_rule("Einsum")
def _vjp_einsum(op: Emitter, node: onnx.NodeProto, gy: str) -> Grads:
    """g_i = einsum(other operands, gy -> letters of operand i), broadcast back where needed."""
    eq = attrs_of(node)["equation"]
    eq = eq.decode() if isinstance(eq, bytes) else eq
    shapes = [op.g.shape(i) for i in node.input]
    terms, out = _parse_einsum(eq, shapes)
    sizes: dict[str, int] = {}
    for t, s in zip(terms, shapes, strict=True):
        for c, d in zip(t, s, strict=True):
            sizes[c] = max(sizes.get(c, 1), d)
    grads: list[str | None] = []
    for i, (t, s) in enumerate(zip(terms, shapes, strict=True)):
        if node.input[i] not in op.wanted:
            grads.append(None)
            continue
        if len(set(t)) != len(t):
            msg = f"Einsum {node.name!r}: repeated index in operand {t!r} (a diagonal)"
            raise NotImplementedError(msg)
        # Einsum broadcasts only through '...': spell size-1 axes out to their full size.
        others = [(terms[j], _expand_full(op, node.input[j], terms[j], shapes[j], sizes))
                  for j in range(len(terms)) if j != i]
        avail = set(out) | {c for tt, _ in others for c in tt}
        reduced = "".join(c for c in t if c in avail)
        eq_i = ",".join([*(tt for tt, _ in others), out]) + "->" + reduced
        g = op.Einsum(*(n for _, n in others), gy, equation=eq_i)
        if reduced != t:  # letters only this operand had: their gradient is constant along them
            shape_r = [sizes[c] if c in reduced else 1 for c in t]
            g = op.Expand(op.reshape(g, shape_r), op.ints([sizes[c] for c in t]))
        full = tuple(sizes[c] for c in t)
        grads.append(op.sum_to(g, full, s))
    return grads


# --------------------------------------------------------------------------- shape


@vjp_rule("Reshape", "Flatten", "Squeeze", "Unsqueeze")
def _vjp_reshape(op: Emitter, node: onnx.NodeProto, gy: str) -> Grads:
    """gx = Reshape(gy, shape(x))."""
    x = node.input[0]
    return [op.reshape(gy, op.g.shape(x)), *[None] * (len(node.input) - 1)]


@vjp_rule("Transpose")
def _vjp_transpose(op: Emitter, node: onnx.NodeProto, gy: str) -> Grads:
    """gx = Transpose(gy, inverse perm)."""
    rank = len(op.g.shape(node.input[0]))
    perm = attrs_of(node).get("perm", list(range(rank))[::-1])
    return [op.Transpose(gy, perm=[int(i) for i in np.argsort(perm)])]


@vjp_rule("Expand")
def _vjp_expand(op: Emitter, node: onnx.NodeProto, gy: str) -> Grads:
    """gx = gy summed over the expanded axes."""
    return [op.sum_to(gy, op.g.shape(node.output[0]), op.g.shape(node.input[0])), None]


@vjp_rule("Tile")
def _vjp_tile(op: Emitter, node: onnx.NodeProto, gy: str) -> Grads:
    """gx = ReduceSum(Reshape(gy, [r0, d0, r1, d1, ...]), over the r axes)."""
    sx = op.g.shape(node.input[0])
    reps = op.g.const(node.input[1])
    if reps is None:
        msg = f"Tile {node.name!r}: repeats must be a constant"
        raise NotImplementedError(msg)
    inter = [v for r, d in zip(reps.tolist(), sx, strict=True) for v in (int(r), d)]
    g = op.reshape(gy, inter)
    return [op.ReduceSum(g, op.ints(range(0, 2 * len(sx), 2)), keepdims=0), None]


def _split_sizes(op: Emitter, node: onnx.NodeProto, axis: int) -> list[int]:
    return [op.g.shape(o)[axis] for o in node.output]


@vjp_rule("Concat")
def _vjp_concat(op: Emitter, node: onnx.NodeProto, gy: str) -> Grads:
    """gx_i = the i-th piece of Split(gy) along the axis."""
    ys = op.g.shape(node.output[0])
    axis = normalize_axes([attrs_of(node)["axis"]], len(ys))[0]
    sizes = [op.g.shape(i)[axis] for i in node.input]
    if len(node.input) == 1:
        return [gy]
    keep = [i for i, s in enumerate(sizes) if s > 0]
    pieces = op.emit("Split", [gy, op.ints([sizes[i] for i in keep])], outputs=len(keep),
                     axis=axis)
    out: list[str | None] = [None] * len(node.input)
    for i, p in zip(keep, pieces, strict=True):
        out[i] = p if node.input[i] in op.wanted else None
    return out


@vjp_rule("Split", multi_output=True)
def _vjp_split(op: Emitter, node: onnx.NodeProto, gys: Sequence[str | None]) -> Grads:
    """gx = Concat(gy_i, or zeros where an output got no gradient)."""
    sx = op.g.shape(node.input[0])
    axis = normalize_axes([attrs_of(node).get("axis", 0)], len(sx))[0]
    parts = [g if g is not None else op.zeros(op.g.shape(o), node.input[0])
             for g, o in zip(gys, node.output, strict=True)]
    gx = parts[0] if len(parts) == 1 else op.Concat(*parts, axis=axis)
    return [gx, *[None] * (len(node.input) - 1)]


def _slice_params(op: Emitter, node: onnx.NodeProto) -> list[tuple[int, int, int, int]]:
    """Per sliced axis: (axis, start, end, step), clamped like the ONNX spec."""
    sx = op.g.shape(node.input[0])
    vals = [op.g.const(i) if i else None for i in node.input[1:]]
    if vals[0] is None or vals[1] is None or any(
        i and v is None for i, v in zip(node.input[3:], vals[2:], strict=False)
    ):
        msg = (f"Slice {node.name!r}: bounds that depend on the input data are not supported "
               "(bounds computed from shapes are folded automatically)")
        raise NotImplementedError(msg)
    starts, ends = vals[0].tolist(), vals[1].tolist()
    axes = vals[2].tolist() if len(vals) > 2 and vals[2] is not None else list(range(len(starts)))
    steps = vals[3].tolist() if len(vals) > 3 and vals[3] is not None else [1] * len(starts)
    out = []
    for a, s, e, st in zip(axes, starts, ends, steps, strict=True):
        a = a + len(sx) if a < 0 else a
        d = sx[a]
        s = s + d if s < 0 else s
        e = e + d if e < 0 else e
        if st > 0:
            s, e = min(max(s, 0), d), min(max(e, 0), d)
        else:
            s, e = min(max(s, -1), d - 1), min(max(e, -1), d - 1)
        out.append((a, s, e, st))
    return out


@vjp_rule("Slice")
def _vjp_slice(op: Emitter, node: onnx.NodeProto, gy: str) -> Grads:
    """Step 1: gx = Pad(gy) with zeros; other steps: scatter gy rows to their source rows."""
    sx = list(op.g.shape(node.input[0]))
    params = _slice_params(op, node)
    g, cur = gy, list(op.g.shape(node.output[0]))
    pads = [0] * (2 * len(sx))
    for a, s, e, st in params:
        if st == 1:
            pads[a], pads[len(sx) + a] = s, sx[a] - max(e, s)
            continue
        idx = np.arange(s, e, st, dtype=np.int64)
        if idx.size == 0:
            return [op.zeros(sx, node.input[0]), *[None] * (len(node.input) - 1)]
        # Indices are unique, so a plain scatter into zeros is exact.
        ishape = [1] * len(cur)
        ishape[a] = idx.size
        full = op.Expand(op.const(idx.reshape(ishape)), op.ints(cur))
        nxt = list(cur)
        nxt[a] = sx[a]
        g = op.ScatterElements(op.zeros(nxt, node.input[0]), full, g, axis=a)
        cur = nxt
    if any(pads):
        g = op.Pad(g, op.ints(pads))
    return [g, *[None] * (len(node.input) - 1)]


def pad_source_index(mode: str, n: int, before: int, after: int) -> np.ndarray:
    """For one axis: the input index each output position copies, -1 for a constant."""
    pos = np.arange(-before, n + after)
    if mode == "constant":
        return np.where((pos >= 0) & (pos < n), pos, -1)
    if mode == "edge":
        return np.clip(pos, 0, n - 1)
    if mode == "wrap":
        return np.mod(pos, n)
    if mode == "reflect":
        if n == 1:
            return np.zeros_like(pos)
        period = 2 * (n - 1)
        p = np.mod(pos, period)
        return np.where(p < n, p, period - p)
    msg = f"Pad mode {mode!r} has no gradient rule"
    raise NotImplementedError(msg)


@vjp_rule("Pad")
def _vjp_pad(op: Emitter, node: onnx.NodeProto, gy: str) -> Grads:
    """constant: gx = Slice(gy); reflect/edge/wrap: gy summed onto the rows each copy came from."""
    x = node.input[0]
    sx, sy = op.g.shape(x), op.g.shape(node.output[0])
    rank = len(sx)
    mode = attrs_of(node).get("mode", b"constant")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    pads_v = op.g.const(node.input[1]) if len(node.input) > 1 else None
    if pads_v is None:
        msg = f"Pad {node.name!r}: pads must be constant (or computed from shapes)"
        raise NotImplementedError(msg)
    axes_v = op.g.const(node.input[3]) if len(node.input) > 3 and node.input[3] else None
    # Keep the given order: pads_v[j] belongs to axes_v[j] (normalize_axes would sort).
    axes = ([int(a) % rank for a in axes_v.tolist()] if axes_v is not None
            else list(range(rank)))
    pads = [0] * (2 * rank)
    k = len(axes)
    for j, a in enumerate(axes):
        pads[a], pads[rank + a] = int(pads_v[j]), int(pads_v[k + j])
    rest = [None] * (len(node.input) - 1)
    if mode == "constant" or all(p <= 0 for p in pads):
        starts = [max(p, 0) for p in pads[:rank]]
        ends = [starts[i] + sy[i] - max(pads[i], 0) - max(pads[rank + i], 0) for i in range(rank)]
        g = op.Slice(gy, op.ints(starts), op.ints(ends), op.ints(range(rank)))
        # Negative pads cropped the input: those rows get zero gradient back.
        crop = [max(-p, 0) for p in pads]
        if any(crop):
            g = op.Pad(g, op.ints(crop))
        return [g, *rest]
    g, cur = gy, list(sy)
    for a in range(rank):
        if pads[a] == 0 and pads[rank + a] == 0:
            continue
        src = pad_source_index(mode, sx[a], pads[a], pads[rank + a])
        mat = np.zeros((len(src), sx[a]))
        valid = src >= 0
        mat[np.arange(len(src))[valid], src[valid]] = 1.0
        g = op.axis_matmul(g, tuple(cur), a, mat, x)
        cur[a] = sx[a]
    return [g, *rest]


@vjp_rule("Gather")
def _vjp_gather(op: Emitter, node: onnx.NodeProto, gy: str) -> Grads:
    """gx = scatter-add of gy at the gathered indices (a Pad for one constant index)."""
    x, idx = node.input
    sx = op.g.shape(x)
    axis = normalize_axes([attrs_of(node).get("axis", 0)], len(sx))[0]
    iv = op.g.const(idx)
    n = sx[axis]
    if iv is not None and iv.ndim == 0:
        i = int(iv) + n if int(iv) < 0 else int(iv)
        g = op.Unsqueeze(gy, op.ints([axis]))
        pads = [0] * (2 * len(sx))
        pads[axis], pads[len(sx) + axis] = i, n - 1 - i
        return [op.Pad(g, op.ints(pads)), None]
    ishape = op.g.shape(idx)
    m = int(np.prod(ishape))
    # Move the gathered axis to the front so ScatterND can address whole slices.
    lead, tail = sx[:axis], sx[axis + 1:]
    g = op.reshape(gy, (*lead, m, *tail))
    perm = [len(lead), *range(len(lead)), *range(len(lead) + 1, len(sx))]
    g = op.Transpose(g, perm=perm) if axis else g
    if iv is not None:
        flat = np.where(iv < 0, iv + n, iv).reshape(m, 1).astype(np.int64)
        ind = op.const(flat)
    else:
        raw = op.reshape(op.Cast(idx, to=onnx.TensorProto.INT64, _dtype=onnx.TensorProto.INT64),
                         (m, 1))
        zero = op.ints([0])
        ind = op.Where(op.Less(raw, zero), op.Add(raw, op.ints([n])), raw)
    front = (n, *lead, *tail)
    gx = op.ScatterND(op.zeros(front, x), ind, g, reduction="add")
    if axis:
        gx = op.Transpose(gx, perm=[int(p) for p in np.argsort(perm)])
    return [gx, None]


@vjp_rule("GatherElements")
def _vjp_gather_elements(op: Emitter, node: onnx.NodeProto, gy: str) -> Grads:
    """gx = ScatterElements(zeros, idx, gy, reduction=add)."""
    x, idx = node.input
    sx = op.g.shape(x)
    axis = normalize_axes([attrs_of(node).get("axis", 0)], len(sx))[0]
    n = sx[axis]
    idx64 = op.Cast(idx, to=onnx.TensorProto.INT64, _dtype=onnx.TensorProto.INT64)
    fixed = op.Where(op.Less(idx64, op.ints([0])), op.Add(idx64, op.ints([n])), idx64)
    gx = op.ScatterElements(op.zeros(sx, x), fixed, gy, axis=axis, reduction="add")
    return [gx, None]


@vjp_rule("TopK", multi_output=True)
def _vjp_topk(op: Emitter, node: onnx.NodeProto, gys: Sequence[str | None]) -> Grads:
    """gx = ScatterElements(zeros, indices, g_values, reduction=add)."""
    x = node.input[0]
    sx = op.g.shape(x)
    axis = normalize_axes([attrs_of(node).get("axis", -1)], len(sx))[0]
    gy = gys[0]
    assert gy is not None
    gx = op.ScatterElements(op.zeros(sx, x), node.output[1], gy, axis=axis, reduction="add")
    return [gx, None]


def _resize_attr(node: onnx.NodeProto, name: str, default: str) -> str:
    v = attrs_of(node).get(name, default)
    return v.decode() if isinstance(v, bytes) else str(v)


def _resize_full(op: Emitter, node: onnx.NodeProto, idx: int) -> np.ndarray | None:
    """Resize's scales (idx 2) or sizes (idx 3) spelled out for every axis, or None."""
    if len(node.input) <= idx or not node.input[idx]:
        return None
    v = op.g.const(node.input[idx])
    if v is None or v.size == 0:
        return None
    rank = len(op.g.shape(node.input[0]))
    axes = attrs_of(node).get("axes")
    if axes is None:
        return v.reshape(-1)
    full = (np.ones(rank) if idx == 2 else np.array(op.g.shape(node.input[0]))).astype(v.dtype)
    for j, a in enumerate(int(a) % rank for a in axes):  # in the given order, not sorted
        full[a] = v.reshape(-1)[j]
    return full


def _resize_matrix(op: Emitter, node: onnx.NodeProto, axis: int) -> np.ndarray:
    """The [out, in] interpolation matrix of one axis, read off the node itself at build time.

    Running the forward Resize on an identity basis (length 1 along every other axis) gives
    the exact weights for any mode, coordinate transform, rounding and antialias setting.
    """
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    sx, sy = op.g.shape(node.input[0]), op.g.shape(node.output[0])
    n, rank = sx[axis], len(sx)
    if axis == 0:
        msg = f"Resize {node.name!r}: resizing the batch axis has no gradient rule"
        raise NotImplementedError(msg)
    shp = [n] + [1] * (rank - 1)
    shp[axis] = n
    basis = np.eye(n, dtype=np.float32).reshape(shp)
    attrs = attrs_of(node)
    for drop in ("axes", "keep_aspect_ratio_policy"):
        attrs.pop(drop, None)
    scales = _resize_full(op, node, 2)
    if scales is not None:
        sc = np.ones(rank, dtype=np.float32)
        sc[axis] = float(scales[axis])
        inits = [numpy_helper.from_array(sc, "scales")]
        ins = ["x", "", "scales"]
    else:
        sizes = np.array(shp, dtype=np.int64)
        sizes[axis] = sy[axis]
        inits = [numpy_helper.from_array(sizes, "sizes")]
        ins = ["x", "", "", "sizes"]
    rnode = helper.make_node("Resize", ins, ["y"], **attrs)
    g = helper.make_graph([rnode], "basis",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, shp)],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", max(op.g.opset, 18))])
    m.ir_version = 8
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    out = sess.run(None, {"x": basis})[0]
    return np.asarray(out, dtype=np.float64).reshape(n, sy[axis]).T


@vjp_rule("Resize")
def _vjp_resize(op: Emitter, node: onnx.NodeProto, gy: str) -> Grads:
    """gx = gy contracted, axis by axis, with each resized axis's interpolation matrix."""
    x = node.input[0]
    sx, sy = op.g.shape(x), op.g.shape(node.output[0])
    if _resize_attr(node, "coordinate_transformation_mode", "half_pixel") == "tf_crop_and_resize":
        msg = f"Resize {node.name!r}: tf_crop_and_resize has no gradient rule"
        raise NotImplementedError(msg)
    scales = _resize_full(op, node, 2)
    g, cur = gy, list(sy)
    for a in range(len(sx)):
        if sx[a] == sy[a] and (scales is None or float(scales[a]) == 1.0):
            continue
        g = op.axis_matmul(g, tuple(cur), a, _resize_matrix(op, node, a), x)
        cur[a] = sx[a]
    return [g, *[None] * (len(node.input) - 1)]


def _space_depth_perm(node: onnx.NodeProto, shape: Shape) -> tuple[list[int], list[int], list[int]]:
    """Reshape/transpose/reshape that DepthToSpace performs, from its own definition."""
    b = attrs_of(node)["blocksize"]
    mode = attrs_of(node).get("mode", b"DCR")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    n, c, h, w = shape
    if node.op_type == "DepthToSpace":
        if mode == "DCR":
            return [n, b, b, c // (b * b), h, w], [0, 3, 4, 1, 5, 2], [n, c // (b * b), h * b, w * b]
        return [n, c // (b * b), b, b, h, w], [0, 1, 4, 2, 5, 3], [n, c // (b * b), h * b, w * b]
    return [n, c, h // b, b, w // b, b], [0, 3, 5, 1, 2, 4], [n, c * b * b, h // b, w // b]


@vjp_rule("DepthToSpace", "SpaceToDepth")
def _vjp_depth_space(op: Emitter, node: onnx.NodeProto, gy: str) -> Grads:
    """The forward is reshape -> transpose -> reshape; the gradient runs it backwards."""
    sx = op.g.shape(node.input[0])
    first, perm, _ = _space_depth_perm(node, sx)
    inv = [int(i) for i in np.argsort(perm)]
    mid = [first[p] for p in perm]
    g = op.Transpose(op.reshape(gy, mid), perm=inv)
    return [op.reshape(g, sx)]


# --------------------------------------------------------------------------- reductions, pooling


def _reduce_axes(op: Emitter, node: onnx.NodeProto) -> list[int] | None:
    """Axes of a Reduce* node (attribute before opset 18, input after); None = no-op."""
    rank = len(op.g.shape(node.input[0]))
    at = attrs_of(node)
    if "axes" in at:
        axes = list(at["axes"])
    elif len(node.input) > 1 and node.input[1]:
        v = op.g.const(node.input[1])
        if v is None:
            msg = f"{node.op_type} {node.name!r}: axes must be constant"
            raise NotImplementedError(msg)
        axes = v.reshape(-1).tolist()
    else:
        axes = []
    if not axes:
        return None if at.get("noop_with_empty_axes", 0) else list(range(rank))
    return normalize_axes(axes, rank)


def _keep_shape(sx: Shape, axes: Sequence[int]) -> list[int]:
    return [1 if i in axes else d for i, d in enumerate(sx)]


@vjp_rule("ReduceSum", "ReduceMean", "ReduceSumSquare", "ReduceL1", "ReduceL2",
          "ReduceLogSumExp", "ReduceMax", "ReduceMin")
def _vjp_reduce(op: Emitter, node: onnx.NodeProto, gy: str) -> Grads:
    """gx = broadcast(gy) times d(reduction)/dx (mean: 1/n, max: ties / #ties, ...)."""
    x, y = node.input[0], node.output[0]
    sx = op.g.shape(x)
    rest = [None] * (len(node.input) - 1)
    axes = _reduce_axes(op, node)
    if axes is None:
        return [_reduce_identity(op, node, gy), *rest]
    keep = _keep_shape(sx, axes)
    gk = op.reshape(gy, keep)
    yk = op.reshape(y, keep)
    t = node.op_type
    if t == "ReduceSum":
        return [op.expand_to(gk, sx), *rest]
    if t == "ReduceMean":
        n = int(np.prod([sx[a] for a in axes]))
        return [op.expand_to(op.Mul(gk, _k(op, 1.0 / n, gy)), sx), *rest]
    if t == "ReduceSumSquare":
        return [op.Mul(op.Mul(gk, x), _k(op, 2.0, x)), *rest]
    if t == "ReduceL1":
        return [op.Mul(gk, op.Sign(x)), *rest]
    if t == "ReduceL2":
        return [op.Mul(gk, op.Div(x, yk)), *rest]
    if t == "ReduceLogSumExp":
        return [op.Mul(gk, op.Exp(op.Sub(x, yk))), *rest]
    hit = op.mask_of(op.Equal(x, yk), x)
    count = op.ReduceSum(hit, op.ints(axes), keepdims=1)
    return [op.Mul(op.Div(gk, count), hit), *rest]


def _reduce_identity(op: Emitter, node: onnx.NodeProto, gy: str) -> str:
    """noop_with_empty_axes: the op is elementwise."""
    x = node.input[0]
    t = node.op_type
    if t in ("ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceLogSumExp"):
        return gy
    if t == "ReduceSumSquare":
        return op.Mul(op.Mul(gy, x), _k(op, 2.0, x))
    return op.Mul(gy, op.Sign(x))


@vjp_rule("GlobalAveragePool")
def _vjp_global_average_pool(op: Emitter, node: onnx.NodeProto, gy: str) -> Grads:
    """gx = Expand(gy / (H W))."""
    sx = op.g.shape(node.input[0])
    n = int(np.prod(sx[2:]))
    return [op.expand_to(op.Mul(gy, _k(op, 1.0 / n, gy)), sx)]


@vjp_rule("GlobalMaxPool")
def _vjp_global_max_pool(op: Emitter, node: onnx.NodeProto, gy: str) -> Grads:
    """gx = gy [x == max] / #ties."""
    x, y = node.input[0], node.output[0]
    sx = op.g.shape(x)
    hit = op.mask_of(op.Equal(x, y), x)
    count = op.ReduceSum(hit, op.ints(range(2, len(sx))), keepdims=1)
    return [op.Mul(op.Div(gy, count), hit)]


def _pool_geometry(op: Emitter, node: onnx.NodeProto) -> tuple[Shape, Shape, list[int],
                                                                 list[int], list[int], list[int]]:
    at = attrs_of(node)
    sx, sy = op.g.shape(node.input[0]), op.g.shape(node.output[0])
    n = len(sx) - 2
    kernel = list(at["kernel_shape"])
    strides = list(at.get("strides", [1] * n))
    dil = list(at.get("dilations", [1] * n))
    pads = conv_pads(op, node, sx[2:], kernel, strides, dil, sy[2:])
    return sx, sy, kernel, strides, dil, pads


# MaxPool routes each window's gradient to the element its Indices output names: the first
# maximum in scan order, as PyTorch does.
@vjp_rule("MaxPool")
def _vjp_max_pool(op: Emitter, node: onnx.NodeProto, gy: str) -> Grads:
    """gx = ScatterElements(zeros, argmax indices, gy, reduction=add)."""
    at = attrs_of(node)
    if at.get("storage_order", 0):
        msg = f"MaxPool {node.name!r}: storage_order=1 has no gradient rule"
        raise NotImplementedError(msg)
    sx, _, kernel, strides, dil, pads = _pool_geometry(op, node)
    if len(node.output) > 1 and node.output[1]:
        idx = node.output[1]
    else:
        idx = op.emit("MaxPool", [node.input[0]], outputs=2, kernel_shape=kernel,
                      strides=strides, dilations=dil, pads=pads,
                      ceil_mode=at.get("ceil_mode", 0))[1]
        op.g.dtypes[idx] = onnx.TensorProto.INT64
    # The indices are flat over the whole tensor, batch and channel included.
    total = int(np.prod(sx))
    flat = op.ScatterElements(op.zeros([total], node.input[0]), op.reshape(idx, [-1]),
                              op.reshape(gy, [-1]), axis=0, reduction="add")
    return [op.reshape(flat, sx)]


def pool_divisor(in_spatial: Shape, out_spatial: Shape, kernel: Sequence[int],
                 strides: Sequence[int], dilations: Sequence[int], pads: Sequence[int],
                 count_include_pad: bool) -> np.ndarray:
    """Per output position, the number AveragePool divides by.

    Windows clipped to the padded extent [-pad_begin, n + pad_end) when padding counts; to
    the real input [0, n) otherwise. ceil_mode windows that overhang both count only what
    they cover, as onnxruntime and PyTorch do.
    """
    n = len(in_spatial)
    per_axis = []
    for i in range(n):
        o = np.arange(out_spatial[i])
        start = o * strides[i] - pads[i]
        taps = start[:, None] + np.arange(kernel[i])[None, :] * dilations[i]
        lo, hi = (-pads[i], in_spatial[i] + pads[n + i]) if count_include_pad else (0, in_spatial[i])
        per_axis.append(((taps >= lo) & (taps < hi)).sum(axis=1))
    div = per_axis[0].astype(np.float64)
    for c in per_axis[1:]:
        div = np.multiply.outer(div, c)
    return np.asarray(np.maximum(div, 1), dtype=np.float64)


@vjp_rule("AveragePool")
def _vjp_average_pool(op: Emitter, node: onnx.NodeProto, gy: str) -> Grads:
    """gx = depthwise ConvTranspose(gy / divisor, ones kernel)."""
    at = attrs_of(node)
    sx, sy, kernel, strides, dil, pads = _pool_geometry(op, node)
    div = pool_divisor(sx[2:], sy[2:], kernel, strides, dil, pads,
                       bool(at.get("count_include_pad", 0)))
    x = node.input[0]
    c = sx[1]
    scaled = op.Mul(gy, op.const(1.0 / div.reshape(1, 1, *div.shape), like=gy))
    if all(k == 1 for k in kernel) and all(p == 0 for p in pads) and tuple(sx) == tuple(sy):
        return [scaled]
    tpads, out_pad = transpose_fit(sx[2:], sy[2:], pads, kernel, strides, dil)
    ones = op.const(np.ones((c, 1, *kernel)), like=x)
    gx = op.ConvTranspose(scaled, ones, strides=strides, dilations=dil, group=c, pads=tpads,
                          output_padding=out_pad, kernel_shape=kernel)
    return [gx]


# --------------------------------------------------------------------------- nn


@vjp_rule("BatchNormalization")
def _vjp_batch_norm(op: Emitter, node: onnx.NodeProto, gy: str) -> Grads:
    """Inference mode is affine per channel: gx = gy scale / sqrt(var + eps)."""
    at = attrs_of(node)
    if at.get("training_mode", 0):
        msg = f"BatchNormalization {node.name!r} runs in training mode"
        raise NotImplementedError(msg)
    x, scale, _, _, var = node.input[:5]
    sx = op.g.shape(x)
    eps = at.get("epsilon", 1e-5)
    bshape = [sx[1]] + [1] * (len(sx) - 2)
    s, v = op.g.const(scale), op.g.const(var)
    if s is not None and v is not None:
        k = op.const((s.astype(np.float64) / np.sqrt(v.astype(np.float64) + eps)).reshape(bshape),
                     like=x)
    else:
        k = op.reshape(op.Div(scale, op.Sqrt(op.Add(var, _k(op, eps, var)))), bshape)
    for name in node.input[1:]:
        if name in op.wanted:
            msg = f"BatchNormalization {node.name!r}: statistics that depend on the input"
            raise NotImplementedError(msg)
    return [op.Mul(gy, k), None, None, None, None]


def _normalized_grad(op: Emitter, x: str, h: str, axes: list[int], eps: float,
                     mean: str | None = None, invstd: str | None = None) -> str:
    """gx of xhat = (x - mean) invstd over `axes`, given h = d loss / d xhat."""
    ax = op.ints(axes)
    if mean is None or invstd is None:
        mean = op.ReduceMean(x, ax, keepdims=1)
        cen = op.Sub(x, mean)
        var = op.ReduceMean(op.Mul(cen, cen), ax, keepdims=1)
        invstd = op.Reciprocal(op.Sqrt(op.Add(var, _k(op, eps, x))))
    else:
        cen = op.Sub(x, mean)
    xhat = op.Mul(cen, invstd)
    mh = op.ReduceMean(h, ax, keepdims=1)
    mhx = op.ReduceMean(op.Mul(h, xhat), ax, keepdims=1)
    return op.Mul(invstd, op.Sub(op.Sub(h, mh), op.Mul(xhat, mhx)))


@vjp_rule("LayerNormalization", multi_output=True)
def _vjp_layer_norm(op: Emitter, node: onnx.NodeProto, gys: Sequence[str | None]) -> Grads:
    """gx = invstd (h - mean(h) - xhat mean(h xhat)), h = gy scale, over axes >= axis."""
    if any(g is not None for g in gys[1:]):
        msg = f"LayerNormalization {node.name!r}: its Mean/InvStdDev outputs feed the output"
        raise NotImplementedError(msg)
    gy = gys[0]
    assert gy is not None
    at = attrs_of(node)
    x, scale = node.input[:2]
    sx = op.g.shape(x)
    axis = normalize_axes([at.get("axis", -1)], len(sx))[0]
    axes = list(range(axis, len(sx)))
    h = op.Mul(gy, scale)
    gx = _normalized_grad(op, x, h, axes, at.get("epsilon", 1e-5))
    for name in node.input[1:]:
        if name and name in op.wanted:
            msg = f"LayerNormalization {node.name!r}: scale or bias that depend on the input"
            raise NotImplementedError(msg)
    return [gx, *[None] * (len(node.input) - 1)]


@vjp_rule("InstanceNormalization")
def _vjp_instance_norm(op: Emitter, node: onnx.NodeProto, gy: str) -> Grads:
    """As LayerNormalization over the spatial axes, with a per-channel scale."""
    x, scale, _ = node.input
    sx = op.g.shape(x)
    h = op.Mul(gy, op.reshape(scale, [sx[1]] + [1] * (len(sx) - 2)))
    gx = _normalized_grad(op, x, h, list(range(2, len(sx))), attrs_of(node).get("epsilon", 1e-5))
    return [gx, None, None]


@vjp_rule("GroupNormalization")
def _vjp_group_norm(op: Emitter, node: onnx.NodeProto, gy: str) -> Grads:
    """Normalise per (sample, group) over channels-in-group and space; scale per channel."""
    at = attrs_of(node)
    x, scale, _ = node.input
    sx = op.g.shape(x)
    groups = at["num_groups"]
    c = sx[1]
    if op.g.shape(scale)[0] != c:
        msg = f"GroupNormalization {node.name!r}: per-group scale (opset 18 form) not supported"
        raise NotImplementedError(msg)
    h = op.Mul(gy, op.reshape(scale, [c] + [1] * (len(sx) - 2)))
    grouped = (sx[0], groups, -1)
    xg, hg = op.reshape(x, grouped), op.reshape(h, grouped)
    op.g.shapes[xg] = (sx[0], groups, int(np.prod(sx[1:])) // groups)
    gx = _normalized_grad(op, xg, hg, [2], at.get("epsilon", 1e-5))
    return [op.reshape(gx, sx), None, None]


@vjp_rule("Softmax")
def _vjp_softmax(op: Emitter, node: onnx.NodeProto, gy: str) -> Grads:
    """gx = y (gy - sum(gy y, axis))."""
    y = node.output[0]
    axis = attrs_of(node).get("axis", -1)
    s = op.ReduceSum(op.Mul(gy, y), op.ints([axis]), keepdims=1)
    return [op.Mul(y, op.Sub(gy, s))]


@vjp_rule("LogSoftmax")
def _vjp_log_softmax(op: Emitter, node: onnx.NodeProto, gy: str) -> Grads:
    """gx = gy - exp(y) sum(gy, axis)."""
    y = node.output[0]
    axis = attrs_of(node).get("axis", -1)
    s = op.ReduceSum(gy, op.ints([axis]), keepdims=1)
    return [op.Sub(gy, op.Mul(op.Exp(y), s))]


@vjp_rule("CumSum")
def _vjp_cumsum(op: Emitter, node: onnx.NodeProto, gy: str) -> Grads:
    """gx = CumSum(gy) in the opposite direction, same exclusivity."""
    at = attrs_of(node)
    return [op.CumSum(gy, node.input[1], exclusive=at.get("exclusive", 0),
                      reverse=1 - at.get("reverse", 0)), None]


# --------------------------------------------------------------------------- fused patterns
# Rules for node groups the driver merges for the reverse pass (rewrite.fuse_for_backward).
# They are not ONNX ops, so they live apart from VJP_RULES.

FUSED_RULES: dict[str, VjpRule] = {}


def _vjp_swish(op: Emitter, node: onnx.NodeProto, gys: Sequence[str | None]) -> Grads:
    """y = x s, s = sigmoid(x): gx = gy (s + y (1 - s))."""
    gy, s, y = gys[0], node.doc_string, node.output[0]
    assert gy is not None
    return [op.Mul(gy, op.Add(s, op.Mul(y, op.Sub(_k(op, 1.0, s), s))))]


FUSED_RULES["Swish"] = _vjp_swish


def supported_ops() -> list[str]:
    """Every op type with a rule or a zero gradient, sorted."""
    return sorted(set(VJP_RULES) | ZERO_GRAD_OPS)


def describe() -> dict[str, Any]:
    return {"rules": sorted(VJP_RULES), "zero_gradient": sorted(ZERO_GRAD_OPS)}

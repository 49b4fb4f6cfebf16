"""VJP rules of quantized models: QDQ pairs and the operator form, by the straight-through rule.

Rounding is a step function (derivative 0 almost everywhere), so a quantized model has no
useful gradient of its own. These rules use the straight-through estimator (STE), the
convention of PyTorch's fake quantization: the gradient passes where the value is inside the
representable range and is zero where it saturated, i.e. it is the exact gradient of the
dequantized float equivalent (the same graph with the rounding removed).

Units: a quantized integer tensor q carries a float gradient d loss / d q, q read as a real
number (`INTEGER_GRAD_OPS` in `registry` marks these values). So DequantizeLinear's rule is
gq = gy * scale and QuantizeLinear's gx = gq / scale * [qmin <= round(x / scale) + zp <= qmax]:
together gx = gy inside the range. Scales and zero points are constants; the scale computed by
DynamicQuantizeLinear is treated as one too (the STE terms through it cancel: dq(q(x; s); s) is
x for every s). The operator form (QLinearConv, QLinearMatMul, ConvInteger, MatMulInteger) is
differentiated through its dequantized float equivalent by the Conv and MatMul rules; its
output has no float pre-image in the graph, so an output at qmin or qmax counts as saturated.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper

from ..graph import Emitter, Shape, attrs_of
from .registry import VJP_RULES, Grads, Needs, first_only, vjp_rule

_RANGES: dict[int, tuple[int, int]] = {
    TensorProto.INT8: (-128, 127), TensorProto.UINT8: (0, 255),
    TensorProto.INT16: (-32768, 32767), TensorProto.UINT16: (0, 65535),
    TensorProto.INT4: (-8, 7), TensorProto.UINT4: (0, 15),
}


def _qrange(op: Emitter, node: onnx.NodeProto, q: str) -> tuple[int, int]:
    """[qmin, qmax] of the integer type of `q` (a quantized value)."""
    dt = op.g.dtypes.get(q)
    if dt is None and len(node.input) > 2 and node.input[2]:
        dt = op.g.dtypes.get(node.input[2])
    if dt is None:
        dt = int(attrs_of(node).get("output_dtype", 0)) or TensorProto.UINT8
    if dt not in _RANGES:
        name = TensorProto.DataType.Name(dt)
        msg = f"{node.op_type} {node.name!r}: quantization to {name} (integer types only)"
        raise NotImplementedError(msg)
    return _RANGES[dt]


def _per_axis(op: Emitter, node: onnx.NodeProto, v: str, rank: int) -> np.ndarray | str:
    """A scale or zero point, shaped to broadcast against the quantized tensor (float64)."""
    at = attrs_of(node)
    if at.get("block_size", 0):
        msg = f"{node.op_type} {node.name!r}: blocked quantization (block_size)"
        raise NotImplementedError(msg)
    shape = op.g.shape(v)
    axis = int(at.get("axis", 1))
    axis = axis + rank if axis < 0 else axis
    bshape = [1] * rank
    if len(shape) == 1 and rank > 0:
        bshape[axis] = shape[0]
    value = op.g.const(v)
    if value is not None:
        return value.astype(np.float64).reshape(bshape if value.size > 1 else ())
    return op.reshape(v, bshape) if len(shape) == 1 and shape[0] > 1 else v


def _as(op: Emitter, value: np.ndarray | str, like: str) -> str:
    """A per-axis constant (or a value name) in the float type of `like`."""
    if isinstance(value, str):
        return op.cast_like(value, like) if op.g.dtypes.get(value) != op.g.dtypes.get(like) \
            else value
    return op.const(value, like=like)


def _scale_zp(op: Emitter, node: onnx.NodeProto, rank: int, at: int = 1
              ) -> tuple[np.ndarray | str, np.ndarray | str]:
    s = _per_axis(op, node, node.input[at], rank)
    zp_name = node.input[at + 1] if len(node.input) > at + 1 else ""
    zp: np.ndarray | str = np.zeros(()) if not zp_name else _per_axis(op, node, zp_name, rank)
    return s, zp


def _saturation_mask(op: Emitter, q: str, qmin: int, qmax: int, like: str) -> str:
    """[qmin < q < qmax] as 0/1 of `like`'s type: an output at a bound counts as saturated."""
    qf = op.cast_like(q, like)
    inside = op.And(op.Greater(qf, op.const(qmin, like=like)),
                    op.Less(qf, op.const(qmax, like=like)))
    return op.mask_of(inside, like)


# --------------------------------------------------------------------------- QDQ


@vjp_rule("QuantizeLinear")
def _vjp_quantize(op: Emitter, node: onnx.NodeProto, gq: str, needs: Needs) -> Grads:
    """STE: gx = gq / scale where qmin <= round(x / scale) + zp <= qmax, else 0."""
    x = node.input[0]
    rank = len(op.g.shape(x))
    qmin, qmax = _qrange(op, node, node.output[0])
    s, zp = _scale_zp(op, node, rank)
    if isinstance(zp, np.ndarray) and isinstance(s, np.ndarray):
        t = op.Round(op.Mul(x, op.const(1.0 / s, like=x)))
        lo, hi = op.const(qmin - zp, like=x), op.const(qmax - zp, like=x)
    else:
        t = op.Add(op.Round(op.Div(x, _as(op, s, x))), _as(op, zp, x))
        lo, hi = op.const(qmin, like=x), op.const(qmax, like=x)
    inside = op.mask_of(op.And(op.GreaterOrEqual(t, lo), op.LessOrEqual(t, hi)), x)
    gq_x = op.cast_like(gq, x) if op.g.dtypes.get(gq) != op.g.dtypes.get(x) else gq
    factor = op.Mul(inside, op.const(1.0 / s, like=x)) if isinstance(s, np.ndarray) \
        else op.Div(inside, _as(op, s, x))
    return first_only(node, op.Mul(gq_x, factor))


@vjp_rule("DequantizeLinear")
def _vjp_dequantize(op: Emitter, node: onnx.NodeProto, gy: str, needs: Needs) -> Grads:
    """y = (q - zp) scale: gq = gy scale (and, for a computed scale, gs = sum gy (q - zp))."""
    q = node.input[0]
    sq = op.g.shape(q)
    s, zp = _scale_zp(op, node, len(sq))
    gq = op.Mul(gy, _as(op, s, gy))
    grads: list[str | None] = [gq, None, None][:len(node.input)]
    scale = node.input[1]
    if scale in needs:  # DynamicQuantizeLinear's scale: its rule drops this (STE)
        qf = op.Sub(op.cast_like(q, gy), _as(op, zp, gy))
        grads[1] = op.reshape(op.sum_to(op.Mul(gy, qf), sq, _bshape(op, node, scale, sq)),
                              op.g.shape(scale))
    return grads


def _bshape(op: Emitter, node: onnx.NodeProto, v: str, sq: Shape) -> Shape:
    shape = op.g.shape(v)
    if len(shape) != 1:
        return (1,) * len(sq)
    axis = int(attrs_of(node).get("axis", 1))
    axis = axis + len(sq) if axis < 0 else axis
    return tuple(shape[0] if i == axis else 1 for i in range(len(sq)))


@vjp_rule("DynamicQuantizeLinear", multi_output=True)
def _vjp_dynamic_quantize(op: Emitter, node: onnx.NodeProto,
                          gys: Sequence[str | None], needs: Needs) -> Grads:
    """gx = gq / scale everywhere: the computed range [min(x, 0), max(x, 0)] covers x.

    The gradient reaching the scale output is dropped (the scale is a constant of the STE);
    rounding the zero point can push an end value half a step out, which is not saturation.
    """
    gq = gys[0]
    if gq is None:  # only y_scale reaches the output: the rule passes nothing through it
        msg = (f"DynamicQuantizeLinear {node.name!r}: only its y_scale output is used, and the "
               "straight-through rule passes no gradient through the scale")
        raise NotImplementedError(msg)
    x = node.input[0]
    return [op.Div(op.cast_like(gq, x), node.output[1])]


# --------------------------------------------------------------------------- operator form


def _dequantized(op: Emitter, q: str, scale: np.ndarray | str, zp: np.ndarray | str,
                 like: str) -> str:
    """The float value (q - zp) scale: a constant where q is one, else emitted nodes."""
    value = op.g.const(q)
    if value is not None and isinstance(scale, np.ndarray) and isinstance(zp, np.ndarray):
        return op.const((value.astype(np.float64) - zp) * scale, like=like)
    out = op.Mul(op.Sub(op.cast_like(q, like), _as(op, zp, like)), _as(op, scale, like))
    op.g.shapes[out] = op.g.shape(q)
    return out


def _through(op: Emitter, op_type: str, node: onnx.NodeProto, inputs: list[str],
             wanted: list[str], gy: str, **attrs: Any) -> Grads:
    """Apply `op_type`'s rule to a float node over `inputs` whose output has the node's shape,
    asking it for the gradients of `wanted` (a subset of `inputs`)."""
    out = op.fresh(f"{op_type.lower()}_equiv")
    op.g.shapes[out] = op.g.shape(node.output[0])
    op.g.dtypes[out] = op.g.dtypes[gy]
    equiv = helper.make_node(op_type, inputs, [out], name=node.name, **attrs)
    return VJP_RULES[op_type](op, equiv, [gy], Needs.of(inputs, set(wanted)))


def _conv_attrs(node: onnx.NodeProto) -> dict[str, Any]:
    return {k: v for k, v in attrs_of(node).items()
            if k in ("auto_pad", "dilations", "group", "kernel_shape", "pads", "strides")}


@vjp_rule("QLinearConv")
def _vjp_qlinear_conv(op: Emitter, node: onnx.NodeProto, gy: str, needs: Needs) -> Grads:
    """y = q(conv(dq(x), dq(W)) + B sx sw): gx = sx Conv'(gy / sy [unsaturated y])."""
    x, _, _, w = node.input[:4]
    like = gy  # the gradient runs in gy's float type
    rank = len(op.g.shape(x))
    sx, zx = _scale_zp(op, _sub(node, 0), rank)
    sw, zw = _scale_zp(op, _sub(node, 3, axis=0), len(op.g.shape(w)))
    sy, _ = _scale_zp(op, _sub(node, 5), rank)
    if w in needs:
        msg = f"QLinearConv {node.name!r}: weights that depend on the input"
        raise NotImplementedError(msg)
    qmin, qmax = _qrange(op, node, node.output[0])
    g = op.Mul(op.Div(gy, _as(op, sy, like)), _saturation_mask(op, node.output[0], qmin, qmax,
                                                               like))
    xf = _dequantized(op, x, sx, zx, like)
    wf = _dequantized(op, w, sw, zw, like)
    gxf = _through(op, "Conv", node, [xf, wf], [xf], g, **_conv_attrs(node))[0]
    assert gxf is not None
    return first_only(node, op.Mul(gxf, _as(op, sx, like)))


@vjp_rule("ConvInteger")
def _vjp_conv_integer(op: Emitter, node: onnx.NodeProto, gy: str, needs: Needs) -> Grads:
    """y = conv(x - zx, W - zw) in int32 (no saturation): gx = Conv'(gy)."""
    x, w = node.input[:2]
    like = gy  # the gradient runs in gy's float type
    zx = _per_axis(op, node, node.input[2], 0) if len(node.input) > 2 and node.input[2] \
        else np.zeros(())
    zw = _per_axis(op, _axis(node, 0), node.input[3], len(op.g.shape(w))) \
        if len(node.input) > 3 and node.input[3] else np.zeros(())
    if w in needs:
        msg = f"ConvInteger {node.name!r}: weights that depend on the input"
        raise NotImplementedError(msg)
    xf = _dequantized(op, x, np.ones(()), zx, like)
    wf = _dequantized(op, w, np.ones(()), zw, like)
    gxf = _through(op, "Conv", node, [xf, wf], [xf], gy, **_conv_attrs(node))[0]
    return first_only(node, gxf)


def _matmul_through(op: Emitter, node: onnx.NodeProto, a: str, b: str, af: str, bf: str,
                    g: str, needs: Needs) -> tuple[str | None, str | None]:
    wanted = [f for q, f in ((a, af), (b, bf)) if q in needs]
    ga, gb = _through(op, "MatMul", node, [af, bf], wanted, g)
    return (ga if a in needs else None), (gb if b in needs else None)


@vjp_rule("QLinearMatMul")
def _vjp_qlinear_matmul(op: Emitter, node: onnx.NodeProto, gy: str, needs: Needs) -> Grads:
    """y = q(dq(a) @ dq(b)): ga = sa (g @ dq(b)^T), gb = sb (dq(a)^T @ g), g = gy / sy [unsat.]."""
    a, _, _, b = node.input[:4]
    like = gy  # the gradient runs in gy's float type
    ra, rb, ry = (len(op.g.shape(v)) for v in (a, b, node.output[0]))
    sa, za = _scale_zp(op, _sub(node, 0, axis=ra - 2), ra)  # per-row: [M]
    sb, zb = _scale_zp(op, _sub(node, 3, axis=rb - 1), rb)  # per-column: [N]
    sy, _ = _scale_zp(op, _sub(node, 5, axis=ry - 1), ry)
    qmin, qmax = _qrange(op, node, node.output[0])
    g = op.Mul(op.Div(gy, _as(op, sy, like)), _saturation_mask(op, node.output[0], qmin, qmax,
                                                               like))
    af, bf = _dequantized(op, a, sa, za, like), _dequantized(op, b, sb, zb, like)
    ga, gb = _matmul_through(op, node, a, b, af, bf, g, needs)
    return [None if ga is None else op.Mul(ga, _as(op, sa, like)), None, None,
            None if gb is None else op.Mul(gb, _as(op, sb, like)), None, None, None, None]


@vjp_rule("MatMulInteger")
def _vjp_matmul_integer(op: Emitter, node: onnx.NodeProto, gy: str, needs: Needs) -> Grads:
    """y = (a - za) @ (b - zb) in int32 (no saturation): the MatMul rule on the float values."""
    a, b = node.input[:2]
    like = gy  # the gradient runs in gy's float type
    ra, rb = len(op.g.shape(a)), len(op.g.shape(b))
    za = _per_axis(op, _axis(node, ra - 2), node.input[2], ra) \
        if len(node.input) > 2 and node.input[2] else np.zeros(())
    zb = _per_axis(op, _axis(node, rb - 1), node.input[3], rb) \
        if len(node.input) > 3 and node.input[3] else np.zeros(())
    af = _dequantized(op, a, np.ones(()), za, like)
    bf = _dequantized(op, b, np.ones(()), zb, like)
    ga, gb = _matmul_through(op, node, a, b, af, bf, gy, needs)
    return [ga, gb, *[None] * (len(node.input) - 2)]


def _sub(node: onnx.NodeProto, at: int, axis: int = 1) -> onnx.NodeProto:
    """A node whose inputs 1, 2 are `node`'s scale and zero point at `at + 1`, `at + 2`."""
    return helper.make_node(node.op_type, [node.input[at], *node.input[at + 1:at + 3]],
                            ["_"], name=node.name, axis=axis)


def _axis(node: onnx.NodeProto, axis: int) -> onnx.NodeProto:
    return helper.make_node(node.op_type, list(node.input), ["_"], name=node.name, axis=axis)

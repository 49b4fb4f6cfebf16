"""VJP rules of the products and the p-norm pools: ReduceProd, CumProd, LpPool, GlobalLpPool.

Kept apart from `pooling` (sums and maxima) because both need care where values vanish:

- ReduceProd: d prod / d x_i is the product of the other factors. y / x_i divides by zero
  where x_i = 0, so the rule counts the zeros of each group: none -> p / x_i; one -> the
  product of the nonzero factors at the zero, 0 elsewhere; more -> 0. Exact everywhere.
- CumProd: y_i is the product of x over a set S_i of positions along the axis (k <= i, or
  k < i with `exclusive`, mirrored with `reverse`), so d y_i / d x_j = [j in S_i] times the
  product over S_i without j. For every j the rule runs the same CumProd on x with x_j set to
  1 (an [n, n] table per slice) and masks the entries with j outside S_i: no division, exact
  at zeros. The table costs n times the input; over `CUMPROD_TABLE_MAX` entries it refuses.
- LpPool / GlobalLpPool: y = (sum_window |x|^p)^(1/p), so gx = sum over the windows holding x
  of gy y^(1-p) |x|^(p-1) sign(x); the window sum is the transposed convolution with a ones
  kernel that AveragePool's rule uses. A window of zeros (y = 0) passes no gradient (the
  p-norm's kink, where torch's LPPool gives NaN).
"""

from __future__ import annotations

import numpy as np
import onnx

from ..graph import Emitter, attrs_of, normalize_axes
from .linalg import transpose_fit
from .pooling import keep_shape, pool_geometry, reduce_axes
from .registry import Grads, Needs, first_only, scalar_like, vjp_rule


@vjp_rule("ReduceProd")
def _vjp_reduce_prod(op: Emitter, node: onnx.NodeProto, gy: str, needs: Needs) -> Grads:
    """gx = gy * (product of the other factors of x's group), zero-safe."""
    x = node.input[0]
    sx = op.g.shape(x)
    axes = reduce_axes(op, node)
    if axes is None:  # noop_with_empty_axes: y = x
        return first_only(node, gy)
    gk = op.reshape(gy, keep_shape(sx, axes))
    zero, one = scalar_like(op, 0.0, x), scalar_like(op, 1.0, x)
    is_zero = op.Equal(x, zero)
    x1 = op.Where(is_zero, one, x)
    prod = op.ReduceProd(x1, op.ints(axes), keepdims=1)  # the nonzero factors' product
    count = op.ReduceSum(op.mask_of(is_zero, x), op.ints(axes), keepdims=1)
    none = op.Div(prod, x1)  # no zero in the group: y / x_i
    lone = op.mask_of(op.And(is_zero, op.Equal(count, one)), x)  # the one zero of its group
    d = op.Add(op.Mul(none, op.mask_of(op.Equal(count, zero), x)), op.Mul(prod, lone))
    return first_only(node, op.Mul(gk, d))


CUMPROD_TABLE_MAX = 1 << 26  # entries of CumProd's [.., n, n] table (256 MiB in float32)


@vjp_rule("CumProd")
def _vjp_cumprod(op: Emitter, node: onnx.NodeProto, gy: str, needs: Needs) -> Grads:
    """gx_j = sum_i gy_i [j in S_i] CumProd(x with x_j = 1)_i, along the axis moved last."""
    x, ax = node.input[0], node.input[1]
    sx = op.g.shape(x)
    axis_v = op.g.const(ax)
    if axis_v is None:
        msg = f"CumProd {node.name!r}: the axis is computed, not a constant"
        raise NotImplementedError(msg)
    rank = len(sx)
    axis = normalize_axes([int(np.asarray(axis_v).reshape(-1)[0])], rank)[0]
    n = sx[axis]
    if int(np.prod(sx)) * n > CUMPROD_TABLE_MAX:
        msg = (f"CumProd {node.name!r}: the exact gradient over an axis of {n} needs a table of "
               f"{int(np.prod(sx)) * n} entries (over {CUMPROD_TABLE_MAX}); cumulate fewer")
        raise NotImplementedError(msg)
    at = attrs_of(node)
    exclusive, reverse = int(at.get("exclusive", 0)), int(at.get("reverse", 0))
    perm = [a for a in range(rank) if a != axis] + [axis]
    inv = [int(i) for i in np.argsort(perm)]
    xt = op.Transpose(x, perm=perm) if axis != rank - 1 else x
    gt = op.Transpose(gy, perm=perm) if axis != rank - 1 else gy
    j, i = np.arange(n)[:, None], np.arange(n)[None, :]
    # member[j, i] = [j in S_i]
    member = (j > i if reverse else j < i) if exclusive else (j >= i if reverse else j <= i)
    eye = op.const(np.eye(n, dtype=bool))
    rows = op.Where(eye, op.const(1.0, like=x), op.Unsqueeze(xt, op.ints([-2])))  # [.., j, k]
    last = op.Squeeze(op.ints([-1]))  # CumProd's axis is 0-D (op.const makes 1-D arrays)
    table = op.CumProd(rows, last, exclusive=exclusive, reverse=reverse)  # [.., j, i]
    weights = op.Mul(table, op.const(member.astype(np.float64), like=x))
    gxt = op.ReduceSum(op.Mul(weights, op.Unsqueeze(gt, op.ints([-2]))), op.ints([-1]),
                       keepdims=0)
    return [op.Transpose(gxt, perm=inv) if axis != rank - 1 else gxt, None]


def _lp_factor(op: Emitter, x: str, p: int) -> str:
    """d |x|^p / d x divided by p: |x|^(p-1) sign(x)."""
    if p == 1:
        return op.Sign(x)
    if p == 2:
        return x
    return op.Mul(op.Pow(op.Abs(x), scalar_like(op, float(p - 1), x)), op.Sign(x))


def _norm_scale(op: Emitter, gy: str, y: str, p: int) -> str:
    """gy y^(1-p), 0 where y = 0."""
    if p == 1:
        return gy
    safe = op.Where(op.Equal(y, scalar_like(op, 0.0, y)), scalar_like(op, 1.0, y), y)
    s = op.Reciprocal(safe) if p == 2 else op.Pow(safe, scalar_like(op, float(1 - p), y))
    return op.Mul(op.Mul(gy, s), op.mask_of(op.Not(op.Equal(y, scalar_like(op, 0.0, y))), y))


def _p(node: onnx.NodeProto) -> int:
    p = int(attrs_of(node).get("p", 2))
    if p < 1:
        msg = f"{node.op_type} {node.name!r}: p={p} has no gradient rule (p >= 1 only)"
        raise NotImplementedError(msg)
    return p


@vjp_rule("LpPool")
def _vjp_lp_pool(op: Emitter, node: onnx.NodeProto, gy: str, needs: Needs) -> Grads:
    """gx = ConvTranspose(gy y^(1-p), ones kernel) |x|^(p-1) sign(x)."""
    p = _p(node)
    sx, sy, kernel, strides, dil, pads = pool_geometry(op, node)
    x = node.input[0]
    c = sx[1]
    scaled = _norm_scale(op, gy, node.output[0], p)
    tpads, out_pad = transpose_fit(sx[2:], sy[2:], pads, kernel, strides, dil)
    ones = op.const(np.ones((c, 1, *kernel)), like=x)
    window = op.ConvTranspose(scaled, ones, strides=strides, dilations=dil, group=c, pads=tpads,
                              output_padding=out_pad, kernel_shape=kernel)
    return [op.Mul(window, _lp_factor(op, x, p))]


@vjp_rule("GlobalLpPool")
def _vjp_global_lp_pool(op: Emitter, node: onnx.NodeProto, gy: str, needs: Needs) -> Grads:
    """gx = gy y^(1-p) |x|^(p-1) sign(x), broadcast over the spatial axes."""
    p = _p(node)
    x = node.input[0]
    return [op.Mul(_norm_scale(op, gy, node.output[0], p), _lp_factor(op, x, p))]

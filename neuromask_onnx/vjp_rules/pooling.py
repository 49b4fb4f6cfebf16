"""VJP rules of reductions and pooling."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx

from ..graph import Emitter, Shape, attrs_of, normalize_axes
from .linalg import conv_pads, transpose_fit
from .registry import Grads, Needs, balanced_eq, first_only, scalar_like, vjp_rule

# --------------------------------------------------------------------------- reductions, pooling


def reduce_axes(op: Emitter, node: onnx.NodeProto) -> list[int] | None:
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


def keep_shape(sx: Shape, axes: Sequence[int]) -> list[int]:
    return [1 if i in axes else d for i, d in enumerate(sx)]


@vjp_rule("ReduceSum", "ReduceMean", "ReduceSumSquare", "ReduceL1", "ReduceL2",
          "ReduceLogSumExp", "ReduceLogSum", "ReduceMax", "ReduceMin")
def _vjp_reduce(op: Emitter, node: onnx.NodeProto, gy: str, needs: Needs) -> Grads:
    """gx = broadcast(gy) times d(reduction)/dx (mean: 1/n, max: ties / #ties, ...)."""
    x, y = node.input[0], node.output[0]
    sx = op.g.shape(x)
    axes = reduce_axes(op, node)
    if axes is None:
        return first_only(node, _reduce_identity(op, node, gy))
    keep = keep_shape(sx, axes)
    gk = op.reshape(gy, keep)
    yk = op.reshape(y, keep)
    t = node.op_type
    if t == "ReduceSum":
        return first_only(node, op.expand_to(gk, sx))
    if t == "ReduceMean":
        n = int(np.prod([sx[a] for a in axes]))
        return first_only(node, op.expand_to(op.Mul(gk, scalar_like(op, 1.0 / n, gy)), sx))
    if t == "ReduceSumSquare":
        return first_only(node, op.Mul(op.Mul(gk, x), scalar_like(op, 2.0, x)))
    if t == "ReduceL1":
        return first_only(node, op.Mul(gk, op.Sign(x)))
    if t == "ReduceL2":
        return first_only(node, op.Mul(gk, op.Div(x, yk)))
    if t == "ReduceLogSumExp":
        return first_only(node, op.Mul(gk, op.Exp(op.Sub(x, yk))))
    if t == "ReduceLogSum":  # y = log(sum x): gx = gy / sum x = gy exp(-y)
        return first_only(node, op.expand_to(op.Mul(gk, op.Exp(op.Neg(yk))), sx))
    share, (hit,) = balanced_eq(op, gk, [(x, yk)], axes)
    return first_only(node, op.Mul(share, hit))


def _reduce_identity(op: Emitter, node: onnx.NodeProto, gy: str) -> str:
    """noop_with_empty_axes: the op is elementwise."""
    x = node.input[0]
    t = node.op_type
    if t in ("ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceLogSumExp"):
        return gy
    if t == "ReduceSumSquare":
        return op.Mul(op.Mul(gy, x), scalar_like(op, 2.0, x))
    if t == "ReduceLogSum":
        return op.Div(gy, x)
    return op.Mul(gy, op.Sign(x))


@vjp_rule("GlobalAveragePool")
def _vjp_global_average_pool(op: Emitter, node: onnx.NodeProto, gy: str, needs: Needs) -> Grads:
    """gx = Expand(gy / (H W))."""
    sx = op.g.shape(node.input[0])
    n = int(np.prod(sx[2:]))
    if op.g.dtypes.get(gy) == onnx.TensorProto.FLOAT and len(sx) == 4:
        # The same product as Mul, as a depthwise 1x1 Conv: onnxruntime then keeps gy / (H W)
        # in NCHWc, so the broadcasting Add that joins it to x's other gradient stays there.
        scale = op.const(np.full((sx[1], 1, 1, 1), 1.0 / n), like=gy)
        return [op.expand_to(op.Conv(gy, scale, group=sx[1]), sx)]
    return [op.expand_to(op.Mul(gy, scalar_like(op, 1.0 / n, gy)), sx)]


@vjp_rule("GlobalMaxPool")
def _vjp_global_max_pool(op: Emitter, node: onnx.NodeProto, gy: str, needs: Needs) -> Grads:
    """gx = gy [x == max] / #ties."""
    x, y = node.input[0], node.output[0]
    share, (hit,) = balanced_eq(op, gy, [(x, y)], range(2, len(op.g.shape(x))))
    return [op.Mul(share, hit)]


def pool_geometry(op: Emitter, node: onnx.NodeProto) -> tuple[Shape, Shape, list[int],
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
def _vjp_max_pool(op: Emitter, node: onnx.NodeProto, gy: str, needs: Needs) -> Grads:
    """gx = ScatterElements(zeros, argmax indices, gy, reduction=add)."""
    at = attrs_of(node)
    sx, _, kernel, strides, dil, pads = pool_geometry(op, node)
    # storage_order=1 numbers the indices column-major: the rule's own MaxPool numbers them
    # row-major, as the scatter below reads them.
    if len(node.output) > 1 and node.output[1] and not at.get("storage_order", 0):
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


# MaxUnpool writes X into zeros at its flat indices; where two elements name the same index
# the last in memory order wins (onnx's reference and onnxruntime both write in that order),
# so only that one gets the gradient.
@vjp_rule("MaxUnpool")
def _vjp_max_unpool(op: Emitter, node: onnx.NodeProto, gy: str, needs: Needs) -> Grads:
    """gx = gy.flat[I] where element k is the last writer of I[k], else 0."""
    sx, sy = op.g.shape(node.input[0]), op.g.shape(node.output[0])
    at = attrs_of(node)
    kernel, strides = list(at["kernel_shape"]), list(at.get("strides", [1] * len(sx[2:])))
    pads = list(at.get("pads", [0] * 2 * len(kernel)))
    inferred = [sx[0], sx[1], *[(d - 1) * s - (pads[i] + pads[i + len(kernel)]) + k
                                for i, (d, s, k) in enumerate(zip(sx[2:], strides, kernel,
                                                                  strict=True))]]
    if list(sy) != inferred:
        msg = (f"MaxUnpool {node.name!r}: an output_shape other than the inferred one has no "
               "gradient rule (the runtimes place the values differently)")
        raise NotImplementedError(msg)
    n = int(np.prod(sx))
    idx = op.reshape(node.input[1], [-1])
    order = op.const(np.arange(n, dtype=np.int64))
    last = op.ScatterElements(op.const(np.full(int(np.prod(sy)), -1, np.int64)), idx, order,
                              axis=0, reduction="max")
    wins = op.mask_of(op.Equal(op.Gather(last, idx, axis=0), order), node.input[0])
    g = op.Mul(op.Gather(op.reshape(gy, [-1]), idx, axis=0), wins)
    return first_only(node, op.reshape(g, sx))


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
def _vjp_average_pool(op: Emitter, node: onnx.NodeProto, gy: str, needs: Needs) -> Grads:
    """gx = depthwise ConvTranspose(gy / divisor, ones kernel)."""
    at = attrs_of(node)
    sx, sy, kernel, strides, dil, pads = pool_geometry(op, node)
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

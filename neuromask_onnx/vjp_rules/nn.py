"""VJP rules of normalisation, Softmax/LogSoftmax, CumSum and Dropout, and the fused SiLU rule.

Dropout at inference is the identity. In training mode (a constant true `training_mode`) it
draws a random mask: y = x mask / (1 - ratio). A ratio of 0 keeps everything (the identity
again); otherwise the rule uses the mask the node drew in the same run, so the gradient is the
exact one of the function that run computed, as PyTorch's dropout backward. Where the model
does not output the mask, the rule names a mask output on the node itself (the values it
computes are unchanged). Across runs the masks differ unless the node has a seed.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx

from ..graph import Emitter, attrs_of, normalize_axes
from .registry import FUSED_RULES, Grads, Needs, first_only, scalar_like, vjp_rule

# --------------------------------------------------------------------------- nn


@vjp_rule("Dropout", multi_output=True)
def _vjp_dropout(op: Emitter, node: onnx.NodeProto,
                 gys: Sequence[str | None], needs: Needs) -> Grads:
    """gx = gy at inference or ratio 0; gy mask / (1 - ratio) in training mode."""
    gy = gys[0]
    assert gy is not None  # the mask is boolean: no gradient reaches it
    training = node.input[2] if len(node.input) > 2 else ""
    if op.g.opset < 12 or not training:
        return first_only(node, gy)
    mode = op.g.const(training)
    if mode is None:
        msg = f"Dropout {node.name!r}: training_mode is computed, not a constant"
        raise NotImplementedError(msg)
    if not bool(np.asarray(mode).reshape(-1)[0]):
        return first_only(node, gy)
    ratio_v = op.g.const(node.input[1]) if node.input[1] else 0.5
    if ratio_v is None:
        msg = f"Dropout {node.name!r}: training mode with a computed ratio"
        raise NotImplementedError(msg)
    ratio = float(np.asarray(ratio_v).reshape(-1)[0])
    if ratio == 0.0:
        return first_only(node, gy)
    if not any(n is node for n in op.g.nodes):  # a copy the reverse pass recomputes (If)
        msg = (f"Dropout {node.name!r}: in training mode inside a data-dependent If, whose "
               "gradient recomputes the branch and so would draw another mask")
        raise NotImplementedError(msg)
    if len(node.output) < 2 or not node.output[1]:
        mask = op.fresh("dropout_mask")
        del node.output[1:]
        node.output.append(mask)
        op.g.dtypes[mask] = onnx.TensorProto.BOOL
        op.g.shapes[mask] = op.g.shape(node.input[0])
    keep = op.mask_of(node.output[1], gy)
    return first_only(node, op.Mul(op.Mul(gy, keep), scalar_like(op, 1.0 / (1.0 - ratio), gy)))


@vjp_rule("BatchNormalization", multi_output=True)
def _vjp_batch_norm(op: Emitter, node: onnx.NodeProto,
                    gys: Sequence[str | None], needs: Needs) -> Grads:
    """Inference mode is affine per channel: gx = gy scale / sqrt(var + eps)."""
    at = attrs_of(node)
    if at.get("training_mode", 0):
        return _batch_norm_training(op, node, gys, needs)
    gy = gys[0]
    assert gy is not None  # inference BatchNormalization has one output
    x, scale, _, _, var = node.input[:5]
    sx = op.g.shape(x)
    eps = at.get("epsilon", 1e-5)
    bshape = [sx[1]] + [1] * (len(sx) - 2)
    s, v = op.g.const(scale), op.g.const(var)
    if s is not None and v is not None:
        k = op.const((s.astype(np.float64) / np.sqrt(v.astype(np.float64) + eps)).reshape(bshape),
                     like=x)
    else:
        k = op.reshape(op.Div(scale, op.Sqrt(op.Add(var, scalar_like(op, eps, var)))), bshape)
    for name in node.input[1:]:
        if name in needs:
            msg = f"BatchNormalization {node.name!r}: statistics that depend on the input"
            raise NotImplementedError(msg)
    return [op.Mul(gy, k), None, None, None, None]


def _batch_norm_training(op: Emitter, node: onnx.NodeProto, gys: Sequence[str | None],
                         needs: Needs) -> Grads:
    """Training mode normalizes by the batch's statistics over every axis but the channel's
    (population variance) and outputs running_mean = momentum mean + (1 - momentum) mean_b,
    running_var likewise with var_b: gx = the normalization's gradient of gy scale, plus
    (1 - momentum) / n (g_mean + 2 g_var (x - mean_b)) from the running statistics."""
    x, scale = node.input[:2]
    sx = op.g.shape(x)
    at = attrs_of(node)
    eps, momentum = float(at.get("epsilon", 1e-5)), float(at.get("momentum", 0.9))
    axes = [0, *range(2, len(sx))]
    n = int(np.prod([sx[a] for a in axes]))
    bshape = [sx[1]] + [1] * (len(sx) - 2)
    for name in node.input[1:]:
        if name in needs:
            msg = f"BatchNormalization {node.name!r}: scale, bias or statistics from the input"
            raise NotImplementedError(msg)
    gy, gmean, gvar = [*gys, None, None][:3]
    parts = []
    if gy is not None:
        h = op.Mul(gy, op.reshape(scale, bshape))
        parts.append(normalized_grad(op, x, h, axes, eps))
    w = (1.0 - momentum) / n
    if gmean is not None:
        parts.append(op.expand_to(op.Mul(op.reshape(gmean, bshape), scalar_like(op, w, x)), sx))
    if gvar is not None:
        cen = op.Sub(x, op.ReduceMean(x, op.ints(axes), keepdims=1))
        parts.append(op.Mul(cen, op.Mul(op.reshape(gvar, bshape), scalar_like(op, 2.0 * w, x))))
    gx = parts[0] if len(parts) == 1 else op.Sum(*parts)
    return first_only(node, gx)


def normalized_grad(op: Emitter, x: str, h: str, axes: list[int], eps: float,
                     mean: str | None = None, invstd: str | None = None) -> str:
    """gx of xhat = (x - mean) invstd over `axes`, given h = d loss / d xhat."""
    ax = op.ints(axes)
    if mean is None or invstd is None:
        mean = op.ReduceMean(x, ax, keepdims=1)
        cen = op.Sub(x, mean)
        var = op.ReduceMean(op.Mul(cen, cen), ax, keepdims=1)
        invstd = op.Reciprocal(op.Sqrt(op.Add(var, scalar_like(op, eps, x))))
    else:
        cen = op.Sub(x, mean)
    xhat = op.Mul(cen, invstd)
    mh = op.ReduceMean(h, ax, keepdims=1)
    mhx = op.ReduceMean(op.Mul(h, xhat), ax, keepdims=1)
    return op.Mul(invstd, op.Sub(op.Sub(h, mh), op.Mul(xhat, mhx)))


@vjp_rule("LayerNormalization", multi_output=True)
def _vjp_layer_norm(op: Emitter, node: onnx.NodeProto,
                    gys: Sequence[str | None], needs: Needs) -> Grads:
    """gx = invstd (h - mean(h) - xhat mean(h xhat)), h = gy scale, over axes >= axis; the
    Mean output adds g_mean / n, the InvStdDev output -g_inv invstd^3 (x - mean) / n."""
    gy, gmean, ginv = [*gys, None, None][:3]
    at = attrs_of(node)
    x, scale = node.input[:2]
    sx = op.g.shape(x)
    axis = normalize_axes([at.get("axis", -1)], len(sx))[0]
    axes = list(range(axis, len(sx)))
    n = int(np.prod([sx[a] for a in axes]))
    parts = []
    if gy is not None:
        h = op.Mul(gy, scale)
        parts.append(normalized_grad(op, x, h, axes, at.get("epsilon", 1e-5)))
    def like_x(v: str) -> str:  # Mean / InvStdDev are stash_type (float32) whatever x is
        return v if op.g.dtypes.get(v) == op.g.dtypes.get(x) else op.cast_like(v, x)

    if gmean is not None:
        parts.append(op.expand_to(op.Mul(like_x(gmean), scalar_like(op, 1.0 / n, x)), sx))
    if ginv is not None:
        inv = like_x(node.output[2])
        mean = (like_x(node.output[1]) if len(node.output) > 1 and node.output[1]
                else op.ReduceMean(x, op.ints(axes), keepdims=1))
        cube = op.Mul(op.Mul(inv, inv), inv)
        parts.append(op.Mul(op.Mul(like_x(ginv), op.Mul(cube, scalar_like(op, -1.0 / n, x))),
                            op.Sub(x, mean)))
    gx = parts[0] if len(parts) == 1 else op.Sum(*parts)
    for name in node.input[1:]:
        if name and name in needs:
            msg = f"LayerNormalization {node.name!r}: scale or bias that depend on the input"
            raise NotImplementedError(msg)
    return first_only(node, gx)


@vjp_rule("RMSNormalization")
def _vjp_rms_norm(op: Emitter, node: onnx.NodeProto, gy: str, needs: Needs) -> Grads:
    """y = x r scale, r = (mean(x^2) + eps)^-1/2 over axes >= axis:
    gx = r h - r^3 x mean(h x), h = gy scale."""
    at = attrs_of(node)
    x, scale = node.input[:2]
    for name in node.input[1:]:
        if name and name in needs:
            msg = f"RMSNormalization {node.name!r}: a scale that depends on the input"
            raise NotImplementedError(msg)
    sx = op.g.shape(x)
    axes = op.ints(range(normalize_axes([at.get("axis", -1)], len(sx))[0], len(sx)))
    ms = op.ReduceMean(op.Mul(x, x), axes, keepdims=1)
    r = op.Reciprocal(op.Sqrt(op.Add(ms, scalar_like(op, at.get("epsilon", 1e-5), x))))
    h = op.Mul(gy, scale)
    mhx = op.ReduceMean(op.Mul(h, x), axes, keepdims=1)
    gx = op.Sub(op.Mul(r, h), op.Mul(op.Mul(op.Mul(op.Mul(r, r), r), x), mhx))
    return first_only(node, gx)


@vjp_rule("LpNormalization")
def _vjp_lp_norm(op: Emitter, node: onnx.NodeProto, gy: str, needs: Needs) -> Grads:
    """y = x / |x|_p along axis (p = 1, 2): gx = (gy - d sum(gy y)) / |x|_p, d = y (p = 2),
    sign(x) (p = 1)."""
    at = attrs_of(node)
    x, y = node.input[0], node.output[0]
    p = int(at.get("p", 2))
    if p not in (1, 2):
        msg = f"LpNormalization {node.name!r}: p={p} (only 1 and 2 are defined)"
        raise NotImplementedError(msg)
    ax = op.ints([int(at.get("axis", -1))])
    norm = (op.ReduceL2 if p == 2 else op.ReduceL1)(x, ax, keepdims=1)
    d = y if p == 2 else op.Sign(x)
    s = op.ReduceSum(op.Mul(gy, y), ax, keepdims=1)
    return [op.Div(op.Sub(gy, op.Mul(d, s)), norm)]


@vjp_rule("InstanceNormalization")
def _vjp_instance_norm(op: Emitter, node: onnx.NodeProto, gy: str, needs: Needs) -> Grads:
    """As LayerNormalization over the spatial axes, with a per-channel scale."""
    x, scale, _ = node.input
    sx = op.g.shape(x)
    h = op.Mul(gy, op.reshape(scale, [sx[1]] + [1] * (len(sx) - 2)))
    gx = normalized_grad(op, x, h, list(range(2, len(sx))), attrs_of(node).get("epsilon", 1e-5))
    return [gx, None, None]


@vjp_rule("GroupNormalization")
def _vjp_group_norm(op: Emitter, node: onnx.NodeProto, gy: str, needs: Needs) -> Grads:
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
    gx = normalized_grad(op, xg, hg, [2], at.get("epsilon", 1e-5))
    return [op.reshape(gx, sx), None, None]


@vjp_rule("LRN")
def _vjp_lrn(op: Emitter, node: onnx.NodeProto, gy: str, needs: Needs) -> Grads:
    """y = x d^-beta, d = bias + alpha/size S, S_c = sum of x_j^2 over the channel window
    W(c) = [c - floor((size-1)/2), c + ceil((size-1)/2)]: gx = gy d^-beta - (2 alpha beta /
    size) x W^T(gy y / d), W^T the window sum with its two reaches swapped."""
    at = attrs_of(node)
    x, y = node.input[0], node.output[0]
    sx = op.g.shape(x)
    size = int(at["size"])
    alpha, beta, bias = at.get("alpha", 1e-4), at.get("beta", 0.75), at.get("bias", 1.0)
    c = sx[1]
    lo, hi = (size - 1) // 2, size // 2  # floor and ceil of (size - 1) / 2
    j, k = np.arange(c)[:, None], np.arange(c)[None, :]
    window = ((j >= k - lo) & (j <= k + hi)).astype(np.float64)  # [j, c]: x_j is in W(c)
    s = op.axis_matmul(op.Mul(x, x), sx, 1, window, like=x)
    d = op.Add(scalar_like(op, bias, x), op.Mul(scalar_like(op, alpha / size, x), s))
    t = op.Div(op.Mul(gy, y), d)
    back = op.axis_matmul(t, sx, 1, window.T, like=x)
    gx = op.Sub(op.Mul(gy, op.Pow(d, scalar_like(op, -beta, x))),
                op.Mul(op.Mul(x, back), scalar_like(op, 2.0 * alpha * beta / size, x)))
    return [gx]


@vjp_rule("Softmax")
def _vjp_softmax(op: Emitter, node: onnx.NodeProto, gy: str, needs: Needs) -> Grads:
    """gx = y (gy - sum(gy y, axis))."""
    y = node.output[0]
    axis = attrs_of(node).get("axis", -1)
    s = op.ReduceSum(op.Mul(gy, y), op.ints([axis]), keepdims=1)
    return [op.Mul(y, op.Sub(gy, s))]


@vjp_rule("LogSoftmax")
def _vjp_log_softmax(op: Emitter, node: onnx.NodeProto, gy: str, needs: Needs) -> Grads:
    """gx = gy - exp(y) sum(gy, axis)."""
    y = node.output[0]
    axis = attrs_of(node).get("axis", -1)
    s = op.ReduceSum(gy, op.ints([axis]), keepdims=1)
    return [op.Sub(gy, op.Mul(op.Exp(y), s))]


@vjp_rule("CumSum")
def _vjp_cumsum(op: Emitter, node: onnx.NodeProto, gy: str, needs: Needs) -> Grads:
    """gx = CumSum(gy) in the opposite direction, same exclusivity."""
    at = attrs_of(node)
    return [op.CumSum(gy, node.input[1], exclusive=at.get("exclusive", 0),
                      reverse=1 - at.get("reverse", 0)), None]


def _vjp_swish(op: Emitter, node: onnx.NodeProto, gys: Sequence[str | None],
               needs: Needs) -> Grads:
    """y = x s, s = sigmoid(x): gx = gy (s + y (1 - s)); the fused node's attribute `sigmoid`
    names s (reverse.fuse_for_backward)."""
    gy, s, y = gys[0], bytes(attrs_of(node)["sigmoid"]).decode(), node.output[0]
    assert gy is not None
    return [op.Mul(gy, op.Add(s, op.Mul(y, op.complement(s))))]


FUSED_RULES["Swish"] = _vjp_swish

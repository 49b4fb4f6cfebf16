"""VJP rule of DeformConv (2-D): re-expressed in standard ops, then differentiated.

DeformConv samples X bilinearly (zero outside the image) at each kernel tap's position
shifted by its learned offset, scales the samples by the mask, and contracts them with W:
exactly GridSample followed by a 1 x 1 convolution, which is how onnx's reference defines it.
The rule emits that form -- per offset group one GridSample of its channels at the grid of all
K taps (positions oh s - pad + i d + offset, normalized for align_corners 0), the mask's Mul,
the samples as [N, C K, oH, oW] columns, contracted with W by a grouped MatMul (W as
[1, group, oc / group, C / group K]: Conv's rule takes no weight gradient) plus the bias --
and runs the driver's reverse pass over it (as the
recurrent rules do), so X, W, the offsets, the bias and the mask all get their gradients from
the GridSample, Mul, MatMul and shape rules. The sampling positions are piecewise smooth in the
offsets: at integer coordinates the GridSample rule's right derivative applies.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx

from ..graph import Emitter, Shape, attrs_of
from .registry import Grads, Needs, vjp_rule


def _put(op: Emitter, name: str, shape: Sequence[int]) -> str:
    op.g.shapes[name] = tuple(int(d) for d in shape)
    return name


def _columns(op: Emitter, node: onnx.NodeProto) -> tuple[str, Shape]:
    """Emit the masked samples [N, C K, oH, oW] of DeformConv `node`; return them and W's
    shape."""
    x, w, off = node.input[:3]
    mask = node.input[4] if len(node.input) > 4 and node.input[4] else ""
    (n, c, h, wd), sw, sy = op.g.shape(x), op.g.shape(w), op.g.shape(node.output[0])
    at = attrs_of(node)
    kh, kw = (int(k) for k in at.get("kernel_shape", sw[2:]))
    dh, dw = (int(d) for d in at.get("dilations", [1, 1]))
    sh, st = (int(s) for s in at.get("strides", [1, 1]))
    pt, pl = (int(p) for p in at.get("pads", [0, 0, 0, 0])[:2])
    og = int(at.get("offset_group", 1))
    oh, ow = sy[2], sy[3]
    k = kh * kw
    # base positions (y, x) of every tap at every output point: [1, 1, K, 2, oH, oW]
    ti, tj = np.divmod(np.arange(k), kw)
    base = np.zeros((1, 1, k, 2, oh, ow))
    base[0, 0, :, 0] = (np.arange(oh) * sh - pt)[None, :, None] + (ti * dh)[:, None, None]
    base[0, 0, :, 1] = (np.arange(ow) * st - pl)[None, None, :] + (tj * dw)[:, None, None]
    off6 = _put(op, op.reshape(off, [n, og, k, 2, oh, ow]), [n, og, k, 2, oh, ow])
    pos = _put(op, op.Add(off6, op.const(base, like=x)), [n, og, k, 2, oh, ow])
    xy = _put(op, op.Gather(pos, op.ints([1, 0]), axis=3), [n, og, k, 2, oh, ow])  # (x, y)
    # align_corners 0: g = (2 p + 1) / d - 1
    scale = np.array([2.0 / wd, 2.0 / h]).reshape(1, 1, 1, 2, 1, 1)
    shift = np.array([1.0 / wd - 1.0, 1.0 / h - 1.0]).reshape(1, 1, 1, 2, 1, 1)
    norm = _put(op, op.Add(_put(op, op.Mul(xy, op.const(scale, like=x)), [n, og, k, 2, oh, ow]),
                           op.const(shift, like=x)), [n, og, k, 2, oh, ow])
    grid = _put(op, op.Transpose(norm, perm=[0, 1, 2, 4, 5, 3]), [n, og, k, oh, ow, 2])
    cg = c // og
    mode = "linear" if op.g.opset >= 20 else "bilinear"
    parts = []
    for g in range(og):
        xg = x if og == 1 else _put(op, op.Slice(x, op.ints([g * cg]), op.ints([(g + 1) * cg]),
                                                 op.ints([1])), [n, cg, h, wd])
        gg = _put(op, op.Gather(grid, op.ints([g]), axis=1), [n, 1, k, oh, ow, 2])
        gg = _put(op, op.reshape(gg, [n, k * oh, ow, 2]), [n, k * oh, ow, 2])
        s = _put(op, op.GridSample(xg, gg, mode=mode, padding_mode="zeros", align_corners=0),
                 [n, cg, k * oh, ow])
        parts.append(_put(op, op.reshape(s, [n, 1, cg, k, oh, ow]), [n, 1, cg, k, oh, ow]))
    cols = parts[0] if og == 1 else _put(op, op.Concat(*parts, axis=1), [n, og, cg, k, oh, ow])
    if mask:
        m = _put(op, op.reshape(mask, [n, og, 1, k, oh, ow]), [n, og, 1, k, oh, ow])
        cols = _put(op, op.Mul(cols, m), [n, og, cg, k, oh, ow])
    return _put(op, op.reshape(cols, [n, c * k, oh, ow]), [n, c * k, oh, ow]), sw


@vjp_rule("DeformConv")
def _vjp_deform_conv(op: Emitter, node: onnx.NodeProto, gy: str, needs: Needs) -> Grads:
    """Emit DeformConv as GridSample + Mul + MatMul, then differentiate that."""
    from ..reverse import differentiate  # the driver imports the rules: import it late

    if len(op.g.shape(node.input[0])) != 4:
        msg = f"DeformConv {node.name!r}: only 2-D DeformConv has a gradient rule"
        raise NotImplementedError(msg)
    if op.g.opset < 20 and op.g.dtypes.get(node.input[0]) == onnx.TensorProto.DOUBLE:
        msg = (f"DeformConv {node.name!r}: float64 below opset 20 (onnxruntime has no float64 "
               "GridSample-16 for the gradient); convert the model to opset 20 or float32")
        raise NotImplementedError(msg)
    start = len(op.nodes)
    cols, sw = _columns(op, node)
    sy = op.g.shape(node.output[0])
    n, oc, p = sy[0], sy[1], sy[2] * sy[3]
    grp = int(attrs_of(node).get("group", 1))
    ck = sw[1] * sw[2] * sw[3]  # C / group K
    # a grouped MatMul (Conv's rule takes no weight gradient): [1, G, oc/G, ck] x [N, G, ck, P]
    wr = _put(op, op.reshape(node.input[1], [1, grp, oc // grp, ck]), [1, grp, oc // grp, ck])
    cr = _put(op, op.reshape(cols, [n, grp, ck, p]), [n, grp, ck, p])
    y = _put(op, op.MatMul(wr, cr), [n, grp, oc // grp, p])
    y = _put(op, op.reshape(y, sy), sy)
    if len(node.input) > 3 and node.input[3]:
        b = _put(op, op.reshape(node.input[3], [1, oc, 1, 1]), [1, oc, 1, 1])
        y = _put(op, op.Add(y, b), sy)
    body = op.nodes[start:]
    wrt = list(dict.fromkeys(i for i in node.input if i and i in needs))
    grads = differentiate(op, body, {y: gy}, wrt)
    seen: set[str] = set()
    result: list[str | None] = []
    for name in node.input:  # one gradient per value, where it appears twice
        result.append(grads.get(name) if name in wrt and name not in seen else None)
        seen.add(name)
    return result

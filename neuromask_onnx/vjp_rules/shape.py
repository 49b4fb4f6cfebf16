"""VJP rules of shape and indexing ops: reshapes, joins, slices, pads, gathers (Resize: `resize`)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx

from ..graph import Emitter, Shape, attrs_of, normalize_axes
from .registry import Grads, Needs, first_only, vjp_rule

# --------------------------------------------------------------------------- shape


@vjp_rule("Reshape", "Flatten", "Squeeze", "Unsqueeze")
def _vjp_reshape(op: Emitter, node: onnx.NodeProto, gy: str, needs: Needs) -> Grads:
    """gx = Reshape(gy, shape(x))."""
    x = node.input[0]
    return first_only(node, op.reshape(gy, op.g.shape(x)))


@vjp_rule("Transpose")
def _vjp_transpose(op: Emitter, node: onnx.NodeProto, gy: str, needs: Needs) -> Grads:
    """gx = Transpose(gy, inverse perm)."""
    rank = len(op.g.shape(node.input[0]))
    perm = attrs_of(node).get("perm", list(range(rank))[::-1])
    return [op.Transpose(gy, perm=[int(i) for i in np.argsort(perm)])]


@vjp_rule("ReverseSequence")
def _vjp_reverse_sequence(op: Emitter, node: onnx.NodeProto, gy: str, needs: Needs) -> Grads:
    """gx = ReverseSequence(gy, sequence_lens): reversing each sequence's first lens steps is
    a permutation that is its own inverse, hence its own adjoint."""
    a = attrs_of(node)
    return [op.ReverseSequence(gy, node.input[1], batch_axis=int(a.get("batch_axis", 1)),
                               time_axis=int(a.get("time_axis", 0))), None]


def col2im_sources(channels: int, image: Sequence[int], block: Sequence[int],
                   dilations: Sequence[int], pads: Sequence[int],
                   strides: Sequence[int]) -> np.ndarray:
    """For Col2Im's input element [c * K + k, l] (K kernel offsets, l the block), the flat
    index into its [C, *image] output it is added to, or C * prod(image) (a zero slot) where
    that position lies in the padding. Offsets and blocks are row-major, as in the spec."""
    d = len(image)
    counts = [(image[i] + pads[i] + pads[i + d] - dilations[i] * (block[i] - 1) - 1)
              // strides[i] + 1 for i in range(d)]
    koff = np.stack(np.meshgrid(*[np.arange(b) for b in block], indexing="ij"), -1).reshape(-1, d)
    blk = np.stack(np.meshgrid(*[np.arange(n) for n in counts], indexing="ij"), -1).reshape(-1, d)
    pos = (blk[None] * np.asarray(strides) - np.asarray(pads[:d])
           + koff[:, None] * np.asarray(dilations))  # [K, L, d]
    inside = np.all((pos >= 0) & (pos < np.asarray(image)), axis=-1)
    flat = np.ravel_multi_index(tuple(np.clip(pos, 0, np.asarray(image) - 1)
                                      .transpose(2, 0, 1)), tuple(image))
    size = int(np.prod(image))
    per_channel = np.where(inside, flat, -1)  # [K, L]
    out = np.concatenate([np.where(per_channel >= 0, c * size + per_channel, channels * size)
                          for c in range(channels)])
    return out.astype(np.int64)  # [C * K, L]


@vjp_rule("Col2Im")
def _vjp_col2im(op: Emitter, node: onnx.NodeProto, gy: str, needs: Needs) -> Grads:
    """Col2Im adds each column entry to one image position: gx gathers gy there (Im2Col), and
    entries that fall in the padding get 0."""
    image, block = op.g.const(node.input[1]), op.g.const(node.input[2])
    if image is None or block is None:
        msg = f"Col2Im {node.name!r}: image_shape and block_shape must be constants"
        raise NotImplementedError(msg)
    d = len(image)
    at = attrs_of(node)
    sy = op.g.shape(node.output[0])
    n, c = sy[0], sy[1]
    idx = col2im_sources(c, [int(v) for v in image], [int(v) for v in block],
                         list(at.get("dilations", [1] * d)), list(at.get("pads", [0] * 2 * d)),
                         list(at.get("strides", [1] * d)))
    flat = op.Concat(op.reshape(gy, [n, -1]), op.zeros([n, 1], gy), axis=1)
    return [op.Gather(flat, op.const(idx), axis=1), None, None]


@vjp_rule("Expand")
def _vjp_expand(op: Emitter, node: onnx.NodeProto, gy: str, needs: Needs) -> Grads:
    """gx = gy summed over the expanded axes."""
    return [op.sum_to(gy, op.g.shape(node.output[0]), op.g.shape(node.input[0])), None]


@vjp_rule("Tile")
def _vjp_tile(op: Emitter, node: onnx.NodeProto, gy: str, needs: Needs) -> Grads:
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
def _vjp_concat(op: Emitter, node: onnx.NodeProto, gy: str, needs: Needs) -> Grads:
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
        out[i] = p if node.input[i] in needs else None
    for i, s in enumerate(sizes):  # an empty piece (RotaryEmbedding's XNoRotate) gets zeros
        if s == 0 and node.input[i] in needs:
            out[i] = op.zeros(op.g.shape(node.input[i]), node.input[i])
    return out


@vjp_rule("Split", multi_output=True)
def _vjp_split(op: Emitter, node: onnx.NodeProto, gys: Sequence[str | None], needs: Needs) -> Grads:
    """gx = Concat(gy_i, or zeros where an output got no gradient)."""
    sx = op.g.shape(node.input[0])
    axis = normalize_axes([attrs_of(node).get("axis", 0)], len(sx))[0]
    parts = [g if g is not None else op.zeros(op.g.shape(o), node.input[0])
             for g, o in zip(gys, node.output, strict=True)]
    gx = parts[0] if len(parts) == 1 else op.Concat(*parts, axis=axis)
    return first_only(node, gx)


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
def _vjp_slice(op: Emitter, node: onnx.NodeProto, gy: str, needs: Needs) -> Grads:
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
            return first_only(node, op.zeros(sx, node.input[0]))
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
    return first_only(node, g)


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
def _vjp_pad(op: Emitter, node: onnx.NodeProto, gy: str, needs: Needs) -> Grads:
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
    if mode == "constant" or all(p <= 0 for p in pads):
        starts = [max(p, 0) for p in pads[:rank]]
        ends = [starts[i] + sy[i] - max(pads[i], 0) - max(pads[rank + i], 0) for i in range(rank)]
        g = op.Slice(gy, op.ints(starts), op.ints(ends), op.ints(range(rank)))
        # Negative pads cropped the input: those rows get zero gradient back.
        crop = [max(-p, 0) for p in pads]
        if any(crop):
            g = op.Pad(g, op.ints(crop))
        return first_only(node, g)
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
    return first_only(node, g)


@vjp_rule("Gather")
def _vjp_gather(op: Emitter, node: onnx.NodeProto, gy: str, needs: Needs) -> Grads:
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
def _vjp_gather_elements(op: Emitter, node: onnx.NodeProto, gy: str, needs: Needs) -> Grads:
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
def _vjp_topk(op: Emitter, node: onnx.NodeProto, gys: Sequence[str | None], needs: Needs) -> Grads:
    """gx = ScatterElements(zeros, indices, g_values, reduction=add)."""
    x = node.input[0]
    sx = op.g.shape(x)
    axis = normalize_axes([attrs_of(node).get("axis", -1)], len(sx))[0]
    gy = gys[0]
    assert gy is not None
    gx = op.ScatterElements(op.zeros(sx, x), node.output[1], gy, axis=axis, reduction="add")
    return [gx, None]


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
def _vjp_depth_space(op: Emitter, node: onnx.NodeProto, gy: str, needs: Needs) -> Grads:
    """The forward is reshape -> transpose -> reshape; the gradient runs it backwards."""
    sx = op.g.shape(node.input[0])
    first, perm, _ = _space_depth_perm(node, sx)
    inv = [int(i) for i in np.argsort(perm)]
    mid = [first[p] for p in perm]
    g = op.Transpose(op.reshape(gy, mid), perm=inv)
    return [op.reshape(g, sx)]

"""VJP rules of the indexed reads and writes: GatherND, ScatterND, ScatterElements, Compress,
TensorScatter.

Each rule is the other half of its pair: a gather's gradient is a scatter-add of gy at the
gathered positions, a scatter's gradient to `updates` is a gather of gy at the written
positions and its gradient to `data` is gy with those positions zeroed (reduction "none":
they were overwritten) or gy itself (reduction "add"). Indices are integer data and get no
gradient (`NONDIFF_OPERANDS`); negative ND indices are wrapped into range first (the element
ops take them as they are). Duplicate positions in a reduction-"none" scatter are undefined in
ONNX, so the rules assume unique ones, as the spec requires.

Compress (a constant condition) keeps some positions: its gradient gathers gy back to them
and zeros elsewhere. TensorScatter (opset 24's KV-cache write) is a scatter too: gy with the
written positions zeroed for the cache (the same TensorScatter, of zeros), gy gathered at
write_indices[b] + t (mod the cache length when circular) for the update. (Unique has no
rule: its output's length is the number of distinct input values, which a gradient graph of
static shapes cannot follow; `reverse` says so.)

The other reductions fold every update written to a position p into data_p:
- "mul": y_p = data_p prod(updates at p). g_data = gy times that product (a scatter-mul of
  ones); g_update = gy data_p times the product of the other updates at p, zero-safe as in
  ReduceProd: the zeros among p's updates are counted, and only nonzero updates divide.
- "max" / "min": y_p is the largest (smallest) of data_p and p's updates; the gradient goes to
  the operands equal to y_p, split evenly between ties (the Max / ReduceMax convention).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import numpy as np
import onnx

from ..graph import Emitter, Shape, attrs_of, normalize_axes
from .registry import Grads, Needs, balanced_eq, vjp_rule

I64 = onnx.TensorProto.INT64


def _wrapped(op: Emitter, idx: str, dims: Sequence[int]) -> str:
    """int64 indices with negative entries wrapped by the sizes `dims` (broadcast on the last
    axis, or one size for every entry)."""
    raw = op.Cast(idx, to=I64, _dtype=I64)
    size = op.const(np.asarray(dims, dtype=np.int64))
    return op.Where(op.Less(raw, op.ints([0])), op.Add(raw, size), raw)


def _full_nd_indices(op: Emitter, idx: str, sx: Shape, si: Shape, batch_dims: int) -> str:
    """GatherND / ScatterND indices with batch_dims > 0 written for batch_dims = 0: the batch
    coordinates prepended to every index tuple (the batch axes of data and indices agree)."""
    k = si[-1]
    fixed = _wrapped(op, idx, sx[batch_dims:batch_dims + k])
    if batch_dims == 0:
        return fixed
    grid = np.indices(si[:-1], dtype=np.int64)[:batch_dims]  # [b, *si[:-1]]
    coords = op.const(np.moveaxis(grid, 0, -1).copy())  # [*si[:-1], b]
    return op.Concat(coords, fixed, axis=-1)


def _reduction(node: onnx.NodeProto) -> str:
    r = attrs_of(node).get("reduction", "none")
    return r.decode() if isinstance(r, bytes) else str(r)


def _folded(op: Emitter, red: str, node: onnx.NodeProto, gy: str,
            scatter: Callable[[str, str, str], str],
            gather: Callable[[str], str], needs: Needs) -> tuple[str | None, str | None]:
    """(g_data, g_updates) of a scatter with reduction mul, max or min (module docstring)."""
    data, upd, y = node.input[0], node.input[2], node.output[0]
    sx = op.g.shape(data)
    zero, one = op.const(0.0, like=data), op.const(1.0, like=data)
    gd = gu = None
    if red == "mul":
        if data in needs:
            gd = op.Mul(gy, scatter(op.Expand(one, op.ints(sx)), upd, "mul"))
        if upd in needs:
            is_zero = op.Equal(upd, zero)
            zeros = scatter(op.zeros(sx, data), op.mask_of(is_zero, upd), "add")
            nonzero = scatter(op.Expand(one, op.ints(sx)), op.Where(is_zero, one, upd), "mul")
            at = gather(op.Mul(op.Mul(gy, data), nonzero))  # gy data_p prod(nonzero at p)
            count = gather(zeros)
            none = op.Mul(op.Reciprocal(op.Where(is_zero, one, upd)),
                          op.mask_of(op.Equal(count, zero), upd))
            lone = op.mask_of(op.And(is_zero, op.Equal(count, one)), upd)
            gu = op.Mul(at, op.Add(none, lone))
        return gd, gu
    if red not in ("max", "min"):
        msg = (f"{node.op_type} {node.name!r}: reduction={red!r} has no gradient rule (only "
               "'none', 'add', 'mul', 'max' and 'min')")
        raise NotImplementedError(msg)
    def winners() -> Iterator[tuple[str, str]]:  # data where it stays, updates where written
        yield data, y
        yield upd, gather(y)

    # gy / (number of winners at p), scattered back to each winner
    share, (data_wins, upd_wins) = balanced_eq(op, gy, winners(),
                                               lambda h: scatter(h[0], h[1], "add"))
    if data in needs:
        gd = op.Mul(share, data_wins)
    if upd in needs:
        gu = op.Mul(gather(share), upd_wins)
    return gd, gu


@vjp_rule("GatherND")
def _vjp_gather_nd(op: Emitter, node: onnx.NodeProto, gy: str, needs: Needs) -> Grads:
    """gx = ScatterND(zeros, indices, gy, reduction=add) (batch coordinates made explicit)."""
    x, idx = node.input
    sx, si = op.g.shape(x), op.g.shape(idx)
    b = int(attrs_of(node).get("batch_dims", 0))
    full = _full_nd_indices(op, idx, sx, si, b)
    return [op.ScatterND(op.zeros(sx, x), full, gy, reduction="add"), None]


@vjp_rule("ScatterND")
def _vjp_scatter_nd(op: Emitter, node: onnx.NodeProto, gy: str, needs: Needs) -> Grads:
    """g_data = gy, the written positions zeroed unless added to; g_updates = GatherND(gy)."""
    data, idx, upd = node.input
    sx, si, su = op.g.shape(data), op.g.shape(idx), op.g.shape(upd)
    red = _reduction(node)
    full = _wrapped(op, idx, sx[:si[-1]])
    if red not in ("none", "add"):
        gd, gu = _folded(op, red, node, gy,
                         lambda d, u, r: op.ScatterND(d, full, u, reduction=r),
                         lambda v: op.GatherND(v, full), needs)
        return [gd, None, gu]
    gd = None
    if data in needs:
        gd = gy if red == "add" else op.ScatterND(gy, full, op.zeros(su, upd))
    gu = op.GatherND(gy, full) if upd in needs else None
    return [gd, None, gu]


@vjp_rule("ScatterElements")
def _vjp_scatter_elements(op: Emitter, node: onnx.NodeProto, gy: str, needs: Needs) -> Grads:
    """The same along one axis: ScatterElements of zeros, GatherElements of gy."""
    data, idx, upd = node.input
    sx, su = op.g.shape(data), op.g.shape(upd)
    axis = normalize_axes([attrs_of(node).get("axis", 0)], len(sx))[0]
    red = _reduction(node)  # both element ops take negative indices as they are
    if red not in ("none", "add"):
        gd, gu = _folded(op, red, node, gy,
                         lambda d, u, r: op.ScatterElements(d, idx, u, axis=axis, reduction=r),
                         lambda v: op.GatherElements(v, idx, axis=axis), needs)
        return [gd, None, gu]
    gd = None
    if data in needs:
        gd = gy if red == "add" else op.ScatterElements(gy, idx, op.zeros(su, upd), axis=axis)
    gu = op.GatherElements(gy, idx, axis=axis) if upd in needs else None
    return [gd, None, gu]


@vjp_rule("Compress")
def _vjp_compress(op: Emitter, node: onnx.NodeProto, gy: str, needs: Needs) -> Grads:
    """gx = Gather(Concat(gy, 0), source): each position its rank among the kept, or the 0."""
    x, c = node.input
    sx, sy = op.g.shape(x), op.g.shape(node.output[0])
    cond = op.g.const(c)
    if cond is None:
        msg = f"Compress {node.name!r}: the condition is computed, not a constant"
        raise NotImplementedError(msg)
    axis_attr = attrs_of(node).get("axis")
    flat = axis_attr is None
    axis = 0 if axis_attr is None else normalize_axes([int(axis_attr)], len(sx))[0]
    n = int(np.prod(sx)) if flat else sx[axis]
    kept = np.flatnonzero(np.asarray(cond).reshape(-1)[:n].astype(bool))
    source = np.full(n, len(kept), dtype=np.int64)
    source[kept] = np.arange(len(kept))
    pad = list(sy)
    pad[axis] = 1
    padded = op.Concat(gy, op.zeros(pad, x), axis=axis)
    gx = op.Gather(padded, op.const(source), axis=axis)
    return [op.reshape(gx, sx) if flat else gx, None]


@vjp_rule("TensorScatter")
def _vjp_tensor_scatter(op: Emitter, node: onnx.NodeProto, gy: str, needs: Needs) -> Grads:
    """g_cache = TensorScatter(gy, zeros); g_update = GatherElements(gy, written positions)."""
    cache, upd = node.input[0], node.input[1]
    wi = node.input[2] if len(node.input) > 2 and node.input[2] else ""
    sc, su = op.g.shape(cache), op.g.shape(upd)
    at = attrs_of(node)
    axis = normalize_axes([at.get("axis", -2)], len(sc))[0]
    mode = at.get("mode", "linear")
    mode = mode.decode() if isinstance(mode, bytes) else str(mode)
    gc = gu = None
    if cache in needs:
        gc = op.TensorScatter(*[gy, op.zeros(su, upd), *([wi] if wi else [])], **at)
    if upd in needs:
        steps = [1] * len(su)
        steps[axis] = su[axis]
        pos = op.const(np.arange(su[axis], dtype=np.int64).reshape(steps))
        if wi:
            lead = [1] * len(su)
            lead[0] = su[0]
            pos = op.Add(pos, op.reshape(op.Cast(wi, to=I64, _dtype=I64), lead))
        if mode == "circular":
            pos = op.Mod(pos, op.ints([sc[axis]]))
        gu = op.GatherElements(gy, op.Expand(pos, op.ints(su)), axis=axis)
    return [gc, gu, *([None] if len(node.input) > 2 else [])]

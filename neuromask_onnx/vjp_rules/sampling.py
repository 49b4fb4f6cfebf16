"""VJP rule of GridSample (opsets 16, 20, 22): the gradient to X and to the grid.

With the grid fixed, GridSample is linear in X: every output point is a weighted sum of a few
taps of X (1 for nearest, 2 per spatial axis for linear, 4 for cubic). The rule recomputes,
from the grid and with standard ops, each tap's source index and weight exactly as onnxruntime
computes them (and onnx's reference `onnx/reference/ops/op_grid_sample.py`, but for one case
below), then scatters
gy times the weight to the source index (ScatterElements, reduction "add", over the flattened
spatial axes): the transpose of the gather the forward performs.

Conventions, per spatial axis of extent d (the grid's last axis lists them in reverse order,
x = width first):

- the normalized coordinate is denormalized ((g + 1) / 2 (d - 1) with align_corners, else
  ((g + 1) d - 1) / 2); nearest rounds it half to even (onnx's Round, PyTorch's and the
  reference's rint);
- taps floor(x) + offset (offsets 0, 1 for linear, -1..2 for cubic, Keys' a = -0.75; the
  rounded x itself for nearest) with weights kernel(s (t - offset)), t = x - floor(x), s = +1
  left of x and -1 right of it;
- padding applies to each tap, as in onnxruntime and PyTorch: a tap outside [0, d - 1] reads
  0 (zeros: its weight is masked), the clamped pixel (border) or the pixel reflected into
  [lo, hi] ([0, d - 1] with align_corners, else [-0.5, d - 0.5]; reflection).

onnx's reference evaluator first clamps or reflects the coordinate itself when it lies outside
[lo, hi]. For reflection (an isometry of the pixel lattice) and for linear and nearest with
border that gives the same taps' sums; for cubic with border it does not (the reference reads
the border pixel with weight 1, onnxruntime and PyTorch four clamped taps): the rule follows
onnxruntime, the runtime the gradient models run on.

The grid's gradient is d Y / d x through the weights (the taps' indices are piecewise constant
in the grid): linear and cubic take the right derivative at integer coordinates (PyTorch's
convention), nearest has none (piecewise constant); clamped or reflected taps need nothing
more, the taps' values carry it. One axis of extent 1 with reflection and
align_corners (the reference divides by a zero range there) samples its only pixel. Inputs
other than 4-D and 5-D, and cubic on 5-D, are refused in one line: onnxruntime runs neither,
so no rule for them could be checked against it.
"""

from __future__ import annotations

import math

import numpy as np
import onnx

from ..graph import Emitter, attrs_of
from .registry import Grads, Needs, vjp_rule

I64 = onnx.TensorProto.INT64
CUBIC_A = -0.75

_MODES = {"bilinear": "linear", "linear": "linear", "nearest": "nearest",
          "bicubic": "cubic", "cubic": "cubic"}
# tap offsets from floor(x) and the side sign s of each tap, per mode
_OFFSETS = {"nearest": ([0.0], [1.0]), "linear": ([0.0, 1.0], [1.0, -1.0]),
            "cubic": ([-1.0, 0.0, 1.0, 2.0], [1.0, 1.0, -1.0, -1.0])}


def _text(v: object, default: str) -> str:
    if v is None:
        return default
    return v.decode() if isinstance(v, bytes) else str(v)


def _reflect(op: Emitter, x: str, lo: float, hi: float) -> str:
    """Integer tap positions x reflected into [lo, hi], as onnxruntime and the reference do."""
    rng = hi - lo
    two, half = op.const(2.0, like=x), op.const(0.5, like=x)
    below, above = op.Less(x, op.const(lo, like=x)), op.Greater(x, op.const(hi, like=x))
    dx = op.Where(below, op.Sub(op.const(lo, like=x), x), op.Sub(x, op.const(hi, like=x)))
    n = op.Floor(op.Div(dx, op.const(rng, like=x)))
    r = op.Sub(dx, op.Mul(n, op.const(rng, like=x)))
    odd = op.Greater(op.Sub(n, op.Mul(two, op.Floor(op.Mul(n, half)))), half)
    from_lo, from_hi = op.Add(op.const(lo, like=x), r), op.Sub(op.const(hi, like=x), r)
    # below: even -> lo + r, odd -> hi - r; above: even -> hi - r, odd -> lo + r
    out = op.Where(below, op.Where(odd, from_hi, from_lo), op.Where(odd, from_lo, from_hi))
    return op.Where(op.Or(below, above), out, x)


def _kernel(op: Emitter, mode: str, d: str) -> tuple[str, str]:
    """The interpolation weights at distances d ([N, P, T]) and their derivatives in d."""
    if mode == "nearest":
        return op.Add(op.Mul(d, op.const(0.0, like=d)), op.const(1.0, like=d)), ""
    if mode == "linear":
        # d w / d d = -1, spelled out at d's shape
        return op.Sub(op.const(1.0, like=d), d), op.Sub(op.Mul(d, op.const(0.0, like=d)),
                                                        op.const(1.0, like=d))
    a = CUBIC_A

    def k(v: float) -> str:
        return op.const(v, like=d)

    d2 = op.Mul(d, d)
    inner = op.Add(op.Mul(op.Sub(op.Mul(k(a + 2), d), k(a + 3)), d2), k(1.0))
    outer = op.Sub(op.Mul(op.Add(op.Mul(op.Sub(op.Mul(k(a), d), k(5 * a)), d), k(8 * a)), d),
                   k(4 * a))
    d_inner = op.Sub(op.Mul(k(3 * (a + 2)), d2), op.Mul(k(2 * (a + 3)), d))
    d_outer = op.Add(op.Sub(op.Mul(k(3 * a), d2), op.Mul(k(10 * a), d)), k(8 * a))
    mid = op.const(np.array([0.0, 1.0, 1.0, 0.0]), like=d)
    side = op.const(np.array([1.0, 0.0, 0.0, 1.0]), like=d)
    w = op.Add(op.Mul(inner, mid), op.Mul(outer, side))
    dw = op.Add(op.Mul(d_inner, mid), op.Mul(d_outer, side))
    return w, dw


def _axis_taps(op: Emitter, comp: str, size: int, mode: str, padding: str,
               align: bool) -> tuple[str, str, str]:
    """One spatial axis: tap indices (int64), weights and d weight / d grid, each [N, P, T]."""
    lo, hi = (0.0, size - 1.0) if align else (-0.5, size - 0.5)

    def k(v: float) -> str:
        return op.const(v, like=comp)

    if align:
        x = op.Mul(op.Mul(op.Add(comp, k(1.0)), k(0.5)), k(size - 1.0))
        scale = (size - 1.0) / 2
    else:
        x = op.Mul(op.Sub(op.Mul(op.Add(comp, k(1.0)), k(float(size))), k(1.0)), k(0.5))
        scale = size / 2
    if mode == "nearest":
        x = op.Round(x)
    offsets, sides = _OFFSETS[mode]
    base = x if mode == "nearest" else op.Floor(x)
    taps = op.Add(base, op.const(np.array(offsets), like=comp))  # [N, P, T]
    d = op.Mul(op.Sub(op.Sub(x, base), op.const(np.array(offsets), like=comp)),
               op.const(np.array(sides), like=comp))
    w, dw = _kernel(op, mode, d)
    dw = (op.Mul(op.Mul(dw, op.const(np.array(sides), like=comp)), k(scale))
          if dw else op.Mul(w, k(0.0)))
    if padding == "zeros":
        valid = op.cast_like(op.And(op.GreaterOrEqual(taps, k(0.0)),
                                    op.LessOrEqual(taps, k(size - 1.0))), comp)
        w, dw = op.Mul(w, valid), op.Mul(dw, valid)
    elif padding == "reflection":
        taps = taps if size == 1 else _reflect(op, taps, lo, hi)
    idx = op.Cast(op.Clip(taps, k(0.0), k(size - 1.0)), to=I64, _dtype=I64)
    return idx, w, dw


@vjp_rule("GridSample")
def _vjp_grid_sample(op: Emitter, node: onnx.NodeProto, gy: str, needs: Needs) -> Grads:
    """gX: gy times each tap's weight, scattered to its source; ggrid: gy . X(taps) dw/dgrid."""
    x, grid = node.input[0], node.input[1]
    sx, sg = op.g.shape(x), op.g.shape(grid)
    attrs = attrs_of(node)
    raw_mode = _text(attrs.get("mode"), "bilinear" if op.g.opset < 20 else "linear")
    if raw_mode not in _MODES:
        msg = f"GridSample {node.name!r}: mode={raw_mode!r} is not a GridSample mode"
        raise NotImplementedError(msg)
    mode = _MODES[raw_mode]
    padding = _text(attrs.get("padding_mode"), "zeros")
    if padding not in ("zeros", "border", "reflection"):
        msg = f"GridSample {node.name!r}: padding_mode={padding!r} is not a GridSample padding"
        raise NotImplementedError(msg)
    align = bool(int(attrs.get("align_corners", 0)))
    n, c, dims = sx[0], sx[1], list(sx[2:])
    if len(dims) not in (2, 3) or (mode == "cubic" and len(dims) != 2):
        msg = (f"GridSample {node.name!r}: {mode} mode on a {len(sx)}-D input has no gradient "
               "rule (4-D inputs, and 5-D for linear and nearest, as onnxruntime runs them)")
        raise NotImplementedError(msg)
    rank, p = len(dims), math.prod(sg[1:-1])
    t = len(_OFFSETS[mode][0]) ** rank
    s = math.prod(dims)
    flat_grid = op.reshape(grid, [n, p, rank])
    idx, w = "", ""
    per_axis = []
    for i, size in enumerate(dims):
        comp = op.Slice(flat_grid, op.ints([rank - 1 - i]), op.ints([rank - i]), op.ints([2]))
        per_axis.append(_axis_taps(op, comp, size, mode, padding, align))
    # combine the axes: tap axis i sits at position 2 + i, the others broadcast
    stride = [math.prod(dims[i + 1:]) for i in range(rank)]
    for i, (ai, wi, _) in enumerate(per_axis):
        shape = [n, p] + [1] * rank
        shape[2 + i] = len(_OFFSETS[mode][0])
        ai = op.reshape(op.Mul(ai, op.ints([stride[i]])), shape)
        wi = op.reshape(wi, shape)
        idx = ai if not idx else op.Add(idx, ai)
        w = wi if not w else op.Mul(w, wi)
    idx = op.reshape(idx, [n, 1, p * t])
    gx = ggrid = None
    g3 = op.reshape(gy, [n, c, p, 1])
    if x in needs:
        wx = w if op.g.dtypes.get(w) == op.g.dtypes.get(x) else op.cast_like(w, x)
        upd = op.reshape(op.Mul(g3, op.reshape(wx, [n, 1, p, t])), [n, c, p * t])
        full = op.Expand(idx, op.ints([n, c, p * t]))
        gx = op.reshape(op.ScatterElements(op.zeros([n, c, s], x), full, upd, axis=2,
                                           reduction="add"), sx)
    if grid in needs and mode == "nearest":  # piecewise constant in the grid
        ggrid = op.zeros(sg, grid)
    elif grid in needs:
        taps = op.GatherElements(op.reshape(x, [n, c, s]), op.Expand(idx, op.ints([n, c, p * t])),
                                 axis=2)
        a = op.ReduceSum(op.Mul(g3, op.reshape(taps, [n, c, p, t])), op.ints([1]), keepdims=0)
        if op.g.dtypes.get(a) != op.g.dtypes.get(grid):
            a = op.cast_like(a, grid)
        comps = []
        for i in range(rank):  # d w / d x_i: axis i's derivative times the others' weights
            prod = ""
            for j, (_, wj, dwj) in enumerate(per_axis):
                shape = [n, p] + [1] * rank
                shape[2 + j] = len(_OFFSETS[mode][0])
                f = op.reshape(dwj if j == i else wj, shape)
                prod = f if not prod else op.Mul(prod, f)
            comps.append(op.ReduceSum(op.Mul(a, op.reshape(prod, [n, p, t])), op.ints([2]),
                                      keepdims=1))
        ggrid = op.reshape(op.Concat(*reversed(comps), axis=2), sg)
    return [gx, ggrid]

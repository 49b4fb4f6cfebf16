"""Graph simplifications applied once, before differentiation, to exporters' leftovers.

Real exports carry patterns that cost nothing in a plain forward pass (onnxruntime fuses them
away) but do cost in the instrumented model, where the backward pass reads the intermediate
values and so blocks those fusions, and where every node on the path adds a gradient node:

- `pad_into_conv`: a zero constant `Pad` on spatial axes only, read by `Conv`s (static SAME
  padding, EfficientNet-Lite, tf2onnx), becomes those convolutions' own pads: the backward
  pass then needs no `Slice`.
- `affine_into_conv`: `BatchNormalization` and per-channel `Mul` / `Add` / `Sub` / `Div` by
  constants (unfused batch norm: paddle2onnx, Keras 3) after a `Conv` are folded into the
  convolution's weights and bias, as long as each intermediate value has no other reader.
- `casts`: a `Cast` to the type its input already has, and a round trip through a wider float
  type (float32 -> float64 -> float32), read their input directly.
- `transposes` (in `sink_transposes`): Transpose pairs that cancel, found by moving each
  `Transpose` below the elementwise ops that read it.

Conventions (the editing helpers are in `nodeedit`): works on the prepared node list (after constant folding, every value with a
static shape and type), returns a new list and never changes a node in place; new values and
constants are named `nm_s<k>_...` and recorded in `shapes` / `dtypes` / `consts`. A value
that is a graph output, or that a subgraph reads from the outer scope, is never removed or
renamed. `ENABLED` (environment variable
`NEUROMASK_SIMPLIFY=0` to switch off, or `with switched(False):`) gates everything, and
`SKIP` names passes to leave out, for A/B measurements; `casts` and `transposes` are left out
by default (`DEFAULT_SKIP`): measured, they bought nothing on the models here.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable, Iterator, Sequence

import numpy as np
import onnx
from onnx import TensorProto

from .nodeedit import PassContext, Shape, attr, copy_node, dead_removed, rewire, uses
from .sink_transposes import transposes

ENABLED = os.environ.get("NEUROMASK_SIMPLIFY", "1") != "0"
# Measured in one process and found to buy nothing (README, cost section): onnxruntime already
# drops same-type Casts and cancels Transpose pairs in the instrumented model itself. They
# stay available (`switched(True, skip=())`) for graphs where they unblock the other passes.
DEFAULT_SKIP = frozenset({"casts", "transposes"})
SKIP: set[str] = set(DEFAULT_SKIP)

_WIDER = {(TensorProto.FLOAT16, TensorProto.FLOAT), (TensorProto.FLOAT16, TensorProto.DOUBLE),
          (TensorProto.FLOAT, TensorProto.DOUBLE), (TensorProto.BFLOAT16, TensorProto.FLOAT),
          (TensorProto.BFLOAT16, TensorProto.DOUBLE)}


@contextlib.contextmanager
def switched(on: bool, skip: Iterable[str] = DEFAULT_SKIP) -> Iterator[None]:
    """Run a block with simplification on or off, the passes in `skip` left out."""
    global ENABLED, SKIP
    old = ENABLED, SKIP
    ENABLED, SKIP = on, set(skip)
    try:
        yield
    finally:
        ENABLED, SKIP = old


# --------------------------------------------------------------------------- the passes


def casts(nodes: list[onnx.NodeProto], c: PassContext) -> list[onnx.NodeProto]:
    producer = {o: n for n in nodes for o in n.output}
    alias: dict[str, str] = {}
    for n in nodes:
        if n.op_type != "Cast" or n.output[0] in c.keep:
            continue
        x, to = n.input[0], attr(n, "to")
        if c.dtypes.get(x) == to:
            alias[n.output[0]] = x
            continue
        p = producer.get(x)
        if p is not None and p.op_type == "Cast" and c.dtypes.get(p.input[0]) == to \
                and (to, attr(p, "to")) in _WIDER:
            alias[n.output[0]] = p.input[0]
    return rewire(nodes, alias) if alias else nodes


def _pads_of(n: onnx.NodeProto, c: PassContext) -> list[int] | None:
    """Begin/end pads of a zero constant Pad on every axis, or None if it is not one."""
    if (attr(n, "mode", b"constant") or b"constant") not in (b"constant", "constant"):
        return None
    given = c.consts.get(n.input[1]) if len(n.input) > 1 else None
    if given is None:
        return None
    if len(n.input) > 2 and n.input[2]:
        value = c.consts.get(n.input[2])
        if value is None or np.any(value != 0):
            return None
    rank = len(c.shapes.get(n.input[0], ()))
    if not rank:
        return None
    pads = [int(p) for p in given]
    if len(n.input) > 3 and n.input[3]:
        axes = c.consts.get(n.input[3])
        if axes is None:
            return None
        full = [0] * (2 * rank)
        for j, a in enumerate(int(a) % rank for a in axes):
            full[a], full[rank + a] = pads[j], pads[len(axes) + j]
        pads = full
    return pads if len(pads) == 2 * rank else None


def pad_into_conv(nodes: list[onnx.NodeProto], c: PassContext) -> list[onnx.NodeProto]:
    readers: dict[str, list[onnx.NodeProto]] = {}
    for n in nodes:
        for i in n.input:
            readers.setdefault(i, []).append(n)
    folded: dict[int, onnx.NodeProto] = {}
    for n in nodes:
        if n.op_type != "Pad" or n.output[0] in c.keep:
            continue
        pads = _pads_of(n, c)
        if pads is None or min(pads) < 0:
            continue
        rank = len(pads) // 2
        if pads[0] or pads[1] or pads[rank] or pads[rank + 1]:
            continue  # batch or channel padding is no convolution padding
        convs = readers.get(n.output[0], [])
        if not convs or any(
                r.op_type != "Conv" or r.input[0] != n.output[0] or n.output[0] in r.input[1:]
                or attr(r, "auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET")
                for r in convs):
            continue
        sp = rank - 2
        for r in convs:
            own = list(attr(r, "pads", [0] * (2 * sp)))
            new = [own[i] + pads[2 + i] for i in range(sp)] + \
                  [own[sp + i] + pads[rank + 2 + i] for i in range(sp)]
            folded[id(r)] = copy_node(r, [n.input[0], *r.input[1:]], pads=new)
    return [folded.get(id(n), n) for n in nodes]


def _per_channel(v: np.ndarray, rank: int, channels: int) -> np.ndarray | None:
    """v as a [channels] vector if it broadcasts over [N, C, ...] along C only."""
    if v.ndim > rank:
        return None
    if v.size == 1:
        return np.full(channels, v.reshape(()), dtype=np.float64)
    full = v.reshape((1,) * (rank - v.ndim) + v.shape)
    if full.shape[1] != channels or any(d != 1 for i, d in enumerate(full.shape) if i != 1):
        return None
    return full.reshape(channels).astype(np.float64)


def affine_into_conv(nodes: list[onnx.NodeProto], c: PassContext) -> list[onnx.NodeProto]:
    counts = uses(nodes, c.keep)
    readers = {i: n for n in nodes for i in n.input if i}
    out: dict[int, onnx.NodeProto | None] = {}
    for n in nodes:
        if n.op_type != "Conv" or id(n) in out or n.input[1] not in c.consts:
            continue
        w = c.consts[n.input[1]]
        if w.dtype not in (np.float32, np.float64, np.float16):
            continue
        b = c.consts.get(n.input[2]) if len(n.input) > 2 and n.input[2] else None
        if len(n.input) > 2 and n.input[2] and b is None:
            continue
        m, rank = w.shape[0], w.ndim
        scale, shift = np.ones(m), np.zeros(m) if b is None else b.astype(np.float64)
        y, absorbed = n.output[0], []
        while counts.get(y) == 1 and y not in c.keep and y in readers:
            r = readers[y]
            s = _affine_step(r, y, c, m, rank)
            if s is None:
                break
            scale, shift = scale * s[0], shift * s[0] + s[1]
            absorbed.append(r)
            y = r.output[0]
        if not absorbed:
            continue
        w2 = (w.astype(np.float64) * scale.reshape((m,) + (1,) * (rank - 1))).astype(w.dtype)
        wn = c.const(w2, "w")
        bn = c.const(shift.astype(w.dtype), "b")
        out[id(n)] = copy_node(n, [n.input[0], wn, bn], [y])
        for r in absorbed:
            out[id(r)] = None
    return [k for k in (out.get(id(n), n) for n in nodes) if k is not None]


def _affine_step(r: onnx.NodeProto, y: str, c: PassContext, m: int, rank: int
                 ) -> tuple[np.ndarray, np.ndarray] | None:
    """(a, b) with r(y) = a * y + b per output channel, or None."""
    if r.op_type == "BatchNormalization":
        if r.input[0] != y or any(r.output[1:]) or attr(r, "training_mode", 0):
            return None
        vals = [c.consts.get(i) for i in r.input[1:5]]
        if any(v is None for v in vals):
            return None
        gamma, beta, mean, var = (np.asarray(v, np.float64).reshape(-1) for v in vals)
        if gamma.size != m:
            return None
        eps = float(attr(r, "epsilon", 1e-5))
        s = gamma / np.sqrt(var + eps)
        return s, beta - mean * s
    if r.op_type not in ("Mul", "Add", "Sub", "Div") or len(r.input) != 2:
        return None
    other = r.input[1] if r.input[0] == y else r.input[0]
    if other == y or other not in c.consts:
        return None
    v = _per_channel(c.consts[other], rank, m)
    if v is None:
        return None
    first = r.input[0] == y
    if r.op_type == "Mul":
        return v, np.zeros(m)
    if r.op_type == "Add":
        return np.ones(m), v
    if r.op_type == "Sub":
        return (np.ones(m), -v) if first else (-np.ones(m), v)
    if not first or np.any(v == 0):
        return None
    return 1.0 / v, np.zeros(m)


PASSES: dict[str, Callable[[list[onnx.NodeProto], PassContext], list[onnx.NodeProto]]] = {
    "casts": casts,
    "transposes": transposes,
    "pad_into_conv": pad_into_conv,
    "affine_into_conv": affine_into_conv,
}


def simplify(nodes: list[onnx.NodeProto], consts: dict[str, np.ndarray],
             shapes: dict[str, Shape], dtypes: dict[str, int],
             keep: Sequence[str]) -> list[onnx.NodeProto]:
    """The simplified node list (the passes in PASSES order, minus SKIP); `keep` names the
    values that must survive under their names (graph inputs and outputs)."""
    if not ENABLED:
        return nodes
    from .control_flow import implicit_inputs  # control_flow imports graph, which imports us

    # A value a subgraph reads from the outer scope (an If branch's x0) is invisible to the
    # passes' reader counts and dead-code sweep: kept like a graph output, never removed.
    reads = {r for n in nodes for r in implicit_inputs(n)}
    c = PassContext(nodes, consts, shapes, dtypes, set(keep) | reads)
    cur = nodes
    for name, run in PASSES.items():
        if name not in SKIP:
            cur = run(cur, c)
    return dead_removed(cur, c.keep)

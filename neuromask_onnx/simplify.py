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
- `transposes`: a `Transpose` is moved below the elementwise ops and keep-dims reductions
  that read it (constants permuted to match) until it meets a `Transpose` that undoes it;
  the pair then disappears (tf2onnx's NHWC islands). A `Transpose` that moves only unit axes
  becomes a `Reshape`. Kept only when the graph ends with fewer `Transpose` nodes.

Conventions: works on the prepared node list (after constant folding, every value with a
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
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper

Shape = tuple[int, ...]

ENABLED = os.environ.get("NEUROMASK_SIMPLIFY", "1") != "0"
# Measured in one process and found to buy nothing (README, cost section): onnxruntime already
# drops same-type Casts and cancels Transpose pairs in the instrumented model itself. They
# stay available (`switched(True, skip=())`) for graphs where they unblock the other passes.
DEFAULT_SKIP = frozenset({"casts", "transposes"})
SKIP: set[str] = set(DEFAULT_SKIP)

_WIDER = {(TensorProto.FLOAT16, TensorProto.FLOAT), (TensorProto.FLOAT16, TensorProto.DOUBLE),
          (TensorProto.FLOAT, TensorProto.DOUBLE), (TensorProto.BFLOAT16, TensorProto.FLOAT),
          (TensorProto.BFLOAT16, TensorProto.DOUBLE)}
_UNARY = frozenset({"Relu", "Clip", "Sigmoid", "Tanh", "HardSigmoid", "HardSwish", "LeakyRelu",
                    "Elu", "Selu", "Softplus", "Neg", "Abs", "Exp", "Log", "Sqrt", "Reciprocal",
                    "Erf", "Identity", "Mish", "Gelu", "Celu", "ThresholdedRelu"})
_BINARY = frozenset({"Add", "Sub", "Mul", "Div", "Max", "Min", "Sum"})
_REDUCE = frozenset({"ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin"})


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


def _attr(node: onnx.NodeProto, name: str, default: Any = None) -> Any:
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


class _Ctx:
    def __init__(self, nodes: list[onnx.NodeProto], consts: dict[str, np.ndarray],
                 shapes: dict[str, Shape], dtypes: dict[str, int], keep: set[str]) -> None:
        self.consts, self.shapes, self.dtypes, self.keep = consts, shapes, dtypes, keep
        self.taken = {v for n in nodes for v in (*n.input, *n.output)} | set(consts) | keep
        self.k = 0

    def fresh(self, hint: str) -> str:
        while True:
            self.k += 1
            name = f"nm_s{self.k}_{hint}"
            if name not in self.taken:
                self.taken.add(name)
                return name

    def const(self, value: np.ndarray, hint: str) -> str:
        name = self.fresh(hint)
        self.consts[name] = value
        self.shapes[name] = tuple(value.shape)
        self.dtypes[name] = helper.np_dtype_to_tensor_dtype(value.dtype)
        return name


def _uses(nodes: Sequence[onnx.NodeProto], keep: set[str]) -> dict[str, int]:
    uses = dict.fromkeys(keep, 1)
    for n in nodes:
        for i in n.input:
            if i:
                uses[i] = uses.get(i, 0) + 1
    return uses


def _copy(node: onnx.NodeProto, inputs: Sequence[str] | None = None,
          outputs: Sequence[str] | None = None, **attrs: object) -> onnx.NodeProto:
    new = helper.make_node(node.op_type, list(node.input if inputs is None else inputs),
                           list(node.output if outputs is None else outputs), name=node.name,
                           domain=node.domain or None)
    new.attribute.extend(a for a in node.attribute if a.name not in attrs)
    for k, v in attrs.items():
        new.attribute.append(helper.make_attribute(k, v))
    return new


def _rewire(nodes: list[onnx.NodeProto], alias: dict[str, str]) -> list[onnx.NodeProto]:
    """Replace every read of a key of `alias` by its value (chains resolved)."""
    def res(v: str) -> str:
        while v in alias:
            v = alias[v]
        return v

    return [_copy(n, [res(i) if i else i for i in n.input])
            if any(i in alias for i in n.input) else n for n in nodes]


def _dead_removed(nodes: list[onnx.NodeProto], keep: set[str]) -> list[onnx.NodeProto]:
    need = set(keep)
    kept = []
    for n in reversed(nodes):
        if any(o in need for o in n.output) or not any(n.output):
            kept.append(n)
            need.update(i for i in n.input if i)
    return kept[::-1]


# --------------------------------------------------------------------------- the passes


def casts(nodes: list[onnx.NodeProto], c: _Ctx) -> list[onnx.NodeProto]:
    producer = {o: n for n in nodes for o in n.output}
    alias: dict[str, str] = {}
    for n in nodes:
        if n.op_type != "Cast" or n.output[0] in c.keep:
            continue
        x, to = n.input[0], _attr(n, "to")
        if c.dtypes.get(x) == to:
            alias[n.output[0]] = x
            continue
        p = producer.get(x)
        if p is not None and p.op_type == "Cast" and c.dtypes.get(p.input[0]) == to \
                and (to, _attr(p, "to")) in _WIDER:
            alias[n.output[0]] = p.input[0]
    return _rewire(nodes, alias) if alias else nodes


def _pads_of(n: onnx.NodeProto, c: _Ctx) -> list[int] | None:
    """Begin/end pads of a zero constant Pad on every axis, or None if it is not one."""
    if (_attr(n, "mode", b"constant") or b"constant") not in (b"constant", "constant"):
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


def pad_into_conv(nodes: list[onnx.NodeProto], c: _Ctx) -> list[onnx.NodeProto]:
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
                or _attr(r, "auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET")
                for r in convs):
            continue
        sp = rank - 2
        for r in convs:
            own = list(_attr(r, "pads", [0] * (2 * sp)))
            new = [own[i] + pads[2 + i] for i in range(sp)] + \
                  [own[sp + i] + pads[rank + 2 + i] for i in range(sp)]
            folded[id(r)] = _copy(r, [n.input[0], *r.input[1:]], pads=new)
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


def affine_into_conv(nodes: list[onnx.NodeProto], c: _Ctx) -> list[onnx.NodeProto]:
    uses = _uses(nodes, c.keep)
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
        while uses.get(y) == 1 and y not in c.keep and y in readers:
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
        out[id(n)] = _copy(n, [n.input[0], wn, bn], [y])
        for r in absorbed:
            out[id(r)] = None
    return [k for k in (out.get(id(n), n) for n in nodes) if k is not None]


def _affine_step(r: onnx.NodeProto, y: str, c: _Ctx, m: int, rank: int
                 ) -> tuple[np.ndarray, np.ndarray] | None:
    """(a, b) with r(y) = a * y + b per output channel, or None."""
    if r.op_type == "BatchNormalization":
        if r.input[0] != y or any(r.output[1:]) or _attr(r, "training_mode", 0):
            return None
        vals = [c.consts.get(i) for i in r.input[1:5]]
        if any(v is None for v in vals):
            return None
        gamma, beta, mean, var = (np.asarray(v, np.float64).reshape(-1) for v in vals)
        if gamma.size != m:
            return None
        eps = float(_attr(r, "epsilon", 1e-5))
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


def _compose(p1: Sequence[int], p2: Sequence[int]) -> list[int]:
    """Transpose(Transpose(x, p1), p2) == Transpose(x, result)."""
    return [int(p1[i]) for i in p2]


def _unit_moves_only(perm: Sequence[int], shape: Shape) -> bool:
    kept = [a for a in perm if shape[a] != 1]
    return kept == sorted(kept)


def _sink_once(nodes: list[onnx.NodeProto], c: _Ctx) -> tuple[list[onnx.NodeProto], bool]:
    """One sweep: cancel or merge Transpose pairs and move Transposes below elementwise ops."""
    producer: dict[str, onnx.NodeProto] = {}
    alias: dict[str, str] = {}
    out: list[onnx.NodeProto] = []
    changed = False

    def perm_of(v: str) -> list[int] | None:
        p = producer.get(v)
        if p is None or p.op_type != "Transpose":
            return None
        perm = _attr(p, "perm")  # None when absent (the default reverses the axes)
        return None if perm is None else [int(a) for a in perm]

    def emit(n: onnx.NodeProto) -> None:
        out.append(n)
        for o in n.output:
            producer[o] = n

    for n in nodes:
        n = _copy(n, [alias.get(i, i) for i in n.input]) if any(i in alias for i in n.input) else n
        y = n.output[0] if n.output else ""
        if y in c.keep or n.domain not in ("", "ai.onnx"):
            emit(n)
            continue
        p1 = perm_of(n.input[0]) if n.op_type == "Transpose" and n.input else None
        if p1 is not None and _attr(n, "perm") is not None:
            inner = producer[n.input[0]].input[0]
            q = _compose(p1, [int(a) for a in _attr(n, "perm")])
            changed = True
            if q == sorted(q):
                alias[y] = inner
            else:
                emit(_copy(n, [inner], perm=q))
            continue
        data = [i for i in n.input if i and i not in c.consts]
        perms = [perm_of(i) for i in data]
        p = perms[0] if perms else None
        ok = p is not None and all(q == p for q in perms) and (
            (n.op_type in _UNARY and len(n.output) == 1)
            or n.op_type in _BINARY
            or (n.op_type in _REDUCE and _attr(n, "keepdims", 1) and len(data) == 1))
        if not ok or p is None:
            emit(n)
            continue
        inv = [int(a) for a in np.argsort(p)]
        rank = len(p)
        ins = []
        for i in n.input:
            if not i:
                ins.append(i)
            elif i in data:
                ins.append(producer[i].input[0])
            elif n.op_type in _BINARY:
                v = c.consts[i]
                if v.ndim > rank:
                    break
                ins.append(c.const(np.transpose(v.reshape((1,) * (rank - v.ndim) + v.shape),
                                                inv), "k"))
            else:
                ins.append(i)
        else:
            if n.op_type in _REDUCE:
                axes = _attr(n, "axes") if len(n.input) < 2 else c.consts.get(n.input[1])
                if axes is None:
                    emit(n)
                    continue
                new_axes = sorted(p[int(a) % rank] for a in axes)
                if len(n.input) >= 2:
                    ins[1] = c.const(np.array(new_axes, np.int64), "axes")
                    moved = _copy(n, ins, [c.fresh(n.op_type)])
                else:
                    moved = _copy(n, ins, [c.fresh(n.op_type)], axes=new_axes)
            else:
                moved = _copy(n, ins, [c.fresh(n.op_type)])
            shp = c.shapes.get(y)
            if shp is None:
                emit(n)
                continue
            c.shapes[moved.output[0]] = tuple(shp[a] for a in inv)
            c.dtypes[moved.output[0]] = c.dtypes[y]
            emit(moved)
            emit(helper.make_node("Transpose", [moved.output[0]], [y], perm=p))
            changed = True
            continue
        emit(n)
    return _dead_removed(_rewire(out, alias), c.keep), changed


def transposes(nodes: list[onnx.NodeProto], c: _Ctx) -> list[onnx.NodeProto]:
    before = sum(n.op_type == "Transpose" for n in nodes)
    if not before:
        return nodes
    cur, changed = nodes, True
    for _ in range(4 * len(nodes)):
        if not changed:
            break
        cur, changed = _sink_once(cur, c)
    out = []
    for n in cur:  # a Transpose that moves unit axes only is a Reshape (no data moves)
        shp = c.shapes.get(n.input[0]) if n.op_type == "Transpose" else None
        perm = _attr(n, "perm") if shp else None
        if shp and perm and n.output[0] in c.shapes and _unit_moves_only(perm, shp):
            target = c.const(np.array(c.shapes[n.output[0]], np.int64), "shape")
            out.append(helper.make_node("Reshape", [n.input[0], target], list(n.output),
                                        name=n.name))
        else:
            out.append(n)
    after = sum(n.op_type == "Transpose" for n in out)
    return out if after < before else nodes


PASSES: dict[str, Callable[[list[onnx.NodeProto], _Ctx], list[onnx.NodeProto]]] = {
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
    c = _Ctx(nodes, consts, shapes, dtypes, set(keep) | reads)
    cur = nodes
    for name, run in PASSES.items():
        if name not in SKIP:
            cur = run(cur, c)
    return _dead_removed(cur, c.keep)

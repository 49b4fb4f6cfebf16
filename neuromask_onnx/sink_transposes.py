"""The `transposes` pass of `simplify`: Transpose pairs that cancel, found by sinking.

A `Transpose` is moved below the elementwise ops and keep-dims reductions that read it
(constants permuted to match) until it meets a `Transpose` that undoes it; the pair then
disappears (tf2onnx's NHWC islands). A `Transpose` that moves only unit axes becomes a
`Reshape`. The result is kept only when the graph ends with fewer `Transpose` nodes.
Off by default (`simplify.DEFAULT_SKIP`): onnxruntime cancels the pairs itself.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
from onnx import helper

from .nodeedit import PassContext, Shape, attr, copy_node, dead_removed, rewire

_UNARY = frozenset({"Relu", "Clip", "Sigmoid", "Tanh", "HardSigmoid", "HardSwish", "LeakyRelu",
                    "Elu", "Selu", "Softplus", "Neg", "Abs", "Exp", "Log", "Sqrt", "Reciprocal",
                    "Erf", "Identity", "Mish", "Gelu", "Celu", "ThresholdedRelu"})
_BINARY = frozenset({"Add", "Sub", "Mul", "Div", "Max", "Min", "Sum"})
_REDUCE = frozenset({"ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin"})


def _compose(p1: Sequence[int], p2: Sequence[int]) -> list[int]:
    """Transpose(Transpose(x, p1), p2) == Transpose(x, result)."""
    return [int(p1[i]) for i in p2]


def _unit_moves_only(perm: Sequence[int], shape: Shape) -> bool:
    kept = [a for a in perm if shape[a] != 1]
    return kept == sorted(kept)


def _sink_once(nodes: list[onnx.NodeProto], c: PassContext) -> tuple[list[onnx.NodeProto], bool]:
    """One sweep: cancel or merge Transpose pairs and move Transposes below elementwise ops."""
    producer: dict[str, onnx.NodeProto] = {}
    alias: dict[str, str] = {}
    out: list[onnx.NodeProto] = []
    changed = False

    def perm_of(v: str) -> list[int] | None:
        p = producer.get(v)
        if p is None or p.op_type != "Transpose":
            return None
        perm = attr(p, "perm")  # None when absent (the default reverses the axes)
        return None if perm is None else [int(a) for a in perm]

    def emit(n: onnx.NodeProto) -> None:
        out.append(n)
        for o in n.output:
            producer[o] = n

    for n in nodes:
        n = copy_node(n, [alias.get(i, i) for i in n.input]) if any(i in alias for i in n.input) else n
        y = n.output[0] if n.output else ""
        if y in c.keep or n.domain not in ("", "ai.onnx"):
            emit(n)
            continue
        p1 = perm_of(n.input[0]) if n.op_type == "Transpose" and n.input else None
        if p1 is not None and attr(n, "perm") is not None:
            inner = producer[n.input[0]].input[0]
            q = _compose(p1, [int(a) for a in attr(n, "perm")])
            changed = True
            if q == sorted(q):
                alias[y] = inner
            else:
                emit(copy_node(n, [inner], perm=q))
            continue
        data = [i for i in n.input if i and i not in c.consts]
        perms = [perm_of(i) for i in data]
        p = perms[0] if perms else None
        ok = p is not None and all(q == p for q in perms) and (
            (n.op_type in _UNARY and len(n.output) == 1)
            or n.op_type in _BINARY
            or (n.op_type in _REDUCE and attr(n, "keepdims", 1) and len(data) == 1))
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
                axes = attr(n, "axes") if len(n.input) < 2 else c.consts.get(n.input[1])
                if axes is None:
                    emit(n)
                    continue
                new_axes = sorted(p[int(a) % rank] for a in axes)
                if len(n.input) >= 2:
                    ins[1] = c.const(np.array(new_axes, np.int64), "axes")
                    moved = copy_node(n, ins, [c.fresh(n.op_type)])
                else:
                    moved = copy_node(n, ins, [c.fresh(n.op_type)], axes=new_axes)
            else:
                moved = copy_node(n, ins, [c.fresh(n.op_type)])
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
    return dead_removed(rewire(out, alias), c.keep), changed


def transposes(nodes: list[onnx.NodeProto], c: PassContext) -> list[onnx.NodeProto]:
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
        perm = attr(n, "perm") if shp else None
        if shp and perm and n.output[0] in c.shapes and _unit_moves_only(perm, shp):
            target = c.const(np.array(c.shapes[n.output[0]], np.int64), "shape")
            out.append(helper.make_node("Reshape", [n.input[0], target], list(n.output),
                                        name=n.name))
        else:
            out.append(n)
    after = sum(n.op_type == "Transpose" for n in out)
    return out if after < before else nodes

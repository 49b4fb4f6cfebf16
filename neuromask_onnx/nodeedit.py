"""The node-list editing that the graph passes of `simplify` and `sink_transposes` share.

A pass works on the prepared node list and never changes a node in place: `copy_node`
makes the changed node, `rewire` redirects reads, `dead_removed` sweeps what no kept value
needs. `PassContext` holds the prepared graph's tables (constants, shapes, element types),
the values that must survive under their names (`keep`), and makes fresh names
(`nm_s<k>_...`) and constants recorded in those tables.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx
from onnx import helper

Shape = tuple[int, ...]


def attr(node: onnx.NodeProto, name: str, default: Any = None) -> Any:
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


class PassContext:
    """The tables a pass reads and extends, and the names it must not reuse or remove."""

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


def uses(nodes: Sequence[onnx.NodeProto], keep: set[str]) -> dict[str, int]:
    uses = dict.fromkeys(keep, 1)
    for n in nodes:
        for i in n.input:
            if i:
                uses[i] = uses.get(i, 0) + 1
    return uses


def copy_node(node: onnx.NodeProto, inputs: Sequence[str] | None = None,
          outputs: Sequence[str] | None = None, **attrs: object) -> onnx.NodeProto:
    new = helper.make_node(node.op_type, list(node.input if inputs is None else inputs),
                           list(node.output if outputs is None else outputs), name=node.name,
                           domain=node.domain or None)
    new.attribute.extend(a for a in node.attribute if a.name not in attrs)
    for k, v in attrs.items():
        new.attribute.append(helper.make_attribute(k, v))
    return new


def rewire(nodes: list[onnx.NodeProto], alias: dict[str, str]) -> list[onnx.NodeProto]:
    """Replace every read of a key of `alias` by its value (chains resolved)."""
    def res(v: str) -> str:
        while v in alias:
            v = alias[v]
        return v

    return [copy_node(n, [res(i) if i else i for i in n.input])
            if any(i in alias for i in n.input) else n for n in nodes]


def dead_removed(nodes: list[onnx.NodeProto], keep: set[str]) -> list[onnx.NodeProto]:
    need = set(keep)
    kept = []
    for n in reversed(nodes):
        if any(o in need for o in n.output) or not any(n.output):
            kept.append(n)
            need.update(i for i in n.input if i)
    return kept[::-1]

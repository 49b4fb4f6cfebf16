"""The prepared graph's types and the questions every module asks of a model's inputs.

The bottom of the graph modules: `Graph` (a prepared model's nodes, constants, static shapes
and element types), the names the rewriter makes (`PREFIX`), the float element types, and
reading a model's real inputs and their dims. It imports nothing of the package but
`errors`, so the loader (`graph`), the folding (`shapes`), the builder (`emitter`) and the
control-flow and function expansions can all build on it without an import cycle.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper

from .errors import ModelContractError

PREFIX = "nm_"
FLOAT_TYPES = frozenset({TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16,
                         TensorProto.BFLOAT16})

TensorName = str
Shape = tuple[int, ...]


def default_opset(model: onnx.ModelProto) -> int:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    return 1


@dataclass
class Graph:
    """A prepared, mutable view of a model: nodes, constants, shapes and element types."""


    model: onnx.ModelProto
    nodes: list[onnx.NodeProto]
    consts: dict[str, np.ndarray]
    shapes: dict[str, Shape]
    dtypes: dict[str, int]
    opset: int
    inputs: list[str]
    outputs: list[str]
    used_names: set[str] = field(default_factory=set)
    # Ops without a rule written out as their ONNX function body (`functions`).
    expanded: set[str] = field(default_factory=set)


    def shape(self, name: str) -> Shape:
        try:
            return self.shapes[name]
        except KeyError:
            msg = f"value {name!r} has no static shape after shape inference"
            raise ModelContractError(msg) from None


    def const(self, name: str) -> np.ndarray | None:
        return self.consts.get(name)


    def is_float(self, name: str) -> bool:
        return self.dtypes.get(name) in FLOAT_TYPES


def graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """The real inputs: graph inputs that are not also initializers (IR < 4 style)."""
    inits = {i.name for i in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in inits]


def value_dims(vi: onnx.ValueInfoProto) -> list[int | str | None]:
    t = vi.type.tensor_type
    if not t.HasField("shape"):
        return []
    out: list[int | str | None] = []
    for d in t.shape.dim:
        if d.HasField("dim_value"):
            out.append(int(d.dim_value))
        elif d.HasField("dim_param"):
            out.append(d.dim_param)
        else:
            out.append(None)
    return out


def input_dims(model: onnx.ModelProto, name: str) -> list[int | str | None]:
    for vi in model.graph.input:
        if vi.name == name:
            return value_dims(vi)
    msg = f"model has no input named {name!r}"
    raise ModelContractError(msg)


def attrs_of(node: onnx.NodeProto) -> dict[str, Any]:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def normalize_axes(axes: Iterable[int], rank: int) -> list[int]:
    return sorted(int(a) + rank if int(a) < 0 else int(a) for a in axes)


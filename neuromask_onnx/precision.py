"""Half-precision models (float16, bfloat16) are explained through their exact float32 upcast.

A gradient accumulated in float16 has three significant digits: a float16 model's mask
gradient computed in its own precision points only roughly the way the float32 model's does.
Every float16 and bfloat16 number is exactly a float32 number, so `upcast_half` rewrites the
model into float32 (initializers, constants, Cast targets, value types, graph I/O, subgraphs)
without changing a single weight; the forward and the backward pass then run in float32, and
the mask gradient is that of the model's own weights to float32 accuracy. The price: the
instrumented model does not run at half speed, and Cast-to-half nodes inside the model
(which round, a piecewise-constant step) become no-ops, the straight-through convention.

`retype` is the general form; tests use it for the float64 copy that finite differences need.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

HALF_TYPES = frozenset({TensorProto.FLOAT16, TensorProto.BFLOAT16})
# Attributes that name an element type (Cast's `to`, the Random*/EyeLike `dtype`).
_TYPE_ATTRS = frozenset({"to", "dtype"})


def is_half(model: onnx.ModelProto) -> bool:
    """Whether any graph input, output, initializer or Cast target is float16 or bfloat16."""
    g = model.graph
    if any(vi.type.tensor_type.elem_type in HALF_TYPES for vi in [*g.input, *g.output]):
        return True
    if any(t.data_type in HALF_TYPES for t in g.initializer):
        return True
    return any(a.name == "to" and a.i in HALF_TYPES for n in _all_nodes(g) for a in n.attribute)


def upcast_half(model: onnx.ModelProto) -> onnx.ModelProto:
    """A float32 copy of a half-precision model (the same function, exactly, before rounding)."""
    return retype(model, HALF_TYPES, TensorProto.FLOAT)


def retype(model: onnx.ModelProto, types: Iterable[int], to: int) -> onnx.ModelProto:
    """A copy of `model` with every float tensor type in `types` replaced by `to`."""
    src = frozenset(types)
    m = onnx.ModelProto()
    m.CopyFrom(model)
    _retype_graph(m.graph, src, to)
    for f in m.functions:
        for node in f.node:
            _retype_node(node, src, to)
    return m


def _all_nodes(g: onnx.GraphProto) -> Iterable[onnx.NodeProto]:
    for node in g.node:
        yield node
        for a in node.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                yield from _all_nodes(a.g)
            elif a.type == onnx.AttributeProto.GRAPHS:
                for sub in a.graphs:
                    yield from _all_nodes(sub)


def _retype_tensor(t: onnx.TensorProto, src: frozenset[int], to: int) -> onnx.TensorProto:
    if t.data_type not in src:
        return t
    if t.data_location == TensorProto.EXTERNAL:
        msg = f"tensor {t.name!r} is stored externally; load the model with its data first"
        raise ValueError(msg)
    arr = numpy_helper.to_array(t).astype(np.float64)
    out = numpy_helper.from_array(arr.astype(helper.tensor_dtype_to_np_dtype(to)), t.name)
    out.doc_string = t.doc_string
    return out


def _retype_value(vi: onnx.ValueInfoProto, src: frozenset[int], to: int) -> None:
    t = vi.type.tensor_type
    if t.elem_type in src:
        t.elem_type = to


def _retype_node(node: onnx.NodeProto, src: frozenset[int], to: int) -> None:
    for a in node.attribute:
        if a.type == onnx.AttributeProto.INT and a.name in _TYPE_ATTRS and a.i in src:
            a.i = to
        elif a.type == onnx.AttributeProto.TENSOR:
            a.t.CopyFrom(_retype_tensor(a.t, src, to))
        elif a.type == onnx.AttributeProto.GRAPH:
            _retype_graph(a.g, src, to)
        elif a.type == onnx.AttributeProto.GRAPHS:
            for sub in a.graphs:
                _retype_graph(sub, src, to)


def _retype_graph(g: onnx.GraphProto, src: frozenset[int], to: int) -> None:
    inits = [_retype_tensor(t, src, to) for t in g.initializer]
    del g.initializer[:]
    g.initializer.extend(inits)
    for vi in [*g.input, *g.output, *g.value_info]:
        _retype_value(vi, src, to)
    for node in g.node:
        _retype_node(node, src, to)

"""Constant folding and static shapes: what `graph.prepare` repeats until nothing changes.

`fold_constants` evaluates every node whose operands are all known (on onnx's reference
evaluator, one node at a time) and turns Shape and Size of a known shape into constants;
`infer_shapes` runs onnx shape inference with the small constants' values; `shapes_at` asks
onnxruntime (else the reference evaluator) for the shapes static inference could not give,
by running the graph at given input values.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .errors import ModelContractError
from .graphtypes import Shape, value_dims

# Folded constants larger than this stay as nodes: they are side computations (attention
# masks, dequantised weights) that onnxruntime computes anyway and that we never read.
_FOLD_LIMIT_BYTES = 64 << 20
_NONDETERMINISTIC = frozenset(
    {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial",
     "Bernoulli"}
)


def _attr_tensor(node: onnx.NodeProto) -> np.ndarray:
    """Value of a `Constant` node, whichever attribute form it uses."""
    a = node.attribute[0]
    if a.name == "value":
        return numpy_helper.to_array(a.t)
    if a.name == "value_float":
        return np.array(a.f, dtype=np.float32)
    if a.name == "value_floats":
        return np.array(list(a.floats), dtype=np.float32)
    if a.name == "value_int":
        return np.array(a.i, dtype=np.int64)
    if a.name == "value_ints":
        return np.array(list(a.ints), dtype=np.int64)
    msg = f"Constant node {node.name!r} uses attribute {a.name!r}, which is not supported"
    raise ModelContractError(msg)


def _eval_node(node: onnx.NodeProto, values: list[np.ndarray | None], opset: int) -> list[Any]:
    from onnx.reference import ReferenceEvaluator

    names = [n if v is not None else "" for n, v in zip(node.input, values, strict=True)]
    feeds = {n: v for n, v in zip(node.input, values, strict=True) if v is not None}
    ins = [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(feeds[n].dtype), None)
           for n in dict.fromkeys(n for n in names if n)]
    outs = [helper.make_tensor_value_info(o, TensorProto.UNDEFINED, None) for o in node.output if o]
    g = helper.make_graph([node], "fold", ins, outs)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    return list(ReferenceEvaluator(m).run(None, feeds))


def fold_constants(nodes: list[onnx.NodeProto], consts: dict[str, np.ndarray],
                   shapes: dict[str, Shape], opset: int) -> tuple[list[onnx.NodeProto], bool]:
    kept: list[onnx.NodeProto] = []
    changed = False
    for node in nodes:
        folded = None
        if node.domain not in ("", "ai.onnx") or any(
            a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
            for a in node.attribute
        ):
            kept.append(node)
            continue
        if node.op_type == "Constant":
            folded = [_attr_tensor(node)]
        elif node.op_type in ("Shape", "Size") and node.input[0] in shapes:
            shp = np.array(shapes[node.input[0]], dtype=np.int64)
            if node.op_type == "Size":
                folded = [np.array(int(np.prod(shp)), dtype=np.int64)]
            else:
                attrs = {a.name: a.i for a in node.attribute}
                start, end = attrs.get("start", 0), attrs.get("end", len(shp))
                folded = [shp[start:end] if "end" in attrs else shp[start:]]
        elif node.op_type not in _NONDETERMINISTIC and all(
            (not i) or i in consts for i in node.input
        ) and node.input:
            try:
                folded = _eval_node(node, [consts[i] if i else None for i in node.input], opset)
            except Exception:  # noqa: BLE001  (a node we cannot fold simply stays a node)
                folded = None
            if folded is not None and sum(np.asarray(v).nbytes for v in folded) > _FOLD_LIMIT_BYTES:
                folded = None
        if folded is None:
            kept.append(node)
            continue
        changed = True
        for name, val in zip(node.output, folded, strict=False):
            if name:
                consts[name] = np.asarray(val)
    return kept, changed


def infer_shapes(model: onnx.ModelProto, nodes: list[onnx.NodeProto], consts: dict[str, np.ndarray],
           input_names: Sequence[str]) -> tuple[dict[str, Shape], dict[str, int]]:
    g = model.graph
    m = onnx.ModelProto()
    m.CopyFrom(model)
    del m.graph.node[:]
    m.graph.node.extend(nodes)
    del m.graph.initializer[:]
    # Inference needs the values of small (shape-like) constants only; big ones (weights)
    # go in as typed inputs, which saves serialising the weights on every round.
    read = [k for k in dict.fromkeys(i for n in nodes for i in n.input) if k in consts]
    small = [k for k in read if consts[k].size <= 4096]
    m.graph.initializer.extend(numpy_helper.from_array(consts[k], k) for k in small)
    del m.graph.input[:]
    m.graph.input.extend(vi for vi in g.input if vi.name in input_names)
    m.graph.input.extend(
        helper.make_tensor_value_info(k, helper.np_dtype_to_tensor_dtype(consts[k].dtype),
                                      list(consts[k].shape))
        for k in read if consts[k].size > 4096)
    del m.graph.value_info[:]
    for o in m.graph.output:
        o.type.tensor_type.ClearField("shape")
    try:
        inferred = onnx.shape_inference.infer_shapes(m, strict_mode=False, data_prop=True)
    except Exception:  # noqa: BLE001  (partial inference is fine: the runtime fills gaps)
        inferred = m
    shapes: dict[str, Shape] = {}
    dtypes: dict[str, int] = {}
    for vi in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        t = vi.type.tensor_type
        if t.elem_type:
            dtypes[vi.name] = t.elem_type
        d = value_dims(vi)
        if t.HasField("shape") and all(isinstance(x, int) for x in d):
            shapes[vi.name] = tuple(int(x) for x in d)  # type: ignore[arg-type]
    for k, v in consts.items():
        shapes[k] = tuple(v.shape)
        dtypes[k] = helper.np_dtype_to_tensor_dtype(v.dtype)
    return shapes, dtypes


def _probe(model: onnx.ModelProto, nodes: list[onnx.NodeProto], consts: dict[str, np.ndarray],
           feeds: dict[str, np.ndarray], wanted: list[str]) -> onnx.ModelProto:
    """`model` with `nodes`, the folded constants as initializers, the fed inputs only and
    `wanted` as its outputs: what either runner below is asked to evaluate."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    del m.graph.node[:]
    m.graph.node.extend(nodes)
    del m.graph.initializer[:]
    m.graph.initializer.extend(numpy_helper.from_array(v, k) for k, v in consts.items())
    del m.graph.input[:]
    m.graph.input.extend(vi for vi in model.graph.input if vi.name in feeds)
    del m.graph.output[:]
    m.graph.output.extend(helper.make_empty_tensor_value_info(n) for n in wanted)
    del m.graph.value_info[:]
    return m


def _shapes_of(wanted: list[str], vals: Iterable[Any]) -> dict[str, tuple[Shape, int]]:
    """name -> (shape, ONNX element type) of the tensor values (sequences and maps skipped)."""
    return {
        n: (tuple(v.shape), helper.np_dtype_to_tensor_dtype(v.dtype))
        for n, v in zip(wanted, vals, strict=True)
        if isinstance(v, np.ndarray) and v.dtype != object
    }


def _shapes_by_running(model: onnx.ModelProto, nodes: list[onnx.NodeProto],
                       consts: dict[str, np.ndarray], feeds: dict[str, np.ndarray],
                       names: Iterable[str]) -> dict[str, tuple[Shape, int]]:
    """Ask onnxruntime for the shapes that static inference could not give."""
    from .runtime import session

    wanted = list(dict.fromkeys(names))
    sess = session(_probe(model, nodes, consts, feeds, wanted), optimize=False)
    return _shapes_of(wanted, [np.asarray(v) for v in sess.run(wanted, feeds)])


def shapes_at(model: onnx.ModelProto, nodes: list[onnx.NodeProto],
               consts: dict[str, np.ndarray], feeds: dict[str, np.ndarray],
               names: Iterable[str]) -> dict[str, tuple[Shape, int]]:
    """Shapes and types of `names` at `feeds`: onnxruntime's, else the reference's."""
    try:
        return _shapes_by_running(model, nodes, consts, feeds, names)
    except Exception:  # noqa: BLE001  (then the missing shapes are reported where needed)
        return _shapes_by_reference(model, nodes, consts, feeds, names)


def _shapes_by_reference(model: onnx.ModelProto, nodes: list[onnx.NodeProto],
                         consts: dict[str, np.ndarray], feeds: dict[str, np.ndarray],
                         names: Iterable[str]) -> dict[str, tuple[Shape, int]]:
    """The same from onnx's reference evaluator, which runs the element types onnxruntime's
    kernels lack (ONNX-ML ops in float64); empty if it cannot run the graph either."""
    from onnx.reference import ReferenceEvaluator

    wanted = list(dict.fromkeys(names))
    try:
        vals = ReferenceEvaluator(_probe(model, nodes, consts, feeds, wanted)).run(wanted, feeds)
    except Exception:  # noqa: BLE001  (then the missing shapes are reported where needed)
        return {}
    return _shapes_of(wanted, vals)


"""Load an ONNX classifier and bring it into the one shape the gradient rules expect.

`prepare` copies the model (the caller's object is never touched), converts opsets below
`MIN_OPSET` upwards, pins every dimension of the explained input, folds every computation that
does not depend on a graph input into constants (shape arithmetic, weight aliases, `Constant`
nodes) and records a static shape and element type for every remaining value. The rules can
then read shapes and constant operands (Reshape targets, Slice bounds, pads, scales) as numpy.

The pieces live in modules of their own, all re-exported here: the types (`graphtypes`:
`Graph`, `Shape`, `PREFIX`, the input readers), the folding and shape probing (`shapes`) and
`Emitter`, the small builder the rules write through (`emitter`). `finish_model` assembles a
model from a prepared graph; `prune` and `pruned` drop the nodes (and initializers) that the
given outputs do not need.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .control_flow import all_inputs, all_names, expand_control_flow
from .emitter import Emitter
from .errors import InputError, ModelContractError
from .functions import expand_functions
from .graphtypes import (
    FLOAT_TYPES,
    PREFIX,
    Graph,
    Shape,
    TensorName,
    attrs_of,
    default_opset,
    graph_inputs,
    input_dims,
    normalize_axes,
)
from .lower import lower_contrib, lower_space_to_depth_crd
from .shapes import fold_constants, infer_shapes, shapes_at
from .simplify import simplify

__all__ = ["FLOAT_TYPES", "MIN_OPSET", "PREFIX", "Emitter", "Graph", "Shape", "TensorName",
           "attrs_of", "default_opset", "finish_model", "fold_constants", "graph_inputs",
           "input_dims", "load_model", "normalize_axes", "prepare", "prune", "pruned"]

MIN_OPSET = 18


def load_model(model: onnx.ModelProto | str | Path) -> onnx.ModelProto:
    """Return a private copy of `model`, reading it from disk (with external data) if a path;
    a broken model (undecodable initializer, rejected by onnx.checker) is an InputError."""
    from .validate import validate

    if isinstance(model, onnx.ModelProto):
        validate(model, "the model")
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        return copy
    path = Path(model)
    if path.is_dir():
        msg = f"model {str(path)!r} is a directory; pass the path of the .onnx file in it"
        raise InputError(msg)
    if not path.is_file():
        msg = f"model file {str(path)!r} does not exist; pass the path of an .onnx file"
        raise InputError(msg)
    try:
        loaded = onnx.load(str(path), load_external_data=True)
    except Exception as exc:  # noqa: BLE001  (protobuf raises unrelated types on garbage)
        msg = f"{str(path)!r} is not a readable ONNX model ({type(exc).__name__}: {exc})"
        raise InputError(msg.splitlines()[0]) from None
    if not loaded.graph.node and not loaded.graph.output:
        msg = f"{str(path)!r} is not an ONNX model (no graph found); pass an exported .onnx file"
        raise InputError(msg)
    validate(loaded, repr(str(path)))
    return loaded


def _inputs_as_constants(model: onnx.ModelProto) -> onnx.ModelProto:
    """Drop the graph inputs that carry an initializer: they are constants, as onnxruntime
    treats them unless the caller feeds them. IR 3 lists every initializer as an input too
    (the ONNX Model Zoo's Caffe2 conversions); IR 4 allows them apart, which shape inference
    then accepts, so the model is raised to IR 4 at least."""
    inits = {i.name for i in model.graph.initializer}
    if not any(vi.name in inits for vi in model.graph.input):
        return model
    real = [vi for vi in model.graph.input if vi.name not in inits]
    del model.graph.input[:]
    model.graph.input.extend(real)
    model.ir_version = max(model.ir_version, 4)
    return model


def _convert_opset(model: onnx.ModelProto) -> onnx.ModelProto:
    if not any(imp.domain in ("", "ai.onnx") for imp in model.opset_import) and not any(
            n.domain in ("", "ai.onnx") for n in model.graph.node):
        # Only other domains (an onnxmltools graph of ai.onnx.ml ops): nothing to convert;
        # the default-domain ops we add are written at MIN_OPSET.
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        copy.opset_import.append(helper.make_opsetid("", MIN_OPSET))
        return copy
    opset = default_opset(model)
    if opset >= MIN_OPSET:
        return model
    from onnx import version_converter

    try:
        legacy: set[str] = set()
        if opset < 11 and any(n.op_type in ("Upsample", "Resize") for n in model.graph.node):
            model = version_converter.convert_version(model, 10)  # Upsample -> Resize-10
            legacy = {n.output[0] for n in model.graph.node if n.op_type == "Resize"}
        converted = version_converter.convert_version(model, MIN_OPSET)
    except Exception as exc:  # noqa: BLE001  (the converter raises bare RuntimeErrors etc.)
        msg = (
            f"could not convert the model from opset {opset} to {MIN_OPSET} "
            f"({str(exc).splitlines()[0][:200]}); re-export it with opset {MIN_OPSET} or newer"
        )
        raise ModelContractError(msg) from None
    # The converter's Resize 10 -> 11 step keeps the new defaults (half_pixel, round_prefer_
    # floor), which changes the function: Upsample and Resize-10 sample asymmetrically and
    # nearest takes the floor (onnxruntime's opset-10 kernel), so spell those out.
    for node in converted.graph.node:
        if node.op_type == "Resize" and node.output[0] in legacy:
            names = {a.name for a in node.attribute}
            if "coordinate_transformation_mode" not in names:
                node.attribute.append(
                    helper.make_attribute("coordinate_transformation_mode", "asymmetric"))
            if "nearest_mode" not in names:
                node.attribute.append(helper.make_attribute("nearest_mode", "floor"))
    return converted


def _explicit_defaults(node: onnx.NodeProto) -> onnx.NodeProto:
    """The node, with the attribute defaults that onnx's shape inference gets wrong spelled out.

    STFT's `onesided` defaults to 1 (the spec, onnxruntime), but onnx's inference (1.23) counts
    the two-sided bins when the attribute is absent, so every later shape would be wrong.
    """
    if (node.op_type == "STFT" and node.domain in ("", "ai.onnx")
            and not any(a.name == "onesided" for a in node.attribute)):
        node = onnx.NodeProto.FromString(node.SerializeToString())  # the caller's stays as is
        node.attribute.append(helper.make_attribute("onesided", 1))
    return node


def prepare(model: onnx.ModelProto, pinned: dict[str, Shape]) -> Graph:
    """Convert, pin the inputs in `pinned`, fold constants and infer static shapes."""
    model = _convert_opset(_inputs_as_constants(model))
    opset = default_opset(model)
    g = model.graph
    consts: dict[str, np.ndarray] = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    real_inputs = [vi.name for vi in graph_inputs(model)]
    for vi in g.input:
        if vi.name in pinned:
            shp = vi.type.tensor_type.shape
            shp.ClearField("dim")
            for d in pinned[vi.name]:
                shp.dim.add().dim_value = int(d)
    nodes = lower_contrib([_explicit_defaults(n) for n in g.node])
    shapes: dict[str, Shape] = {}
    dtypes: dict[str, int] = {}
    # Each round can unlock only the next stage: shape inference stops at a value whose shape
    # needs a not-yet-folded operand (swin_t's dynamic window Pad takes 17 rounds). Every
    # round that changes something removes nodes, so this reaches a fixed point.
    names = all_names(nodes) | set(consts) | {vi.name for vi in g.input}
    written_out: set[str] = set()
    rounds, limit = 0, len(nodes) + 1
    while rounds < limit:
        rounds += 1
        shapes, dtypes = infer_shapes(model, nodes, consts, real_inputs)
        nodes, changed = fold_constants(nodes, consts, shapes, opset)
        # Constant Ifs become their branch, static Loops and Scans their unrolled body.
        nodes, expanded = expand_control_flow(nodes, consts, shapes, names)
        if not changed and not expanded:
            # Settled: ops without a rule that ONNX defines by a function become its body.
            nodes, bodies = expand_functions(nodes, opset, shapes, dtypes, names)
            if not bodies:
                break
            written_out.update(bodies)
            limit = rounds + len(nodes) + 1  # the bodies fold in rounds of their own
    shapes, dtypes = infer_shapes(model, nodes, consts, real_inputs)
    missing = [o for n in nodes for o in n.output if o and (o not in shapes or o not in dtypes)]
    if missing and all(n in pinned for n in real_inputs):
        feeds = {}
        for vi in g.input:
            if vi.name in real_inputs:
                dt = helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type)
                feeds[vi.name] = np.zeros(pinned[vi.name], dtype=dt)
        found = shapes_at(model, nodes, consts, feeds, missing)
        # A shape that the float inputs' values set (OneHot's depth, Range's limit) has no
        # static value: zeros and ones disagree. Integer inputs keep their zeros (a Loop's trip
        # count is refused later with its own reason).
        floats = {k: np.ones_like(v) for k, v in feeds.items() if v.dtype.kind == "f"}
        ones = shapes_at(model, nodes, consts, {**feeds, **floats}, missing) if floats else {}
        moved = [n for n in missing if n in found and n in ones and found[n][0] != ones[n][0]]
        if moved:
            n = moved[0]
            msg = (f"the shape of {n!r} depends on the values of the model's float inputs "
                   f"(zeros give {list(found[n][0])}, ones {list(ones[n][0])}), so no gradient "
                   "graph of static shapes exists; make that size a constant of the model")
            raise ModelContractError(msg)
        for name, (shp, elem) in found.items():
            shapes.setdefault(name, shp)
            dtypes.setdefault(name, elem)
    nodes = lower_space_to_depth_crd(nodes, consts, shapes, dtypes)
    nodes = simplify(nodes, consts, shapes, dtypes, [*real_inputs, *(o.name for o in g.output)])
    used = {n for node in nodes for n in (*node.input, *node.output)}
    used |= set(consts) | {vi.name for vi in g.input} | {vi.name for vi in g.output}
    used |= {node.name for node in g.node if node.name}  # emitted node names stay unique too
    used |= names  # with the names inside subgraphs and those control-flow expansion made
    return Graph(
        model=model,
        nodes=nodes,
        consts=consts,
        shapes=shapes,
        dtypes=dtypes,
        opset=opset,
        inputs=real_inputs,
        outputs=[o.name for o in g.output],
        used_names=used,
        expanded=written_out,
    )


def finish_model(graph: Graph, nodes: list[onnx.NodeProto], inputs: list[onnx.ValueInfoProto],
                 outputs: list[onnx.ValueInfoProto], consts: dict[str, np.ndarray],
                 name: str) -> onnx.ModelProto:
    """Assemble a model from the prepared graph's metadata and the given parts."""
    src = graph.model
    g = helper.make_graph(nodes, name, inputs, outputs,
                          [numpy_helper.from_array(v, k) for k, v in consts.items()])
    opsets = [o for o in src.opset_import if o.domain not in ("", "ai.onnx")]
    opsets.append(helper.make_opsetid("", graph.opset))
    m = helper.make_model(g, opset_imports=opsets, producer_name="neuromask-onnx")
    # onnx stamps its newest IR version, which released onnxruntime builds may refuse.
    m.ir_version = max(src.ir_version, helper.find_min_ir_version_for(opsets, True), 8)
    m.ir_version = min(m.ir_version, 10 if graph.opset <= 22 else 11)
    for f in src.functions:
        m.functions.append(f)
    return m


def prune(nodes: Sequence[onnx.NodeProto], outputs: Sequence[str]) -> list[onnx.NodeProto]:
    """Dead-code elimination: onnxruntime would otherwise run every unused node."""
    need = set(outputs)
    kept = []
    for node in reversed(nodes):
        if any(o in need for o in node.output):
            kept.append(node)
            need.update(i for i in all_inputs(node) if i)
    return kept[::-1]


def pruned(model: onnx.ModelProto, outputs: Sequence[str]) -> onnx.ModelProto:
    """A copy computing only `outputs`: dead nodes and unread initializers dropped."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    keep = [o for o in m.graph.output if o.name in outputs]
    del m.graph.output[:]
    m.graph.output.extend(keep)
    nodes = prune(list(m.graph.node), list(outputs))
    del m.graph.node[:]
    m.graph.node.extend(nodes)
    read = {i for n in nodes for i in all_inputs(n)}
    inits = [t for t in m.graph.initializer if t.name in read]
    del m.graph.initializer[:]
    m.graph.initializer.extend(inits)
    return m


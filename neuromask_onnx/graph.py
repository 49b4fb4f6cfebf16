"""Load an ONNX classifier and bring it into the one shape the gradient rules expect.

`prepare` copies the model (the caller's object is never touched), converts opsets below
`MIN_OPSET` upwards, pins every dimension of the explained input, folds every computation that
does not depend on a graph input into constants (shape arithmetic, weight aliases, `Constant`
nodes) and records a static shape and element type for every remaining value. The rules can
then read shapes and constant operands (Reshape targets, Slice bounds, pads, scales) as numpy.

`Emitter` is the small builder the rules write through: `op.Mul(a, b)` appends a node and
returns its output name; every name it makes starts with `nm_`. `prune` and `pruned` drop
the nodes (and initializers) that the given outputs do not need.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .errors import InputError, ModelContractError
from .simplify import simplify

MIN_OPSET = 18
PREFIX = "nm_"
FLOAT_TYPES = frozenset({TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16,
                         TensorProto.BFLOAT16})
# Folded constants larger than this stay as nodes: they are side computations (attention
# masks, dequantised weights) that onnxruntime computes anyway and that we never read.
_FOLD_LIMIT_BYTES = 64 << 20
_NONDETERMINISTIC = frozenset(
    {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial",
     "Bernoulli"}
)

TensorName = str
Shape = tuple[int, ...]


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


def _dims(vi: onnx.ValueInfoProto) -> list[int | str | None]:
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
            return _dims(vi)
    msg = f"model has no input named {name!r}"
    raise ModelContractError(msg)


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


def _infer(model: onnx.ModelProto, nodes: list[onnx.NodeProto], consts: dict[str, np.ndarray],
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
        d = _dims(vi)
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


def _lower_space_to_depth_crd(nodes: list[onnx.NodeProto], consts: dict[str, np.ndarray],
                              shapes: dict[str, Shape],
                              dtypes: dict[str, int]) -> list[onnx.NodeProto]:
    """SpaceToDepth with mode="CRD" as Reshape -> Transpose -> Reshape.

    SpaceToDepth's mode attribute exists from opset 28 (ONNX's conformance case
    test_spacetodepth_crd_mode_example); the SpaceToDepth rule knows DCR only, so CRD is
    written out in standard ops, whose rules follow the real function.
    """
    out: list[onnx.NodeProto] = []
    for node in nodes:
        mode = next((a.s for a in node.attribute if a.name == "mode"), b"")
        x = node.input[0] if node.input else ""
        if node.op_type != "SpaceToDepth" or mode != b"CRD" or len(shapes.get(x, ())) != 4:
            out.append(node)
            continue
        b = next(int(a.i) for a in node.attribute if a.name == "blocksize")
        n, c, h, w = shapes[x]
        base = f"{PREFIX}s2d_{node.output[0]}"
        split, moved = (n, c, h // b, b, w // b, b), (n, c, b, b, h // b, w // b)
        consts[f"{base}_split"] = np.array(split, dtype=np.int64)
        consts[f"{base}_shape"] = np.array(shapes.get(node.output[0], (n, c * b * b, h // b,
                                                                       w // b)), dtype=np.int64)
        for name, shp, dt in ((f"{base}_split", (6,), TensorProto.INT64),
                              (f"{base}_shape", (4,), TensorProto.INT64),
                              (f"{base}_r", split, dtypes.get(x, TensorProto.FLOAT)),
                              (f"{base}_t", moved, dtypes.get(x, TensorProto.FLOAT))):
            shapes[name], dtypes[name] = tuple(shp), dt
        out += [helper.make_node("Reshape", [x, f"{base}_split"], [f"{base}_r"]),
                helper.make_node("Transpose", [f"{base}_r"], [f"{base}_t"], perm=[0, 1, 3, 5, 2, 4]),
                helper.make_node("Reshape", [f"{base}_t", f"{base}_shape"], [node.output[0]],
                                 name=node.name)]
    return out


def _shapes_at(model: onnx.ModelProto, nodes: list[onnx.NodeProto],
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
    nodes = list(g.node)
    shapes: dict[str, Shape] = {}
    dtypes: dict[str, int] = {}
    # Each round can unlock only the next stage: shape inference stops at a value whose shape
    # needs a not-yet-folded operand (swin_t's dynamic window Pad takes 17 rounds). Every
    # round that changes something removes nodes, so this reaches a fixed point.
    from .control_flow import all_names, expand_control_flow
    from .functions import expand_functions

    names = all_names(nodes) | set(consts) | {vi.name for vi in g.input}
    written_out: set[str] = set()
    rounds, limit = 0, len(nodes) + 1
    while rounds < limit:
        rounds += 1
        shapes, dtypes = _infer(model, nodes, consts, real_inputs)
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
    shapes, dtypes = _infer(model, nodes, consts, real_inputs)
    missing = [o for n in nodes for o in n.output if o and (o not in shapes or o not in dtypes)]
    if missing and all(n in pinned for n in real_inputs):
        feeds = {}
        for vi in g.input:
            if vi.name in real_inputs:
                dt = helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type)
                feeds[vi.name] = np.zeros(pinned[vi.name], dtype=dt)
        found = _shapes_at(model, nodes, consts, feeds, missing)
        # A shape that the float inputs' values set (OneHot's depth, Range's limit) has no
        # static value: zeros and ones disagree. Integer inputs keep their zeros (a Loop's trip
        # count is refused later with its own reason).
        floats = {k: np.ones_like(v) for k, v in feeds.items() if v.dtype.kind == "f"}
        ones = _shapes_at(model, nodes, consts, {**feeds, **floats}, missing) if floats else {}
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
    nodes = _lower_space_to_depth_crd(nodes, consts, shapes, dtypes)
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


# --------------------------------------------------------------------------- the builder


class Emitter:
    """Appends nodes to `self.nodes`; `op.Relu(x)` returns the new output's name.

    Keyword arguments are ONNX attributes, except the reserved `_outputs` (number of outputs)
    and `_dtype` (element type of the output when it differs from the first input's).
    """

    def __init__(self, graph: Graph) -> None:
        self.g = graph
        self.nodes: list[onnx.NodeProto] = []
        self.new_consts: dict[str, np.ndarray] = {}
        self._const_cache: dict[tuple[str, Shape, bytes], str] = {}
        self.wanted: set[str] = set()
        # Expand outputs -> the smaller value they broadcast (see differentiate's total()).
        self.broadcast_of: dict[str, str] = {}
        self._next_suffix: dict[str, int] = {}

    def fresh(self, hint: str) -> str:
        base = hint if hint.startswith(PREFIX) else PREFIX + hint
        base = "".join(c if c.isalnum() or c in "_./:-" else "_" for c in base)
        # Resume each hint's count where it stopped: scanning from 0 made a rule that emits
        # thousands of nodes (an unrolled LSTM) quadratic in their number.
        k = self._next_suffix.get(base, 0)
        name = f"{base}_{k}" if k else base
        while name in self.g.used_names:
            k += 1
            name = f"{base}_{k}"
        self._next_suffix[base] = k + 1
        self.g.used_names.add(name)
        return name

    def emit(self, op_type: str, inputs: Sequence[str], outputs: int = 1, dtype: int | None = None,
             names: Sequence[str] | None = None, **attrs: Any) -> list[str]:
        outs = list(names) if names else [self.fresh(op_type.lower()) for _ in range(outputs)]
        node = helper.make_node(op_type, list(inputs), outs, name=self.fresh("n_" + op_type),
                                **attrs)
        self.nodes.append(node)
        first = next((i for i in inputs if i), None)
        out_type = dtype if dtype is not None else self.g.dtypes.get(first or "", TensorProto.FLOAT)
        for o in outs:
            self.g.dtypes[o] = out_type
        return outs

    def __getattr__(self, op_type: str) -> Callable[..., str]:
        if not op_type[:1].isupper():
            raise AttributeError(op_type)

        def build(*inputs: str, _dtype: int | None = None, **attrs: Any) -> str:
            return self.emit(op_type, inputs, 1, _dtype, **attrs)[0]

        return build

    # constants -----------------------------------------------------------------------
    def const(self, value: Any, like: str | None = None, dtype: Any = None) -> str:
        """A constant initializer, deduplicated; dtype from `like` (a value name) if given."""
        if like is not None:
            dt = helper.tensor_dtype_to_np_dtype(self.g.dtypes.get(like, TensorProto.FLOAT))
        elif dtype is not None:
            dt = np.dtype(dtype)
        else:
            dt = np.asarray(value).dtype
        arr = np.ascontiguousarray(np.asarray(value, dtype=dt))
        key = (arr.dtype.str, tuple(arr.shape), arr.tobytes())
        if key in self._const_cache:
            return self._const_cache[key]
        name = self.fresh("c")
        self.new_consts[name] = arr
        self.g.consts[name] = arr
        self.g.shapes[name] = tuple(arr.shape)
        self.g.dtypes[name] = helper.np_dtype_to_tensor_dtype(arr.dtype)
        self._const_cache[key] = name
        return name

    def ints(self, values: Iterable[int]) -> str:
        return self.const(np.array(list(values), dtype=np.int64))

    def zeros(self, shape: Sequence[int], like: str) -> str:
        dt = self.g.dtypes.get(like, TensorProto.FLOAT)
        value = numpy_helper.from_array(np.zeros(1, dtype=helper.tensor_dtype_to_np_dtype(dt)))
        return self.emit("ConstantOfShape", [self.ints(shape)], dtype=dt, value=value)[0]

    def cast_like(self, x: str, like: str) -> str:
        return self.Cast(x, to=self.g.dtypes.get(like, TensorProto.FLOAT),
                         _dtype=self.g.dtypes.get(like, TensorProto.FLOAT))

    def mask_of(self, cond: str, like: str) -> str:
        """A boolean tensor as 0/1 of `like`'s type (Mul by it beats Where on ORT CPU)."""
        return self.cast_like(cond, like)

    def step(self, x: str, bound: float, above: bool) -> str:
        """[x > bound] (or [x < bound]) as 0/1 of x's type.

        For float32 this is one HardSigmoid, clamp(A (x - bound), 0, 1) with a power-of-two A
        so large that every difference of at least one float32 step saturates: A x is exact
        and the sum's rounding never flips its sign. Unlike Greater + Cast, onnxruntime runs
        HardSigmoid (and the Mul that applies the mask) in its blocked NCHWc layout, so the
        activations and gradients around a convolution need no reorder passes. The one
        inexact case: bound 0 and a subnormal 0 < x < 2^-127 gives a fraction, not 1.
        """
        b = float(np.float32(bound))
        if (self.g.dtypes.get(x) != TensorProto.FLOAT or not np.isfinite(b)
                or 0 < abs(b) < 2.0**-100):
            cmp = self.Greater if above else self.Less
            return self.mask_of(cmp(x, self.const(bound, like=x)), x)
        # A |b| stays below 2^125, so A and A * b are exact float32 numbers.
        a = 2.0 ** (127 if b == 0 else min(127, 124 - int(np.floor(np.log2(abs(b))))))
        if not above:
            return self.HardSigmoid(x, alpha=-a, beta=a * b)
        return self.HardSigmoid(x, alpha=a, beta=-a * b)

    def complement(self, p: str) -> str:
        """1 - p for p in [0, 1] (a sigmoid's output); float32 as HardSigmoid(p; -1, 1).

        Same rounding as Sub (-1 * p is exact) and the clamp is a no-op on [0, 1], but
        onnxruntime keeps HardSigmoid in the NCHWc layout and Sub not.
        """
        if self.g.dtypes.get(p) != TensorProto.FLOAT:
            return self.Sub(self.const(1.0, like=p), p)
        return self.HardSigmoid(p, alpha=-1.0, beta=1.0)

    # shape helpers ---------------------------------------------------------------------
    def reshape(self, x: str, shape: Sequence[int]) -> str:
        if 0 in shape:  # an empty tensor: 0 is a size here, not "copy the input's extent"
            return self.Reshape(x, self.ints(shape), allowzero=1)
        return self.Reshape(x, self.ints(shape))

    def sum_to(self, g: str, from_shape: Shape, to_shape: Shape) -> str:
        """Sum `g` (of `from_shape`) over the axes where `to_shape` was broadcast."""
        from_shape, to_shape = tuple(from_shape), tuple(to_shape)
        if from_shape == to_shape:
            return g
        if self._per_channel(g, from_shape, to_shape):
            # Sum over H W as GlobalAveragePool times H W (a depthwise 1x1 Conv): both stay
            # in onnxruntime's NCHWc layout, where ReduceSum costs a reorder of the whole
            # tensor. The mean-then-scale rounds differently from a sum, well within float32.
            n = from_shape[2] * from_shape[3]
            scale = self.const(np.full((from_shape[1], 1, 1, 1), float(n)), like=g)
            return self.Conv(self.GlobalAveragePool(g), scale, group=from_shape[1])
        lead = len(from_shape) - len(to_shape)
        padded = (1,) * lead + to_shape
        axes = [i for i, (f, t) in enumerate(zip(from_shape, padded, strict=True))
                if (t == 1 and f != 1) or i < lead]
        out = self.ReduceSum(g, self.ints(axes), keepdims=1) if axes else g
        return self.reshape(out, to_shape) if lead else out

    def _per_channel(self, g: str, full: Shape, small: Shape) -> bool:
        """float32 [N, C, H, W] summed to [N, C, 1, 1] (a squeeze-excite scale's gradient)."""
        return (self.g.dtypes.get(g) == TensorProto.FLOAT and len(full) == 4
                and len(small) == 4 and tuple(small) == (full[0], full[1], 1, 1)
                and full[2] * full[3] > 1)

    def expand_to(self, g: str, shape: Shape) -> str:
        out = self.Expand(g, self.ints(shape))
        self.broadcast_of[out] = g
        return out

    def axis_matmul(self, g: str, shape: Shape, axis: int, mat: np.ndarray, like: str) -> str:
        """Contract axis `axis` of `g` (extent mat.shape[0]) with `mat` [out, in]."""
        rank = len(shape)
        m = self.const(mat, like=like)
        if axis == rank - 1:
            return self.MatMul(g, m)
        if axis == rank - 2:
            return self.MatMul(self.const(mat.T, like=like), g)
        perm = [i for i in range(rank) if i != axis] + [axis]
        inv = list(np.argsort(perm))
        return self.Transpose(self.MatMul(self.Transpose(g, perm=perm), m), perm=inv)


def attrs_of(node: onnx.NodeProto) -> dict[str, Any]:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def normalize_axes(axes: Iterable[int], rank: int) -> list[int]:
    return sorted(int(a) + rank if int(a) < 0 else int(a) for a in axes)


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
    from .control_flow import all_inputs  # control_flow builds on graph: import it late

    need = set(outputs)
    kept = []
    for node in reversed(nodes):
        if any(o in need for o in node.output):
            kept.append(node)
            need.update(i for i in all_inputs(node) if i)
    return kept[::-1]


def pruned(model: onnx.ModelProto, outputs: Sequence[str]) -> onnx.ModelProto:
    """A copy computing only `outputs`: dead nodes and unread initializers dropped."""
    from .control_flow import all_inputs

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

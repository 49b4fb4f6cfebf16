"""The driver: turn a classifier into a graph that also returns a loss and its gradient.

`instrument` adds a `nm_mask` input, the masked input x_bar = b + mask (x - b) (b = 0 unless
a `nm_baseline` is given), a per-sample loss on the model's logits against `nm_target` (the
loss heads are in `heads`), and a reverse-mode subgraph built from `vjp_rules` by
`reverse.differentiate`. Only values that depend on the mask and reach the logits get rules;
weights never get gradient nodes; everything the outputs do not need is removed.
`reverse.vjp` is the same driver with user-supplied cotangents (used by `gradcheck`).

Every tensor added starts with `nm_`. The graph I/O names are fixed: inputs `nm_mask`,
`nm_target`, `nm_baseline`; outputs `nm_loss` [N], `nm_grad_mask` (the mask's shape) and
`nm_probs` [N, K]. All dimensions are static: one instrumented model per batch size.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import onnx
from onnx import TensorProto, helper

from . import __version__
from .control_flow import all_inputs, nested_path_nodes, rename_reads, walk_subgraphs
from .errors import InputError, ModelContractError
from .graph import (
    FLOAT_TYPES,
    Emitter,
    Graph,
    Shape,
    graph_inputs,
    input_dims,
    load_model,
    prepare,
)
from .heads import Objective, OutputKind, find_logits, loss_head
from .io_names import BASELINE, GRAD_INPUT, GRAD_MASK, LOSS, MASK, PROBS, TARGET, XBAR
from .lower import LOWERED
from .onnxml import holds_probabilities, zipmap_sources
from .precision import is_half, upcast_half
from .reverse import (
    assemble,
    check_reserved,
    check_supported,
    differentiate,
    marked_values,
    path_nodes,
    unsupported_paths,
)
from .vjp_rules import VJP_RULES, ZERO_GRAD_OPS
from .vjp_rules.registry import NO_GRADIENT_OPS


@dataclass(frozen=True)
class Spec:
    """What `instrument` decided about a model; also stored in the model's metadata."""

    input_name: str
    output_name: str
    input_shape: Shape
    mask_shape: Shape
    mask_axes: tuple[int, ...]
    layout: str
    output_kind: str
    num_classes: int
    logits_name: str



# --------------------------------------------------------------------------- instrument


def _pick_input(m: onnx.ModelProto, name: str | None) -> onnx.ValueInfoProto:
    real = graph_inputs(m)
    if name is not None:
        for vi in real:
            if vi.name == name:
                return vi
        msg = f"model has no input {name!r}; its inputs are {[v.name for v in real]}"
        raise ModelContractError(msg)
    floats = [vi for vi in real if vi.type.tensor_type.elem_type in FLOAT_TYPES]
    if not floats:
        msg = (f"model has no float input to mask (inputs: "
               f"{[(v.name, TensorProto.DataType.Name(v.type.tensor_type.elem_type)) for v in real]})")
        raise ModelContractError(msg)
    if len(real) > 1:
        msg = (f"model has {len(real)} inputs {[v.name for v in real]}; "
               "name the one to explain with --input")
        raise ModelContractError(msg)
    return floats[0]


def _pick_output(m: onnx.ModelProto, name: str | None) -> str:
    outs = list(m.graph.output)
    if name is not None:
        if name not in [o.name for o in outs]:
            msg = f"model has no output {name!r}; its outputs are {[o.name for o in outs]}"
            raise ModelContractError(msg)
        zipped = {v: k for k, v in zipmap_sources(m).items()}
        return zipped.get(name, name)
    floats = [o for o in outs if o.type.tensor_type.elem_type in FLOAT_TYPES]
    sources = zipmap_sources(m)
    if not floats and sources:  # skl2onnx / onnxmltools: probabilities as a ZipMap of maps
        return next(iter(sources))
    if not floats:
        msg = f"model has no float output (outputs: {[o.name for o in outs]}); pass --output"
        raise ModelContractError(msg)
    return str(floats[0].name)


def resolve_shape(dims: Sequence[int | str | None], batch_size: int,
                  input_shape: Sequence[int] | None, name: str) -> Shape:
    """Pin the batch axis to `batch_size` and every other axis from the model or the user."""
    if input_shape is not None:
        if len(input_shape) == len(dims) - 1:
            return (batch_size, *map(int, input_shape))
        if len(input_shape) == len(dims):
            return (batch_size, *map(int, input_shape[1:]))
        msg = (f"--input-shape {list(input_shape)} does not fit input {name!r} of rank "
               f"{len(dims)} (shape {list(dims)})")
        raise InputError(msg)
    if not dims:
        msg = f"input {name!r} declares no shape; pass --input-shape"
        raise ModelContractError(msg)
    if isinstance(dims[0], int) and dims[0] > 0 and dims[0] != batch_size:
        msg = (f"input {name!r} has a fixed batch size of {dims[0]} (the exporter baked it "
               f"in), so the model cannot run batches of {batch_size}; use batch size "
               f"{dims[0]} or re-export with a dynamic batch axis")
        raise ModelContractError(msg)
    rest = dims[1:]
    if not all(isinstance(d, int) and d > 0 for d in rest):
        msg = (f"input {name!r} has dynamic dimensions {list(dims)}; pass the size with "
               "--input-shape (without the batch axis), e.g. --input-shape 3,224,224")
        raise ModelContractError(msg)
    return (batch_size, *rest)  # type: ignore[arg-type]


def default_mask_axes(shape: Shape, layout: str | None) -> tuple[tuple[int, ...], str]:
    """Axes the mask varies over, and the layout name we decided on."""
    rank = len(shape)
    if layout:
        lay = layout.upper()
        if len(lay) != rank or lay[0] != "N" or "C" not in lay:
            msg = f"--layout {layout} does not fit an input of rank {rank} (shape {list(shape)})"
            raise InputError(msg)
        return tuple(i for i, c in enumerate(lay) if c not in "NC"), lay
    if rank == 2:
        return (1,), "NF"
    if rank == 3:
        return (1,), "NTC"
    if rank == 4:
        c_first, c_last = shape[1] <= 4, shape[3] <= 4
        if c_first and not c_last:
            return (2, 3), "NCHW"
        if c_last and not c_first:
            return (1, 2), "NHWC"
        msg = (f"cannot tell whether input shape {list(shape)} is NCHW or NHWC; "
               "pass --layout NCHW or --layout NHWC")
        raise ModelContractError(msg)
    if rank == 5:
        return (2, 3, 4), "NCDHW"
    msg = f"no default mask for an input of rank {rank}; pass --mask-axes"
    raise ModelContractError(msg)



def instrument(
    model: onnx.ModelProto | str | Path,
    *,
    input_name: str | None = None,
    output_name: str | None = None,
    batch_size: int = 1,
    input_shape: Sequence[int] | None = None,
    layout: str | None = None,
    mask_axes: Sequence[int] | None = None,
    output_kind: OutputKind = "auto",
    objective: Objective = "cross_entropy",
    baseline: bool = False,
    wrt: Literal["mask", "input"] = "mask",
    gradient: bool = True,
) -> onnx.ModelProto:
    """Rewrite a classifier so one run returns the loss and its gradient w.r.t. the mask.

    Args:
        model: a ModelProto or a path; never modified.
        input_name / output_name: which input to mask and which output holds the scores
            (defaults: the only float input, the first float output).
        batch_size: the pinned batch size N of the instrumented model.
        input_shape: the input's shape without the batch axis, for dynamic models.
        layout / mask_axes: where the mask varies (default: spatial axes; NCHW/NHWC are
            detected from the channel count).
        output_kind: what the output holds; "auto" strips a final Softmax/LogSoftmax/Sigmoid.
        objective: "cross_entropy" (NeuroMask's loss), or "logit" / "probability" of the target
            (for gradient saliency methods).
        baseline: add an `nm_baseline` input b: x_bar = b + mask (x - b).
        wrt: "mask" (default) or "input": the gradient returned is `nm_grad_input`, d loss / dx.
        gradient: False builds the forward part only (outputs `nm_loss` and `nm_probs`, no
            gradient subgraph, no rule needed): what `estimate` runs for models without rules.

    Returns:
        The instrumented model, passing `onnx.checker` (full check).
    """
    if batch_size < 1:
        msg = f"batch size must be at least 1, got {batch_size}"
        raise InputError(msg)
    m = load_model(model)
    if is_half(m):  # float16 / bfloat16: differentiate the exact float32 copy (precision.py)
        m = upcast_half(m)
    x_vi = _pick_input(m, input_name)
    x = x_vi.name
    xdtype = x_vi.type.tensor_type.elem_type
    if xdtype not in FLOAT_TYPES:
        msg = (f"input {x!r} is {TensorProto.DataType.Name(xdtype)}, not float; "
               "only float inputs can be masked (pick another with --input)")
        raise ModelContractError(msg)
    out = _pick_output(m, output_name)
    shape = resolve_shape(input_dims(m, x), batch_size, input_shape, x)
    if mask_axes is not None:
        axes = tuple(sorted(a + len(shape) if a < 0 else a for a in mask_axes))
        if any(a <= 0 or a >= len(shape) for a in axes):
            msg = f"--mask-axes {list(mask_axes)} must name non-batch axes of {list(shape)}"
            raise InputError(msg)
        lay = "custom"
    else:
        axes, lay = default_mask_axes(shape, layout)
    mshape = tuple(d if (i == 0 or i in axes) else 1 for i, d in enumerate(shape))

    g = prepare(m, {x: shape})
    if gradient:
        check_supported(path_nodes(g.nodes, [x], [out], g), marked_values(g.nodes, [x], g))
    logits, kind = find_logits(g, out, output_kind)
    if (kind == "logits" and output_kind == "auto" and out in zipmap_sources(m)
            and holds_probabilities(g.nodes, out)):
        kind = "probabilities"  # a classifier's probability tensor: it feeds a ZipMap
    zs = g.shape(logits)
    if zs[0] != batch_size:
        msg = f"output {out!r} has shape {list(zs)}, which has no batch axis first"
        raise ModelContractError(msg)
    k = int(np.prod(zs[1:]))
    check_reserved(g, (MASK, TARGET, BASELINE, XBAR, LOSS, GRAD_MASK, GRAD_INPUT, PROBS))
    op = Emitter(g)
    for name in (MASK, TARGET, BASELINE, XBAR):
        g.used_names.add(name)
    g.dtypes[MASK], g.shapes[MASK] = xdtype, mshape
    g.dtypes[TARGET], g.shapes[TARGET] = TensorProto.INT64, (batch_size,)
    g.dtypes[BASELINE], g.shapes[BASELINE] = xdtype, shape

    # x_bar = b + mask (x - b), or mask x; the primal graph then reads x_bar instead of x.
    front: list[onnx.NodeProto] = []
    if wrt == "mask":
        if baseline:
            diff = op.Sub(x, BASELINE)
            front_out = op.Add(BASELINE, op.Mul(MASK, diff))
        else:
            front_out = op.Mul(MASK, x)
        front = list(op.nodes)
        op.nodes.clear()
        for node in front:  # every value of the composite has the input's shape
            g.shapes[node.output[0]] = shape
        front.append(helper.make_node("Identity", [front_out], [XBAR], name=op.fresh("n_xbar")))
        g.dtypes[XBAR], g.shapes[XBAR] = xdtype, shape
        primal = [_rename_input(n, x, XBAR) for n in g.nodes]
        source = MASK
    else:
        primal = list(g.nodes)
        source = x
    loss, probs, seed = loss_head(op, logits, kind, objective, batch_size, k)
    head = list(op.nodes)
    op.nodes.clear()
    if not gradient:
        return _forward_only(g, front + primal + head + op.nodes, x, xdtype, shape, mshape,
                             batch_size, logits, loss, probs, k, baseline and wrt == "mask",
                             Spec(x, out, shape, mshape, axes, lay, kind, k, logits), objective)
    grads = differentiate(op, front + primal, {logits: seed}, [source])
    gsrc = grads[source]
    if gsrc is None:
        msg = f"output {out!r} does not depend on input {x!r}; nothing to explain"
        raise ModelContractError(msg)
    gname = GRAD_MASK if wrt == "mask" else GRAD_INPUT
    tail = [
        helper.make_node("Identity", [gsrc], [gname], name=op.fresh("n_grad")),
        helper.make_node("Identity", [loss], [LOSS], name=op.fresh("n_loss")),
        helper.make_node("Identity", [probs], [PROBS], name=op.fresh("n_probs")),
    ]
    inputs = [helper.make_tensor_value_info(x, xdtype, list(shape))]
    if wrt == "mask":
        inputs.append(helper.make_tensor_value_info(MASK, xdtype, list(mshape)))
    inputs.append(helper.make_tensor_value_info(TARGET, TensorProto.INT64, [batch_size]))
    if baseline and wrt == "mask":
        inputs.append(helper.make_tensor_value_info(BASELINE, xdtype, list(shape)))
    gshape = mshape if wrt == "mask" else shape
    outputs = [
        helper.make_tensor_value_info(LOSS, g.dtypes[logits], [batch_size]),
        helper.make_tensor_value_info(gname, xdtype, list(gshape)),
        helper.make_tensor_value_info(PROBS, g.dtypes[logits], [batch_size, 2 if k == 1 else k]),
    ]
    model_out = assemble(g, front + primal + head + op.nodes + tail, inputs, outputs,
                          "neuromask_instrumented", [seed])
    spec = Spec(x, out, shape, mshape, axes, lay, kind, k, logits)
    _stamp(model_out, spec, objective, wrt, baseline)
    return model_out


def _stamp(model_out: onnx.ModelProto, spec: Spec, objective: str, wrt: str,
           baseline: bool) -> None:
    meta = {"neuromask.version": __version__, "neuromask.input": spec.input_name,
            "neuromask.output": spec.output_name,
            "neuromask.output_kind": spec.output_kind, "neuromask.objective": objective,
            "neuromask.layout": spec.layout,
            "neuromask.mask_axes": ",".join(map(str, spec.mask_axes)),
            "neuromask.num_classes": str(spec.num_classes), "neuromask.wrt": wrt,
            "neuromask.baseline": str(bool(baseline)).lower()}
    helper.set_model_props(model_out, meta)
    model_out.doc_string = f"instrumented by neuromask-onnx {__version__}: {spec}"


def _forward_only(g: Graph, nodes: list[onnx.NodeProto], x: str, xdtype: int, shape: Shape,
                  mshape: Shape, n: int, logits: str, loss: str, probs: str, k: int,
                  baseline: bool, spec: Spec, objective: str) -> onnx.ModelProto:
    """The instrumented model without its gradient: mask in, loss and probabilities out."""
    tail = [helper.make_node("Identity", [loss], [LOSS], name="nm_n_loss_fwd"),
            helper.make_node("Identity", [probs], [PROBS], name="nm_n_probs_fwd")]
    inputs = [helper.make_tensor_value_info(x, xdtype, list(shape)),
              helper.make_tensor_value_info(MASK, xdtype, list(mshape)),
              helper.make_tensor_value_info(TARGET, TensorProto.INT64, [n])]
    if baseline:
        inputs.append(helper.make_tensor_value_info(BASELINE, xdtype, list(shape)))
    outputs = [helper.make_tensor_value_info(LOSS, g.dtypes[logits], [n]),
               helper.make_tensor_value_info(PROBS, g.dtypes[logits], [n, 2 if k == 1 else k])]
    model_out = assemble(g, nodes + tail, inputs, outputs, "neuromask_forward", [])
    _stamp(model_out, spec, objective, "mask", baseline)
    helper.set_model_props(model_out, {**{p.key: p.value for p in model_out.metadata_props},
                                       "neuromask.gradient": "none"})
    return model_out


def _rename_input(node: onnx.NodeProto, old: str, new: str) -> onnx.NodeProto:
    if old not in all_inputs(node):
        return node
    copy = onnx.NodeProto()
    copy.CopyFrom(node)
    for i, name in enumerate(copy.input):
        if name == old:
            copy.input[i] = new
    rename_reads(copy, old, new)  # reads of the input from inside subgraphs
    return copy




ESTIMATED = "no gradient exists; the mask gradient will be estimated"
EXPANDED = "its ONNX function body (the body's ops have rules)"


@dataclass(frozen=True)
class OpStatus:
    """One op type of a model: how many nodes, how many on the input-to-output path."""

    op_type: str
    count: int  # nodes of this type, inside subgraphs too
    on_path: int | None  # None when the path could not be traced (dynamic shapes)
    status: str  # "rule", "no gradient", "unsupported"
    where: tuple[str, ...] = ()  # unsupported nodes on the path: "If 'x' / then_branch / Op 'y'"


def _op_key(n: onnx.NodeProto) -> str:
    return n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}::{n.op_type}"


def op_report(model: onnx.ModelProto | str | Path, *, input_name: str | None = None,
              output_name: str | None = None,
              input_shape: Sequence[int] | None = None) -> list[OpStatus]:
    """Which of the model's ops have rules, and which of them lie on the gradient path.

    Nodes inside subgraphs (If branches, Loop and Scan bodies) count as well; the path is
    traced after constant Ifs are inlined and static Loops and Scans unrolled, and through
    the subgraphs of the control-flow nodes that remain.
    """
    from collections import Counter

    m = load_model(model)
    full = Counter(_op_key(n) for n in m.graph.node)
    full.update(_op_key(n) for _, n in walk_subgraphs(m.graph.node))
    path: Counter[str] | None = None
    where: dict[str, list[str]] = {}
    expanded: set[str] = set()
    try:
        x = _pick_input(m, input_name).name
        out = _pick_output(m, output_name)
        dims = input_dims(m, x)
        batch = dims[0] if dims and isinstance(dims[0], int) and dims[0] > 0 else 1
        g = prepare(m, {x: resolve_shape(dims, batch, input_shape, x)})
        expanded = g.expanded
        on_path = path_nodes(g.nodes, [x], [out], g)
        marked = marked_values(g.nodes, [x], g)
        path = Counter(_op_key(n) for n in on_path)
        for node in on_path:
            path.update(_op_key(n) for _, n in nested_path_nodes(node, marked, ZERO_GRAD_OPS))
        for k in path:  # opset conversion may rename ops (Upsample -> Resize)
            full.setdefault(k, path[k])
        for w, n in unsupported_paths(on_path, marked):
            where.setdefault(_op_key(n), []).append(
                f"{w} / {n.op_type} {n.name!r}" if w else f"{n.op_type} {n.name!r}")
    except (ModelContractError, InputError):
        path = None
    rows = []
    for op_type, count in sorted(full.items()):
        status = ("rule" if op_type in VJP_RULES else
                  "no gradient" if op_type in ZERO_GRAD_OPS else
                  ESTIMATED if op_type in NO_GRADIENT_OPS else
                  EXPANDED if op_type in expanded else
                  "output only (the probabilities it maps are explained)"
                  if op_type == "ai.onnx.ml::ZipMap" else LOWERED.get(op_type, "unsupported"))
        rows.append(OpStatus(op_type, count, None if path is None else path.get(op_type, 0),
                             status, tuple(where.get(op_type, ()))))
    return rows

"""The driver: turn a classifier into a graph that also returns a loss and its gradient.

`instrument` adds a `nm_mask` input, the masked input x_bar = b + mask (x - b) (b = 0 unless
a `nm_baseline` is given), a per-sample loss on the model's logits against `nm_target`, and a
reverse-mode subgraph built from `vjp_rules`. Only values that depend on the mask and reach
the logits get rules; weights never get gradient nodes; everything the outputs do not need is
removed. `vjp` is the same driver with user-supplied cotangents (used by `gradcheck`).

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
from .errors import InputError, ModelContractError, UnsupportedOpError
from .graph import (
    FLOAT_TYPES,
    Emitter,
    Graph,
    Shape,
    finish_model,
    graph_inputs,
    input_dims,
    load_model,
    prepare,
)
from .io_names import BASELINE, GRAD_INPUT, GRAD_MASK, LOSS, MASK, PROBS, TARGET, XBAR
from .onnxml import holds_probabilities, zipmap_sources
from .precision import is_half, upcast_half
from .vjp_rules import (
    FUSED_RULES,
    INTEGER_GRAD_OPS,
    NONDIFF_OPERANDS,
    VJP_RULES,
    ZERO_GRAD_OPS,
    rule_for,
)
from .vjp_rules.registry import NO_GRADIENT_OPS, op_key

OutputKind = Literal["auto", "logits", "softmax", "log_softmax", "sigmoid", "probabilities"]
Objective = Literal["cross_entropy", "logit", "probability"]
FUSED = "nm.fused"  # domain of the nodes fuse_for_backward makes (rules in FUSED_RULES)
_PASSTHROUGH = frozenset({"Identity", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Cast"})


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


# --------------------------------------------------------------------------- the driver


def _marked(nodes: Sequence[onnx.NodeProto], sources: Sequence[str], g: Graph) -> set[str]:
    """Float values that depend on `sources` (the only ones that can carry a gradient)."""
    marked = set(sources)
    for node in nodes:
        if op_key(node) in ZERO_GRAD_OPS:
            continue
        if any(i in marked for i in all_inputs(node)):
            # An unknown type (a custom op's output) counts as float: better a clear
            # "unsupported op" than a silently missing gradient.
            marked.update(o for j, o in enumerate(node.output)
                          if o and (g.dtypes.get(o, TensorProto.FLOAT) in FLOAT_TYPES
                                    or (j == 0 and node.op_type in INTEGER_GRAD_OPS)))
    return marked


def _reaching(nodes: Sequence[onnx.NodeProto], targets: Sequence[str]) -> set[str]:
    """Values that `targets` are computed from."""
    need = set(targets)
    for node in reversed(nodes):
        if any(o in need for o in node.output):
            need.update(i for i in all_inputs(node) if i)
    return need


def path_nodes(nodes: Sequence[onnx.NodeProto], sources: Sequence[str], targets: Sequence[str],
               g: Graph) -> list[onnx.NodeProto]:
    """Nodes that lie on a path from `sources` to `targets`."""
    marked = _marked(nodes, sources, g)
    need = _reaching(nodes, targets)
    return [n for n in nodes if any(i in marked for i in all_inputs(n))
            and any(o in need for o in n.output)]


def unsupported(nodes: Sequence[onnx.NodeProto]) -> list[onnx.NodeProto]:
    return [n for n in nodes if rule_for(n) is None and op_key(n) not in ZERO_GRAD_OPS]


def unsupported_paths(on_path: Sequence[onnx.NodeProto],
                      marked: set[str]) -> list[tuple[str, onnx.NodeProto]]:
    """Unsupported nodes on the gradient path, with where they sit ("" at the top level,
    "If 'x' / then_branch" inside a subgraph of a node that has a rule)."""
    found: list[tuple[str, onnx.NodeProto]] = [("", n) for n in unsupported(on_path)]
    for node in on_path:
        if rule_for(node) is not None:
            found += [(where, n) for where, n in nested_path_nodes(node, marked, ZERO_GRAD_OPS)
                      if rule_for(n) is None and op_key(n) not in ZERO_GRAD_OPS]
    return found


_CONTROL_FLOW_DETAIL = {
    "Loop": "its trip count or condition is not known after constant folding, so it cannot be "
            "unrolled",
    "Scan": "its sequence length is not static, so it cannot be unrolled",
}


def check_supported(on_path: Sequence[onnx.NodeProto], marked: set[str]) -> None:
    """Raise UnsupportedOpError for the first unsupported node on the path, nested or not."""
    bad = unsupported_paths(on_path, marked)
    if bad:
        where, n = bad[0]
        detail = ("no gradient exists; pass --gradient estimate (or auto) to estimate the mask "
                  "gradient from model runs" if op_key(n) in NO_GRADIENT_OPS
                  else _CONTROL_FLOW_DETAIL.get(n.op_type, ""))
        raise UnsupportedOpError(n.op_type, n.name, n.domain, detail, path=where)


def differentiate(op: Emitter, nodes: Sequence[onnx.NodeProto], seeds: dict[str, str],
                  wrt: Sequence[str]) -> dict[str, str | None]:
    """Emit the reverse pass; return the gradient of each `wrt` name (None if it has none)."""
    g = op.g
    on_path = path_nodes(nodes, wrt, list(seeds), g)
    op.wanted = _marked(nodes, wrt, g)
    check_supported(on_path, op.wanted)
    contribs: dict[str, list[str]] = {k: [v] for k, v in seeds.items()}

    def total(name: str) -> str | None:
        parts = contribs.get(name)
        if not parts:
            return None
        if len(parts) > 1:
            # An expanded contribution (a GlobalAveragePool's gradient) joins the others by a
            # broadcasting Add instead: its Expand is then dead, and onnxruntime keeps a
            # per-channel Add in NCHWc where Expand + Sum force two reorder passes.
            full = [p for p in parts if p not in op.broadcast_of]
            small = [op.broadcast_of[p] for p in parts if p in op.broadcast_of]
            if not full or not small:
                contribs[name] = [op.Sum(*parts)]
            else:
                acc = full[0] if len(full) == 1 else op.Sum(*full)
                for s in small:
                    acc = op.Add(acc, s)
                contribs[name] = [acc]
        return contribs[name][0]

    for node in reversed(fuse_for_backward(on_path, nodes)):
        if op_key(node) in ZERO_GRAD_OPS:
            continue
        gys = [total(o) if o else None for o in node.output]
        if all(gy is None for gy in gys):
            continue
        try:
            rule = FUSED_RULES[node.op_type] if node.domain == FUSED else rule_for(node)
            assert rule is not None, node.op_type  # path_nodes() refused rule-less ops
            gxs = rule(op, node, gys)
        except NotImplementedError as exc:
            raise UnsupportedOpError(node.op_type, node.name, node.domain, str(exc)) from None
        # Subgraph ops (If) also return gradients for the outer-scope values they read.
        ins = all_inputs(node)
        if len(gxs) != len(ins):
            msg = f"rule for {node.op_type} returned {len(gxs)} gradients for {len(ins)} inputs"
            raise AssertionError(msg)
        for index, (name, gx) in enumerate(zip(ins, gxs, strict=True)):
            if not name or name not in op.wanted:
                continue
            if gx is None and index in NONDIFF_OPERANDS.get(node.op_type, ()):
                continue  # read for its type or as shape data: a zero gradient
            if gx is None:
                detail = f"no gradient flows to its input {name!r}"
                raise UnsupportedOpError(node.op_type, node.name, node.domain, detail)
            contribs.setdefault(name, []).append(gx)
    return {w: total(w) for w in wrt}


def fuse_for_backward(path: Sequence[onnx.NodeProto],
                      nodes: Sequence[onnx.NodeProto]) -> list[onnx.NodeProto]:
    """Merge x * Sigmoid(x) (SiLU / Swish) into one node for the reverse pass only.

    Differentiated op by op it costs six full-tensor passes (two Mul rules, the Sigmoid rule,
    a Sum of the two paths to x); as one node it costs four. The forward graph is untouched;
    the fused node names the sigmoid output in its doc_string.
    """
    uses: dict[str, int] = {}
    for n in nodes:
        for i in n.input:
            uses[i] = uses.get(i, 0) + 1
    producer = {o: n for n in path for o in n.output}
    fused: list[onnx.NodeProto] = []
    dropped: set[int] = set()
    for n in path:
        if n.op_type == "Mul" and n.domain in ("", "ai.onnx"):
            for s, x in (n.input, n.input[::-1]):
                sig = producer.get(s)
                if (sig is not None and sig.op_type == "Sigmoid" and sig.input[0] == x
                        and uses.get(s) == 1):
                    swish = helper.make_node("Swish", [x], [n.output[0]], name=n.name,
                                             doc_string=s, domain=FUSED)
                    fused.append(swish)
                    dropped.add(id(sig))
                    break
            else:
                fused.append(n)
            continue
        fused.append(n)
    return [n for n in fused if id(n) not in dropped]


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


def seed_last(nodes: Sequence[onnx.NodeProto], seeds: Sequence[str]) -> list[onnx.NodeProto]:
    """Stable partition: the nodes that do not depend on a gradient seed first.

    Trap: onnxruntime's default execution order is a reverse DFS from the outputs that visits
    a node's inputs in descending node index (index = position in this list). In a rule's
    Mul(g, mask(y)) the mask is usually emitted after g's producer, so the DFS would compute
    every such mask right after the forward pass and keep them all alive through the backward
    pass (mobilenet_v2: 35 ReLU6 masks, 24 MB, each read back cold). With every seed-free node
    first, the DFS finishes the gradient chain first and computes each mask just before its use.
    """
    tainted = set(seeds)
    free, chain = [], []
    for n in nodes:
        if any(i in tainted for i in all_inputs(n)):
            tainted.update(n.output)
            chain.append(n)
        else:
            free.append(n)
    return free + chain


def _assemble(g: Graph, nodes: list[onnx.NodeProto], inputs: list[onnx.ValueInfoProto],
              outputs: list[onnx.ValueInfoProto], name: str,
              seeds: Sequence[str]) -> onnx.ModelProto:
    nodes = seed_last(prune(nodes, [o.name for o in outputs]), seeds)
    read = {i for n in nodes for i in all_inputs(n)} | {o.name for o in outputs}
    consts = {k: v for k, v in g.consts.items() if k in read}
    model = finish_model(g, nodes, inputs, outputs, consts, name)
    try:
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        _blame_the_model(g)  # a model that cannot run at these shapes is the user's problem
        msg = f"neuromask-onnx built an invalid graph: {exc}"  # else our bug: keep the trace
        raise AssertionError(msg) from exc
    return model


def _blame_the_model(g: Graph) -> None:
    """Raise ModelContractError if the prepared model itself fails in onnxruntime."""
    from .validate import runtime_error

    shapes = {i: g.shapes[i] for i in g.inputs if i in g.shapes}
    problem = runtime_error(g.model, shapes)
    if problem is not None:
        shown = {k: list(v) for k, v in shapes.items()}
        msg = (f"the model does not run in onnxruntime at input shape {shown} ({problem}); "
               "check the model's weights and shapes, or pass the right --input-shape")
        raise ModelContractError(msg)


def _check_reserved(g: Graph, names: Sequence[str]) -> None:
    """The names of the graph I/O we add must be free in the model."""
    clash = sorted(set(names) & g.used_names)
    if clash:
        msg = (f"the model already uses the names {clash}, which neuromask-onnx reserves for "
               "the values it adds; rename them in the model (e.g. onnx.compose.add_prefix)")
        raise ModelContractError(msg)


def _value_info(g: Graph, name: str, shape: Shape | None = None,
                dtype: int | None = None) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, dtype if dtype is not None else g.dtypes[name],
                                         list(shape if shape is not None else g.shape(name)))


# --------------------------------------------------------------------------- vjp (for checks)


def vjp(model: onnx.ModelProto | str | Path, wrt: Sequence[str] | None = None,
        of: Sequence[str] | None = None) -> onnx.ModelProto:
    """A model computing the outputs `of` and, from cotangent inputs `nm_cot_<out>`,
    the gradients `nm_grad_<in>` of every input in `wrt` (default: all float inputs)."""
    m = load_model(model)
    pinned = {}
    for vi in graph_inputs(m):
        dims = input_dims(m, vi.name)
        if not all(isinstance(d, int) for d in dims):
            msg = f"vjp needs static input shapes; input {vi.name!r} has {dims}"
            raise ModelContractError(msg)
        pinned[vi.name] = tuple(int(d) for d in dims)  # type: ignore[arg-type]
    g = prepare(m, pinned)
    wrt = list(wrt) if wrt is not None else [i for i in g.inputs if g.is_float(i)]
    of = list(of) if of is not None else list(g.outputs)
    op = Emitter(g)
    seeds = {o: f"nm_cot_{o}" for o in of}
    _check_reserved(g, [*seeds.values(), *(f"nm_grad_{w}" for w in wrt)])
    for o, s in seeds.items():
        g.dtypes[s], g.shapes[s] = g.dtypes[o], g.shape(o)
    grads = differentiate(op, g.nodes, seeds, wrt)
    tail = []
    for w in wrt:
        gw = grads[w]
        if gw is None:
            gw = op.zeros(g.shape(w), w)
        tail.append(helper.make_node("Identity", [gw], [f"nm_grad_{w}"]))
    inputs = [_value_info(g, i) for i in g.inputs]
    inputs += [_value_info(g, s, g.shape(o), g.dtypes[o]) for o, s in seeds.items()]
    outputs = [_value_info(g, o) for o in of]
    outputs += [_value_info(g, w) for w in wrt]
    for vi, w in zip(outputs[len(of):], wrt, strict=True):
        vi.name = f"nm_grad_{w}"
    nodes = g.nodes + op.nodes + tail
    return _assemble(g, nodes, inputs, outputs, "nm_vjp", list(seeds.values()))


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


def _find_logits(g: Graph, output: str, kind: OutputKind) -> tuple[str, str]:
    """Walk back from the output through reshapes to a final Softmax/LogSoftmax/Sigmoid."""
    producer = {o: n for n in g.nodes for o in n.output}
    name = output
    while True:
        node = producer.get(name)
        if node is None or node.op_type not in _PASSTHROUGH:
            break
        name = node.input[0]
    node = producer.get(name)
    found = {"Softmax": "softmax", "LogSoftmax": "log_softmax", "Sigmoid": "sigmoid"}.get(
        node.op_type if node is not None else "", "logits")
    if kind == "auto":
        kind = found  # type: ignore[assignment]
    if kind in ("softmax", "log_softmax", "sigmoid"):
        if found != kind:
            msg = (f"--output-kind {kind} but output {output!r} is not produced by a "
                   f"{kind} node (found {node.op_type if node else 'a graph input'}); "
                   "use --output-kind logits or probabilities")
            raise ModelContractError(msg)
        assert node is not None
        return node.input[0], kind
    return output, kind


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
        check_supported(path_nodes(g.nodes, [x], [out], g), _marked(g.nodes, [x], g))
    logits, kind = _find_logits(g, out, output_kind)
    if (kind == "logits" and output_kind == "auto" and out in zipmap_sources(m)
            and holds_probabilities(g.nodes, out)):
        kind = "probabilities"  # a classifier's probability tensor: it feeds a ZipMap
    zs = g.shape(logits)
    if zs[0] != batch_size:
        msg = f"output {out!r} has shape {list(zs)}, which has no batch axis first"
        raise ModelContractError(msg)
    k = int(np.prod(zs[1:]))
    _check_reserved(g, (MASK, TARGET, BASELINE, XBAR, LOSS, GRAD_MASK, GRAD_INPUT, PROBS))
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
    loss, probs, seed = _head(op, logits, kind, objective, batch_size, k)
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
    model_out = _assemble(g, front + primal + head + op.nodes + tail, inputs, outputs,
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
    model_out = _assemble(g, nodes + tail, inputs, outputs, "neuromask_forward", [])
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


def _head(op: Emitter, logits: str, kind: str, objective: str, n: int,
          k: int) -> tuple[str, str, str]:
    """Loss [N], probabilities [N, K'] and the seed gradient d loss / d logits."""
    zshape = op.g.shape(logits)
    z = op.reshape(logits, (n, k)) if zshape != (n, k) else logits
    if kind == "sigmoid" and k > 1:
        # Independent labels: loss = -log sigmoid(z_t) = softplus(-z_t).
        onehot = _onehot(op, k, z)
        probs = op.Sigmoid(z)
        if objective == "cross_entropy":
            loss = op.ReduceSum(op.Mul(onehot, op.Softplus(op.Neg(z))), op.ints([1]), keepdims=0)
            seed = op.Mul(onehot, op.Sub(probs, op.const(1.0, like=z)))
        elif objective == "logit":
            loss = op.ReduceSum(op.Mul(onehot, z), op.ints([1]), keepdims=0)
            seed = onehot
        else:
            loss = op.ReduceSum(op.Mul(onehot, probs), op.ints([1]), keepdims=0)
            seed = op.Mul(onehot, op.Mul(probs, op.Sub(op.const(1.0, like=z), probs)))
        return loss, probs, _back(op, seed, zshape, (n, k))
    if kind == "probabilities":
        return _prob_head(op, z, objective, n, k, zshape)
    binary = k == 1
    if binary:
        # One score: a two-class softmax over [0, z] is exactly the logistic model.
        z = op.Concat(op.zeros((n, 1), z), z, axis=1)
        k = 2
    onehot = _onehot(op, k, z)
    probs = op.Softmax(z, axis=1)
    if objective == "cross_entropy":
        logp = op.LogSoftmax(z, axis=1)
        loss = op.Neg(op.ReduceSum(op.Mul(logp, onehot), op.ints([1]), keepdims=0))
        seed = op.Sub(probs, onehot)
    elif objective == "logit":
        loss = op.ReduceSum(op.Mul(z, onehot), op.ints([1]), keepdims=0)
        seed = onehot
    else:
        pt = op.ReduceSum(op.Mul(probs, onehot), op.ints([1]), keepdims=1)
        loss = op.reshape(pt, (n,))
        seed = op.Mul(pt, op.Sub(onehot, probs))
    if binary:
        seed = op.Slice(seed, op.ints([1]), op.ints([2]), op.ints([1]))
        return loss, probs, _back(op, seed, zshape, (n, 1))
    return loss, probs, _back(op, seed, zshape, (n, k))


def _prob_head(op: Emitter, p: str, objective: str, n: int, k: int,
               zshape: Shape) -> tuple[str, str, str]:
    """The output already holds probabilities from an op we cannot see through."""
    single = k == 1
    if single:  # one probability p of the positive class: the pair is [1 - p, p]
        p = op.Concat(op.Sub(op.const(1.0, like=p), p), p, axis=1)
        k = 2
    onehot = _onehot(op, k, p)
    pt = op.ReduceSum(op.Mul(p, onehot), op.ints([1]), keepdims=1)
    if objective == "cross_entropy":
        # -log(max(p_t, eps)): clipped, so an underflowed probability gives a finite loss.
        eps = op.const(1e-12, like=p)
        safe = op.Max(pt, eps)
        loss = op.reshape(op.Neg(op.Log(safe)), (n,))
        live = op.mask_of(op.Greater(pt, eps), p)
        seed = op.Neg(op.Mul(onehot, op.Div(live, safe)))
    else:
        loss = op.reshape(pt, (n,))
        seed = onehot
    if single:  # d/dp of a function of [1 - p, p]
        pair = op.emit("Split", [seed, op.ints([1, 1])], outputs=2, axis=1)
        return loss, p, _back(op, op.Sub(pair[1], pair[0]), zshape, (n, 1))
    return loss, p, _back(op, seed, zshape, (n, k))


def _onehot(op: Emitter, k: int, like: str) -> str:
    t = op.reshape(TARGET, (-1, 1))
    hit = op.Equal(t, op.const(np.arange(k, dtype=np.int64).reshape(1, k)))
    return op.mask_of(hit, like)


def _back(op: Emitter, seed: str, zshape: Shape, shape: Shape) -> str:
    return op.reshape(seed, zshape) if tuple(zshape) != tuple(shape) else seed


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
        marked = _marked(g.nodes, [x], g)
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
                  if op_type == "ai.onnx.ml::ZipMap" else "unsupported")
        rows.append(OpStatus(op_type, count, None if path is None else path.get(op_type, 0),
                             status, tuple(where.get(op_type, ()))))
    return rows

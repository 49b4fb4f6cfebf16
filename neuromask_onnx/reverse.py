"""The reverse-mode driver: from a prepared graph and gradient seeds, emit the backward pass.

`differentiate` takes the nodes on a path from the values differentiated (`wrt`) to the seeded
outputs (`path_nodes`), walks them in reverse and calls each node's rule from `vjp_rules`;
several contributions to one value are summed. Only float values that depend on `wrt`
(`marked_values`) get gradients, so weights never get gradient nodes: each rule is told
which of its node's inputs those are (`Needs`); an op without a rule on
the path is refused up front (`check_supported`). `assemble` drops what the outputs do not need,
orders the rest for onnxruntime (`seed_last`) and runs `onnx.checker` on the result.

`vjp` is the driver with user-supplied cotangents `nm_cot_<out>` (what `gradcheck` checks);
`rewrite.instrument` is the same driver seeded by a loss head (`heads`). It lives apart from
`rewrite` so the rules that differentiate a subgraph (If, LSTM / GRU / RNN) and the checks
depend on the driver alone, not on the instrumenting front end.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import onnx
from onnx import TensorProto, helper

from .control_flow import all_inputs, nested_path_nodes
from .errors import ModelContractError, UnsupportedOpError
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
    prune,
)
from .vjp_rules import FUSED_RULES, INTEGER_GRAD_OPS, NONDIFF_OPERANDS, ZERO_GRAD_OPS, rule_for
from .vjp_rules.registry import NO_GRADIENT_OPS, Needs, op_key

FUSED = "nm.fused"  # domain of the nodes fuse_for_backward makes (rules in FUSED_RULES)


def marked_values(nodes: Sequence[onnx.NodeProto], sources: Sequence[str], g: Graph) -> set[str]:
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
    marked = marked_values(nodes, sources, g)
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
    "Scan": "it is neither unrolled nor rewritten as a Loop (its opset-8 form with a "
            "sequence_lens input, or an axis of unknown rank); convert the model to opset 9+",
    # Ops that cannot have a rule here, not just ones that lack one.
    "Unique": "its output's length is the number of distinct input values, which a gradient "
              "graph of static shapes cannot follow",
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
    marked = marked_values(nodes, wrt, g)
    check_supported(on_path, marked)
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
            # Subgraph ops (If) also return gradients for the outer-scope values they read.
            ins = all_inputs(node)
            gxs = rule(op, node, gys, Needs.of(ins, marked))
        except NotImplementedError as exc:
            raise UnsupportedOpError(node.op_type, node.name, node.domain, str(exc)) from None
        if len(gxs) != len(ins):
            msg = f"rule for {node.op_type} returned {len(gxs)} gradients for {len(ins)} inputs"
            raise AssertionError(msg)
        for index, (name, gx) in enumerate(zip(ins, gxs, strict=True)):
            if not name or name not in marked:
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
    the fused node names the sigmoid's output in its attribute `sigmoid` (FUSED_RULES'
    Swish reads it there).
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
                                             domain=FUSED, sigmoid=s)
                    fused.append(swish)
                    dropped.add(id(sig))
                    break
            else:
                fused.append(n)
            continue
        fused.append(n)
    return [n for n in fused if id(n) not in dropped]



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


def assemble(g: Graph, nodes: list[onnx.NodeProto], inputs: list[onnx.ValueInfoProto],
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


def check_reserved(g: Graph, names: Sequence[str]) -> None:
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
    check_reserved(g, [*seeds.values(), *(f"nm_grad_{w}" for w in wrt)])
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
    return assemble(g, nodes, inputs, outputs, "nm_vjp", list(seeds.values()))

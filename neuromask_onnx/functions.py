"""Standard ops without a VJP rule written out as their ONNX function body before differentiation.

Many recent ONNX ops are defined by a function in their schema (`Attention` of opset 23-24,
`RotaryEmbedding`, `CenterCropPad`, `NegativeLogLikelihoodLoss`, ...): the body, in older
ops, is the op's reference meaning, and it is what ONNX's own `*_expanded` conformance cases
run. `graph.prepare` calls `expand_functions` once folding has settled; each default-domain
node whose op has no rule (and is not a zero-gradient op) and whose schema at the model's
opset has a function, plain or context-dependent (built for the node's attributes and input
types), is replaced by that body, so the rules of its pieces differentiate it. The forward
pass of the instrumented model then runs the body as well.

Conventions: the body's values get fresh names (`nm_fn_<op>_...`), inside its subgraphs too
(a Scan's step; `control_flow` unrolls it afterwards where it can); attributes the node leaves
out take the schema's defaults before the body is built (as ONNX's test generator does); a
body that the schema cannot build for these types is left alone (the op is then refused as
unsupported, as before).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import onnx
from onnx import helper

from .graphtypes import FLOAT_TYPES, PREFIX, Shape


def _schema(node: onnx.NodeProto, opset: int) -> onnx.defs.OpSchema | None:
    try:
        return onnx.defs.get_schema(node.op_type, opset, "")
    except onnx.defs.SchemaError:
        return None


def _body(node: onnx.NodeProto, opset: int, shapes: dict[str, Shape],
          dtypes: dict[str, int]) -> tuple[onnx.FunctionProto, onnx.NodeProto] | None:
    """The node's function body at `opset` and the node with its attribute defaults filled."""
    schema = _schema(node, opset)
    if schema is None:
        return None
    full = onnx.NodeProto()
    full.CopyFrom(node)
    given = {a.name for a in node.attribute}
    for name, attr in schema.attributes.items():
        if name not in given and attr.default_value.name:
            full.attribute.append(attr.default_value)
    fn = onnx.FunctionProto()
    api: Any = schema  # the function accessors are missing from onnx's type stubs
    plain = [v for v in api.function_opset_versions if v <= opset]
    ctx = [v for v in api.context_dependent_function_opset_versions if v <= opset]
    try:
        if plain:
            fn.ParseFromString(api.get_function_with_opset_version(max(plain)))
        elif ctx:
            if any(i and (i not in dtypes or i not in shapes) for i in node.input):
                return None
            types = [helper.make_tensor_type_proto(dtypes[i], list(shapes[i])) if i
                     else onnx.TypeProto() for i in node.input]
            fn.ParseFromString(api.get_context_dependent_function_with_opset_version(
                max(ctx), full.SerializeToString(), [t.SerializeToString() for t in types]))
        else:
            return None
    except Exception:  # noqa: BLE001  (the schema cannot build it for these types: leave it)
        return None
    return (fn, full) if fn.node else None


def _fresh(used: set[str], hint: str) -> str:
    base = "".join(c if c.isalnum() or c in "_./:-" else "_" for c in f"{PREFIX}fn_{hint}")
    name, k = base, 0
    while name in used:
        k += 1
        name = f"{base}_{k}"
    used.add(name)
    return name


def _expand(node: onnx.NodeProto, fn: onnx.FunctionProto, full: onnx.NodeProto,
            used: set[str]) -> list[onnx.NodeProto]:
    names = {f: (node.input[i] if i < len(node.input) else "") for i, f in enumerate(fn.input)}
    names.update({f: node.output[i] for i, f in enumerate(fn.output)
                  if i < len(node.output) and node.output[i]})
    attrs = {a.name: a for a in full.attribute}
    tag = f"{node.op_type}_{node.name or node.output[0]}"

    def rename(v: str) -> str:
        if not v:
            return ""
        if v not in names:
            names[v] = _fresh(used, f"{tag}_{v}")
        return names[v]

    def copy_node(inner: onnx.NodeProto) -> onnx.NodeProto:
        new = onnx.NodeProto()
        new.CopyFrom(inner)
        del new.input[:], new.output[:], new.attribute[:]
        new.input.extend(rename(i) for i in inner.input)
        new.output.extend(rename(o) for o in inner.output)
        for a in inner.attribute:
            if a.ref_attr_name:
                if a.ref_attr_name in attrs:
                    ref = onnx.AttributeProto()
                    ref.CopyFrom(attrs[a.ref_attr_name])
                    ref.name = a.name
                    new.attribute.append(ref)
                continue
            a2 = onnx.AttributeProto()
            a2.CopyFrom(a)
            if a.type == onnx.AttributeProto.GRAPH:
                a2.g.CopyFrom(copy_graph(a.g))
            elif a.type == onnx.AttributeProto.GRAPHS:
                del a2.graphs[:]
                a2.graphs.extend(copy_graph(sub) for sub in a.graphs)
            new.attribute.append(a2)
        new.name = _fresh(used, f"{tag}_{inner.op_type}")
        return new

    def copy_graph(sub: onnx.GraphProto) -> onnx.GraphProto:
        """A body's subgraph (a Scan's step): one renaming for its local values and its reads
        of the body's values alike (function bodies are in SSA form, so no name is both)."""
        new = onnx.GraphProto()
        new.CopyFrom(sub)
        for vi in [*new.input, *new.output, *new.value_info]:
            vi.name = rename(vi.name)
        for t in new.initializer:
            t.name = rename(t.name)
        del new.node[:]
        new.node.extend(copy_node(n) for n in sub.node)
        return new

    return [copy_node(inner) for inner in fn.node]


def expand_functions(nodes: Iterable[onnx.NodeProto], opset: int, shapes: dict[str, Shape],
                     dtypes: dict[str, int],
                     used: set[str]) -> tuple[list[onnx.NodeProto], list[str]]:
    """The nodes with every rule-less function op written out; and the op types expanded."""
    from .vjp_rules import VJP_RULES, ZERO_GRAD_OPS  # the rules import graph: import late

    out: list[onnx.NodeProto] = []
    done: list[str] = []
    for node in nodes:
        body = None
        # A node without a float input is on no gradient path (an integer Range): left as is.
        if (node.domain in ("", "ai.onnx") and node.op_type not in VJP_RULES
                and node.op_type not in ZERO_GRAD_OPS
                and any(dtypes.get(i) in FLOAT_TYPES for i in node.input if i)):
            body = _body(node, opset, shapes, dtypes)
        if body is None:
            out.append(node)
            continue
        out += _expand(node, body[0], body[1], used)
        done.append(node.op_type)
    return out, done

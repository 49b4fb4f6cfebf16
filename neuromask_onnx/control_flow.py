"""Control flow made plain: constant `If`s inlined; subgraphs searched, copied and renamed.

`graph.prepare` calls `expand_control_flow` after each folding round. An `If` whose condition
folded to a constant becomes the nodes of the branch it takes; short static `Loop`s and `Scan`s
are unrolled and the other `Scan`s become `Loop`s (`unroll`). Copies get fresh names
(`nm_cf_...`), a subgraph's reads of outer-scope values keep pointing at them, and nested
subgraphs are renamed too, so the next round can inline an `If` that was inside a branch.
What cannot be made static stays a node (a data-dependent `If`, a long or runtime-count `Loop`:
their rules are `vjp_rules.control` and `vjp_rules.loop`).

`implicit_inputs` names the outer-scope values a node's subgraphs read: the driver treats
them as extra inputs (they are on the gradient path, they must survive pruning), and
`walk_subgraphs` lists every node inside subgraphs with its path (`If 'x' / then_branch`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .bodies import (
    GRAPH_ATTRS,
    Namer,
    copy_body,
    free_reads,
    identity,
    rename_nested,
    subgraphs,
)
from .graphtypes import Graph, Shape
from .unroll import loop_cond_stays_true, scan_as_loop, unroll_loop, unroll_scan


def implicit_inputs(node: onnx.NodeProto) -> list[str]:
    """Outer-scope values read by the node's subgraphs (empty for ordinary nodes)."""
    if not any(a.type in GRAPH_ATTRS for a in node.attribute):
        return []
    reads: list[str] = []
    for _, g in subgraphs(node):
        reads.extend(free_reads(g))
    return [r for r in dict.fromkeys(reads) if r not in node.input]


def all_inputs(node: onnx.NodeProto) -> list[str]:
    """The node's inputs followed by its subgraphs' outer-scope reads."""
    extra = implicit_inputs(node)
    return [*node.input, *extra] if extra else list(node.input)


def walk_subgraphs(nodes: Iterable[onnx.NodeProto],
                   path: str = "") -> Iterator[tuple[str, onnx.NodeProto]]:
    """(path, node) for every node nested inside the subgraphs of `nodes`, depth first."""
    for n in nodes:
        for attr, g in subgraphs(n):
            where = f"{path}{n.op_type} {n.name!r} / {attr}"
            for inner in g.node:
                yield where, inner
            yield from walk_subgraphs(g.node, where + " / ")


def all_names(nodes: Iterable[onnx.NodeProto]) -> set[str]:
    """Every value and node name used by `nodes` and their subgraphs."""
    names: set[str] = set()
    for n in nodes:
        names.update(i for i in n.input if i)
        names.update(o for o in n.output if o)
        if n.name:
            names.add(n.name)
        for _, g in subgraphs(n):
            names |= {i.name for i in g.input} | {t.name for t in g.initializer}
            names |= {o.name for o in g.output}
            names |= all_names(g.node)
    return names


def rename_reads(node: onnx.NodeProto, old: str, new: str) -> None:
    """Point the node's subgraphs' outer-scope reads of `old` at `new` (in place)."""
    for a in node.attribute:
        if a.type == onnx.AttributeProto.GRAPH:
            rename_nested(a.g, {old: new})
        elif a.type == onnx.AttributeProto.GRAPHS:
            for sub in a.graphs:
                rename_nested(sub, {old: new})


# --------------------------------------------------------------------------- expanding


def _inline_if(node: onnx.NodeProto, consts: dict[str, np.ndarray],
               namer: Namer) -> list[onnx.NodeProto] | None:
    cond = consts.get(node.input[0])
    if cond is None or cond.size != 1:
        return None
    take = "then_branch" if bool(cond.reshape(-1)[0]) else "else_branch"
    branch = next((g for a, g in subgraphs(node) if a == take), None)
    if branch is None or len(branch.output) != len(node.output):
        return None
    nodes, outs = copy_body(branch, {}, namer, consts, node.name or "if")
    nodes += [identity(s, d, namer) for s, d in zip(outs, node.output, strict=True) if d]
    return nodes


def expand_control_flow(nodes: list[onnx.NodeProto], consts: dict[str, np.ndarray],
                        shapes: dict[str, Shape],
                        used: set[str]) -> tuple[list[onnx.NodeProto], bool]:
    """Inline constant Ifs, unroll short static Loops and Scans, turn the other Scans into
    Loops; say whether anything changed."""
    namer = Namer(used)
    out: list[onnx.NodeProto] = []
    changed = False
    for node in nodes:
        new = None
        if node.domain in ("", "ai.onnx"):
            if node.op_type == "If":
                new = _inline_if(node, consts, namer)
            elif node.op_type == "Loop":
                new = unroll_loop(node, consts, namer)
            elif node.op_type == "Scan":
                new = unroll_scan(node, consts, shapes, namer) or scan_as_loop(
                    node, consts, shapes, namer)
        if new is None and _has_nested_scan(node):
            copy = _nested_scans_as_loops(node, consts, shapes, namer)
            new = [copy] if copy is not None else None
        if new is None:
            out.append(node)
        else:
            out.extend(new)
            changed = True
    return out, changed


def _is_scan(node: onnx.NodeProto) -> bool:
    return node.op_type == "Scan" and node.domain in ("", "ai.onnx")


def _has_nested_scan(node: onnx.NodeProto) -> bool:
    return any(_is_scan(n) or _has_nested_scan(n) for _, g in subgraphs(node) for n in g.node)


def _nested_scans_as_loops(node: onnx.NodeProto, consts: dict[str, np.ndarray],
                           shapes: dict[str, Shape], namer: Namer) -> onnx.NodeProto | None:
    """A copy of `node` whose subgraphs hold Loops where they held Scans (the If and Loop
    rules differentiate Loops; what a branch holds is never unrolled), or None if none could
    be rewritten."""
    copy = onnx.NodeProto()
    copy.CopyFrom(node)
    changed = False
    for _, g in subgraphs(copy):
        out: list[onnx.NodeProto] = []
        for n in g.node:
            inner = (_nested_scans_as_loops(n, consts, shapes, namer)
                     if _has_nested_scan(n) else None)
            n = inner or n
            loop = scan_as_loop(n, consts, shapes, namer) if _is_scan(n) else None
            out.extend(loop or [n])
            changed = changed or inner is not None or loop is not None
        del g.node[:]
        g.node.extend(out)
    return copy if changed else None


def fold_local(g: Graph, nodes: list[onnx.NodeProto]) -> list[onnx.NodeProto]:
    """Fold the constant parts of copied branch nodes into `g.consts` (Constant nodes,
    Unsqueeze of constants) and record static shapes: what `prepare` does for the top level."""
    from .shapes import fold_constants

    for _ in range(len(nodes) + 1):
        infer_local(g, nodes)
        nodes, changed = fold_constants(nodes, g.consts, g.shapes, g.opset)
        if not changed:
            break
    infer_local(g, nodes)
    return nodes


def infer_local(g: Graph, nodes: list[onnx.NodeProto]) -> None:
    """Record static shapes and types of the values `nodes` compute (a copied branch body).

    The nodes read outer values whose shapes `g` knows; small constants go in as values so
    that Reshape targets and Slice bounds resolve.
    """
    for k, v in g.consts.items():
        if k not in g.shapes:
            g.shapes[k], g.dtypes[k] = tuple(v.shape), helper.np_dtype_to_tensor_dtype(v.dtype)
    made = {o for n in nodes for o in n.output if o}
    reads = [r for r in dict.fromkeys(i for n in nodes for i in all_inputs(n) if i)
             if r not in made]
    inits = [numpy_helper.from_array(g.consts[r], r) for r in reads
             if r in g.consts and g.consts[r].size <= 4096]
    known = {t.name for t in inits}
    vis = [helper.make_tensor_value_info(r, g.dtypes.get(r, onnx.TensorProto.FLOAT),
                                         list(g.shapes[r]) if r in g.shapes else None)
           for r in reads if r not in known]
    outs = [helper.make_empty_tensor_value_info(o) for o in sorted(made)]
    for _ in range(2):  # again once the Loops' carried outputs are known (onnx leaves them)
        hints = _loop_output_shapes(g, nodes)
        graph = helper.make_graph(nodes, "local", vis, outs, inits, value_info=hints)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
        try:
            inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False,
                                                         data_prop=True)
        except Exception:  # noqa: BLE001  (values left without a shape are reported where read)
            return
        for vi in [*inferred.graph.value_info, *inferred.graph.output]:
            t = vi.type.tensor_type
            if t.elem_type:
                g.dtypes[vi.name] = t.elem_type
            dims = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
            if t.HasField("shape") and all(d is not None for d in dims):
                g.shapes[vi.name] = tuple(int(d) for d in dims)  # type: ignore[arg-type]
        if not _loop_output_shapes(g, nodes):
            return


def _loop_output_shapes(g: Graph, nodes: list[onnx.NodeProto]) -> list[onnx.ValueInfoProto]:
    """Loop outputs onnx's inference left without a shape: a loop-carried value whose body
    output declares the initial value's static shape keeps it, and with a constant number of
    iterations M a scan output of declared static shape S is [M, *S]."""
    found = []
    for n in nodes:
        body = next((sub for a, sub in subgraphs(n) if a == "body"), None)
        if n.op_type != "Loop" or n.domain not in ("", "ai.onnx") or body is None:
            continue
        trip, cond = [*n.input, ""][:2]
        count = (int(g.consts[trip].reshape(-1)[0]) if trip in g.consts and (
            not cond or (cond in g.consts and g.consts[cond].all()))
            and loop_cond_stays_true(body, g.consts) else None)
        n_state = len(n.input) - 2
        for k, out in enumerate(n.output):
            t = body.output[1 + k].type.tensor_type
            dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim)
            if not out or out in g.shapes or not t.HasField("shape") or -1 in dims:
                continue
            if k < n_state and g.shapes.get(n.input[2 + k]) == dims:
                g.shapes[out] = dims
            elif k >= n_state and count is not None:
                g.shapes[out] = (count, *dims)
            else:
                continue
            g.dtypes.setdefault(out, t.elem_type)
            found.append(helper.make_tensor_value_info(out, g.dtypes[out], list(g.shapes[out])))
    return found


def nested_path_nodes(node: onnx.NodeProto, marked: set[str], zero_grad: frozenset[str],
                      prefix: str = "") -> Iterator[tuple[str, onnx.NodeProto]]:
    """(path, node) for the nodes inside `node`'s subgraphs that lie on a gradient path.

    A subgraph value is on the path when it depends on a `marked` outer value (one that
    depends on the input) and reaches the subgraph's outputs; `zero_grad` ops stop the
    dependence. Nested subgraphs are searched too, their paths joined by " / ".
    """
    for attr, g in subgraphs(node):
        where = f"{prefix}{node.op_type} {node.name!r} / {attr}"
        inner = {r for r in free_reads(g) if r in marked}
        for n in g.node:
            if n.op_type not in zero_grad and any(i in inner for i in all_inputs(n)):
                inner.update(o for o in n.output if o)
        need = {o.name for o in g.output}
        for n in reversed(g.node):
            if any(o in need for o in n.output):
                need.update(i for i in all_inputs(n) if i)
        for n in g.node:
            if any(i in inner for i in all_inputs(n)) and any(o in need for o in n.output):
                yield where, n
                yield from nested_path_nodes(n, inner | marked, zero_grad, where + " / ")

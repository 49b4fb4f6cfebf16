"""Loops and Scans made plain where that is cheap: short static ones unrolled, the rest as Loops.

`control_flow.expand_control_flow` calls these after each folding round. A `Loop` with a
constant trip count (and a condition that stays true) and a `Scan` over a static axis become
their body copied once per iteration, while the copies stay below `UNROLL_LIMIT` nodes:
onnxruntime runs straight-line code fastest, and a few iterations of a small body cost little
to copy. Longer ones, and those whose length is known only at run time, stay a `Loop` (a
`Scan` is rewritten as one by `scan_as_loop`), which the Loop rule (`vjp_rules.loop`)
differentiates with a reverse Loop: the graph grows by one body, not one per iteration.

Why 1000 node copies (`python tools/bench_loop_unroll.py`, a 4-node tanh body, one thread,
two runs on a shared CPU): the unrolled gradient runs 1.7-4x faster than the reverse Loop
(which recomputes each iteration's forward and pays onnxruntime's per-iteration overhead),
but building it and creating its session cost 0.3-0.5 ms per gradient-model node (1000
iterations: 8004 nodes, 2.3-3.9 s, against 28 nodes and under 0.2 s), and the graph and the
memory of its saved values grow without bound. At 1000 copies (250 iterations of that body)
the unrolled set-up stays under a second and the gradient model near 2000 nodes; past that
the Loop's constant size wins.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .bodies import Namer, copy_body, identity, subgraphs
from .bodies import const as _const
from .graphtypes import Shape

# Unroll a Loop or Scan only while its copies stay below this many nodes (see above).
UNROLL_LIMIT = 1000


def loop_cond_stays_true(body: onnx.GraphProto, consts: dict[str, np.ndarray]) -> bool:
    """The body's output condition is its input condition passed through, or a constant
    true (a body initializer, a Constant node, or an outer-scope constant, maybe through an
    Identity: torch's exporter writes Identity(outer true))."""
    cond_in, cond_out = body.input[1].name, body.output[0].name
    inits = {t.name: t for t in body.initializer}
    for _ in range(len(body.node) + 1):
        if cond_out == cond_in:
            return True
        if cond_out in inits:
            return bool(numpy_helper.to_array(inits[cond_out]).all())
        prod = next((n for n in body.node if cond_out in n.output), None)
        if prod is None:  # an outer-scope value
            return cond_out in consts and bool(consts[cond_out].all())
        if prod.op_type == "Constant" and prod.attribute and prod.attribute[0].name == "value":
            return bool(numpy_helper.to_array(prod.attribute[0].t).all())
        if prod.op_type != "Identity":
            return False
        cond_out = prod.input[0]
    return False


def unroll_loop(node: onnx.NodeProto, consts: dict[str, np.ndarray],
                 namer: Namer) -> list[onnx.NodeProto] | None:
    ins = [*node.input, "", ""]
    trip, cond = ins[0], ins[1]
    body = next((g for a, g in subgraphs(node) if a == "body"), None)
    if body is None or len(body.input) < 2 or not body.output:
        return None
    if not trip or trip not in consts or (cond and cond not in consts):
        return None
    if cond and not bool(consts[cond].all()):
        return None
    count = int(consts[trip].reshape(-1)[0])
    if count <= 0 or count * max(len(body.node), 1) > UNROLL_LIMIT or not loop_cond_stays_true(
            body, consts):
        return None
    carried = list(node.input[2:])
    n_state = len(carried)
    true = _const(consts, namer, np.array(True), "true")
    nodes: list[onnx.NodeProto] = []
    scans: list[list[str]] = []
    for it in range(count):
        bound = {body.input[0].name: _const(consts, namer, np.array(it, np.int64), "iter"),
                 body.input[1].name: true}
        bound.update({vi.name: c for vi, c in zip(body.input[2:], carried, strict=True)})
        copied, outs = copy_body(body, bound, namer, consts, f"{node.name or 'loop'}_{it}")
        nodes += copied
        carried = outs[1:1 + n_state]
        scans.append(outs[1 + n_state:])
    for src, dst in zip(carried, node.output[:n_state], strict=True):
        if dst:
            nodes.append(identity(src, dst, namer))
    axes = _const(consts, namer, np.array([0], np.int64), "axes")
    for k, dst in enumerate(node.output[n_state:]):
        if not dst:
            continue
        parts = []
        for it in range(count):
            p = namer.fresh(f"scan_{k}_{it}")
            nodes.append(helper.make_node("Unsqueeze", [scans[it][k], axes], [p],
                                          name=namer.fresh("unsqueeze")))
            parts.append(p)
        nodes.append(helper.make_node("Concat", parts, [dst], axis=0, name=namer.fresh("concat")))
    return nodes


def unroll_scan(node: onnx.NodeProto, consts: dict[str, np.ndarray], shapes: dict[str, Shape],
                 namer: Namer) -> list[onnx.NodeProto] | None:
    at = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    body = at.get("body")
    if not isinstance(body, onnx.GraphProto) or "num_scan_inputs" not in at:
        return None
    m = int(at["num_scan_inputs"])
    n_state = len(node.input) - m
    scan_ins = list(node.input[n_state:])
    in_axes = list(at.get("scan_input_axes", [0] * m))
    in_dirs = list(at.get("scan_input_directions", [0] * m))
    k_out = len(body.output) - n_state
    out_axes = list(at.get("scan_output_axes", [0] * k_out))
    out_dirs = list(at.get("scan_output_directions", [0] * k_out))
    if any(s not in shapes for s in scan_ins) or not scan_ins:
        return None
    ranks = [len(shapes[s]) for s in scan_ins]
    in_axes = [a + r if a < 0 else a for a, r in zip(in_axes, ranks, strict=True)]
    count = shapes[scan_ins[0]][in_axes[0]]
    if count <= 0 or count * max(len(body.node), 1) > UNROLL_LIMIT:
        return None
    carried = list(node.input[:n_state])
    nodes: list[onnx.NodeProto] = []
    per_iter: list[list[str]] = []
    for it in range(count):
        bound = {vi.name: c for vi, c in zip(body.input[:n_state], carried, strict=True)}
        for j, (src, axis, rev) in enumerate(zip(scan_ins, in_axes, in_dirs, strict=True)):
            idx = _const(consts, namer, np.array(count - 1 - it if rev else it, np.int64), "idx")
            elem = namer.fresh(f"scan_in_{j}_{it}")
            nodes.append(helper.make_node("Gather", [src, idx], [elem], axis=axis,
                                          name=namer.fresh("gather")))
            bound[body.input[n_state + j].name] = elem
        copied, outs = copy_body(body, bound, namer, consts, f"{node.name or 'scan'}_{it}")
        nodes += copied
        carried = outs[:n_state]
        per_iter.append(outs[n_state:])
    for src, dst in zip(carried, node.output[:n_state], strict=True):
        if dst:
            nodes.append(identity(src, dst, namer))
    for k, dst in enumerate(node.output[n_state:]):
        if not dst:
            continue
        rank = len(body.output[n_state + k].type.tensor_type.shape.dim) + 1
        axis = out_axes[k] + rank if out_axes[k] < 0 else out_axes[k]
        ax = _const(consts, namer, np.array([axis], np.int64), "axes")
        order = range(count - 1, -1, -1) if out_dirs[k] else range(count)
        parts = []
        for it in order:
            p = namer.fresh(f"scan_out_{k}_{it}")
            nodes.append(helper.make_node("Unsqueeze", [per_iter[it][k], ax], [p],
                                          name=namer.fresh("unsqueeze")))
            parts.append(p)
        nodes.append(helper.make_node("Concat", parts, [dst], axis=axis,
                                      name=namer.fresh("concat")))
    return nodes




def scan_as_loop(node: onnx.NodeProto, consts: dict[str, np.ndarray], shapes: dict[str, Shape],
                 namer: Namer) -> list[onnx.NodeProto] | None:
    """The Scan as a Loop over its first scan input's axis, for the Loop rule.

    The body Gathers element i of each scan input (flipped first for a reverse one, Slice step
    -1), read from the outer scope, under the name of the body input it replaces: the Loop
    rule gives such a read its gradient one element per iteration. The Loop stacks the scan
    outputs on axis 0 in iteration order; a reverse output is flipped (Slice, step -1) and an
    output axis other than 0 moved there (Transpose). None for the opset-8 form (a
    `sequence_lens` input) and where an output's rank is unknown.
    """
    at = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    body = at.get("body")
    if not isinstance(body, onnx.GraphProto) or "num_scan_inputs" not in at:
        return None
    m = int(at["num_scan_inputs"])
    if len(node.input) != len(body.input) or m < 1:
        return None  # opset 8: sequence_lens first
    n_state = len(node.input) - m
    k_out = len(body.output) - n_state
    in_axes = list(at.get("scan_input_axes", [0] * m))
    in_dirs = list(at.get("scan_input_directions", [0] * m))
    out_axes = list(at.get("scan_output_axes", [0] * k_out))
    out_dirs = list(at.get("scan_output_directions", [0] * k_out))
    ranks = []
    for k in range(k_out):
        dst = node.output[n_state + k] if n_state + k < len(node.output) else ""
        t = body.output[n_state + k].type.tensor_type
        if dst in shapes:
            ranks.append(len(shapes[dst]))
        elif t.HasField("shape"):
            ranks.append(len(t.shape.dim) + 1)
        elif out_axes[k] == 0:
            ranks.append(0)  # not needed: no Transpose
        else:
            return None
    scan_ins = list(node.input[n_state:])
    nodes: list[onnx.NodeProto] = []

    def emit(op_type: str, inputs: list[str], **attrs: Any) -> str:
        out = namer.fresh(op_type.lower())
        nodes.append(helper.make_node(op_type, inputs, [out], name=namer.fresh(op_type),
                                      **attrs))
        return out

    in_axes = [a + len(shapes[s]) if a < 0 and s in shapes else a
               for a, s in zip(in_axes, scan_ins, strict=True)]
    if any(a < 0 for a in in_axes):
        return None
    axis0 = _const(consts, namer, np.array(in_axes[0], np.int64), "axis")
    count = emit("Gather", [emit("Shape", [scan_ins[0]]), axis0], axis=0)
    it, cond_in, cond_out = namer.fresh("scan_i"), namer.fresh("scan_c"), namer.fresh("scan_c")
    inner = [helper.make_node("Identity", [cond_in], [cond_out], name=namer.fresh("identity"))]
    for src, vi, axis, rev in zip(scan_ins, body.input[n_state:], in_axes, in_dirs, strict=True):
        if rev:  # flipped outside: every read is Gather(outer, i), one element per iteration
            src = emit("Slice", [src, *(_const(consts, namer, np.array([v], np.int64), "sl")
                                        for v in (-1, np.iinfo(np.int64).min, axis, -1))])
        inner.append(helper.make_node("Gather", [src, it], [vi.name], axis=axis,
                                      name=namer.fresh("gather")))
    loop_body = onnx.GraphProto()
    loop_body.CopyFrom(body)
    loop_body.name = namer.fresh(f"{node.name or 'scan'}_as_loop")
    del loop_body.input[:]
    loop_body.input.extend([helper.make_tensor_value_info(it, onnx.TensorProto.INT64, []),
                            helper.make_tensor_value_info(cond_in, onnx.TensorProto.BOOL, []),
                            *body.input[:n_state]])
    del loop_body.node[:]
    loop_body.node.extend([*inner, *body.node])
    loop_body.output.insert(0, helper.make_tensor_value_info(cond_out, onnx.TensorProto.BOOL,
                                                             []))
    stacked = [namer.fresh(f"scan_stacked_{k}") for k in range(k_out)]
    loop = helper.make_node("Loop", [count, "", *node.input[:n_state]],
                            [*node.output[:n_state], *stacked],
                            name=node.name or namer.fresh("loop"), body=loop_body)
    nodes.append(loop)
    for k in range(k_out):
        dst = node.output[n_state + k] if n_state + k < len(node.output) else ""
        if not dst:
            continue
        value = stacked[k]
        if out_dirs[k]:
            value = emit("Slice", [value, *(_const(consts, namer, np.array([v], np.int64), "sl")
                                            for v in (-1, np.iinfo(np.int64).min, 0, -1))])
        axis = out_axes[k] + ranks[k] if out_axes[k] < 0 else out_axes[k]
        if axis:
            perm = [*range(1, axis + 1), 0, *range(axis + 1, ranks[k])]
            value = emit("Transpose", [value], perm=perm)
        nodes.append(identity(value, dst, namer))
    return nodes

"""VJP rule of a data-dependent `If`: an `If` on the same condition in the backward pass.

Constant `If`s, and `Loop`s and `Scan`s of known length, never reach the rules: `graph.prepare`
inlines and unrolls them (`control_flow`). What remains is an `If` whose condition depends on
the data. Its gradient is an `If` on the same condition whose branches each recompute their
forward values (a branch's values are not visible outside it), run the driver's reverse pass
over them, and return the gradients of the outer-scope values the forward `If` reads: the
driver treats those reads as the node's inputs (`control_flow.all_inputs`). A branch that does
not read a value returns zeros for it.
"""

from __future__ import annotations

from collections.abc import Sequence

import onnx
from onnx import helper

from ..bodies import Namer, copy_body, subgraphs
from ..control_flow import fold_local, implicit_inputs
from ..graph import Emitter
from .registry import Grads, Needs, vjp_rule


@vjp_rule("If", multi_output=True)
def _vjp_if(op: Emitter, node: onnx.NodeProto, gys: Sequence[str | None], needs: Needs) -> Grads:
    """gx_w = If(cond, then: d then_branch / d w . gy, else: d else_branch / d w . gy)."""
    from ..reverse import differentiate  # the driver imports the rules: import it late

    reads = implicit_inputs(node)
    wanted = [r for r in reads if r in needs]
    if not wanted:
        return [None] * (len(node.input) + len(reads))
    g = op.g
    branches: dict[str, onnx.GraphProto] = {}
    for attr, branch in subgraphs(node):
        copied, outs = copy_body(branch, {}, Namer(g.used_names), g.consts,
                                  f"{node.name or 'if'}_{attr}")
        copied = fold_local(g, copied)
        seeds = {o: gy for o, gy in zip(outs, gys, strict=True) if gy is not None}
        start = len(op.nodes)
        grads = differentiate(op, copied, seeds, wanted)
        for w in wanted:
            if grads[w] is None:  # this branch does not read w
                grads[w] = op.zeros(g.shape(w), w)
        body = op.nodes[start:]
        del op.nodes[start:]
        results = []
        for w in wanted:
            local = op.fresh(f"grad_{attr}_{w}")
            body.append(helper.make_node("Identity", [grads[w] or ""], [local],
                                         name=op.fresh("n_identity")))
            results.append(helper.make_tensor_value_info(local, g.dtypes[w], list(g.shape(w))))
        branches[attr] = helper.make_graph(copied + body, op.fresh(f"{attr}_grad"), [], results)
    gxs = op.emit("If", [node.input[0]], outputs=len(wanted),
                  then_branch=branches["then_branch"], else_branch=branches["else_branch"])
    for w, gx in zip(wanted, gxs, strict=True):
        g.dtypes[gx], g.shapes[gx] = g.dtypes[w], g.shape(w)
    by_name = dict(zip(wanted, gxs, strict=True))
    return [None] * len(node.input) + [by_name.get(r) for r in reads]

"""VJP rule of `Loop`: a second Loop over the iterations in reverse, the body's VJP as its body.

`graph.prepare` unrolls short static loops (`unroll`); what reaches this rule is a Loop too
long to copy, or one whose trip count or condition is known only at run time (a `Scan` that
is not unrolled arrives here too, rewritten as a Loop by `unroll.scan_as_loop`).

- Saved state (checkpointing): the forward Loop is rewritten in place to also emit, as scan
  outputs, its iteration number and every loop-carried value as it was at the start of each
  iteration (outputs named `nm_loop_saved...`; a second differentiation of the same node
  reuses them). The body's intermediate values are not saved: the backward body recomputes
  one iteration's forward values from its saved state, as the If rule recomputes a branch.
  That costs one more body evaluation per iteration and keeps the memory at N x (carried
  sizes) whatever the body computes.
- The backward Loop runs as many iterations as the forward did (the length of the saved
  iteration numbers, so a `while` whose condition depends on the data works too), iteration
  j reading the saved state of forward iteration N - 1 - j with Gather. It carries the
  gradient of every float loop-carried value, then one accumulator per outer-scope value the
  body reads that needs a gradient; its outputs are the gradients of the initial values and
  of those outer-scope values. A scan output's gradient is read per iteration with Gather.
  An outer value read only as Gather(value, i) with one element per iteration (a Scan's
  input, `unroll.scan_as_loop`) gets its gradient as a scan output of the backward Loop,
  flipped to forward order outside, instead of a full-size sum every iteration.
- Refused (one line): a scan output's gradient when the number of iterations is not a
  constant (its length, and so every shape after it, is not static) and a loop-carried value
  whose shape changes between iterations.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper

from ..bodies import Namer, copy_body
from ..control_flow import all_inputs, fold_local, implicit_inputs
from ..graph import FLOAT_TYPES, Emitter
from ..graphtypes import PREFIX
from ..unroll import loop_cond_stays_true
from .registry import Grads, Needs, vjp_rule

SAVED = f"{PREFIX}loop_saved"  # the forward Loop's extra scan outputs (and their body nodes)


def _body(node: onnx.NodeProto) -> onnx.AttributeProto:
    found: onnx.AttributeProto = next(a for a in node.attribute if a.name == "body")
    return found


def _record(op: Emitter, node: onnx.NodeProto, n_state: int) -> list[str]:
    """Make the forward Loop also emit its iteration numbers and carried inputs per iteration;
    return [iterations, state_0, ...] (outer names). Idempotent."""
    done = [o for o in node.output if o.startswith(SAVED)]
    if done:
        return done
    attr = _body(node)
    body = attr.g
    g = op.g
    sources = [body.input[0].name, *(vi.name for vi in body.input[2:2 + n_state])]
    types: list[tuple[int, list[int] | None]] = [(TensorProto.INT64, [])]
    for k in range(n_state):
        init = node.input[2 + k]
        shape = list(g.shapes[init]) if init in g.shapes else None
        types.append((g.dtypes.get(init, body.input[2 + k].type.tensor_type.elem_type), shape))
    while len(node.output) < len(body.output) - 1:  # trailing scan outputs left unnamed
        node.output.append("")
    saved = []
    for src, (dtype, shape) in zip(sources, types, strict=True):
        inner = op.fresh("loop_saved_in_body")
        body.node.append(helper.make_node("Identity", [src], [inner], name=op.fresh(SAVED)))
        body.output.append(helper.make_tensor_value_info(inner, dtype, shape))
        outer = op.fresh(SAVED)
        node.output.append(outer)
        g.dtypes[outer] = dtype
        saved.append(outer)
    return saved


def _scalar(op: Emitter, value: np.ndarray) -> str:
    """A 0-d constant (`Emitter.const` makes 1-d arrays of scalars)."""
    name = op.fresh("c")
    op.g.consts[name] = op.new_consts[name] = value
    op.g.shapes[name] = ()
    op.g.dtypes[name] = helper.np_dtype_to_tensor_dtype(value.dtype)
    return name


def _plain_body(node: onnx.NodeProto, n_out: int) -> onnx.GraphProto:
    """The forward body without what `_record` added."""
    body = onnx.GraphProto()
    body.CopyFrom(_body(node).g)
    keep = [n for n in body.node if not n.name.startswith(SAVED)]
    del body.node[:]
    body.node.extend(keep)
    del body.output[1 + n_out:]
    return body


def _runs_a_constant_count(node: onnx.NodeProto, body: onnx.GraphProto, op: Emitter) -> bool:
    trip, cond = node.input[0], node.input[1]
    consts = op.g.consts
    return (bool(trip) and trip in consts and (not cond or (cond in consts
                                                            and bool(consts[cond].all())))
            and loop_cond_stays_true(body, consts))


@vjp_rule("Loop", multi_output=True)
def _vjp_loop(op: Emitter, node: onnx.NodeProto, gys: Sequence[str | None],
              needs: Needs) -> Grads:
    """A reverse Loop whose body is the forward body's VJP at the saved state."""
    g = op.g
    reads = implicit_inputs(node)
    n_state = len(node.input) - 2
    n_out = len([o for o in node.output if not o.startswith(SAVED)])
    gys = list(gys[:n_out])
    inits = list(node.input[2:])
    wanted_reads = [r for r in reads if r in needs]
    if not wanted_reads and not any(v in needs for v in inits):
        return [None] * (len(node.input) + len(reads))
    where = f"Loop {node.name!r}"
    attr = next((a for a in node.attribute if a.name == "body"), None)
    if (attr is None or n_state < 0 or len(attr.g.input) != n_state + 2
            or len(attr.g.output) < n_out + 1):
        msg = (f"{where}: its body's inputs and outputs do not match the node's (the ONNX Loop "
               "signature: trip count, condition, loop-carried values); fix the exporter")
        raise NotImplementedError(msg)
    body = _plain_body(node, n_out)
    if any(gy is not None for gy in gys[n_state:]) and not _runs_a_constant_count(node, body, op):
        msg = (f"{where}: a scan output's gradient needs a constant number of iterations (a "
               "constant trip count and a condition that stays true); its length, and every "
               "shape after it, is not static")
        raise NotImplementedError(msg)
    for k, v in enumerate(inits):
        if v in g.shapes and node.output[k] and g.shapes.get(node.output[k], g.shapes[v]) != \
                g.shapes[v]:
            msg = (f"{where}: the loop-carried value {v!r} changes shape between iterations "
                   f"({list(g.shapes[v])} -> {list(g.shapes[node.output[k]])}); a gradient "
                   "loop needs fixed shapes")
            raise NotImplementedError(msg)
    carried = [k for k, v in enumerate(inits) if g.dtypes.get(v) in FLOAT_TYPES]
    saved = _record(op, node, n_state)
    count = op.Squeeze(op.Shape(saved[0]), op.ints([0]))
    last = op.Sub(count, _scalar(op, np.array(1, np.int64)))
    trips = (int(g.consts[node.input[0]].reshape(-1)[0])
             if _runs_a_constant_count(node, body, op) else None)
    bwd_body, summed, sliced = _backward_body(op, node, body, saved, last, gys, carried,
                                              wanted_reads, trips)
    true = _scalar(op, np.array(True))
    starts = [gys[k] or op.zeros(g.shape(inits[k]), inits[k]) for k in carried]
    starts += [op.zeros(g.shape(r), r) for r in summed]
    outs = op.emit("Loop", [count, true, *starts], outputs=len(starts) + len(sliced),
                   body=bwd_body)
    for o, like in zip(outs, [inits[k] for k in carried] + summed, strict=False):
        g.dtypes[o], g.shapes[o] = g.dtypes[like], g.shape(like)
    by_init = dict(zip(carried, outs, strict=False))
    by_read = dict(zip(summed, outs[len(carried):], strict=False))
    for (r, axis), stacked in zip(sliced, outs[len(starts):], strict=True):
        by_read[r] = _unstack(op, stacked, r, axis)
    return ([None, None] + [by_init.get(k) for k in range(n_state)]
            + [by_read.get(r) for r in reads])


def _unstack(op: Emitter, stacked: str, r: str, axis: int) -> str:
    """The gradient of `r` from its elements' gradients stacked in reverse iteration order."""
    g = op.g
    shape = g.shape(r)
    g.dtypes[stacked] = g.dtypes[r]
    out = op.Slice(stacked, *(op.ints([v]) for v in (-1, np.iinfo(np.int64).min, 0, -1)))
    if axis:
        out = op.Transpose(out, perm=[*range(1, axis + 1), 0, *range(axis + 1, len(shape))])
    g.shapes[out] = shape
    return out


def _sliced(copied: list[onnx.NodeProto], reads: list[str], it: str, trips: int | None,
            op: Emitter) -> list[tuple[str, int, str]]:
    """(read, axis, element) for the outer reads whose one use is Gather(read, i, axis) with
    one element per iteration (a Scan's input): their gradient is stacked, not summed."""
    if trips is None:
        return []
    found = []
    for r in reads:
        users = [n for n in copied if r in all_inputs(n)]
        n = users[0] if len(users) == 1 else None
        if (n is None or n.op_type != "Gather" or list(n.input) != [r, it]
                or r not in op.g.shapes):
            continue
        rank = len(op.g.shape(r))
        axis = next((a.i for a in n.attribute if a.name == "axis"), 0)
        axis = axis + rank if axis < 0 else axis
        if op.g.shape(r)[axis] == trips and n.output[0] in op.g.shapes:
            found.append((r, axis, n.output[0]))
    return found


def _backward_body(op: Emitter, node: onnx.NodeProto, body: onnx.GraphProto,
                   saved: list[str], last: str, gys: list[str | None], carried: list[int],
                   wanted_reads: list[str], trips: int | None,
                   ) -> tuple[onnx.GraphProto, list[str], list[tuple[str, int]]]:
    """The reverse Loop's body: recompute forward iteration N - 1 - j, differentiate it.

    Returns the body, the outer reads whose gradients it sums and the (read, axis) whose
    per-iteration gradients it emits as scan outputs."""
    from ..reverse import differentiate  # the driver imports the rules: import it late

    g = op.g
    n_state = len(node.input) - 2
    inits = list(node.input[2:])
    j, cond = op.fresh("loop_bwd_iter"), op.fresh("loop_bwd_cond")
    g.dtypes[j], g.shapes[j] = TensorProto.INT64, ()
    g.dtypes[cond], g.shapes[cond] = TensorProto.BOOL, ()
    grad_in = [op.fresh(f"loop_bwd_grad_{inits[k]}") for k in carried]
    for name, k in zip(grad_in, carried, strict=True):
        g.dtypes[name], g.shapes[name] = g.dtypes[inits[k]], g.shape(inits[k])
    start = len(op.nodes)
    idx = op.Sub(last, j)
    g.shapes[idx] = ()
    it = op.Gather(saved[0], idx, axis=0)
    g.shapes[it] = ()
    states = []
    for k in range(n_state):
        s = op.Gather(saved[1 + k], idx, axis=0)
        g.dtypes[s] = g.dtypes.get(inits[k], TensorProto.FLOAT)
        if inits[k] in g.shapes:
            g.shapes[s] = g.shapes[inits[k]]
        states.append(s)
    true = _scalar(op, np.array(True))
    bound = {body.input[0].name: it, body.input[1].name: true}
    bound.update({vi.name: s for vi, s in zip(body.input[2:], states, strict=True)})
    pre = op.nodes[start:]
    del op.nodes[start:]
    copied, outs = copy_body(body, bound, Namer(g.used_names), g.consts,
                              f"{node.name or 'loop'}_bwd")
    copied = fold_local(g, copied)
    sliced = _sliced(copied, wanted_reads, it, trips, op)
    summed = [r for r in wanted_reads if r not in {s[0] for s in sliced}]
    acc_in = [op.fresh(f"loop_bwd_acc_{r}") for r in summed]
    for name, r in zip(acc_in, summed, strict=True):
        g.dtypes[name], g.shapes[name] = g.dtypes[r], g.shape(r)
    seeds: dict[str, str] = {}

    def seed(value: str, gy: str) -> None:
        seeds[value] = op.Add(seeds[value], gy) if value in seeds else gy

    for k, gk in zip(carried, grad_in, strict=True):
        seed(outs[1 + k], gk)
    for pos, gy in enumerate(gys[n_state:], start=1 + n_state):
        if gy is not None:
            elem = op.Gather(gy, idx, axis=0)
            g.shapes[elem] = g.shape(outs[pos])
            seed(outs[pos], elem)
    wrt = [states[k] for k in carried] + summed + [e for _, _, e in sliced]
    grads = differentiate(op, copied, seeds, wrt)
    results = [op.Identity(true)]
    g.shapes[results[0]] = ()
    for k in carried:
        gs = grads[states[k]]
        results.append(op.Identity(gs) if gs is not None else op.zeros(g.shape(inits[k]),
                                                                        inits[k]))
        g.shapes[results[-1]] = g.shape(inits[k])
    for r, acc in zip(summed, acc_in, strict=True):
        gr = grads[r]
        results.append(op.Add(acc, gr) if gr is not None else op.Identity(acc))
        g.shapes[results[-1]] = g.shape(r)
    for _, _, e in sliced:
        ge = grads[e]
        results.append(op.Identity(ge) if ge is not None else op.zeros(g.shape(e), e))
        g.shapes[results[-1]] = g.shape(e)
    post = op.nodes[start:]
    del op.nodes[start:]

    def vi(name: str) -> onnx.ValueInfoProto:
        return helper.make_tensor_value_info(name, g.dtypes[name], list(g.shape(name)))

    graph = helper.make_graph(pre + copied + post, op.fresh("loop_bwd_body"),
                              [vi(j), vi(cond), *map(vi, grad_in + acc_in)],
                              [vi(r) for r in results])
    return graph, summed, [(r, axis) for r, axis, _ in sliced]

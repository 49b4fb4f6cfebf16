"""The driver: turn a classifier into a graph that also returns a loss and its gradient.

`instrument` adds a `nm_mask` input, the masked input x_bar = b + mask (x - b) (b = 0 unless
a `nm_baseline` is given), a per-sample loss on the model's logits against `nm_target` (the
loss heads are in `heads`), and a reverse-mode subgraph built from `vjp_rules` by
`reverse.differentiate`. Only values that depend on the mask and reach the logits get rules;
weights never get gradient nodes; everything the outputs do not need is removed.
`reverse.vjp` is the same driver with user-supplied cotangents (used by `gradcheck`). Which
input, output, layout and mask axes is `contract`'s decision (`analyse`), made the same way
for every batch size; `op_report` (`neuromask ops`) is `opreport`'s, re-exported here.

Every tensor added starts with `nm_`. The graph I/O names are fixed: inputs `nm_mask`,
`nm_target`, `nm_baseline`; outputs `nm_loss` [N], `nm_grad_mask` (the mask's shape) and
`nm_probs` [N, K]. All dimensions are static: one instrumented model per batch size.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import onnx
from onnx import TensorProto, helper

from . import __version__
from .contract import ModelOptions, Spec, analyse
from .control_flow import all_inputs, rename_reads
from .errors import ModelContractError
from .graph import Emitter, Graph, load_model
from .heads import Objective, OutputKind, loss_head
from .io_names import BASELINE, GRAD_INPUT, GRAD_MASK, LOSS, MASK, PROBS, TARGET, XBAR
from .opreport import ESTIMATED, EXPANDED, OpStatus, op_report
from .reverse import assemble, check_reserved, differentiate

__all__ = ["ESTIMATED", "EXPANDED", "OpStatus", "Spec", "instrument", "op_report"]


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
    spec: Spec | None = None,
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
        spec: a `contract.resolve` result: its options replace input_name, output_name,
            layout, mask_axes and output_kind, so every batch size decides the same way.

    Returns:
        The instrumented model, passing `onnx.checker` (full check).
    """
    if spec is not None:
        opts = spec.options
    else:
        opts = ModelOptions(input_name, output_name, output_kind, layout,
                            None if mask_axes is None else tuple(mask_axes))
    spec, g = analyse(load_model(model), opts, batch_size, input_shape, check_gradient=gradient)
    x, out, logits, kind, k = (spec.input_name, spec.output_name, spec.logits_name,
                               spec.output_kind, spec.num_classes)
    xdtype, shape, mshape = spec.dtype, spec.input_shape, spec.mask_shape
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
        return _forward_only(g, front + primal + head + op.nodes, loss, probs,
                             baseline and wrt == "mask", spec, objective)
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
    model_out.doc_string = f"instrumented by neuromask-onnx {__version__}: {spec.summary()}"


def _forward_only(g: Graph, nodes: list[onnx.NodeProto], loss: str, probs: str,
                  baseline: bool, spec: Spec, objective: str) -> onnx.ModelProto:
    """The instrumented model without its gradient: mask in, loss and probabilities out."""
    x, xdtype, shape, mshape = spec.input_name, spec.dtype, spec.input_shape, spec.mask_shape
    n, logits, k = spec.batch, spec.logits_name, spec.num_classes
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

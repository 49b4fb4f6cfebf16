"""Ops without a rule that ONNX defines by a function are differentiated through their body.

`functions.expand_functions` writes such a node (Attention, CenterCropPad, ...) out as its
schema's function body in `graph.prepare`; the body's ops have rules. The dot-product test
(float64, onnx's reference evaluator, which runs Attention itself) checks the gradient of
every float input against finite differences of the original op, so the expansion and the
rules of the pieces are checked together.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from neuromask_onnx import oracle
from neuromask_onnx.errors import UnsupportedOpError
from neuromask_onnx.gradcheck import check_vjp
from neuromask_onnx.graph import load_model, prepare
from neuromask_onnx.reverse import vjp
from neuromask_onnx.rewrite import op_report

D = TensorProto.DOUBLE


def model(op: str, inputs: dict[str, Sequence[int]], outputs: Sequence[str], opset: int,
          inits: dict[str, np.ndarray] | None = None, **attrs: Any) -> onnx.ModelProto:
    names = [*inputs, *(inits or {})]
    node = helper.make_node(op, names, list(outputs), name="f", **attrs)
    g = helper.make_graph(
        [node], op, [helper.make_tensor_value_info(k, D, list(s)) for k, s in inputs.items()],
        [helper.make_tensor_value_info(o, D, None) for o in outputs],
        [numpy_helper.from_array(v, k) for k, v in (inits or {}).items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 10
    return m


ATTENTION = [
    # id, inputs (Q, K, V[, mask, past_key, past_value]), outputs, attributes
    ("3d_heads", {"q": (2, 3, 8), "k": (2, 4, 8), "v": (2, 4, 6)}, ["y"],
     {"q_num_heads": 2, "kv_num_heads": 2}),
    ("4d_gqa_causal_scaled", {"q": (1, 4, 3, 2), "k": (1, 2, 3, 2), "v": (1, 2, 3, 3)}, ["y"],
     {"is_causal": 1, "scale": 0.7}),
    ("4d_float_mask_softcap", {"q": (2, 2, 3, 4), "k": (2, 2, 5, 4), "v": (2, 2, 5, 4),
                               "mask": (3, 5)}, ["y"], {"softcap": 2.0}),
    ("4d_past_present_qk_output", {"q": (1, 2, 2, 4), "k": (1, 2, 3, 4), "v": (1, 2, 3, 4),
                                   "mask": (2, 5), "pk": (1, 2, 2, 4), "pv": (1, 2, 2, 4)},
     ["y", "present_k", "present_v", "qk"], {"qk_matmul_output_mode": 1}),
]


@pytest.mark.parametrize(("cid", "inputs", "outputs", "attrs"), ATTENTION,
                         ids=[a[0] for a in ATTENTION])
def test_attention_gradient_through_its_function(cid: str, inputs: dict[str, Sequence[int]],
                                                 outputs: list[str], attrs: dict[str, Any],
                                                 rng: np.random.Generator) -> None:
    m = model("Attention", inputs, outputs, 23, **attrs)
    feeds = {k: rng.standard_normal(s) for k, s in inputs.items()}
    result = check_vjp(m, feeds, rng=rng)
    assert abs(result.numeric) > 1e-8
    assert result.error < 1e-6, f"{cid}: {result}"


def test_center_crop_pad_gradient_through_its_function(rng: np.random.Generator) -> None:
    """Crops one axis and pads the other: the body's Slice and Pad rules do it."""
    m = model("CenterCropPad", {"x": (5, 3, 2)}, ["y"], 18,
              inits={"shape": np.array([3, 6], np.int64)}, axes=[0, 1])
    result = check_vjp(m, {"x": rng.standard_normal((5, 3, 2))}, rng=rng)
    assert result.error < 1e-6, result


def test_the_node_is_written_out_and_named_in_the_op_report() -> None:
    m = model("Attention", {"q": (1, 2, 3, 4), "k": (1, 2, 3, 4), "v": (1, 2, 3, 4)}, ["y"], 23)
    g = prepare(load_model(m), {"q": (1, 2, 3, 4), "k": (1, 2, 3, 4), "v": (1, 2, 3, 4)})
    ops = {n.op_type for n in g.nodes}
    assert "Attention" not in ops
    assert {"MatMul", "Softmax"} <= ops
    assert all(n.output[0].startswith("nm_fn_Attention_f_") or n.output[0] == "y"
               for n in g.nodes)
    row = next(r for r in op_report(m, input_name="q") if r.op_type == "Attention")
    assert row.status.startswith("its ONNX function"), row


def test_an_op_without_a_function_body_is_still_refused() -> None:
    """Unique has no rule and no function: the refusal names it, as before."""
    m = model("Unique", {"x": (3, 3)}, ["y"], 18)
    with pytest.raises(UnsupportedOpError, match="op Unique"):
        vjp(m)


def test_a_body_with_a_subgraph_is_renamed_inside_it(rng: np.random.Generator) -> None:
    """LinearAttention (opset 27, gated): its body's recurrence runs in a subgraph, renamed
    with the body and unrolled afterwards; q, k, v and the decay are all differentiated.
    float32 on onnxruntime: the op is float-only, and the reference evaluator runs its body
    through onnxruntime's types as well."""
    vi = helper.make_tensor_value_info
    f32 = TensorProto.FLOAT
    names, shape = ["q", "k", "v", "decay"], (1, 3, 8)
    node = helper.make_node("LinearAttention", ["q", "k", "v", "", "decay"], ["y", "state"],
                            q_num_heads=2, kv_num_heads=2, update_rule="gated")
    g = helper.make_graph([node], "la", [vi(n, f32, list(shape)) for n in names],
                          [vi("y", f32, None), vi("state", f32, None)])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 27)])
    m.ir_version = 11
    why = oracle.unrunnable(m)  # an older onnx or onnxruntime (the lowest-versions job)
    if why:
        pytest.skip(why)
    feeds = {n: rng.standard_normal(shape).astype(np.float32) for n in names[:3]}
    feeds["decay"] = rng.uniform(0.5, 0.9, shape).astype(np.float32)
    result = check_vjp(m, feeds, rng=rng, eps=1e-3, backend="onnxruntime")
    assert abs(result.numeric) > 1e-6
    assert result.error < 2e-3, result

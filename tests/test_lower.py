"""onnxruntime's CUDA-only contrib ops (BiasAdd, NhwcConv) written out in standard ops.

Neither op has a CPU kernel, so nothing here can run the original node. Each model is
checked against a twin built independently from standard ops with the same weights: the
dot-product test takes its finite differences from the twin, and the gradient model (whose
forward part is the written-out nodes) must run on onnxruntime's CPU build and agree with
the twin's gradient.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from neuromask_onnx.gradcheck import check_vjp
from neuromask_onnx.reverse import vjp
from neuromask_onnx.rewrite import op_report
from neuromask_onnx.runtime import session

MS = "com.microsoft"


def _head(x: str, classes: int, rng: np.random.Generator, dt: np.dtype,
          ) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    fc = rng.standard_normal((6, classes)).astype(dt)
    nodes = [helper.make_node("Relu", [x], ["r"]),
             helper.make_node("GlobalAveragePool", ["r"], ["p"]),
             helper.make_node("Flatten", ["p"], ["f"]),
             helper.make_node("MatMul", ["f", "fc"], ["logits"]),
             helper.make_node("Softmax", ["logits"], ["prob"], axis=-1)]
    return nodes, [numpy_helper.from_array(fc, "fc")]


def _conv_pair(dtype: int, **attrs: Any) -> tuple[onnx.ModelProto, onnx.ModelProto]:
    """(NhwcConv between a Transpose pair, as onnxruntime's optimizer writes it; plain Conv)."""
    dt = np.dtype(helper.tensor_dtype_to_np_dtype(dtype))
    rng = np.random.default_rng(3)
    group = int(attrs.get("group", 1))
    weight = rng.standard_normal((6, 6 // group, 3, 3)).astype(dt)  # M, C/group, kH, kW
    bias = rng.standard_normal(6).astype(dt)
    head, head_inits = _head("c", 4, rng, dt)
    x = helper.make_tensor_value_info("x", dtype, [1, 6, 9, 9])
    y = helper.make_tensor_value_info("prob", dtype, [1, 4])
    nhwc = [helper.make_node("Transpose", ["x"], ["xt"], perm=[0, 2, 3, 1]),
            helper.make_node("NhwcConv", ["xt", "W", "b"], ["ct"], domain=MS, **attrs),
            helper.make_node("Transpose", ["ct"], ["c"], perm=[0, 3, 1, 2])]
    inits = [numpy_helper.from_array(weight.transpose(0, 2, 3, 1).copy(), "W"),
             numpy_helper.from_array(bias, "b"), *head_inits]
    model = helper.make_model(
        helper.make_graph(nhwc + head, "nhwc", [x], [y], inits),
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(MS, 1)])
    twin_inits = [numpy_helper.from_array(weight, "W"), *inits[1:]]
    twin = helper.make_model(
        helper.make_graph([helper.make_node("Conv", ["x", "W", "b"], ["c"], **attrs), *head],
                          "conv", [x], [y], twin_inits),
        opset_imports=[helper.make_opsetid("", 17)])
    return model, twin


def _bias_add_pair(dtype: int) -> tuple[onnx.ModelProto, onnx.ModelProto]:
    """(BiasAdd of a sequence, its bias and a skip input computed from it; two Adds)."""
    dt = np.dtype(helper.tensor_dtype_to_np_dtype(dtype))
    rng = np.random.default_rng(4)
    bias = numpy_helper.from_array(rng.standard_normal(6).astype(dt), "bias")
    fc = numpy_helper.from_array(rng.standard_normal((6, 3)).astype(dt), "fc")
    x = helper.make_tensor_value_info("x", dtype, [1, 5, 6])
    y = helper.make_tensor_value_info("prob", dtype, [1, 3])
    skip = helper.make_node("Tanh", ["x"], ["skip"])
    head = [helper.make_node("Relu", ["s"], ["r"]),
            helper.make_node("ReduceMean", ["r"], ["m"], axes=[1], keepdims=0),
            helper.make_node("MatMul", ["m", "fc"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["prob"], axis=-1)]
    fused = helper.make_node("BiasAdd", ["x", "bias", "skip"], ["s"], domain=MS)
    model = helper.make_model(helper.make_graph([skip, fused, *head], "bias_add", [x], [y],
                                                [bias, fc]),
                              opset_imports=[helper.make_opsetid("", 17),
                                             helper.make_opsetid(MS, 1)])
    adds = [helper.make_node("Add", ["x", "bias"], ["xb"]),
            helper.make_node("Add", ["xb", "skip"], ["s"])]
    twin = helper.make_model(helper.make_graph([skip, *adds, *head], "adds", [x], [y],
                                               [bias, fc]),
                             opset_imports=[helper.make_opsetid("", 17)])
    return model, twin


CONV_ATTRS: list[dict[str, Any]] = [
    {"pads": [1, 1, 1, 1], "strides": [2, 2]},
    {"pads": [0, 1, 2, 1], "dilations": [2, 1]},
    {"group": 3, "auto_pad": "SAME_UPPER"},
    {"group": 6, "kernel_shape": [3, 3], "strides": [2, 1]},
]


@pytest.mark.parametrize("attrs", CONV_ATTRS, ids=lambda a: "-".join(a))
def test_nhwc_conv_gradient_matches_finite_differences_of_the_standard_twin(
        attrs: dict[str, Any]) -> None:
    model, twin = _conv_pair(TensorProto.DOUBLE, **attrs)
    x = np.random.default_rng(0).standard_normal((1, 6, 9, 9))
    check = check_vjp(model, {"x": x}, rng=np.random.default_rng(1), reference=twin)
    assert check.error < 1e-7, check


def test_bias_add_gradient_matches_finite_differences_of_the_standard_twin() -> None:
    model, twin = _bias_add_pair(TensorProto.DOUBLE)
    x = np.random.default_rng(0).standard_normal((1, 5, 6))
    check = check_vjp(model, {"x": x}, rng=np.random.default_rng(1), reference=twin)
    assert check.error < 1e-7, check


@pytest.mark.parametrize("pair", [
    lambda: _conv_pair(TensorProto.FLOAT, **CONV_ATTRS[0]),
    lambda: _bias_add_pair(TensorProto.FLOAT),
], ids=["NhwcConv", "BiasAdd"])
def test_the_gradient_model_runs_on_the_cpu_build_and_equals_the_twins(
        pair: Callable[[], tuple[onnx.ModelProto, onnx.ModelProto]]) -> None:
    model, twin = pair()
    shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    x = np.random.default_rng(2).standard_normal(shape).astype(np.float32)
    cot = np.random.default_rng(5).standard_normal((1, 4 if len(shape) == 4 else 3))
    feeds = {"x": x, "nm_cot_prob": cot.astype(np.float32)}
    with pytest.raises(Exception, match=r"(?i)kernel|NOT_IMPLEMENTED"):
        session(model)  # the original node really cannot run here
    got = session(vjp(model, wrt=["x"], of=["prob"])).run(None, feeds)
    want = session(vjp(twin, wrt=["x"], of=["prob"])).run(None, feeds)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)


def test_ops_reports_the_written_out_ops_and_traces_the_path_through_them() -> None:
    model, _ = _conv_pair(TensorProto.FLOAT, **CONV_ATTRS[0])
    rows = {r.op_type: r for r in op_report(model)}
    assert rows[f"{MS}::NhwcConv"].status.startswith("written out")
    assert rows["Conv"].on_path == 1
    assert rows["Conv"].status == "rule"
    assert not [r for r in rows.values() if r.status == "unsupported"]

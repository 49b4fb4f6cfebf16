"""neuromask_onnx.oracle: the explicit checks that move a rule case off an oracle known wrong
at the installed onnx / onnxruntime (the lowest-versions job, .ci/lowest, runs the table there)."""

from __future__ import annotations

import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

from neuromask_onnx import oracle

N = helper.make_node


def test_release_reads_major_minor() -> None:
    assert oracle.release("1.23.2") == (1, 23)
    assert oracle.release("1.28.0.dev20260101") == (1, 28)


def test_reference_faults_apply_below_the_fixing_release_only() -> None:
    same = N("Conv", ["x", "w"], ["y"], auto_pad="SAME_UPPER")
    fault = oracle.reference_fault(same, (1, 22))
    assert fault is not None
    assert fault.ort_runs
    assert "before onnx 1.23" in oracle.describe(fault)
    assert oracle.reference_fault(same, (1, 23)) is None
    assert oracle.reference_fault(N("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1]), (1, 17)) is None
    noop = N("ReduceL1", ["x"], ["y"], noop_with_empty_axes=1)
    assert oracle.reference_fault(noop, (1, 19)) is not None
    assert oracle.reference_fault(noop, (1, 20)) is None
    assert oracle.reference_fault(N("ReduceL1", ["x", "ax"], ["y"], noop_with_empty_axes=1),
                                  (1, 19)) is None


def test_a_fault_onnxruntime_cannot_run_either_decides() -> None:
    """A layout-1 LSTM with Y_c: the Y_c fault alone would move it to onnxruntime, which has no
    layout-1 kernel, so the layout fault (nothing installed can run it) is the one named."""
    lstm = N("LSTM", ["x", "W", "R"], ["y", "yh", "yc"], hidden_size=4, layout=1)
    fault = oracle.reference_fault(lstm, (1, 22))
    assert fault is not None
    assert not fault.ort_runs
    assert "layout 1" in fault.reason
    forward = N("LSTM", ["x", "W", "R"], ["y", "yh"], hidden_size=4)
    assert oracle.reference_fault(forward, (1, 17)) is None


def _identity(opset: int) -> onnx.ModelProto:
    vi = helper.make_tensor_value_info
    g = helper.make_graph([N("Identity", ["x"], ["y"])], "g", [vi("x", TensorProto.FLOAT, [1])],
                          [vi("y", TensorProto.FLOAT, [1])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 10 if opset > 18 else 8
    return m


def test_ort_max_opset_is_what_onnxruntime_loads() -> None:
    top = oracle.ort_max_opset()
    assert 18 <= top <= onnx.defs.onnx_opset_version()
    ort.InferenceSession(_identity(top).SerializeToString(), providers=["CPUExecutionProvider"])
    assert oracle.unrunnable(_identity(top)) == ""
    assert "past onnx" in oracle.unrunnable(_identity(onnx.defs.onnx_opset_version() + 1))


def test_a_missing_float64_kernel_is_probed() -> None:
    """onnxruntime's FusedConv is float32 only (the rule table runs it in float32 for that)."""
    vi = helper.make_tensor_value_info
    g = helper.make_graph([N("FusedConv", ["x", "w"], ["y"], domain="com.microsoft",
                             activation="Relu")], "g",
                          [vi("x", TensorProto.DOUBLE, [1, 1, 3, 3]),
                           vi("w", TensorProto.DOUBLE, [1, 1, 1, 1])],
                          [vi("y", TensorProto.DOUBLE, [1, 1, 3, 3])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18),
                                            helper.make_opsetid("com.microsoft", 1)])
    m.ir_version = 8
    assert oracle.ort_float64_missing(_identity(18)) == ""
    assert "FusedConv" in oracle.ort_float64_missing(m)


def test_a_scan_reading_the_enclosing_graph_is_a_fault_before_onnx_1_22() -> None:
    vi = helper.make_tensor_value_info
    body = helper.make_graph([N("Add", ["h_in", "w_outer"], ["h_out"])], "body",
                             [vi("h_in", TensorProto.DOUBLE, [2])],
                             [vi("h_out", TensorProto.DOUBLE, [2])])
    scan = N("Scan", ["h0"], ["h"], body=body, num_scan_inputs=0)
    assert oracle.reference_fault(scan, (1, 21)) is not None
    assert oracle.reference_fault(scan, (1, 22)) is None
    own = helper.make_graph([N("Add", ["h_in", "h_in"], ["h_out"])], "body",
                            [vi("h_in", TensorProto.DOUBLE, [2])],
                            [vi("h_out", TensorProto.DOUBLE, [2])])
    assert oracle.reference_fault(N("Scan", ["h0"], ["h"], body=own, num_scan_inputs=0),
                                  (1, 21)) is None

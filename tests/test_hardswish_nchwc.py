"""The float32 4-D HardSwish derivative (depthwise Convs + Clip) matches torch's backward
exactly at and around its kinks, where a finite-difference test cannot look."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper

from neuromask_onnx import vjp


def test_hardswish_derivative_at_the_kinks() -> None:
    f = np.float32
    pts = [-3.0, 3.0, np.nextafter(f(-3), f(-4)), np.nextafter(f(-3), f(0)),
           np.nextafter(f(3), f(0)), np.nextafter(f(3), f(4)), 0.0, -1.5, 1.7, -50.0, 1e30,
           -1e30, 2.5, -2.9]
    x = np.array(pts, np.float32).reshape(1, 2, 7, 1)
    node = helper.make_node("HardSwish", ["x"], ["y"])
    g = helper.make_graph([node], "hs", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                       list(x.shape))],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(x.shape))])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])
    m.ir_version = 9
    vm = vjp(m, wrt=["x"])
    assert "Where" not in {n.op_type for n in vm.graph.node}  # the NCHWc route was taken
    sess = ort.InferenceSession(vm.SerializeToString(), providers=["CPUExecutionProvider"])
    gy = np.ones_like(x)
    _, gx = sess.run(None, {"x": x, "nm_cot_y": gy})
    # torch.ops.aten.hardswish_backward: 0 below -3, x/3 + 1/2 on [-3, 3], 1 above 3
    want = np.where(x < -3, 0.0, np.where(x <= 3, x / 3 + 0.5, 1.0)).astype(np.float32)
    np.testing.assert_allclose(gx, want, rtol=1e-6, atol=1e-7)

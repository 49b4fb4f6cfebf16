"""tools/bench_gradient.py's profile summaries (`--profile`): per op type and per part."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parents[1]


def _bench() -> Any:
    pytest.importorskip("torch")
    sys.path.insert(0, str(ROOT / "tools"))
    spec = importlib.util.spec_from_file_location("bench_gradient",
                                                  ROOT / "tools" / "bench_gradient.py")
    assert spec is not None
    assert spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _event(name: str, op: str, dur: float) -> dict[str, Any]:
    return {"cat": "Node", "name": f"{name}_kernel_time", "dur": dur, "args": {"op_name": op}}


def test_part_profile_splits_forward_gradient_and_reorders(tmp_path: Path) -> None:
    bench = _bench()
    events = [{"cat": "Session", "name": "model_run", "dur": 1}] * 2 + [
        _event("/_blocks.1/Clip_output_0_nchwc", "Conv", 4000.0),  # a fused forward node
        _event("HardSigmoid_470", "HardSigmoid", 1000.0),  # onnxruntime's HardSwish expansion
        _event("nm_conv_45_nchwc", "Conv", 3000.0),
        _event("nm_n_Mul_62", "Mul", 2000.0),
        _event("ReorderInput_token_317", "ReorderInput", 600.0),
        _event("ReorderOutput", "ReorderOutput", 400.0),
        {"cat": "Node", "name": "nm_n_Mul_62_fence_before", "dur": 9e9},  # not a kernel
    ]
    path = tmp_path / "p.json"
    path.write_text(json.dumps(events))
    assert bench.part_profile(str(path)) == pytest.approx(
        {"forward": 2.5, "gradient": 2.5, "reorder": 0.5})  # ms per run, two runs
    assert bench.op_profile(str(path)) == pytest.approx(
        {"Conv": 3.5, "Mul": 1.0, "HardSigmoid": 0.5, "ReorderInput": 0.3, "ReorderOutput": 0.2})


def test_part_profile_reads_a_real_onnxruntime_profile(tmp_path: Path) -> None:
    bench = _bench()
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1], name="fwd_conv"),
             helper.make_node("Relu", ["c"], ["y"], name="fwd_relu"),
             helper.make_node("Sigmoid", ["y"], ["nm_out"], name="nm_n_Sigmoid")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, [1, 3, 16, 16])], [helper.make_tensor_value_info(
            "nm_out", TensorProto.FLOAT, None)], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    opts = ort.SessionOptions()
    opts.enable_profiling = True
    opts.profile_file_prefix = str(tmp_path / "prof")
    sess = ort.InferenceSession(model.SerializeToString(), opts,
                                providers=["CPUExecutionProvider"])
    for _ in range(3):
        sess.run(None, {"x": rng.standard_normal((1, 3, 16, 16)).astype(np.float32)})
    parts = bench.part_profile(sess.end_profiling())
    assert parts["forward"] > 0  # the Conv (fused with the Relu, or not)
    assert parts["gradient"] > 0  # the nm_ Sigmoid

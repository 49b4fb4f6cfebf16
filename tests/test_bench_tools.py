"""tools/bench_gradient.py: its cost-bound ablation (`--free-factors`) does what it says, and its
profile summaries (`--profile`) split kernel time per op type and per part."""

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

from neuromask_onnx import instrument
from neuromask_onnx.graph import pruned
from neuromask_onnx.io_names import PROBS, TARGET

ROOT = Path(__file__).resolve().parents[1]


def _tool(name: str = "bench_gradient") -> Any:
    """tools/<name>.py as a module (the benchmarks import torch's exporters)."""
    pytest.importorskip("torch")
    sys.path.insert(0, str(ROOT / "tools"))
    spec = importlib.util.spec_from_file_location(name, ROOT / "tools" / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _run(model: Any, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return [np.asarray(o) for o in sess.run(None, feeds)]


@pytest.mark.torch
def test_free_factors_drops_the_gradient_masks_and_keeps_the_forward(models_dir: Path) -> None:
    bench = _tool()
    inst = instrument(str(models_dir / "cnn_nchw.onnx"))
    ablated, bypassed = bench.free_factors(inst)

    def count(m: Any, op: str) -> int:
        return sum(n.op_type == op for n in m.graph.node)

    assert bypassed > 0
    assert count(ablated, "Mul") == count(inst, "Mul") - bypassed
    assert count(ablated, "HardSigmoid") < count(inst, "HardSigmoid")  # Relu masks pruned
    shape = [d.dim_value for d in inst.graph.input[0].type.tensor_type.shape.dim]
    rng = np.random.default_rng(0)
    feeds = {inst.graph.input[0].name: rng.standard_normal(shape).astype(np.float32),
             "nm_mask": rng.uniform(0.2, 1.0, (shape[0], 1, *shape[2:])).astype(np.float32),
             "nm_target": np.zeros(shape[0], np.int64)}
    (loss, grad, probs), (loss2, grad2, probs2) = _run(inst, feeds), _run(ablated, feeds)
    np.testing.assert_array_equal(loss, loss2)
    np.testing.assert_array_equal(probs, probs2)
    assert grad.shape == grad2.shape
    assert not np.allclose(grad, grad2)  # a cost bound, not a gradient


def test_forward_part_is_the_forward_without_the_gradient(models_dir: Path) -> None:
    """`--forward-part` times `pruned(instrumented, [PROBS])`: nothing of the gradient chain
    is left in it, and its probabilities are the full model's, bit for bit."""
    inst = instrument(str(models_dir / "cnn_nchw.onnx"))
    part = pruned(inst, [PROBS])
    chain = {TARGET}
    for n in part.graph.node:
        if chain.intersection(n.input):
            chain.update(n.output)
    assert chain == {TARGET}
    assert len(part.graph.node) < len(inst.graph.node) / 2
    shape = [d.dim_value for d in inst.graph.input[0].type.tensor_type.shape.dim]
    rng = np.random.default_rng(1)
    feeds = {inst.graph.input[0].name: rng.standard_normal(shape).astype(np.float32),
             "nm_mask": rng.uniform(0.2, 1.0, (shape[0], 1, *shape[2:])).astype(np.float32),
             "nm_target": np.zeros(shape[0], np.int64)}
    (probs,) = _run(part, feeds)
    np.testing.assert_array_equal(probs, _run(inst, feeds)[2])


def _event(name: str, op: str, dur: float) -> dict[str, Any]:
    return {"cat": "Node", "name": f"{name}_kernel_time", "dur": dur, "args": {"op_name": op}}


def test_part_profile_splits_forward_gradient_and_reorders(tmp_path: Path) -> None:
    bench = _tool()
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
    bench = _tool()
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


def _relu6_classifier() -> Any:
    """x [1, 3, 8, 8] -> Conv -> Clip(0, 6) -> global pool -> Gemm -> 4 logits."""
    rng = np.random.default_rng(2)
    inits = [numpy_helper.from_array(rng.standard_normal((6, 3, 3, 3)).astype(np.float32) * 2, "w"),
             numpy_helper.from_array(rng.standard_normal((4, 6)).astype(np.float32), "fc"),
             numpy_helper.from_array(np.array(0.0, np.float32), "lo"),
             numpy_helper.from_array(np.array(6.0, np.float32), "hi")]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Clip", ["c", "lo", "hi"], ["y"]),
             helper.make_node("GlobalAveragePool", ["y"], ["p"]),
             helper.make_node("Flatten", ["p"], ["f"]),
             helper.make_node("Gemm", ["f", "fc"], ["logits"], transB=1)]
    graph = helper.make_graph(nodes, "relu6", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, [1, 3, 8, 8])], [helper.make_tensor_value_info(
            "logits", TensorProto.FLOAT, [1, 4])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.torch
def test_mask_floor_forms_swap_only_the_clip_rule(tmp_path: Path) -> None:
    """tools/bench_mask_floor.py: the exact band forms give the rule's gradient bit for bit,
    the one-pass and no-mask bounds are not gradients, and the Clip rule is restored."""
    floor = _tool("bench_mask_floor")
    from neuromask_onnx.vjp_rules.registry import VJP_RULES

    path = tmp_path / "relu6.onnx"
    path.write_bytes(_relu6_classifier().SerializeToString())
    rule = VJP_RULES["Clip"]
    models = {name: floor._instrument_with(path, form) for name, form in floor.FORMS.items()}
    assert VJP_RULES["Clip"] is rule
    rng = np.random.default_rng(3)
    feeds = {"x": rng.standard_normal((1, 3, 8, 8)).astype(np.float32),
             "nm_mask": rng.uniform(0.2, 1.0, (1, 1, 8, 8)).astype(np.float32),
             "nm_target": np.array([1], np.int64)}
    grad = _run(floor.bench._instrument(path), feeds)[1]
    probe = _relu6_classifier()
    probe.graph.output.append(helper.make_tensor_value_info("c", TensorProto.FLOAT, None))
    c = _run(probe, {"x": feeds["x"] * feeds["nm_mask"]})[1]  # the mask at the input: x * m
    assert (c < 0).any()  # both bounds of the band are crossed
    assert (c > 6).any()
    for name in ("compare and cast (exact)", "two passes, depthwise Conv (exact)"):
        np.testing.assert_array_equal(_run(models[name], feeds)[1], grad)
    for name in ("one pass (gy * y)", "no mask (gy)"):
        assert not np.allclose(_run(models[name], feeds)[1], grad), name

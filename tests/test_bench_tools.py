"""tools/bench_gradient.py's cost-bound ablation (`--free-factors`) does what it says."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from neuromask_onnx import instrument
from neuromask_onnx.graph import pruned
from neuromask_onnx.io_names import PROBS, TARGET

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


def _run(model: Any, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return [np.asarray(o) for o in sess.run(None, feeds)]


@pytest.mark.torch
def test_free_factors_drops_the_gradient_masks_and_keeps_the_forward(models_dir: Path) -> None:
    bench = _bench()
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

"""`runtime.run_padded`: rows through a session a batch at a time, padded where it is fixed."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from neuromask_onnx import runtime
from neuromask_onnx.baselines import Classifier
from neuromask_onnx.errors import InputError
from neuromask_onnx.explain import NeuroMask
from neuromask_onnx.optimize import NeuroMaskConfig
from neuromask_onnx.runtime import pad_rows, run_padded

Run = Callable[[list[np.ndarray], int], list[np.ndarray]]


def _recorder() -> tuple[list[tuple[int, int]], Run]:
    calls: list[tuple[int, int]] = []

    def run(parts: list[np.ndarray], n: int) -> list[np.ndarray]:
        x, t = parts
        assert len(x) == len(t)
        calls.append((len(x), n))
        return [x[:n] * 10, t[:n]]

    return calls, run


def test_pad_rows_repeats_the_last_row() -> None:
    a = np.arange(6).reshape(3, 2)
    assert pad_rows(a, 5).tolist() == [[0, 1], [2, 3], [4, 5], [4, 5], [4, 5]]
    assert pad_rows(a, 3) is a


def test_a_batch_smaller_than_the_fixed_batch_is_padded() -> None:
    calls, run = _recorder()
    x, t = np.arange(3.0), np.array([7, 8, 9])
    got = run_padded(run, [x, t], 4, pad=True)
    assert calls == [(4, 3)]
    assert got[0].tolist() == [0.0, 10.0, 20.0]
    assert got[1].tolist() == [7, 8, 9]


def test_a_bigger_batch_is_split_into_chunks() -> None:
    x, t = np.arange(10.0), np.arange(10) + 100
    calls, run = _recorder()
    got = run_padded(run, [x, t], 4, pad=True)
    assert calls == [(4, 4), (4, 4), (4, 2)]  # the last chunk padded to the session's batch
    assert got[0].tolist() == (x * 10).tolist()
    assert got[1].tolist() == t.tolist()
    calls, run = _recorder()
    got = run_padded(run, [x, t], 4, pad=False)
    assert calls == [(4, 4), (4, 4), (2, 2)]
    assert got[0].tolist() == (x * 10).tolist()
    with pytest.raises(InputError, match="no samples to run"):
        run_padded(run, [x[:0], t[:0]], 4, pad=True)


def _fixed_batch_softmax(batch: int) -> onnx.ModelProto:
    w = helper.make_tensor("w", TensorProto.FLOAT, [4, 3],
                           np.linspace(-1, 1, 12, dtype=np.float32))
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 3])
    nodes = [helper.make_node("MatMul", ["x", "w"], ["z"]),
             helper.make_node("Softmax", ["z"], ["y"], axis=-1)]
    return helper.make_model(helper.make_graph(nodes, "g", [x], [y], [w]),
                             opset_imports=[helper.make_opsetid("", 18)])


def test_fixed_batch_models_run_padded_chunks() -> None:
    """Five inputs through a model whose batch is fixed at 2: three padded runs of 2 rows,
    probabilities in input order (the Classifier and NeuroMask's predictions alike)."""
    m = _fixed_batch_softmax(2)
    xs = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    w = np.linspace(-1, 1, 12, dtype=np.float32).reshape(4, 3)
    z = xs @ w
    want = np.exp(z - z.max(1, keepdims=True))
    want /= want.sum(1, keepdims=True)
    clf = Classifier(m, provider="cpu", batch_size=64)
    np.testing.assert_allclose(clf.probs(xs), want, rtol=1e-5)
    assert clf.model_runs == 6
    nm = NeuroMask(m, provider="cpu", batch_size=8)
    np.testing.assert_allclose(nm.predict(xs), want, rtol=1e-5)
    assert nm.model_runs == 6


def _blas_threads() -> list[int]:
    from threadpoolctl import threadpool_info

    return [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"]


def test_the_optimiser_runs_with_numpy_blas_on_one_thread(
        models_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """While NeuroMask alternates numpy products with session runs, numpy's BLAS has one
    thread (its idle threads would busy-wait on onnxruntime's cores), and the caller's
    setting is back afterwards."""
    from threadpoolctl import threadpool_limits

    if not _blas_threads():
        pytest.skip("numpy has no BLAS library that threadpoolctl can see")
    seen: list[list[int]] = []
    run = runtime.SessionRunner.run

    def spy(self: runtime.SessionRunner, mask: np.ndarray) -> Any:
        seen.append(_blas_threads())
        return run(self, mask)

    monkeypatch.setattr(runtime.SessionRunner, "run", spy)
    nm = NeuroMask(str(models_dir / "cnn_nchw.onnx"), NeuroMaskConfig(steps=2), provider="cpu")
    with threadpool_limits(limits=2, user_api="blas"):
        nm.attribute(np.random.default_rng(0).standard_normal((3, 32, 32)).astype(np.float32))
        after = _blas_threads()
    assert seen
    assert all(threads == [1] * len(threads) for threads in seen), seen
    assert after == [2] * len(after)

"""Known-answer tests of the metrics on a linear model built with onnx.helper."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from neuromask_onnx import metrics
from neuromask_onnx.baselines import Classifier, saliency
from neuromask_onnx.errors import InputError

SIDE = 16


def linear_model(w: np.ndarray, bias: float) -> onnx.ModelProto:
    """logits = [x . w + bias, 0] for x [N, 1, SIDE, SIDE]: p0 = sigmoid(x . w + bias)."""
    wm = np.stack([w.ravel(), np.zeros(w.size)], axis=1).astype(np.float32)
    nodes = [helper.make_node("Flatten", ["x"], ["f"], axis=1),
             helper.make_node("MatMul", ["f", "W"], ["z"], name="head"),
             helper.make_node("Add", ["z", "B"], ["logits"], name="bias")]
    graph = helper.make_graph(
        nodes, "linear", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                        ["N", 1, SIDE, SIDE])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 2])],
        [numpy_helper.from_array(wm, "W"),
         numpy_helper.from_array(np.array([bias, 0.0], np.float32), "B")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


@pytest.fixture
def setup(rng: np.random.Generator) -> tuple[Classifier, np.ndarray, np.ndarray]:
    w = rng.standard_normal((SIDE, SIDE))
    x = rng.uniform(0.0, 1.0, (1, SIDE, SIDE)).astype(np.float32)
    bias = 3.0 - float((w * x[0]).sum())  # p0(x) = sigmoid(3)
    return Classifier(linear_model(w, bias)), x, w


def test_deletion_lowest_for_true_contribution(setup) -> None:  # type: ignore[no-untyped-def]
    clf, x, w = setup
    true = w * x[0]
    rng = np.random.default_rng(1)
    d_true = metrics.deletion(clf, x, 0, true, steps=32).auc
    others = {"reversed": -true, "weights": w, "input": x[0], "constant": np.ones_like(true)}
    others |= {f"random{i}": rng.random(true.shape) for i in range(5)}
    aucs = {k: metrics.deletion(clf, x, 0, m, steps=32).auc for k, m in others.items()}
    assert all(d_true < v for v in aucs.values()), (d_true, aucs)
    # insertion (from a zero start, so the model is exactly linear in what is inserted)
    i_true = metrics.insertion(clf, x, 0, true, steps=32, baseline="zero").auc
    i_other = [metrics.insertion(clf, x, 0, m, steps=32, baseline="zero").auc
               for m in others.values()]
    assert all(i_true > v for v in i_other)


def test_constant_map_scores_like_random(setup) -> None:  # type: ignore[no-untyped-def]
    clf, x, _ = setup
    shape = (SIDE, SIDE)
    rand = [metrics.deletion(clf, x, 0, np.random.default_rng(s).random(shape)).auc
            for s in range(12)]
    const = [metrics.deletion(clf, x, 0, np.zeros(shape), seed=s).auc for s in range(4)]
    mu, sd = np.mean(rand), np.std(rand)
    assert all(abs(c - mu) < 3 * sd + 1e-3 for c in const), (const, mu, sd)
    # ...and a constant map is not one fixed raster order: its seed changes the order
    assert len({round(c, 9) for c in const}) > 1


def test_curve_shape_and_one_batch(setup) -> None:  # type: ignore[no-untyped-def]
    clf, x, w = setup
    before = clf.model_runs
    c = metrics.deletion(clf, x, 0, w * x[0], steps=20)
    assert clf.model_runs - before == 21  # every curve point in one run, no padding
    assert c.fractions[0] == 0
    assert c.fractions[-1] == 1
    assert len(c.probs) == 21
    p0 = clf.probs(x[None])[0, 0]
    assert c.probs[0] == pytest.approx(p0, abs=1e-6)
    assert c.probs[-1] == pytest.approx(clf.probs(np.zeros_like(x)[None])[0, 0], abs=1e-6)
    trapezoid = getattr(np, "trapezoid", None) or np.trapz  # noqa: NPY201 (numpy 1.x: trapz)
    assert c.auc == pytest.approx(trapezoid(c.probs, c.fractions))
    ins = metrics.insertion(clf, x, 0, w, steps=20, baseline="mean")
    mean = np.full_like(x, x.mean())
    assert ins.probs[0] == pytest.approx(clf.probs(mean[None])[0, 0], abs=1e-6)
    assert ins.probs[-1] == pytest.approx(p0, abs=1e-6)


def test_bad_map_shape(setup) -> None:  # type: ignore[no-untyped-def]
    clf, x, _ = setup
    with pytest.raises(InputError, match="mask axes"):
        metrics.deletion(clf, x, 0, np.zeros((SIDE, SIDE + 1)))


def test_localisation_and_sparsity() -> None:
    s = np.zeros((10, 10))
    s[2, 3], s[7, 7] = 5.0, 1.0
    box = metrics.region_mask(s.shape, [0, 0, 5, 5])
    assert metrics.pointing_game(s, box) == 1.0
    assert metrics.pointing_game(s, ~box) == 0.0
    near = metrics.region_mask(s.shape, [4, 4, 6, 6])  # (2, 3) is sqrt(5) from (4, 4)
    assert metrics.pointing_game(s, near, tolerance=2) == 0.0
    assert metrics.pointing_game(s, near, tolerance=3) == 1.0
    assert metrics.energy_in_box(s, box) == pytest.approx(5 / 6)
    assert metrics.sparsity(np.ones((10, 10))) == pytest.approx(0.0)
    one = np.zeros(100)
    one[3] = 2.0
    assert metrics.sparsity(one) == pytest.approx(0.99)
    with pytest.raises(InputError, match="box"):
        metrics.region_mask((10, 10), [5, 5, 5, 9])


def test_randomized_model_decorrelates(setup) -> None:  # type: ignore[no-untyped-def]
    clf, x, _ = setup

    def explain(m: onnx.ModelProto) -> np.ndarray:
        return saliency(Classifier(m), x, 0)

    rows = metrics.randomization_check(clf.model, explain, seed=3)
    assert [r.layer for r in rows] == ["bias", "head"]  # top first: the bias feeds the output
    assert rows[0].spearman == pytest.approx(1.0)  # a logit's bias does not change its gradient
    assert abs(rows[1].spearman) < 0.2, rows
    # the same model "randomised" by nothing keeps rank correlation 1
    assert metrics.spearman(explain(clf.model), explain(clf.model)) == pytest.approx(1.0)
    assert set(metrics.METRICS.values()) == {"higher", "lower"}

"""NeuroMask end to end on models/region_cnn.onnx (see tools/make_region_model.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from neuromask_onnx.errors import ConvergenceWarning, InputError
from neuromask_onnx.explain import Explanation, NeuroMask
from neuromask_onnx.mask import apply, upsample_matrix
from neuromask_onnx.optimize import preset

MODEL = Path(__file__).resolve().parent.parent / "models" / "region_cnn.onnx"
BOX = (slice(8, 16), slice(16, 24))
CIFAR = preset("reference-cifar")  # the authors' weights for 32 x 32 inputs


def _images(n: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0.5, 1.0, (n, 3, 32, 32)).astype(np.float32)


def _inside(mask: np.ndarray) -> tuple[bool, float]:
    box = np.zeros(mask.shape, bool)
    box[BOX] = True
    peak = np.unravel_index(int(mask.argmax()), mask.shape)
    return bool(box[peak]), float(mask[box].sum() / mask.sum())


def test_known_answer_mask_lies_on_the_region() -> None:
    nm = NeuroMask(MODEL, CIFAR, provider="cpu", batch_size=2)
    exs = nm.attribute(_images(2))
    assert isinstance(exs, list)
    assert len(exs) == 2
    for ex in exs:
        assert ex.target == 0
        peak_inside, share = _inside(ex.mask)
        assert peak_inside
        assert share > 0.9
        assert ex.mask.shape == (32, 32)
        assert ex.mask.dtype == np.float32
        assert ex.prob_after > 0.5
        assert ex.steps == CIFAR.steps
        assert len(ex.losses) == CIFAR.steps
        assert ex.losses[-1] < ex.losses[0]
        assert ex.provider == "CPUExecutionProvider"
        assert ex.warnings == ()


def test_coarse_mask_is_upsampled_and_still_finds_the_region() -> None:
    nm = NeuroMask(MODEL, CIFAR.replace(mask_scale=2), provider="cpu")
    ex = nm.attribute(_images(1)[0])
    assert isinstance(ex, Explanation)
    assert ex.weights.shape == (16, 16)
    assert ex.mask.shape == (32, 32)
    peak_inside, share = _inside(ex.mask)
    assert peak_inside
    assert share > 0.8


@pytest.mark.parametrize("kind", ["bilinear", "nearest"])
def test_upsampling_adjoint_is_the_transpose(kind: str, rng: np.random.Generator) -> None:
    mats = [upsample_matrix(13, 4, kind), upsample_matrix(9, 3, kind)]
    w = rng.standard_normal((2, 4, 3))
    g = rng.standard_normal((2, 13, 9))
    up = apply(mats, w, adjoint=False)
    assert up.shape == (2, 13, 9)
    np.testing.assert_allclose(np.sum(up * g), np.sum(w * apply(mats, g, adjoint=True)),
                               rtol=1e-5)
    np.testing.assert_allclose(mats[0].sum(axis=1), 1.0, rtol=1e-6)  # rows are averages


@pytest.mark.filterwarnings("ignore::neuromask_onnx.errors.ConvergenceWarning")
def test_batching_equals_one_by_one() -> None:
    cfg = CIFAR.replace(steps=40)
    xs = _images(3, seed=5)
    batched = NeuroMask(MODEL, cfg, provider="cpu", batch_size=2).attribute(xs, target=[0, 1, 2])
    single = NeuroMask(MODEL, cfg, provider="cpu", batch_size=1)
    for x, t, b in zip(xs, [0, 1, 2], batched, strict=True):  # type: ignore[arg-type]
        s = single.attribute(x, target=t)
        assert isinstance(s, Explanation)
        assert b.target == s.target == t
        np.testing.assert_allclose(b.mask, s.mask, atol=1e-5)
        np.testing.assert_allclose(b.losses, s.losses, rtol=1e-5)


def test_fixed_batch_one_model_works(tmp_path: Path) -> None:
    m = onnx.load(str(MODEL))
    m.graph.input[0].type.tensor_type.shape.dim[0].ClearField("dim_param")
    m.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1
    cfg = CIFAR.replace(steps=30)
    xs = _images(3, seed=2)
    fixed = NeuroMask(m, cfg, provider="cpu", batch_size=4).attribute(xs)
    free = NeuroMask(MODEL, cfg, provider="cpu", batch_size=4).attribute(xs)
    for a, b in zip(fixed, free, strict=True):  # type: ignore[arg-type]
        np.testing.assert_allclose(a.mask, b.mask, atol=1e-5)


def test_seed_repeats_to_the_bit_and_changes_the_start() -> None:
    cfg = CIFAR.replace(steps=25, seed=7)
    x = _images(1)[0]
    a = NeuroMask(MODEL, cfg, provider="cpu").attribute(x)
    b = NeuroMask(MODEL, cfg, provider="cpu").attribute(x)
    c = NeuroMask(MODEL, cfg.replace(seed=8), provider="cpu").attribute(x)
    assert isinstance(a, Explanation)
    assert isinstance(b, Explanation)
    assert isinstance(c, Explanation)
    assert np.array_equal(a.mask, b.mask)
    assert np.array_equal(a.losses, b.losses)
    assert a.seed == 7
    assert not np.allclose(a.mask, c.mask)


@pytest.mark.parametrize("baseline", ["blur", "mean", "noise"])
def test_baselines(baseline: str) -> None:
    cfg = CIFAR.replace(steps=10, baseline=baseline, blur_sigma=2.0)
    nm = NeuroMask(MODEL, cfg, provider="cpu")
    x = _images(1)
    b = nm._baseline(x)
    assert b is not None
    assert b.shape == x.shape
    if baseline == "mean":
        np.testing.assert_allclose(b[0, :, 0, 0], x[0].mean(axis=(1, 2)), rtol=1e-5)
    ex = nm.attribute(x[0])
    zero = NeuroMask(MODEL, cfg.replace(baseline="zero"), provider="cpu").attribute(x[0])
    assert isinstance(ex, Explanation)
    assert isinstance(zero, Explanation)
    assert not np.allclose(ex.losses, zero.losses)


@pytest.mark.filterwarnings("ignore::neuromask_onnx.errors.ConvergenceWarning")
def test_restarts_targets_labels_and_top_k() -> None:
    cfg = CIFAR.replace(steps=10, restarts=2)
    nm = NeuroMask(MODEL, cfg, provider="cpu", labels=["box", "dark", "other"])
    x = _images(1)[0]
    exs = nm.attribute(x, top_k=2)
    assert isinstance(exs, list)
    assert [e.target for e in exs] == [0, 1]
    assert [e.label for e in exs] == ["box", "dark"]
    assert exs[0].top_k[0].label == "box"
    assert exs[0].prob_before == pytest.approx(exs[0].top_k[0].prob)
    assert all(e.restart in (0, 1) for e in exs)
    by_name = nm.attribute(x, target="dark")
    assert isinstance(by_name, Explanation)
    assert by_name.target == 1
    with pytest.raises(InputError, match="unknown label"):
        nm.attribute(x, target="cat")
    with pytest.raises(InputError, match="out of range"):
        nm.attribute(x, target=3)
    with pytest.raises(InputError, match="takes"):
        nm.attribute(np.zeros((3, 31, 32), np.float32))


def test_collapsed_mask_warns() -> None:
    cfg = CIFAR.replace(steps=300, pred_weight=1e-6, learning_rate=1.0)
    nm = NeuroMask(MODEL, cfg, provider="cpu")
    with pytest.warns(ConvergenceWarning) as record:
        ex = nm.attribute(_images(1)[0])
    assert isinstance(ex, Explanation)
    text = " ".join(str(w.message) for w in record)
    assert "all-off" in text
    assert "no longer classified" in text
    assert ex.warnings


# --------------------------------------------------------------------------- the default preset


def _region_model(box: tuple[int, int, int, int]) -> onnx.ModelProto:
    import importlib.util

    path = Path(__file__).resolve().parent.parent / "tools" / "make_region_model.py"
    spec = importlib.util.spec_from_file_location("make_region_model", path)
    assert spec is not None
    assert spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    model: onnx.ModelProto = mod.build(box)
    return model


@pytest.mark.parametrize("box", [(0, 8, 0, 8), (24, 32, 8, 16), (8, 16, 16, 24)],
                         ids=["corner", "bottom_edge", "centre"])
def test_default_mask_finds_the_region_at_the_border_and_inside(
        box: tuple[int, int, int, int]) -> None:
    """The default preset's mask follows the evidence to the border and leaves an ignored
    border cold: no border band either way."""
    nm = NeuroMask(_region_model(box), provider="cpu")
    ex = nm.attribute(_images(1, seed=3)[0], target=0)
    assert isinstance(ex, Explanation)
    top, bottom, left, right = box
    peak = np.unravel_index(int(ex.mask.argmax()), ex.mask.shape)
    assert top <= peak[0] < bottom
    assert left <= peak[1] < right
    inside = np.zeros(ex.mask.shape, bool)
    inside[top:bottom, left:right] = True
    # the box is 1/16 of the image; the largest nested area is 1/2, so the rest of the image
    # is partly on, but well below the box
    assert ex.mask[inside].mean() > 2 * ex.mask[~inside].mean()
    ring = np.ones(ex.mask.shape, bool)
    ring[2:-2, 2:-2] = False  # the outer two pixels all round
    inbox = np.zeros(ex.mask.shape, bool)
    inbox[top:bottom, left:right] = True
    outside = ring & ~inbox
    assert ex.mask[outside].mean() < 0.5 * ex.mask[inbox].mean()
    if box == (8, 16, 16, 24):  # the model ignores every edge: the ring stays cold
        assert ex.mask[ring].max() < ex.mask[inbox].min()


def test_python_default_is_the_cli_default_and_the_default_preset() -> None:
    from neuromask_onnx.optimize import NeuroMaskConfig

    assert NeuroMaskConfig() == preset("default")
    assert NeuroMaskConfig().mode == "areas"
    assert preset("reference").mode == "classic"


def test_labels_come_from_the_model_metadata() -> None:
    m = onnx.load(str(MODEL))
    onnx.helper.set_model_props(m, {"neuromask.labels": '["box", "dark", "other"]'})
    ex = NeuroMask(m, provider="cpu").attribute(_images(1)[0], target=0)
    assert isinstance(ex, Explanation)
    assert ex.label == "box"
    assert ex.top_k[0].label == "box"


def test_default_counts_its_model_runs() -> None:
    nm = NeuroMask(MODEL, provider="cpu")
    ex = nm.attribute(_images(1)[0])
    assert isinstance(ex, Explanation)
    c = nm.config
    rows = len(c.areas) * 2
    # one prediction, (init prior: a row per substrate), then one batch of rows per step
    prior = len(c.substrates) if c.init == "prior" else 0
    assert nm.model_runs == 1 + prior + c.steps * rows
    assert ex.steps == c.steps


def test_default_map_resolves_a_line_finer_than_its_cells() -> None:
    """The masks have 14 cells per axis (2.3 pixels each here); a model that reads a line one
    pixel wide gets it exactly from the pixel detail (the objective's gradient at full
    resolution, summed over the steps), and not without it."""
    box = (4, 28, 20, 21)
    line = np.zeros((32, 32), bool)
    line[4:28, 20] = True
    x = _images(1, seed=3)[0]

    def on_line(cfg: object) -> float:
        ex = NeuroMask(_region_model(box), cfg, provider="cpu").attribute(x, target=0)
        assert isinstance(ex, Explanation)
        top = np.argsort(ex.mask, axis=None)[::-1][:int(line.sum())]
        return float(line.ravel()[top].mean())

    from neuromask_onnx.optimize import NeuroMaskConfig

    assert on_line(NeuroMaskConfig(detail_sigma=0.0)) == 1.0
    assert on_line(NeuroMaskConfig(detail_weight=0.0)) < 0.9

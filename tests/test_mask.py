"""mask.masked_out: the one definition of a masked-out point, as explain and metrics use it."""

from __future__ import annotations

import types

import numpy as np
import pytest
from scipy import ndimage

from neuromask_onnx import metrics
from neuromask_onnx.errors import InputError
from neuromask_onnx.mask import masked_out


def _x() -> np.ndarray:
    return np.random.default_rng(0).normal(size=(2, 3, 9, 7)).astype(np.float32)


def test_each_kind_by_its_formula() -> None:
    x = _x()
    assert not masked_out(x, "zero", (2, 3), blur_sigma=1.0).any()
    blur = masked_out(x, "blur", (2, 3), blur_sigma=1.5)
    want = ndimage.gaussian_filter(x, [0, 0, 1.5, 1.5], mode="reflect")
    np.testing.assert_array_equal(blur, want)  # only the mask axes are blurred
    mean = masked_out(x, "mean", (2, 3), blur_sigma=1.0)
    np.testing.assert_allclose(mean[:, :, 4, 2], x.mean(axis=(2, 3)), rtol=1e-6)
    assert mean.dtype == x.dtype
    assert mean.shape == x.shape


def test_noise_is_one_field_per_seed_shared_by_the_rows() -> None:
    x = np.repeat(_x()[:1], 2, axis=0)
    a = masked_out(x, "noise", (2, 3), blur_sigma=1.0, noise_std=0.5, seed=3)
    b = masked_out(x, "noise", (2, 3), blur_sigma=1.0, noise_std=0.5, seed=3)
    c = masked_out(x, "noise", (2, 3), blur_sigma=1.0, noise_std=0.5, seed=4)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a[0], a[1])
    assert not np.allclose(a, c)
    np.testing.assert_allclose((a - x.mean(axis=(2, 3), keepdims=True)).std(axis=(2, 3)),
                               0.5 * x.std(axis=(2, 3)), rtol=0.35)


def test_an_unknown_kind_is_one_line() -> None:
    with pytest.raises(InputError, match=r"baseline must be one of zero, blur, mean, noise"):
        masked_out(_x(), "grey", (2, 3), blur_sigma=1.0)


@pytest.mark.parametrize("how", ["zero", "blur", "mean"])
def test_the_metrics_baseline_is_the_same_definition(how: str) -> None:
    """metrics removes points of one input (no batch axis) with the shared definition: the
    same values as masked_out over that input's mask axes; its mean accumulates in the
    input's own type, explain's in float64."""
    x = _x()
    clf = types.SimpleNamespace(mask_axes=(2, 3))
    got = metrics.removal_baseline(clf, x[0], how, blur_sigma=2.0)  # type: ignore[arg-type]
    want = masked_out(x, how, (2, 3), blur_sigma=2.0, mean_dtype=None)[0]
    np.testing.assert_array_equal(got, want)
    with pytest.raises(InputError, match="removal baseline must be zero, blur or mean"):
        metrics.removal_baseline(clf, x[0], "noise")  # type: ignore[arg-type]

"""The display scale of maps (`outputs.heat`) and the overlay it feeds."""

from __future__ import annotations

import numpy as np
from PIL import Image

from neuromask_onnx.outputs import heat, overlay


def test_heat_puts_the_lower_half_at_zero_and_the_top_at_one() -> None:
    # a map with a floor well above 0, as the default NeuroMask map has
    rng = np.random.default_rng(0)
    m = 0.3 + 0.05 * rng.random((20, 20))
    m[5:9, 5:9] = 0.9
    h = heat(m)
    assert h.dtype == np.float32
    assert h.max() == 1.0
    assert (h[m <= np.median(m)] == 0).all()
    np.testing.assert_array_equal(np.argsort(h[m > np.median(m)]),
                                  np.argsort(m[m > np.median(m)]))


def test_heat_edge_cases() -> None:
    np.testing.assert_array_equal(heat(np.ones((3, 3))), np.zeros((3, 3)))
    # three quarters on: scaled from the minimum instead of blanking the map
    np.testing.assert_array_equal(heat(np.array([1.0, 1.0, 1.0, 0.0])), [1, 1, 1, 0])
    # a sparse map: the percentile is 0, the maximum scales it
    np.testing.assert_allclose(heat(np.array([0.0] * 99 + [2.0]), 99.0)[-1], 1.0)
    assert heat(np.zeros((0,))).shape == (0,)


def test_overlay_is_hotter_where_the_heat_is() -> None:
    img = Image.new("RGB", (8, 8), (128, 128, 128))
    h = np.zeros((8, 8))
    h[:4] = 1.0
    out = np.asarray(overlay(img, h), np.float64)
    base = 128.0
    assert np.abs(out[:4] - base).mean() > 2 * np.abs(out[4:] - base).mean()

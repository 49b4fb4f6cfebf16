"""Pictures of masks that are not images: a bar chart of a feature mask, a series plot.

Tabular inputs [N, F] get `feature_bars`: one horizontal bar per feature, most important first,
its name on the left and its mask value on the right. Time series [N, T, C] get `series_plot`:
the C channels as lines (each scaled to its own range) over a strip showing the mask along T
in the Turbo colours of the image overlays, with the mask value as a line on it. Pure PIL with
its built-in bitmap font, no plotting library; same pixels on every machine.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

_BG, _INK, _GRID = (255, 255, 255), (30, 30, 30), (215, 215, 215)
_PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
            (140, 86, 75), (227, 119, 194), (127, 127, 127)]
MAX_BARS = 40
"""At most this many bars; the rest are summarised in one line."""

# Turbo (A. Mikhailov, Google, 2019), polynomial fit: channel = c4 . (1, t, t^2, t^3)
# + c2 . (t^4, t^5).
_TURBO4 = np.array([[0.13572138, 4.61539260, -42.66032258, 132.13108234],
                    [0.09140261, 2.19418839, 4.84296658, -14.18503333],
                    [0.10667330, 12.64194608, -60.58204836, 110.36276771]])
_TURBO2 = np.array([[-152.94239396, 59.28637943],
                    [4.27729857, 2.82956604],
                    [-89.90310912, 27.34824973]])


def turbo(v: np.ndarray) -> np.ndarray:
    """Map values in [0, 1] to RGB floats in [0, 1] (shape [..., 3])."""
    t = np.clip(np.asarray(v, np.float64), 0.0, 1.0)[..., None]
    p4 = np.concatenate([np.ones_like(t), t, t**2, t**3], axis=-1)
    p2 = np.concatenate([t**4, t**5], axis=-1)
    rgb: np.ndarray = np.clip(p4 @ _TURBO4.T + p2 @ _TURBO2.T, 0.0, 1.0)
    return rgb


def _font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default()


def _colour(v: float) -> tuple[int, int, int]:
    r, g, b = (np.rint(turbo(np.array(v)) * 255).astype(int)).tolist()
    return int(r), int(g), int(b)


def feature_bars(mask: np.ndarray, names: Sequence[str] | None = None,
                 title: str = "") -> Image.Image:
    """Horizontal bars of a 1-D mask in [0, 1], sorted by value (highest first)."""
    flat = np.clip(np.asarray(mask, np.float64).ravel(), 0.0, 1.0)
    order = np.argsort(-flat, kind="stable")
    shown = order[:MAX_BARS]
    label = [names[i] if names is not None and i < len(names) else f"feature {i}"
             for i in range(flat.size)]
    font = _font()
    text_w = max(int(font.getlength(label[i][:32])) for i in shown) + 12
    row, top, bar_w = 16, 24 if title else 8, 320
    extra = 16 if flat.size > MAX_BARS else 0
    w, h = text_w + bar_w + 56, top + row * len(shown) + extra + 8
    img = Image.new("RGB", (w, h), _BG)
    d = ImageDraw.Draw(img)
    if title:
        d.text((8, 6), title[:90], fill=_INK, font=font)
    x0 = text_w
    for q in (0.0, 0.25, 0.5, 0.75, 1.0):
        gx = x0 + int(q * bar_w)
        d.line([(gx, top - 2), (gx, top + row * len(shown))], fill=_GRID)
    for r, i in enumerate(shown):
        y = top + r * row
        d.text((4, y + 2), label[i][:32], fill=_INK, font=font)
        length = round(float(flat[i]) * bar_w)
        if length > 0:
            d.rectangle([x0, y + 2, x0 + length, y + row - 3], fill=_colour(flat[i]))
        d.text((x0 + bar_w + 6, y + 2), f"{flat[i]:.2f}", fill=_INK, font=font)
    if extra:
        d.text((4, top + row * len(shown) + 2),
               f"... {flat.size - len(shown)} more features below {flat[shown[-1]]:.2f}",
               fill=_INK, font=font)
    return img


def series_plot(x: np.ndarray, mask: np.ndarray, title: str = "") -> Image.Image:
    """Channels of x [T, C] as lines, and below them the mask [T] as a colour strip + line."""
    series = np.asarray(x, np.float64)
    if series.ndim == 1:
        series = series[:, None]
    m = np.clip(np.asarray(mask, np.float64).ravel(), 0.0, 1.0)
    t = int(series.shape[0])
    font = _font()
    left, right, top = 36, 12, 24 if title else 8
    plot_w, plot_h, strip_h, gap = 640, 180, 70, 14
    w, h = left + plot_w + right, top + plot_h + gap + strip_h + 22
    img = Image.new("RGB", (w, h), _BG)
    d = ImageDraw.Draw(img)
    if title:
        d.text((8, 6), title[:100], fill=_INK, font=font)

    def xpos(i: float) -> int:
        return left + round(float(i + 0.5) * plot_w / t)

    d.rectangle([left, top, left + plot_w, top + plot_h], outline=_GRID)
    for c in range(series.shape[1]):
        v = series[:, c]
        lo, hi = float(v.min()), float(v.max())
        span = hi - lo if hi > lo else 1.0
        pts = [(xpos(i), top + plot_h - 4 - int((v[i] - lo) / span * (plot_h - 8)))
               for i in range(t)]
        d.line(pts, fill=_PALETTE[c % len(_PALETTE)], width=2)
    d.text((4, top + 2), "x", fill=_INK, font=font)
    y0 = top + plot_h + gap
    for i in range(t):
        xa = left + int(i * plot_w / t)
        xb = left + int((i + 1) * plot_w / t) - 1
        d.rectangle([xa, y0, max(xa, xb), y0 + strip_h], fill=_colour(m[i]))
    pts = [(xpos(i), y0 + strip_h - int(m[i] * strip_h)) for i in range(t)]
    d.line(pts, fill=_BG, width=4)  # a white halo keeps the line visible on dark cells
    d.line(pts, fill=_INK, width=2)
    d.rectangle([left, y0, left + plot_w, y0 + strip_h], outline=_INK)
    d.text((4, y0 + 2), "mask", fill=_INK, font=font)
    d.text((4, y0 + strip_h - 10), "0", fill=_INK, font=font)
    d.text((left, y0 + strip_h + 6), "t = 0", fill=_INK, font=font)
    d.text((left + plot_w - 40, y0 + strip_h + 6), f"t = {t - 1}", fill=_INK, font=font)
    return img

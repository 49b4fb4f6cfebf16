"""One self-contained HTML page comparing saliency methods: nothing to fetch, nothing to install.

Per input: the original image, each method's heat-map overlay (the Turbo overlay from
`outputs`, as an inline base64 PNG) and its deletion and insertion curves (inline SVG written
here; no plotting library). Then the summary table: each metric's mean per method, with
whether higher or lower is better, and seconds per input. A small inline script writes how many
images the browser decoded (and how many are broken) into the attributes of a hidden `#nm-image-check`
element, so a headless browser test can read it from the DOM; the reader never sees it.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from .metrics import METRICS, Curve
from .outputs import heat, overlay, png_bytes


@dataclass(frozen=True)
class MethodResult:
    method: str
    saliency: np.ndarray
    seconds: float
    scores: dict[str, float]
    deletion: Curve
    insertion: Curve


@dataclass(frozen=True)
class InputResult:
    name: str
    target: int
    label: str | None
    prob: float
    image: Image.Image | None
    """The picture to show (the original image, or the tensor rendered); None for non-images."""
    methods: list[MethodResult] = field(default_factory=list)
    to_image: object = None
    """Callable map -> map at the image's resolution (None: resize to the image)."""


PERCENTILE = 99.0
"""Overlays are scaled so that this percentile of each map's excess over its median is full
colour (`outputs.heat`): a few extreme gradient values would otherwise leave the rest of a
gradient map invisible."""


def tensor_image(x: np.ndarray, channel_axis: int | None) -> Image.Image | None:
    """A 2-D (or channels + 2-D) tensor as a picture, each channel min-max scaled."""
    a = np.asarray(x, np.float64)
    if channel_axis is not None and a.ndim == 3:
        a = np.moveaxis(a, channel_axis, -1)
        if a.shape[-1] not in (1, 3):
            a = a.mean(axis=-1, keepdims=True)
    elif a.ndim == 2:
        a = a[..., None]
    else:
        return None
    lo, hi = a.min(axis=(0, 1)), a.max(axis=(0, 1))
    u8 = np.rint(255 * (a - lo) / np.where(hi > lo, hi - lo, 1.0)).astype(np.uint8)
    return Image.fromarray(np.repeat(u8, 3, axis=2) if u8.shape[-1] == 1 else u8, mode="RGB")


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def overlay_png(image: Image.Image, saliency: np.ndarray, to_image: object = None) -> bytes:
    m = heat(saliency, PERCENTILE)
    if callable(to_image):
        full = np.asarray(to_image(m), np.float32)
    else:
        full = np.asarray(Image.fromarray(m, mode="F").resize(image.size,
                                                                Image.Resampling.BILINEAR))
    return png_bytes(overlay(image, np.clip(full, 0.0, 1.0)))


def curve_svg(deletion: Curve, insertion: Curve, width: int = 240, height: int = 170) -> str:
    """Both curves on one plot: target probability (0..1) against the fraction of pixels
    removed (deletion) or inserted (insertion), with axis titles."""
    left, right, top, bottom = 34, 8, 22, 34
    w, h = width - left - right, height - top - bottom

    def points(c: Curve) -> str:
        return " ".join(f"{left + w * f:.1f},{top + h * (1 - min(max(p, 0.0), 1.0)):.1f}"
                        for f, p in zip(c.fractions, c.probs, strict=True))

    mid_y = top + h / 2
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="deletion and insertion curves">'
        f'<rect x="{left}" y="{top}" width="{w}" height="{h}" fill="none" stroke="#999"/>'
        f'<polyline fill="none" stroke="#d62728" stroke-width="1.5" points="{points(deletion)}"/>'
        f'<polyline fill="none" stroke="#1f77b4" stroke-width="1.5" '
        f'points="{points(insertion)}"/>'
        f'<text x="{left}" y="14" font-size="10" fill="#d62728">deletion AUC '
        f'{deletion.auc:.3f}</text>'
        f'<text x="{left + w / 2 + 4}" y="14" font-size="10" fill="#1f77b4">insertion AUC '
        f'{insertion.auc:.3f}</text>'
        f'<text x="{left}" y="{top + h + 11}" font-size="9" text-anchor="middle">0</text>'
        f'<text x="{left + w}" y="{top + h + 11}" font-size="9" text-anchor="middle">1</text>'
        f'<text x="{left + w / 2}" y="{height - 4}" font-size="10" text-anchor="middle">'
        "fraction of pixels removed / inserted</text>"
        f'<text x="{left - 4}" y="{top + 4}" font-size="9" text-anchor="end">1</text>'
        f'<text x="{left - 4}" y="{top + h}" font-size="9" text-anchor="end">0</text>'
        f'<text x="10" y="{mid_y}" font-size="10" text-anchor="middle" '
        f'transform="rotate(-90 10 {mid_y})">target probability</text></svg>')


def summary(inputs: Sequence[InputResult]) -> list[dict[str, float | str]]:
    """One row per method: the mean of each metric and of the seconds over the inputs."""
    methods = list(dict.fromkeys(m.method for inp in inputs for m in inp.methods))
    rows: list[dict[str, float | str]] = []
    for name in methods:
        res = [m for inp in inputs for m in inp.methods if m.method == name]
        row: dict[str, float | str] = {"method": name}
        for metric in METRICS:
            vals = [m.scores[metric] for m in res if metric in m.scores]
            if vals:
                row[metric] = float(np.mean(vals))
        row["seconds"] = float(np.mean([m.seconds for m in res]))
        rows.append(row)
    return rows


def comparison_files(inputs: Sequence[InputResult], meta: dict[str, object],
                     notes: Sequence[str], title: str,
                     ) -> tuple[dict[str, bytes], list[dict[str, float | str]], list[str]]:
    """compare.csv, compare.json and report.html as bytes (keys csv, json, html), with the
    summary rows and their columns (for the terminal table)."""
    import csv
    import io
    import json

    rows = summary(inputs)
    cols = ["method", *[c for c in METRICS if any(c in r for r in rows)], "seconds"]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    doc = {**meta, "better": METRICS, "summary": rows,
           "inputs": [{"name": r.name, "target": r.target, "prob": r.prob,
                       "methods": {m.method: {**m.scores, "seconds": m.seconds}
                                   for m in r.methods}} for r in inputs],
           "warnings": list(notes)}
    blobs = {"csv": buf.getvalue().encode(),
             "json": (json.dumps(doc, indent=2) + "\n").encode(),
             "html": render(inputs, title).encode()}
    return blobs, rows, cols


def _table(rows: Sequence[dict[str, float | str]]) -> str:
    cols = [c for c in [*METRICS, "seconds"] if any(c in r for r in rows)]
    head = "".join(f"<th>{html.escape(c)}"
                   f"{' (' + METRICS[c] + ' is better)' if c in METRICS else ' per input'}</th>"
                   for c in cols)
    body = []
    for r in rows:
        cells = "".join(f"<td>{r[c]:.4f}</td>" if isinstance(r.get(c), float) else "<td>-</td>"
                        for c in cols)
        body.append(f"<tr><th>{html.escape(str(r['method']))}</th>{cells}</tr>")
    return (f'<table id="nm-summary"><thead><tr><th>method</th>{head}</tr></thead>'
            f"<tbody>{''.join(body)}</tbody></table>")


_STYLE = """body{font-family:sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px}
td{text-align:right}.grid{display:flex;flex-wrap:wrap;gap:12px}
figure{margin:0;border:1px solid #ddd;padding:6px}figcaption{font-size:12px}
img{width:200px;height:auto;image-rendering:pixelated}"""

_CHECK = """<script>
window.addEventListener('load', function () {
  var imgs = document.images, broken = 0;
  for (var i = 0; i < imgs.length; i++) {
    if (!imgs[i].complete || imgs[i].naturalWidth === 0) { broken++; }
  }
  var el = document.getElementById('nm-image-check');
  el.setAttribute('data-images', String(imgs.length));
  el.setAttribute('data-broken', String(broken));
});
</script>"""


def render(inputs: Sequence[InputResult], title: str = "neuromask compare") -> str:
    """The whole page as one string."""
    parts = [(f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
              f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>"),
             f"<h1>{html.escape(title)}</h1><h2>Summary</h2>", _table(summary(inputs)),
             '<div id="nm-image-check" hidden data-images="?" data-broken="?"></div>',
             ("<p>Overlays: each map's excess over its median, full colour at the "
              f"{PERCENTILE:g}th percentile of that excess. Curves: the target probability as "
              "pixels are removed most-important first (deletion, lower AUC is better) or "
              "inserted into the insertion baseline (higher is better).</p>")]
    for inp in inputs:
        tgt = f"{inp.target} {inp.label}" if inp.label else str(inp.target)
        parts.append(f"<h2>{html.escape(inp.name)}: target {html.escape(tgt)} "
                     f"(p = {inp.prob:.3f})</h2><div class=\"grid\">")
        if inp.image is not None:
            parts.append(f'<figure><img alt="original" src="{_data_uri(png_bytes(inp.image))}">'
                         "<figcaption>original</figcaption></figure>")
        for m in inp.methods:
            img = ""
            if inp.image is not None and np.ndim(m.saliency) == 2:
                uri = _data_uri(overlay_png(inp.image, m.saliency, inp.to_image))
                img = f'<img alt="{html.escape(m.method)} overlay" src="{uri}"><br>'
            parts.append(f"<figure>{img}{curve_svg(m.deletion, m.insertion)}<figcaption>"
                         f"{html.escape(m.method)}: {m.seconds:.2f} s</figcaption></figure>")
        parts.append("</div>")
    parts.append(_CHECK + "</body></html>")
    return "".join(parts)

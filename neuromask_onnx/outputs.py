"""Write explanations to files: mask .npy, greyscale PNG, heat-map overlay PNG and JSON.

Per input and target, in the output directory: `<stem>.mask.npy` (float32, model resolution),
`<stem>.mask.png` (greyscale, model resolution), `<stem>.overlay.png` (the heat map on the
original image at its original resolution; images only) and `<stem>.json` (everything needed
to reproduce and judge the run). `plan` decides every path and refuses, before anything is
written, if any exists and `force` is off; `write` puts each file in place atomically (a temp
file in the same directory, then os.replace), so a crash never leaves a half-written file.
The colormap is Google's Turbo polynomial approximation (`charts.turbo`), computed in numpy.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from PIL import Image

from . import __version__
from .charts import turbo
from .errors import InputError, Interrupted
from .files import atomic_write, save_model, sha256
from .preprocess import LoadedInput
from .results import Explanation


def heat(saliency: np.ndarray, percentile: float = 100.0) -> np.ndarray:
    """A map as display intensities in [0, 1]: its excess over its median, over the
    `percentile`-th percentile of that excess. The half of the input that matters least is 0:
    the default NeuroMask map (the nested masks' mean plus a signed pixel detail) has neither
    its floor at 0 nor its top at 1, and on an absolute scale it would look washed out. A map
    with half or more of it at its maximum (a large binary mask) is scaled from its minimum;
    a constant map becomes zeros."""
    a = np.asarray(saliency, np.float64)
    if not a.size:
        return np.zeros(a.shape, np.float32)
    s = np.clip(a - np.median(a), 0.0, None)
    if s.max() <= 0:
        s = a - a.min()
    top = float(np.percentile(s, percentile))
    if top <= 0:  # sparse maps (most of the excess zero): the maximum then
        top = float(s.max())
    return np.clip(s / top if top > 0 else s, 0.0, 1.0).astype(np.float32)


def overlay(image: Image.Image, intensity: np.ndarray, alpha: float = 0.6) -> Image.Image:
    """Blend the Turbo heat map of `intensity` (in [0, 1], see `heat`; the same size as
    `image`) over it; more where it is high."""
    base = np.asarray(image.convert("RGB"), np.float64) / 255.0
    m = np.clip(np.asarray(intensity, np.float64), 0.0, 1.0)[..., None]
    a = alpha * (0.35 + 0.65 * m)
    out = (1.0 - a) * base + a * turbo(m[..., 0])
    return Image.fromarray(np.rint(out * 255.0).astype(np.uint8), mode="RGB")


@dataclass(frozen=True)
class Planned:
    """The files one explanation becomes."""

    stem: str
    paths: dict[str, Path]


def plan(out_dir: Path, items: Sequence[tuple[LoadedInput, int, bool]], mask_ndim: int,
         force: bool = False, layout: str | None = None) -> list[Planned]:
    """Decide every output path; refuse (before writing anything) to overwrite without force.

    items: (input, target class, several targets for this input?). The mask PNG needs a 2-D
    mask and the overlay also an image input. A 1-D mask over a tabular input (layout NF)
    gets a bar chart `<stem>.features.png`, over a time series (NTC) `<stem>.series.png`.
    """
    if out_dir.exists() and not out_dir.is_dir():
        msg = f"output {str(out_dir)!r} exists and is not a directory; pick another with -o"
        raise InputError(msg)
    seen: dict[str, int] = {}
    planned = []
    for inp, target, multi in items:
        stem = f"{inp.name}.class{target}" if multi else inp.name
        if stem in seen:  # the same file name from different directories
            seen[stem] += 1
            stem = f"{stem}-{seen[stem]}"
        else:
            seen[stem] = 0
        kinds = {"npy": ".mask.npy", "json": ".json"}
        if mask_ndim == 2:
            kinds["png"] = ".mask.png"
            if inp.image is not None:
                kinds["overlay"] = ".overlay.png"
        elif mask_ndim == 1 and layout == "NF":
            kinds["chart"] = ".features.png"
        elif mask_ndim == 1 and layout == "NTC":
            kinds["series"] = ".series.png"
        planned.append(Planned(stem, {k: out_dir / f"{stem}{sfx}" for k, sfx in kinds.items()}))
    if not force:
        existing = [str(p) for pl in planned for p in pl.paths.values() if p.exists()]
        if existing:
            more = f" and {len(existing) - 1} more file(s)" if len(existing) > 1 else ""
            msg = f"{existing[0]!r}{more} already exist; pass --force to overwrite"
            raise InputError(msg)
    return planned


def check_writable(out_dir: Path, flag: str = "-o") -> None:
    """Refuse now, before any work, an output directory that cannot be created or written.

    Probes with a temporary file in `out_dir` or, when it does not exist yet, in its nearest
    existing ancestor (creating nothing), so a read-only place fails in a second, not after
    the optimisation.
    """
    if out_dir.exists() and not out_dir.is_dir():
        msg = f"output {str(out_dir)!r} exists and is not a directory; pick another with {flag}"
        raise InputError(msg)
    probe = out_dir.absolute()
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        msg = f"cannot create {str(out_dir)!r}: {str(probe)!r} is a file; pick another with {flag}"
        raise InputError(msg)
    try:
        fd, tmp = tempfile.mkstemp(dir=probe, prefix=".neuromask-probe-")
        os.close(fd)
        Path(tmp).unlink()
    except OSError as exc:
        what = "is not writable" if probe == out_dir.absolute() else (
            f"cannot be created ({str(probe)!r} is not writable)")
        msg = f"output directory {str(out_dir)!r} {what}: {exc.strerror or exc}; " \
              f"pick another with {flag}"
        raise InputError(msg) from None


def write_instrumented(model: Path, output: Path, *, force: bool,
                       **options: Any) -> onnx.ModelProto:
    """`neuromask instrument MODEL -o OUTPUT`: refuse an unusable OUTPUT before the work,
    then `rewrite.instrument(model, **options)` and write the result atomically."""
    from .rewrite import instrument

    if output.is_dir():
        msg = f"{str(output)!r} is a directory; give a file name such as model.nm.onnx"
        raise InputError(msg)
    if output.exists() and not force:
        msg = f"{str(output)!r} exists; pass --force to overwrite it"
        raise InputError(msg)
    if not output.parent.is_dir():
        msg = f"directory {str(output.parent)!r} does not exist; create it first"
        raise InputError(msg)
    check_writable(output.parent)
    m = instrument(model, **options)
    try:
        save_model(m, output)
    except OSError as exc:
        msg = f"cannot write {str(output)!r}: {exc.strerror or exc}"
        raise InputError(msg) from None
    return m


def write_all(out_dir: Path, blobs: Sequence[tuple[Path, bytes]]) -> list[Path]:
    """Create `out_dir` and write each file atomically. An OSError (disk full, read-only)
    becomes one InputError line; an interrupt records the complete files already written."""
    done: list[Path] = []
    path = out_dir
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        for path, data in blobs:
            atomic_write(path, data)
            done.append(path)
    except Interrupted as exc:
        exc.written.extend(str(p) for p in done)
        raise
    except OSError as exc:
        kept = (f"; {len(done)} complete file(s) were written before it" if done
                else "; nothing was written")
        msg = f"cannot write {str(path)!r}: {exc.strerror or exc}{kept}"
        raise InputError(msg) from None
    return done


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def record(ex: Explanation, inp: LoadedInput, model_path: Path | None, model_sha: str | None,
           outputs: dict[str, Path], feature_names: Sequence[str] | None = None,
           gradient: dict[str, Any] | None = None) -> dict[str, Any]:
    """The JSON document: enough to reproduce the run and judge its result.

    With a bar chart among the outputs it lists the features by importance; `gradient` says
    which mask gradient was used (exact, or estimated and from how many model runs).
    """
    doc = _record(ex, inp, model_path, model_sha, outputs)
    if gradient is not None:
        doc["gradient"] = gradient
    if "chart" in outputs:
        from .onnxml import feature_order

        doc["features"] = feature_order(ex.mask, feature_names)
    return doc


def _record(ex: Explanation, inp: LoadedInput, model_path: Path | None, model_sha: str | None,
            outputs: dict[str, Path]) -> dict[str, Any]:
    return {
        "neuromask_onnx": __version__,
        "onnxruntime": ort.__version__,
        "model": {"path": str(model_path) if model_path else None, "sha256": model_sha},
        "input": {"name": inp.name, **inp.record},
        "target": {"index": ex.target, "label": ex.label},
        "prob_before": ex.prob_before,
        "prob_after": ex.prob_after,
        "top5": [{"index": t.index, "label": t.label, "prob": t.prob} for t in ex.top_k[:5]],
        "config": ex.config.to_dict(),
        "seed": ex.seed,
        "restart": ex.restart,
        "provider": ex.provider,
        "steps": ex.steps,
        "stopped_early": ex.stopped_early,
        "final_losses": ex.final_losses,
        "losses": [float(v) for v in ex.losses],
        "mask": {"shape": list(ex.mask.shape), "min": float(ex.mask.min()),
                 "max": float(ex.mask.max()), "mean": float(ex.mask.mean())},
        "seconds": ex.timings,
        "model_passes": ex.passes,
        **({"areas": ex.details["areas"]} if "areas" in ex.details else {}),
        **({"scores": ex.scores} if ex.scores else {}),
        "warnings": list(ex.warnings),
        "files": {k: p.name for k, p in outputs.items()},
    }


def write(out_dir: Path, planned: Sequence[Planned],
          items: Sequence[tuple[LoadedInput, Explanation]], model_path: Path | None,
          force: bool = False, feature_names: Sequence[str] | None = None,
          gradient: dict[str, Any] | None = None) -> list[Path]:
    """Render everything in memory, check again, then write each file atomically."""
    model_sha = sha256(model_path) if model_path is not None else None
    blobs: list[tuple[Path, bytes]] = []
    for pl, (inp, ex) in zip(planned, items, strict=True):
        for kind, path in pl.paths.items():
            if kind == "npy":
                buf = io.BytesIO()
                np.save(buf, ex.mask.astype(np.float32))
                blobs.append((path, buf.getvalue()))
            elif kind == "png":
                grey = np.rint(np.clip(ex.mask, 0, 1) * 255).astype(np.uint8)
                blobs.append((path, png_bytes(Image.fromarray(grey, mode="L"))))
            elif kind == "overlay":
                assert inp.image is not None
                assert inp.geometry is not None
                full = inp.geometry.to_original(heat(ex.mask))
                blobs.append((path, png_bytes(overlay(inp.image, full))))
            elif kind in ("chart", "series"):
                from . import charts

                title = f"{inp.name}: class {ex.label or ex.target}, p = {ex.prob_before:.3f}"
                img = (charts.feature_bars(ex.mask, feature_names, title) if kind == "chart"
                       else charts.series_plot(inp.tensor, ex.mask, title))
                blobs.append((path, png_bytes(img)))
            else:
                doc = record(ex, inp, model_path, model_sha, pl.paths, feature_names, gradient)
                text = json.dumps(doc, indent=2, allow_nan=True) + "\n"
                blobs.append((path, text.encode()))
    if not force:  # something may have appeared while we computed
        clash = [str(p) for p, _ in blobs if p.exists()]
        if clash:
            msg = f"{clash[0]!r} appeared while computing; pass --force to overwrite"
            raise InputError(msg)
    return write_all(out_dir, blobs)

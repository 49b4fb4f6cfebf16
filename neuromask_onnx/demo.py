"""`neuromask demo`: a real photo explained by a real pretrained classifier, nothing to fetch.

The assets ship in the source tree, `models/demo/` (provenance and licences in
models/README.md): the pretrained ImageNet EfficientNet-Lite0 exported by
tools/export_efficientnet_lite0.py (preprocessing and class names in its metadata) and
scikit-image's photograph of Chelsea the cat. The demo explains the photo's top-1 class with
`preset("default")` (whatever it is at the time), then compares that mask with the three
fastest other methods (saliency, gradient x input, Integrated Gradients; occlusion and RISE
are left out for time, `neuromask compare` runs them all) and writes both into one folder: cat files from `explain`, and compare.csv,
compare.json, report.html. The NeuroMask mask is learned once and reused by the comparison.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .comparing import COMPARE_FILES, CompareRun, compare_files
from .errors import InputError, Interrupted
from .pipeline import ExplainRun, Progress, explain_files, noop

ASSETS = Path(__file__).resolve().parent.parent / "models" / "demo"
MODEL = "efficientnet_lite0.onnx"
PHOTO = "chelsea.png"
METHODS = ("neuromask", "saliency", "gradient_x_input", "integrated_gradients")


def assets(root: Path = ASSETS) -> tuple[Path, Path]:
    """(model, photo) of the demo, or one line on how to get them."""
    model, photo = root / MODEL, root / PHOTO
    missing = [p for p in (model, photo) if not p.is_file()]
    if missing:
        msg = (f"the demo's {missing[0].name} is not at {str(missing[0].parent)!r}: the demo "
               "assets ship in the source tree (models/demo); install from a clone with "
               "`pip install -e .`")
        raise InputError(msg)
    return model, photo


@dataclass
class DemoRun:
    explained: ExplainRun
    compared: CompareRun


def run_demo(out: Path, *, force: bool = False, provider: str = "auto",
             threads: int | None = None, progress: Progress = noop,
             root: Path = ASSETS) -> DemoRun:
    """Explain the photo's top-1 class and compare the mask with other methods, into `out`."""
    from .optimize import preset

    model, photo = assets(root)
    clash = [str(out / f) for f in COMPARE_FILES.values() if (out / f).exists()]
    if clash and not force:
        msg = f"{clash[0]!r} already exists; pass --force to overwrite"
        raise InputError(msg)
    config = preset("default")
    explained = explain_files(model, [photo], out, config=config, provider=provider,
                              threads=threads, force=force, progress=progress)
    ex = explained.items[0][1]
    try:
        compared = compare_files(model, [photo], out, methods=METHODS, config=config,
                                 provider=provider, threads=threads, force=force,
                                 progress=progress,
                                 given={"neuromask": [(ex.mask, ex.timings["optimize"])]})
    except Interrupted as exc:
        exc.written[:0] = [str(p) for p in explained.written]
        raise
    return DemoRun(explained, compared)

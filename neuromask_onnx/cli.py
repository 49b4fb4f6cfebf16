"""The `neuromask` command line: each command parses its flags, calls one library function
and prints.

Importing this module imports typer and nothing heavy (no numpy, onnx, onnxruntime): each
command imports what it needs when it runs, so `--version` and `--help` are instant. The
NeuroMask hyperparameter flags are generated from `NeuroMaskConfig`'s fields
(`cliparams.config_command`): a new field is a new flag with no edit here. Choices are Enums,
counts have `min=`, floats must be finite. Every `NeuromaskError` becomes one line on stderr
and exit code 1 (`_errors`); so does every usage error (`cliparams.OneLineGroup`). Anything
else escaping is a bug and keeps its traceback. Ctrl-C: see `entry`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from . import __version__
from .cli_serve import (
    MaxBatchOpt,
    PythonBackendOpt,
    ServedOpt,
    ServerOpt,
    ServerTimeoutOpt,
    TritonLabelsOpt,
    TritonNameOpt,
    TritonOpt,
    TritonPrepOpt,
    register,
)
from .cliparams import (
    OneLineCommand,
    OneLineGroup,
    config_command,
    config_overrides,
    finite_float,
)
from .errors import InputError, NeuromaskError

if TYPE_CHECKING:
    from .pipeline import Progress

app = typer.Typer(
    cls=OneLineGroup,
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    help="Explain ONNX classifiers with NeuroMask, on onnxruntime alone.",
)


@contextlib.contextmanager
def _errors() -> Iterator[None]:
    """The one place that turns library errors into a message and exit code 1."""
    try:
        yield
    except NeuromaskError as exc:
        typer.echo(f"error: {' '.join(str(exc).split())}", err=True)
        raise typer.Exit(code=1) from None


def _version(value: bool) -> None:
    if value:
        typer.echo(f"neuromask-onnx {__version__}")
        raise typer.Exit


@app.callback()
def main(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """Explain ONNX classifiers with NeuroMask, on onnxruntime alone."""


def _load_config() -> type:
    from .optimize import NeuroMaskConfig

    return NeuroMaskConfig


_CFG = "NeuroMask (default: from --preset)"
_PRE = "Preprocessing (default: from --preprocess)"
_EVAL = "Evaluation"
ALIASES = {"learning_rate": ("--lr",)}
"""Short names kept beside the generated `--field-name` flags."""
ExplainCommand = config_command(_load_config, panel=_CFG, aliases=ALIASES)
CompareCommand = config_command(_load_config, prefix="nm-", panel=_CFG, skip=("seed",))


class OutputKind(str, Enum):
    auto = "auto"
    logits = "logits"
    softmax = "softmax"
    log_softmax = "log_softmax"
    sigmoid = "sigmoid"
    probabilities = "probabilities"


class Objective(str, Enum):
    cross_entropy = "cross_entropy"
    logit = "logit"
    probability = "probability"


class Gradient(str, Enum):
    auto = "auto"
    exact = "exact"
    estimate = "estimate"


class Provider(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class Removal(str, Enum):
    zero = "zero"
    blur = "blur"
    mean = "mean"


class Resize(str, Enum):
    stretch = "stretch"
    center_crop = "center-crop"
    pad = "pad"


class ChannelOrder(str, Enum):
    RGB = "RGB"
    BGR = "BGR"


def parse_ints(text: str | None, flag: str) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(t) for t in text.replace("x", ",").split(",") if t.strip()]
    except ValueError:
        msg = f"{flag} takes comma-separated integers, got {text!r}"
        raise InputError(msg) from None


def _read_labels(path: Path | None) -> list[str] | None:
    """Class or feature names, one a line (cli_serve's commands use it too)."""
    from .pipeline import read_labels

    return read_labels(path)


def _floats(text: str | None, flag: str) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        values = tuple(finite_float(t) for t in text.split(",") if t.strip())
    except typer.BadParameter:
        msg = f"{flag} takes comma-separated finite numbers, got {text!r}"
        raise InputError(msg) from None
    return values


def _opt(*names: str, help: str, panel: str | None = None) -> Any:
    return typer.Option(*names, help=help, rich_help_panel=panel, show_default=False)


def _float_opt(*names: str, help: str, panel: str | None = None) -> Any:
    return typer.Option(*names, help=help, rich_help_panel=panel, show_default=False,
                        parser=finite_float, metavar="<float>")


ModelArg = Annotated[Path, typer.Argument(help="The ONNX classifier.", show_default=False)]
InputOpt = Annotated[str | None, _opt("--input", help="Model input to explain.")]
OutputOpt = Annotated[str | None, _opt(
    "--output", help="Model output holding the scores.")]
ShapeOpt = Annotated[str | None, _opt(
    "--input-shape", help="Input shape without the batch axis, e.g. 3,224,224 (dynamic models).")]
LayoutOpt = Annotated[str | None, _opt(
    "--layout", help="Input layout, e.g. NCHW, NHWC, NTC (default: detected).")]
AxesOpt = Annotated[str | None, _opt(
    "--mask-axes", help="Comma-separated axes the mask varies over (overrides --layout).")]
KindOpt = Annotated[OutputKind, typer.Option("--output-kind", help="What the output holds.")]
ProviderOpt = Annotated[Provider, typer.Option("--provider", help="Execution provider.")]
ThreadsOpt = Annotated[int | None, typer.Option(
    "--threads", min=1, help="onnxruntime intra-op threads.")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Overwrite existing outputs.")]
PixelsOpt = Annotated[int, typer.Option(
    "--max-pixels", min=1, help="Refuse images with more pixels than this (checked before "
    "decoding).")]
PrepOpt = Annotated[str | None, _opt(
    "--preprocess", help="torchvision-imagenet | inception | caffe | raw (default: what the "
    "model's metadata says, else torchvision-imagenet).", panel=_PRE)]
CurveStepsOpt = Annotated[int, typer.Option(
    "--curve-steps", min=1, help="Deletion/insertion steps (curve points - 1).",
    rich_help_panel=_EVAL)]
DelOpt = Annotated[Removal, typer.Option(
    "--deletion-baseline", help="Removed pixels become this.", rich_help_panel=_EVAL)]
InsOpt = Annotated[Removal, typer.Option(
    "--insertion-baseline", help="Insertion starts from this.", rich_help_panel=_EVAL)]
BoxOpt = Annotated[str | None, typer.Option(
    "--box", help="Object box y0,x0,y1,x1 in model pixels: adds pointing game and energy.",
    rich_help_panel=_EVAL)]
SizeOpt = Annotated[str | None, _opt(
    "--size", help="Model input H,W for images (default: from the model).", panel=_PRE)]
_MAX_PIXELS = 50_000_000  # preprocess.MAX_PIXELS (not imported: it would import numpy)


@contextlib.contextmanager
def _bar(quiet: bool, unit: str) -> Iterator[Progress]:
    """A progress bar on stderr fed by the library's progress(done, total, what) calls."""
    if quiet:
        from .pipeline import noop

        yield noop
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
    from rich.progress import Progress as Bar

    with Bar(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
             TextColumn(unit), TimeRemainingColumn(), transient=True,
             console=Console(stderr=True)) as bar:
        task: Any = None
        last = (0, 0)

        def show(done: int, total: int, what: str) -> None:
            nonlocal task, last
            if task is None or total != last[1] or done < last[0]:  # a new phase: a new bar
                if task is not None:
                    bar.remove_task(task)
                task = bar.add_task(what, total=total)
            bar.update(task, completed=done, description=what)
            last = (done, total)

        yield show


# --------------------------------------------------------------------------- instrument / ops


@app.command(cls=OneLineCommand)
def instrument(
    model: ModelArg,
    output: Annotated[Path | None, typer.Option(
        "-o", "--out", help="Where to write the model.", show_default=False)] = None,
    *,
    input_name: InputOpt = None,
    output_name: OutputOpt = None,
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", min=1)] = 1,
    input_shape: ShapeOpt = None,
    layout: LayoutOpt = None,
    mask_axes: AxesOpt = None,
    output_kind: KindOpt = OutputKind.auto,
    objective: Annotated[Objective | None, typer.Option(
        help="Loss the gradient is taken of (default: cross_entropy; probability with "
        "--triton, what the default NeuroMask preset runs).", show_default=False)] = None,
    baseline: Annotated[bool, typer.Option(help="Add an nm_baseline input.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Overwrite OUT.")] = False,
    triton: TritonOpt = None,
    triton_name: TritonNameOpt = None,
    python_backend: PythonBackendOpt = False,
    max_batch_size: MaxBatchOpt = 8,
    labels: TritonLabelsOpt = None,
    preprocess: TritonPrepOpt = None,
) -> None:
    """Write MODEL with a mask input, a loss and the loss's gradient w.r.t. the mask."""
    if triton is not None:  # a Triton model repository (cli_serve.py)
        from .cli_serve import instrument_triton

        with _errors():
            if output is not None:
                msg = "give -o OUT.onnx or --triton REPO, not both"
                raise InputError(msg)
            instrument_triton(model, triton, name=triton_name, python_backend=python_backend,
                              max_batch_size=max_batch_size, labels=labels,
                              preprocess=preprocess, force=force, input_name=input_name,
                              output_name=output_name,
                              input_shape=parse_ints(input_shape, "--input-shape"),
                              layout=layout, mask_axes=parse_ints(mask_axes, "--mask-axes"),
                              output_kind=output_kind.value, baseline=True,
                              objective=objective.value if objective else "probability")
        return
    with _errors():
        from .files import save_model
        from .outputs import check_writable
        from .rewrite import instrument as build

        if output is None:
            msg = ("Missing option '-o' / '--out': give -o OUT.onnx, or --triton REPO for a "
                   "Triton model repository")
            raise InputError(msg)
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
        m = build(model, input_name=input_name, output_name=output_name, batch_size=batch_size,
                  input_shape=parse_ints(input_shape, "--input-shape"), layout=layout,
                  mask_axes=parse_ints(mask_axes, "--mask-axes"),
                  output_kind=output_kind.value,
                  objective=objective.value if objective else "cross_entropy",
                  baseline=baseline)
        try:
            save_model(m, output)
        except OSError as exc:
            msg = f"cannot write {str(output)!r}: {exc.strerror or exc}"
            raise InputError(msg) from None
    props = {p.key: p.value for p in m.metadata_props}
    typer.echo(f"wrote {output}: input {props['neuromask.input']!r} "
               f"(layout {props['neuromask.layout']}), output {props['neuromask.output']!r} "
               f"({props['neuromask.output_kind']}, {props['neuromask.num_classes']} classes), "
               f"{len(m.graph.node)} nodes")


@app.command(cls=OneLineCommand)
def ops(
    model: Annotated[Path | None, typer.Argument(
        help="List this model's ops and whether each has a rule.", show_default=False)] = None,
) -> None:
    """List the supported ops, or which of MODEL's ops are supported."""
    with _errors():
        from .rewrite import ESTIMATED, op_report
        from .vjp_rules import VJP_RULES, ZERO_GRAD_OPS

        if model is None:
            typer.echo("Ops with gradient rules:")
            typer.echo("  " + " ".join(sorted(VJP_RULES)))
            typer.echo("Ops that pass no gradient (shape, comparison, index ops):")
            typer.echo("  " + " ".join(sorted(ZERO_GRAD_OPS)))
            return
        rows = op_report(model)
    traced = rows and rows[0].on_path is not None
    w = max([28, *(len(r.op_type) + 2 for r in rows)])
    typer.echo(f"{'op':<{w}}{'nodes':>6}{'on path':>9}  status")
    for r in rows:
        on = "-" if r.on_path is None else str(r.on_path)
        typer.echo(f"{r.op_type:<{w}}{r.count:>6}{on:>9}  {r.status}")
    blocking = [f"{r.op_type} (at {'; '.join(r.where)})" if r.where else r.op_type
                for r in rows if r.status == "unsupported" and (r.on_path or not traced)]
    estimated = [r.op_type for r in rows if r.status == ESTIMATED and (r.on_path or not traced)]
    if not traced:
        typer.echo("(the gradient path could not be traced: the input has dynamic dimensions)")
    if blocking:
        typer.echo(f"unsupported on the gradient path: {', '.join(blocking)} "
                   "(explain --gradient auto estimates the mask gradient from model runs)")
    elif estimated:
        typer.echo(f"every op on the gradient path is supported; {', '.join(estimated)}: "
                   f"{ESTIMATED}")
    else:
        typer.echo("every op on the gradient path is supported")


# --------------------------------------------------------------------------- explain


@app.command(cls=ExplainCommand)
def explain(
    ctx: typer.Context,
    model: ModelArg,
    inputs: Annotated[list[Path] | None, typer.Argument(
        help="Images (png, jpg, bmp, tiff, webp), .npy tensors or directories of them.",
        show_default=False)] = None,
    out: Annotated[Path, typer.Option("-o", "--out", help="Output directory.")] = Path(
        "neuromask-output"),
    *,
    input_name: InputOpt = None,
    output_name: OutputOpt = None,
    output_kind: KindOpt = OutputKind.auto,
    target: Annotated[list[str] | None, typer.Option(
        "--target", "-t", help="Class index or label to explain (repeat for several; "
        "default: the top-1 class).")] = None,
    labels: Annotated[Path | None, typer.Option(
        "--labels", help="Text file of class names, one a line, line i = class i.")] = None,
    top_k: Annotated[int | None, typer.Option(
        "--top-k", "-k", min=1, help="Explain each of the top K classes.")] = None,
    preset_name: Annotated[str, typer.Option(
        "--preset", help="Hyperparameters: default, reference, reference-cifar, paper.",
        rich_help_panel=_CFG)] = "default",
    preprocess: PrepOpt = None,
    size: Annotated[str | None, _opt(
        "--size", help="Model input H,W (default: from the model).", panel=_PRE)] = None,
    resize: Annotated[Resize | None, _opt(
        "--resize", help="How the image meets the model's size.", panel=_PRE)] = None,
    crop_fraction: Annotated[float | None, _float_opt(
        "--crop-fraction", help="center-crop: crop / resized size.", panel=_PRE)] = None,
    scale: Annotated[float | None, _float_opt(
        "--scale", help="Pixel (0-255) multiplier before mean/std.", panel=_PRE)] = None,
    mean: Annotated[str | None, _opt(
        "--mean", help="Per-channel mean, comma-separated.", panel=_PRE)] = None,
    std: Annotated[str | None, _opt(
        "--std", help="Per-channel std, comma-separated.", panel=_PRE)] = None,
    channel_order: Annotated[ChannelOrder | None, typer.Option(
        "--channel-order", case_sensitive=False, rich_help_panel=_PRE,
        show_default=False)] = None,
    layout: LayoutOpt = None,
    provider: ProviderOpt = Provider.auto,
    batch_size: Annotated[int, typer.Option(
        "--batch-size", "-b", min=1, help="Jobs per session run.")] = 8,
    threads: ThreadsOpt = None,
    max_pixels: PixelsOpt = _MAX_PIXELS,
    force: ForceOpt = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress, no table.")] = False,
    score: Annotated[bool, typer.Option(
        "--score", help="Also score each map: deletion and insertion AUC under protocols A "
        "(deletion to zero, insertion from blur) and B (swapped), in the JSON and the table; "
        "about 200 more forward passes a map.")] = False,
    gradient: Annotated[Gradient, typer.Option(
        "--gradient", help="The mask gradient from the rules (exact), or estimated from "
        "model runs (estimate); auto: exact when every op has a rule.")] = Gradient.auto,
    feature_names: Annotated[Path | None, typer.Option(
        "--feature-names", help="Text file of feature names, one a line (tabular inputs; "
        "default: the model's metadata).", show_default=False)] = None,
    server: ServerOpt = None,
    served_model: ServedOpt = None,
    server_timeout: ServerTimeoutOpt = 30.0,
) -> None:
    """Learn a NeuroMask for each input and write mask, PNGs and JSON to the output dir."""
    with _errors():
        from .optimize import preset
        from .pipeline import explain_files, parse_targets

        overrides = config_overrides(ctx)
        config = preset(preset_name).replace(**overrides)
        hw = parse_ints(size, "--size")
        if hw is not None and len(hw) != 2:
            msg = f"--size takes H,W, got {size!r}"
            raise InputError(msg)
        prep = {"size": tuple(hw) if hw else None, "resize": resize.value if resize else None,
                "crop_fraction": crop_fraction, "scale": scale,
                "mean": _floats(mean, "--mean"), "std": _floats(std, "--std"),
                "channel_order": channel_order.value if channel_order else None,
                "layout": layout}
        with _bar(quiet, "steps") as progress:
            run = explain_files(model, inputs, out, config=config, set_fields=set(overrides),
                                preprocess=preprocess, prep_changes=prep, labels=labels,
                                targets=parse_targets(target), top_k=top_k,
                                input_name=input_name, output_name=output_name,
                                output_kind=output_kind.value, layout=layout,
                                provider=provider.value, batch_size=batch_size,
                                threads=threads, force=force, max_pixels=max_pixels,
                                score=score, gradient=gradient.value,
                                feature_names=feature_names, server=server,
                                served_model=served_model, server_timeout=server_timeout,
                                progress=progress)
    for check in run.label_checks:
        typer.echo(f"warning: {check}", err=True)
    if quiet:
        return
    for note in run.notes:
        typer.echo(f"note: {note}", err=True)
    for warning in run.warnings:
        typer.echo(f"warning: {warning}", err=True)
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"NeuroMask: {len(run.items)} mask(s), {len(run.written)} files in {out}")
    cols = ["input", "target", "p before", "p after", "steps", "s/step", "seconds"]
    if score:
        cols += ["A: ins - del", "B: ins - del"]
    for col in cols:
        table.add_column(col, justify="left" if col in ("input", "target") else "right")
    for (_inp, ex), stem in zip(run.items, run.stems, strict=True):
        tgt = f"{ex.target} {ex.label}" if ex.label else str(ex.target)
        table.add_row(stem, tgt, f"{ex.prob_before:.3f}", f"{ex.prob_after:.3f}",
                      str(ex.steps), f"{ex.timings['per_step']:.4f}",
                      f"{ex.timings['optimize']:.2f}",
                      *([f"{ex.scores['A_insertion_minus_deletion']:.3f}",
                         f"{ex.scores['B_insertion_minus_deletion']:.3f}"] if score else []))
    Console().print(table)
    if run.layout == "NF":  # tabular: the features by importance
        from .onnxml import feature_order

        for (_inp, ex), stem in zip(run.items, run.stems, strict=True):
            top = feature_order(ex.mask, run.feature_names)[:8]
            typer.echo(f"{stem}: " + ", ".join(f"{f['name']} {f['mask']:.2f}" for f in top))


@app.command(cls=OneLineCommand)
def demo(
    out: Annotated[Path, typer.Option("-o", "--out", help="Output directory.")] = Path(
        "neuromask-demo"),
    *,
    provider: ProviderOpt = Provider.auto,
    threads: ThreadsOpt = None,
    force: ForceOpt = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress, no table.")] = False,
) -> None:
    """Explain a real photo with a pretrained ImageNet classifier shipped with the project."""
    with _errors():
        from .demo import METHODS, run_demo

        with _bar(quiet, "steps") as progress:
            res = run_demo(out, force=force, provider=provider.value, threads=threads,
                           progress=progress)
    ex = res.explained.items[0][1]
    if not quiet:
        _print_summary(res.compared.rows, res.compared.columns,
                       f"NeuroMask beside {', '.join(METHODS[1:])}")
    typer.echo(f"explained class {ex.target} ({ex.label}): p = {ex.prob_before:.3f}, "
               f"{ex.prob_after:.3f} with the mask applied")
    files = sorted(p.name for p in [*res.explained.written, *res.compared.written])
    typer.echo(f"wrote {len(files)} files into {out}/: {', '.join(files)}")
    typer.echo(f"open {out / 'report.html'} in a browser to see every method's map")


def run() -> None:
    """Console entry point (kept for old installs; see `entry.run`)."""
    from .entry import run as entry_run

    entry_run()


# --------------------------------------------------------------------------- evaluate / compare


@app.command(cls=OneLineCommand)
def evaluate(
    model: ModelArg,
    input_path: Annotated[Path, typer.Argument(help="Image or .npy tensor.",
                                               show_default=False)],
    saliency_map: Annotated[Path, typer.Argument(
        help=".npy map over the mask axes (e.g. HxW), or input-shaped (summed over channels).",
        show_default=False)],
    *,
    target: Annotated[int | None, typer.Option(
        "--target", "-t", min=0, help="Class index (default: the top-1 class).")] = None,
    curve_steps: CurveStepsOpt = 50,
    deletion_baseline: DelOpt = Removal.zero,
    insertion_baseline: InsOpt = Removal.blur,
    box: BoxOpt = None,
    seed: Annotated[int, typer.Option("--seed", min=0,
                                      help="Seed of the tie-breaking order.")] = 0,
    input_name: InputOpt = None,
    output_name: OutputOpt = None,
    output_kind: KindOpt = OutputKind.auto,
    layout: LayoutOpt = None,
    preprocess: PrepOpt = None,
    size: SizeOpt = None,
    provider: ProviderOpt = Provider.auto,
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", min=1)] = 64,
    threads: ThreadsOpt = None,
    max_pixels: PixelsOpt = _MAX_PIXELS,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Score one saliency map: deletion/insertion AUC, sparsity (+ pointing game, energy)."""
    import json

    with _errors():
        from .metrics import METRICS
        from .pipeline import evaluate_map

        with _bar(quiet or as_json, "stages") as progress:
            t, scores = evaluate_map(
                model, input_path, saliency_map, target=target, curve_steps=curve_steps,
                deletion_baseline=deletion_baseline.value,
                insertion_baseline=insertion_baseline.value, box=parse_ints(box, "--box"),
                seed=seed, input_name=input_name, output_name=output_name,
                output_kind=output_kind.value, layout=layout, preprocess=preprocess,
                size=parse_ints(size, "--size"), provider=provider.value,
                batch_size=batch_size, threads=threads, max_pixels=max_pixels,
                progress=progress)
    if as_json:
        typer.echo(json.dumps({"target": t, **scores}, indent=2))
        return
    typer.echo(f"target {t}")
    for k, v in scores.items():
        typer.echo(f"{k:<26}{v:>10.4f}  ({METRICS[k]} is better)")


ALL_METHODS = "neuromask,saliency,gradient_x_input,smoothgrad,integrated_gradients,occlusion,rise"


@app.command(cls=CompareCommand)
def compare(
    ctx: typer.Context,
    model: ModelArg,
    inputs: Annotated[list[Path], typer.Argument(
        help="Images, .npy tensors or directories of them.", show_default=False)],
    out: Annotated[Path, typer.Option("-o", "--out", help="Output directory.")] = Path(
        "neuromask-compare"),
    *,
    methods: Annotated[str, typer.Option(
        "--methods", "-m", help=f"Comma-separated, from: {ALL_METHODS.replace(',', ', ')}.")] = (
        ALL_METHODS),
    target: Annotated[int | None, typer.Option(
        "--target", "-t", min=0, help="Class index (default: each input's top-1 class).")] = None,
    preset_name: Annotated[str, typer.Option(
        "--preset", help="NeuroMask preset (see explain --help).", rich_help_panel=_CFG)] = (
        "default"),
    curve_steps: CurveStepsOpt = 50,
    deletion_baseline: DelOpt = Removal.zero,
    insertion_baseline: InsOpt = Removal.blur,
    box: BoxOpt = None,
    seed: Annotated[int, typer.Option("--seed", min=0,
                                      help="Seed of every random method.")] = 0,
    input_name: InputOpt = None,
    output_name: OutputOpt = None,
    output_kind: KindOpt = OutputKind.auto,
    layout: LayoutOpt = None,
    preprocess: PrepOpt = None,
    size: SizeOpt = None,
    provider: ProviderOpt = Provider.auto,
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", min=1)] = 64,
    threads: ThreadsOpt = None,
    max_pixels: PixelsOpt = _MAX_PIXELS,
    force: ForceOpt = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress, no table.")] = False,
) -> None:
    """Run saliency methods on each input, score them, write CSV, JSON and report.html."""
    with _errors():
        from .optimize import preset
        from .pipeline import compare_files

        config = preset(preset_name).replace(**config_overrides(ctx))
        with _bar(quiet, "method runs") as progress:
            res = compare_files(
                model, inputs, out, methods=methods.split(","), config=config, target=target,
                curve_steps=curve_steps, deletion_baseline=deletion_baseline.value,
                insertion_baseline=insertion_baseline.value, box=parse_ints(box, "--box"),
                seed=seed, input_name=input_name, output_name=output_name,
                output_kind=output_kind.value, layout=layout, preprocess=preprocess,
                size=parse_ints(size, "--size"), provider=provider.value,
                batch_size=batch_size, threads=threads, force=force, max_pixels=max_pixels,
                progress=progress)
    for note in res.notes:
        typer.echo(f"warning: {note}", err=True)
    if not quiet:
        _print_summary(res.rows, res.columns, f"{len(res.results)} input(s), "
                       f"{len(res.rows)} method(s); files in {out}")


def _print_summary(rows: list[dict[str, float | str]], cols: list[str], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    from .metrics import METRICS

    table = Table(title=title)
    for c in cols:
        better = METRICS.get(c)
        table.add_column(f"{c} ({'up' if better == 'higher' else 'down'})" if better else c,
                         justify="left" if c == "method" else "right")
    for r in rows:
        table.add_row(*[f"{r[c]:.4f}" if isinstance(r.get(c), float) else str(r.get(c, "-"))
                        for c in cols])
    Console(width=200).print(table)


register(app, OneLineCommand)  # explain-dataset, serve (cli_serve.py)

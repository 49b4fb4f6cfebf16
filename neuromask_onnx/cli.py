"""The `neuromask` command line: thin commands over one library call each.

Usage:
    neuromask instrument MODEL.onnx -o OUT.onnx [--input NAME] [--batch-size N]
    neuromask ops [MODEL.onnx]
    neuromask --version

Every `NeuromaskError` becomes one line on stderr and exit code 1 (see `_errors`); anything
else escaping is a bug and keeps its traceback.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from . import __version__
from .errors import InputError, NeuromaskError

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
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
        typer.echo(f"error: {exc}", err=True)
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


ModelArg = Annotated[Path, typer.Argument(help="The ONNX classifier.", show_default=False)]
InputOpt = Annotated[Optional[str], typer.Option("--input", help="Model input to explain.")]  # noqa: UP045
OutputOpt = Annotated[Optional[str], typer.Option("--output", help="Model output holding the scores.")]  # noqa: UP045
ShapeOpt = Annotated[Optional[str], typer.Option(  # noqa: UP045
    "--input-shape", help="Input shape without the batch axis, e.g. 3,224,224 (dynamic models).")]
LayoutOpt = Annotated[Optional[str], typer.Option(  # noqa: UP045
    "--layout", help="Input layout, e.g. NCHW, NHWC, NTC (default: detected).")]
AxesOpt = Annotated[Optional[str], typer.Option(  # noqa: UP045
    "--mask-axes", help="Comma-separated axes the mask varies over (overrides --layout).")]
KindOpt = Annotated[OutputKind, typer.Option("--output-kind", help="What the output holds.")]


def parse_ints(text: str | None, flag: str) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(t) for t in text.replace("x", ",").split(",") if t.strip()]
    except ValueError:
        msg = f"{flag} takes comma-separated integers, got {text!r}"
        raise InputError(msg) from None


@app.command()
def instrument(
    model: ModelArg,
    output: Annotated[Path, typer.Option("-o", "--out", help="Where to write the model.")],
    *,
    input_name: InputOpt = None,
    output_name: OutputOpt = None,
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", min=1)] = 1,
    input_shape: ShapeOpt = None,
    layout: LayoutOpt = None,
    mask_axes: AxesOpt = None,
    output_kind: KindOpt = OutputKind.auto,
    objective: Annotated[Objective, typer.Option(help="Loss the gradient is taken of.")] = (
        Objective.cross_entropy),
    baseline: Annotated[bool, typer.Option(help="Add an nm_baseline input.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Overwrite OUT.")] = False,
) -> None:
    """Write MODEL with a mask input, a loss and the loss's gradient w.r.t. the mask."""
    from .rewrite import instrument as build
    from .rewrite import save_model

    with _errors():
        if output.exists() and not force:
            msg = f"{str(output)!r} exists; pass --force to overwrite it"
            raise InputError(msg)
        if not output.parent.is_dir():
            msg = f"directory {str(output.parent)!r} does not exist; create it first"
            raise InputError(msg)
        m = build(model, input_name=input_name, output_name=output_name, batch_size=batch_size,
                  input_shape=parse_ints(input_shape, "--input-shape"), layout=layout,
                  mask_axes=parse_ints(mask_axes, "--mask-axes"),
                  output_kind=output_kind.value,  # type: ignore[arg-type]
                  objective=objective.value,  # type: ignore[arg-type]
                  baseline=baseline)
        save_model(m, output)
    props = {p.key: p.value for p in m.metadata_props}
    typer.echo(f"wrote {output}: input {props['neuromask.input']!r} "
               f"(layout {props['neuromask.layout']}), output {props['neuromask.output']!r} "
               f"({props['neuromask.output_kind']}, {props['neuromask.num_classes']} classes), "
               f"{len(m.graph.node)} nodes")


@app.command()
def ops(
    model: Annotated[Optional[Path], typer.Argument(  # noqa: UP045
        help="List this model's ops and whether each has a rule.", show_default=False)] = None,
) -> None:
    """List the supported ops, or which of MODEL's ops are supported."""
    from .vjp_rules import VJP_RULES, ZERO_GRAD_OPS

    if model is None:
        typer.echo("Ops with gradient rules:")
        typer.echo("  " + " ".join(sorted(VJP_RULES)))
        typer.echo("Ops that pass no gradient (shape, comparison, index ops):")
        typer.echo("  " + " ".join(sorted(ZERO_GRAD_OPS)))
        return
    from .rewrite import op_report

    with _errors():
        rows = op_report(model)
    traced = rows and rows[0].on_path is not None
    typer.echo(f"{'op':<28}{'nodes':>6}{'on path':>9}  status")
    for r in rows:
        on = "-" if r.on_path is None else str(r.on_path)
        typer.echo(f"{r.op_type:<28}{r.count:>6}{on:>9}  {r.status}")
    blocking = [r.op_type for r in rows if r.status == "unsupported" and (r.on_path or not traced)]
    if not traced:
        typer.echo("(the gradient path could not be traced: the input has dynamic dimensions)")
    if blocking:
        typer.echo(f"unsupported on the gradient path: {', '.join(blocking)}")
    else:
        typer.echo("every op on the gradient path is supported")


# --------------------------------------------------------------------------- explain
# neuromask explain MODEL INPUT... [-o DIR]: config flags map one-to-one onto NeuroMaskConfig
# fields (tests/test_cli_explain.py checks it); preprocessing flags onto Preprocessing.

from typing import Any

import numpy as np

_CFG = "NeuroMask (default: from --preset)"
_PRE = "Preprocessing (default: from --preprocess)"


def _opt(*names: str, help: str, panel: str = _CFG) -> Any:
    return typer.Option(*names, help=help, rich_help_panel=panel, show_default=False)


def _floats(text: str | None, flag: str) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        return tuple(float(t) for t in text.split(",") if t.strip())
    except ValueError:
        msg = f"{flag} takes comma-separated numbers, got {text!r}"
        raise InputError(msg) from None


def _read_labels(path: Path | None) -> list[str] | None:
    if path is None:
        return None
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        msg = f"cannot read labels file {str(path)!r} ({type(exc).__name__}); one label a line"
        raise InputError(msg) from None
    return [ln.strip() for ln in lines if ln.strip()]


@app.command()
def explain(
    model: ModelArg,
    inputs: Annotated[list[Path], typer.Argument(
        help="Images (png, jpg, bmp, tiff, webp), .npy tensors or directories of them.",
        show_default=False)],
    out: Annotated[Path, typer.Option("-o", "--out", help="Output directory.")] = Path(
        "neuromask-output"),
    *,
    input_name: InputOpt = None,
    output_name: OutputOpt = None,
    output_kind: KindOpt = OutputKind.auto,
    target: Annotated[Optional[list[str]], typer.Option(  # noqa: UP045
        "--target", "-t", help="Class index or label to explain (repeat for several; "
        "default: the top-1 class).")] = None,
    labels: Annotated[Optional[Path], typer.Option(  # noqa: UP045
        "--labels", help="Text file of class names, one a line, line i = class i.")] = None,
    top_k: Annotated[Optional[int], typer.Option(  # noqa: UP045
        "--top-k", "-k", help="Explain each of the top K classes.")] = None,
    preset_name: Annotated[str, typer.Option(
        "--preset", help="Hyperparameters: default, reference, reference-cifar, paper.",
        rich_help_panel=_CFG)] = "default",
    steps: Annotated[Optional[int], _opt("--steps", help="RMSProp steps.")] = None,  # noqa: UP045
    learning_rate: Annotated[Optional[float], _opt(  # noqa: UP045
        "--learning-rate", "--lr", help="RMSProp step size.")] = None,
    decay: Annotated[Optional[float], _opt("--decay", help="RMSProp decay.")] = None,  # noqa: UP045
    epsilon: Annotated[Optional[float], _opt(  # noqa: UP045
        "--epsilon", help="RMSProp epsilon (inside the root).")] = None,
    momentum: Annotated[Optional[float], _opt("--momentum", help="RMSProp momentum.")] = None,  # noqa: UP045
    temperature: Annotated[Optional[float], _opt(  # noqa: UP045
        "--temperature", help="T in mask = sigmoid(W / T).")] = None,
    tau: Annotated[Optional[float], _opt(  # noqa: UP045
        "--tau", help="Init range U(-tau, tau) and sparsity offset.")] = None,
    pred_weight: Annotated[Optional[float], _opt(  # noqa: UP045
        "--pred-weight", help="lambda_p (cross-entropy).")] = None,
    sparse_weight: Annotated[Optional[float], _opt(  # noqa: UP045
        "--sparse-weight", help="lambda_sp (sparsity).")] = None,
    smooth_weight: Annotated[Optional[float], _opt(  # noqa: UP045
        "--smooth-weight", help="lambda_sm (smoothness).")] = None,
    sparse_reduce: Annotated[Optional[str], _opt(  # noqa: UP045
        "--sparse-reduce", help="sum | mean.")] = None,
    smooth_norm: Annotated[Optional[str], _opt(  # noqa: UP045
        "--smooth-norm", help="l1 | squared.")] = None,
    smooth_reduce: Annotated[Optional[str], _opt(  # noqa: UP045
        "--smooth-reduce", help="sum | mean.")] = None,
    laplacian_size: Annotated[Optional[int], _opt(  # noqa: UP045
        "--laplacian-size", help="3 or 5.")] = None,
    tolerance: Annotated[Optional[float], _opt(  # noqa: UP045
        "--tolerance", help="Early-stop relative tolerance (0: off).")] = None,
    patience: Annotated[Optional[int], _opt(  # noqa: UP045
        "--patience", help="Early-stop window in steps.")] = None,
    baseline: Annotated[Optional[str], _opt(  # noqa: UP045
        "--baseline", help="Masked-out value: zero | blur | mean | noise.")] = None,
    blur_sigma: Annotated[Optional[float], _opt(  # noqa: UP045
        "--blur-sigma", help="Sigma (pixels) of the blur baseline.")] = None,
    noise_std: Annotated[Optional[float], _opt(  # noqa: UP045
        "--noise-std", help="Std (in channel stds) of the noise baseline.")] = None,
    mask_scale: Annotated[Optional[int], _opt(  # noqa: UP045
        "--mask-scale", help="Mask resolution = input / this, upsampled.")] = None,
    upsample: Annotated[Optional[str], _opt(  # noqa: UP045
        "--upsample", help="bilinear | nearest.")] = None,
    restarts: Annotated[Optional[int], _opt(  # noqa: UP045
        "--restarts", help="Random starts per target; lowest loss wins.")] = None,
    seed: Annotated[Optional[int], _opt("--seed", help="Seed of W0.")] = None,  # noqa: UP045
    preprocess: Annotated[str, typer.Option(
        "--preprocess", help="torchvision-imagenet | inception | caffe | raw.",
        rich_help_panel=_PRE)] = "torchvision-imagenet",
    size: Annotated[Optional[str], _opt(  # noqa: UP045
        "--size", help="Model input H,W (default: from the model).", panel=_PRE)] = None,
    resize: Annotated[Optional[str], _opt(  # noqa: UP045
        "--resize", help="stretch | center-crop | pad.", panel=_PRE)] = None,
    crop_fraction: Annotated[Optional[float], _opt(  # noqa: UP045
        "--crop-fraction", help="center-crop: crop / resized size.", panel=_PRE)] = None,
    scale: Annotated[Optional[float], _opt(  # noqa: UP045
        "--scale", help="Pixel (0-255) multiplier before mean/std.", panel=_PRE)] = None,
    mean: Annotated[Optional[str], _opt(  # noqa: UP045
        "--mean", help="Per-channel mean, comma-separated.", panel=_PRE)] = None,
    std: Annotated[Optional[str], _opt(  # noqa: UP045
        "--std", help="Per-channel std, comma-separated.", panel=_PRE)] = None,
    channel_order: Annotated[Optional[str], _opt(  # noqa: UP045
        "--channel-order", help="RGB | BGR.", panel=_PRE)] = None,
    layout: LayoutOpt = None,
    provider: Annotated[str, typer.Option(
        "--provider", help="auto | cpu | cuda.")] = "auto",
    batch_size: Annotated[int, typer.Option(
        "--batch-size", "-b", help="Jobs per session run.")] = 8,
    threads: Annotated[Optional[int], typer.Option(  # noqa: UP045
        "--threads", help="onnxruntime intra-op threads.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite existing outputs.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress, no table.")] = False,
) -> None:
    """Learn a NeuroMask for each input and write mask, PNGs and JSON to the output dir."""
    import warnings

    from . import outputs
    from .errors import ConvergenceWarning
    from .explain import NeuroMask, Progress
    from .graph import load_model
    from .optimize import preset
    from .preprocess import describe_input, load_inputs, preprocessing_preset

    with _errors():
        if provider not in ("auto", "cpu", "cuda"):
            msg = f"--provider must be auto, cpu or cuda, got {provider!r}"
            raise InputError(msg)
        if batch_size < 1:
            msg = f"--batch-size must be at least 1, got {batch_size}"
            raise InputError(msg)
        config = preset(preset_name).replace(
            steps=steps, learning_rate=learning_rate, decay=decay, epsilon=epsilon,
            momentum=momentum, temperature=temperature, tau=tau, pred_weight=pred_weight,
            sparse_weight=sparse_weight, smooth_weight=smooth_weight,
            sparse_reduce=sparse_reduce, smooth_norm=smooth_norm, smooth_reduce=smooth_reduce,
            laplacian_size=laplacian_size, tolerance=tolerance, patience=patience,
            baseline=baseline, blur_sigma=blur_sigma, noise_std=noise_std,
            mask_scale=mask_scale, upsample=upsample, restarts=restarts, seed=seed)
        hw = parse_ints(size, "--size")
        if hw is not None and len(hw) != 2:
            msg = f"--size takes H,W, got {size!r}"
            raise InputError(msg)
        prep = preprocessing_preset(preprocess).replace(
            size=tuple(hw) if hw else None, resize=resize, crop_fraction=crop_fraction,
            scale=scale, mean=_floats(mean, "--mean"), std=_floats(std, "--std"),
            channel_order=channel_order.upper() if channel_order else None, layout=layout)
        names = _read_labels(labels)
        proto = load_model(model)
        spec = describe_input(proto, input_name, layout)
        loaded = load_inputs(inputs, spec, prep)
        nm = NeuroMask(proto, config, input_name=spec.name, output_name=output_name,
                       output_kind=output_kind.value, layout=layout, provider=provider,  # type: ignore[arg-type]
                       batch_size=batch_size, labels=names, threads=threads)
        wanted = [nm.class_index(t) for t in target] if target else None
        if top_k is not None and top_k < 1:
            msg = f"--top-k must be at least 1, got {top_k}"
            raise InputError(msg)
        if wanted is None:
            probs = nm.predict(np.stack([x.tensor for x in loaded]))
            order = np.argsort(-probs, axis=1, kind="stable")[:, : top_k or 1]
            targets = [[int(c) for c in row] for row in order]
        else:
            targets = [list(dict.fromkeys(wanted)) for _ in loaded]
        items = [(inp, t, len(ts) > 1) for inp, ts in zip(loaded, targets, strict=True)
                 for t in ts]
        planned = outputs.plan(out, items, len(nm.mask_axes), force)

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            if quiet:
                results = nm.explain_many([x.tensor for x in loaded], targets)
            else:
                from rich.progress import BarColumn, TimeRemainingColumn
                from rich.progress import Progress as Bar

                with Bar("[progress.description]{task.description}", BarColumn(),
                         "{task.completed}/{task.total} steps", TimeRemainingColumn(),
                         transient=True) as bar:
                    task = bar.add_task("explaining", total=None)

                    def show(p: Progress) -> None:
                        bar.update(task, total=p.chunks * p.steps,
                                   completed=(p.chunk - 1) * p.steps + p.step,
                                   description=f"batch {p.chunk}/{p.chunks}")

                    results = nm.explain_many([x.tensor for x in loaded], targets,
                                              callback=show)
        flat = [(inp, ex) for inp, row in zip(loaded, results, strict=True) for ex in row]
        written = outputs.write(out, planned, flat, model, force)
    for w in caught:
        if not quiet and issubclass(w.category, ConvergenceWarning):
            typer.echo(f"warning: {w.message}", err=True)
    if quiet:
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"NeuroMask: {len(flat)} mask(s), {len(written)} files in {out}")
    for col in ("input", "target", "p before", "p after", "steps", "s/step", "seconds"):
        table.add_column(col, justify="left" if col in ("input", "target") else "right")
    for (_inp, ex), pl in zip(flat, planned, strict=True):
        tgt = f"{ex.target} {ex.label}" if ex.label else str(ex.target)
        table.add_row(pl.stem, tgt, f"{ex.prob_before:.3f}", f"{ex.prob_after:.3f}",
                      str(ex.steps), f"{ex.timings['per_step']:.4f}",
                      f"{ex.timings['optimize']:.2f}")
    Console().print(table)

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
)
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
    output: Annotated[Optional[Path], typer.Option(  # noqa: UP045
        "-o", "--out", help="Where to write the model.", show_default=False)] = None,
    *,
    input_name: InputOpt = None,
    output_name: OutputOpt = None,
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", min=1)] = 1,
    input_shape: ShapeOpt = None,
    layout: LayoutOpt = None,
    mask_axes: AxesOpt = None,
    output_kind: KindOpt = OutputKind.auto,
    objective: Annotated[Optional[Objective], typer.Option(  # noqa: UP045
        help="Loss the gradient is taken of (default: cross_entropy; probability with "
        "--triton, what the default NeuroMask preset runs).")] = None,
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
    from .rewrite import instrument as build
    from .rewrite import save_model

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
        if output is None:
            msg = "Missing option '-o' / '--out': give -o OUT.onnx, or --triton REPO for a " \
                  "Triton model repository"
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
        m = build(model, input_name=input_name, output_name=output_name, batch_size=batch_size,
                  input_shape=parse_ints(input_shape, "--input-shape"), layout=layout,
                  mask_axes=parse_ints(mask_axes, "--mask-axes"),
                  output_kind=output_kind.value,
                  objective=objective.value if objective else "cross_entropy",
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
    from .rewrite import ESTIMATED, op_report

    with _errors():
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
    inputs: Annotated[Optional[list[Path]], typer.Argument(  # noqa: UP045
        help="Images (png, jpg, bmp, tiff, webp), .npy tensors or directories of them.",
        show_default=False)] = None,
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
        "--upsample", help="smooth | bilinear | nearest.")] = None,
    restarts: Annotated[Optional[int], _opt(  # noqa: UP045
        "--restarts", help="Random starts per target; lowest loss wins.")] = None,
    seed: Annotated[Optional[int], _opt("--seed", help="Seed of W0.")] = None,  # noqa: UP045
    mode: Annotated[Optional[str], _opt(  # noqa: UP045
        "--mode", help="areas (default preset) | classic (reference, paper).")] = None,
    optimizer: Annotated[Optional[str], _opt(  # noqa: UP045
        "--optimizer", help="adam | rmsprop.")] = None,
    beta1: Annotated[Optional[float], _opt("--beta1", help="Adam beta1.")] = None,  # noqa: UP045
    beta2: Annotated[Optional[float], _opt("--beta2", help="Adam beta2.")] = None,  # noqa: UP045
    init: Annotated[Optional[str], _opt(  # noqa: UP045
        "--init", help="W0: zero | uniform | prior (one gradient pass; areas mode).")] = None,
    prior_scale: Annotated[Optional[float], _opt(  # noqa: UP045
        "--prior-scale", help="init prior: scale of the standardised prior.")] = None,
    smooth_padding: Annotated[Optional[str], _opt(  # noqa: UP045
        "--smooth-padding", help="reflect | valid: Laplacian at the border too, or not.")] = None,
    substrates: Annotated[Optional[str], _opt(  # noqa: UP045
        "--substrates", help="areas mode: removal values taken in turn, e.g. blur,zero.")] = None,
    areas: Annotated[Optional[str], _opt(  # noqa: UP045
        "--areas", help="areas mode: nested target areas, e.g. 0.05,0.12,0.25,0.5.")] = None,
    area_penalty: Annotated[Optional[str], _opt(  # noqa: UP045
        "--area-penalty", help="areas mode: mean | sorted.")] = None,
    halves: Annotated[Optional[str], _opt(  # noqa: UP045
        "--halves", help="areas mode: both | preserve | delete.")] = None,
    pred_loss: Annotated[Optional[str], _opt(  # noqa: UP045
        "--pred-loss", help="areas mode: probability | log.")] = None,
    mask_cells: Annotated[Optional[int], _opt(  # noqa: UP045
        "--mask-cells", help="Mask cells along each axis (0: use --mask-scale).")] = None,
    preprocess: Annotated[Optional[str], typer.Option(  # noqa: UP045
        "--preprocess", help="torchvision-imagenet | inception | caffe | raw "
        "(default: what the model's metadata says, else torchvision-imagenet).",
        rich_help_panel=_PRE)] = None,
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
    score: Annotated[bool, typer.Option(
        "--score", help="Also score each map: deletion and insertion AUC under protocols A "
        "(deletion to zero, insertion from blur) and B (swapped), in the JSON and the table; "
        "about 200 more forward passes a map.")] = False,
    gradient: Annotated[str, typer.Option(
        "--gradient", help="auto | exact | estimate: the mask gradient from the rules, or "
        "estimated from model runs (auto: exact when every op has a rule).")] = "auto",
    feature_names: Annotated[Optional[Path], typer.Option(  # noqa: UP045
        "--feature-names", help="Text file of feature names, one a line (tabular inputs; "
        "default: the model's metadata).")] = None,
    server: ServerOpt = None,
    served_model: ServedOpt = None,
    server_timeout: ServerTimeoutOpt = 30.0,
) -> None:
    """Learn a NeuroMask for each input and write mask, PNGs and JSON to the output dir."""
    import warnings

    from . import onnxml, outputs
    from .errors import ConvergenceWarning
    from .explain import NeuroMask, Progress
    from .graph import load_model
    from .optimize import preset
    from .preprocess import describe_input, load_inputs, model_labels, resolve_preprocessing

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
            mask_scale=mask_scale, upsample=upsample, restarts=restarts, seed=seed,
            mode=mode, optimizer=optimizer, beta1=beta1, beta2=beta2, init=init,
            prior_scale=prior_scale, smooth_padding=smooth_padding,
            substrates=tuple(t.strip() for t in substrates.split(",")) if substrates else None,
            areas=_floats(areas, "--areas"), area_penalty=area_penalty, halves=halves,
            pred_loss=pred_loss, mask_cells=mask_cells)
        hw = parse_ints(size, "--size")
        if hw is not None and len(hw) != 2:
            msg = f"--size takes H,W, got {size!r}"
            raise InputError(msg)
        if server is None:
            if not inputs:
                msg = "missing argument INPUT...: give the images or tensors to explain"
                raise InputError(msg)
            proto = load_model(model)
            base, names, spec = (resolve_preprocessing(preprocess, proto), model_labels(proto),
                                 describe_input(proto, input_name, layout))
        else:  # the model runs on the server (cli_serve.py); MODEL is the first input
            from .cli_serve import remote_model
            from .remote import RemoteNeuroMask

            served = remote_model(server, served_model, server_timeout)
            inputs = [model, *(inputs or [])]
            base, names, spec = served.preprocessing(preprocess), served.labels(), \
                served.spec(layout)
        prep = base.replace(
            size=tuple(hw) if hw else None, resize=resize, crop_fraction=crop_fraction,
            scale=scale, mean=_floats(mean, "--mean"), std=_floats(std, "--std"),
            channel_order=channel_order.upper() if channel_order else None, layout=layout)
        names = _read_labels(labels) or names or (onnxml.class_labels(proto) if server is None
                                                  else None)
        loaded = load_inputs(inputs, spec, prep)
        if gradient not in ("auto", "exact", "estimate"):
            msg = f"--gradient must be auto, exact or estimate, got {gradient!r}"
            raise InputError(msg)
        if len(spec.dims) == 2 and layout is None:  # tabular: no feature grouping, no Laplacian
            config = config.replace(mask_scale=1 if mask_scale is None else None,
                                    mask_cells=0 if mask_scale is None else None,
                                    smooth_weight=0.0 if smooth_weight is None else None)
        fnames = None
        if server is None:
            nm = NeuroMask(proto, config, input_name=spec.name, output_name=output_name,
                           output_kind=output_kind.value, layout=layout, provider=provider,  # type: ignore[arg-type]
                           batch_size=batch_size, labels=names, threads=threads,
                           input_shape=loaded[0].tensor.shape if loaded else None,
                           gradient=gradient)
            if nm.gradient_note and not quiet:
                typer.echo(f"note: {nm.gradient_note}", err=True)
            fnames = (_read_labels(feature_names) if feature_names
                      else onnxml.feature_names(proto))
            if fnames is not None and nm.layout == "NF" and len(fnames) != spec.dims[-1]:
                msg = (f"{len(fnames)} feature names for {spec.dims[-1]} features; give one "
                       "name a line in --feature-names")
                raise InputError(msg)
        else:
            nm = RemoteNeuroMask(served, config, batch_size=batch_size, labels=names)
        wanted = [nm.class_index(t) for t in target] if target else None
        if top_k is not None and top_k < 1:
            msg = f"--top-k must be at least 1, got {top_k}"
            raise InputError(msg)
        top1_notes: list[str] = []
        labelled = server is None and onnxml.label_output(proto) is not None
        if wanted is None or labelled:
            tensors = [x.tensor for x in loaded]
            probs = nm.predict(tensors)  # shapes may differ (dynamic dims)
            if labelled and len({t.shape for t in tensors}) == 1:
                top1_notes = onnxml.top1_disagreements(proto, spec.name, np.stack(tensors),
                                                       probs)
        if wanted is None:
            order = np.argsort(-probs, axis=1, kind="stable")[:, : top_k or 1]
            targets = [[int(c) for c in row] for row in order]
        else:
            targets = [list(dict.fromkeys(wanted)) for _ in loaded]
        items = [(inp, t, len(ts) > 1) for inp, ts in zip(loaded, targets, strict=True)
                 for t in ts]
        planned = outputs.plan(out, items, len(nm.mask_axes), force, layout=nm.layout)

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
        if score:
            flat = _scored(nm, flat)
        from .estimate import record as gradient_record

        written = outputs.write(out, planned, flat, model if server is None else None, force,
                                feature_names=fnames,
                                gradient=gradient_record(list(nm._runners.values()),
                                                         getattr(nm, "gradient", "exact")))
    for note in top1_notes:
        typer.echo(f"warning: {note}", err=True)
    for w in caught:
        if not quiet and issubclass(w.category, ConvergenceWarning):
            typer.echo(f"warning: {w.message}", err=True)
    if quiet:
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"NeuroMask: {len(flat)} mask(s), {len(written)} files in {out}")
    cols = ["input", "target", "p before", "p after", "steps", "s/step", "seconds"]
    if score:
        cols += ["A: ins - del", "B: ins - del"]
    for col in cols:
        table.add_column(col, justify="left" if col in ("input", "target") else "right")
    for (_inp, ex), pl in zip(flat, planned, strict=True):
        tgt = f"{ex.target} {ex.label}" if ex.label else str(ex.target)
        table.add_row(pl.stem, tgt, f"{ex.prob_before:.3f}", f"{ex.prob_after:.3f}",
                      str(ex.steps), f"{ex.timings['per_step']:.4f}",
                      f"{ex.timings['optimize']:.2f}",
                      *([f"{ex.scores['A_insertion_minus_deletion']:.3f}",
                         f"{ex.scores['B_insertion_minus_deletion']:.3f}"] if score else []))
    Console().print(table)
    if nm.layout == "NF":  # tabular: the features by importance
        from .onnxml import feature_order

        for (_inp, ex), pl in zip(flat, planned, strict=True):
            top = feature_order(ex.mask, fnames)[:8]
            typer.echo(f"{pl.stem}: " + ", ".join(f"{f['name']} {f['mask']:.2f}" for f in top))


from .cli_serve import register as _register_serving

_register_serving(app)  # explain-dataset, serve


def _scored(nm: Any, flat: list[tuple[Any, Any]]) -> list[tuple[Any, Any]]:
    """`explain --score`: each map's own deletion / insertion AUCs (metrics.self_check) on
    the same model, put into its Explanation (and so into the JSON and the table)."""
    import dataclasses

    from .baselines import Classifier
    from .metrics import self_check

    clf = Classifier(nm.model, input_name=nm.input_name, layout=nm.layout,
                     mask_axes=list(nm.mask_axes), provider="cpu", batch_size=16,
                     threads=nm.threads)
    return [(inp, dataclasses.replace(ex, scores=self_check(clf, inp.tensor, ex.target,
                                                            ex.mask)))
            for inp, ex in flat]


def run() -> None:
    """Console entry point. A bad flag value or a missing argument is bad input too: it gets
    one line on stderr and exit code 1, like every other user error, not a usage block."""
    import sys

    from typer.exceptions import TyperException

    try:
        code = app(standalone_mode=False)
    except TyperException as exc:
        fmt = getattr(exc, "format_message", None)
        text = fmt() if callable(fmt) else str(exc)
        if type(exc).__name__ == "NoArgsIsHelpError":  # bare `neuromask`: show the help
            typer.echo(text)
            sys.exit(0)
        hint = " (see `neuromask --help`)"
        typer.echo(f"error: {' '.join(str(text).split())}{hint}", err=True)
        sys.exit(1)
    except typer.Abort:
        typer.echo("error: aborted", err=True)
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)


# --------------------------------------------------------------------------- evaluate / compare
# neuromask evaluate MODEL INPUT MAP.npy: the metrics of one saliency map.
# neuromask compare MODEL INPUT... --methods a,b -o DIR: run methods, score them, write
# compare.csv, compare.json and report.html (all or nothing, like explain).

_EVAL = "Evaluation"


def _region_arg(box: str | None) -> list[int] | None:
    b = parse_ints(box, "--box")
    if b is not None and len(b) != 4:
        msg = f"--box takes y0,x0,y1,x1 (model pixels, end-exclusive), got {box!r}"
        raise InputError(msg)
    return b


def _removal(name: str, flag: str) -> Any:
    if name not in ("zero", "blur", "mean"):
        msg = f"{flag} must be zero, blur or mean, got {name!r}"
        raise InputError(msg)
    return name


StepsOpt = Annotated[int, typer.Option(
    "--curve-steps", help="Deletion/insertion steps (curve points - 1).", rich_help_panel=_EVAL)]
DelOpt = Annotated[str, typer.Option(
    "--deletion-baseline", help="Removed pixels become: zero | blur | mean.",
    rich_help_panel=_EVAL)]
InsOpt = Annotated[str, typer.Option(
    "--insertion-baseline", help="Insertion starts from: zero | blur | mean.",
    rich_help_panel=_EVAL)]
BoxOpt = Annotated[Optional[str], typer.Option(  # noqa: UP045
    "--box", help="Object box y0,x0,y1,x1 in model pixels: adds pointing game and energy.",
    rich_help_panel=_EVAL)]
PrepOpt = Annotated[Optional[str], typer.Option(  # noqa: UP045
    "--preprocess", help="torchvision-imagenet | inception | caffe | raw "
    "(default: the model's metadata, else torchvision-imagenet).")]


def _load_one_model(model: Path | Any, input_name: str | None, output_name: str | None,
                    output_kind: OutputKind, layout: str | None, provider: str,
                    batch_size: int, threads: int | None,
                    input_shape: tuple[int, ...] | None = None) -> Any:
    from .baselines import Classifier
    from .graph import load_model

    if batch_size < 1:
        msg = f"--batch-size must be at least 1, got {batch_size}"
        raise InputError(msg)
    return Classifier(load_model(model), input_name=input_name, output_name=output_name,
                      output_kind=output_kind.value, layout=layout, provider=provider,
                      batch_size=batch_size, threads=threads, input_shape=input_shape)


SizeOpt = Annotated[Optional[str], typer.Option(  # noqa: UP045
    "--size", help="Model input H,W for images (default: from the model).")]


def _load_for_inputs(model: Path, inputs: list[Path], input_name: str | None,
                     output_name: str | None, output_kind: OutputKind, layout: str | None,
                     preprocess: str | None, size: str | None, provider: str, batch_size: int,
                     threads: int | None) -> tuple[Any, Any, list[Any]]:
    """(classifier, input spec, loaded inputs): the inputs are read first, so a model with
    dynamic dims takes them from the inputs (.npy shapes, or --size for images)."""
    from .graph import load_model
    from .preprocess import describe_input, load_inputs, resolve_preprocessing

    hw = parse_ints(size, "--size")
    if hw is not None and len(hw) != 2:
        msg = f"--size takes H,W, got {size!r}"
        raise InputError(msg)
    proto = load_model(model)
    spec = describe_input(proto, input_name, layout)
    prep = resolve_preprocessing(preprocess, proto)
    if hw:
        prep = prep.replace(size=tuple(hw))
    loaded = load_inputs(inputs, spec, prep)
    clf = _load_one_model(proto, spec.name, output_name, output_kind, layout, provider,
                          batch_size, threads,
                          input_shape=loaded[0].tensor.shape if loaded else None)
    return clf, spec, loaded


def _targets(clf: Any, xs: list[np.ndarray], target: Optional[int]) -> list[int]:  # noqa: UP045
    if target is not None:
        if not 0 <= target < clf.num_classes:
            msg = f"target class {target} is out of range: the model has {clf.num_classes} " \
                  "classes"
            raise InputError(msg)
        return [target] * len(xs)
    return [int(np.argmax(p)) for p in clf.probs(xs)]


@app.command()
def evaluate(
    model: ModelArg,
    input_path: Annotated[Path, typer.Argument(help="Image or .npy tensor.",
                                               show_default=False)],
    saliency_map: Annotated[Path, typer.Argument(
        help=".npy map over the mask axes (e.g. HxW), or input-shaped (summed over channels).",
        show_default=False)],
    *,
    target: Annotated[Optional[int], typer.Option(  # noqa: UP045
        "--target", "-t", help="Class index (default: the top-1 class).")] = None,
    curve_steps: StepsOpt = 50,
    deletion_baseline: DelOpt = "zero",
    insertion_baseline: InsOpt = "blur",
    box: BoxOpt = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the tie-breaking order.")] = 0,
    input_name: InputOpt = None,
    output_name: OutputOpt = None,
    output_kind: KindOpt = OutputKind.auto,
    layout: LayoutOpt = None,
    preprocess: PrepOpt = None,
    size: SizeOpt = None,
    provider: Annotated[str, typer.Option("--provider", help="auto | cpu | cuda.")] = "auto",
    batch_size: Annotated[int, typer.Option("--batch-size", "-b")] = 64,
    threads: Annotated[Optional[int], typer.Option("--threads")] = None,  # noqa: UP045
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Score one saliency map: deletion/insertion AUC, sparsity (+ pointing game, energy)."""
    import json

    from . import metrics

    with _errors():
        region = _region_arg(box)
        dele = _removal(deletion_baseline, "--deletion-baseline")
        ins = _removal(insertion_baseline, "--insertion-baseline")
        clf, _spec, loaded = _load_for_inputs(model, [input_path], input_name, output_name,
                                             output_kind, layout, preprocess, size, provider,
                                             batch_size, threads)
        if len(loaded) != 1:
            msg = f"{str(input_path)!r} holds {len(loaded)} inputs; evaluate takes one"
            raise InputError(msg)
        x = loaded[0].tensor
        try:
            sal = np.load(saliency_map, allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            msg = f"cannot read {str(saliency_map)!r} as a .npy array ({type(exc).__name__})"
            raise InputError(msg) from None
        sal = np.asarray(sal, np.float64)
        want = clf.mask_shape(x)
        if sal.shape != want and sal.shape[0] == 1 and sal.shape[1:] in (want, x.shape):
            sal = sal[0]
        if sal.shape == x.shape and sal.shape != want:
            sal = clf.to_map(sal, signed=True)
        t = _targets(clf, [x], target)[0]
        scores, _, _ = metrics.evaluate(clf, x, t, metrics.check_map(sal, want),
                                        steps=curve_steps, baseline=dele,
                                        insertion_baseline=ins,
                                        region=np.asarray(region) if region else None,
                                        seed=seed)
    if as_json:
        typer.echo(json.dumps({"target": t, **scores}, indent=2))
        return
    typer.echo(f"target {t}")
    for k, v in scores.items():
        typer.echo(f"{k:<26}{v:>10.4f}  ({metrics.METRICS[k]} is better)")


@app.command()
def compare(
    model: ModelArg,
    inputs: Annotated[list[Path], typer.Argument(
        help="Images, .npy tensors or directories of them.", show_default=False)],
    out: Annotated[Path, typer.Option("-o", "--out", help="Output directory.")] = Path(
        "neuromask-compare"),
    *,
    methods: Annotated[str, typer.Option(
        "--methods", "-m", help="Comma-separated: neuromask, saliency, gradient_x_input, "
        "smoothgrad, integrated_gradients, occlusion, rise.")] = (
        "neuromask,saliency,gradient_x_input,smoothgrad,integrated_gradients,occlusion,rise"),
    target: Annotated[Optional[int], typer.Option(  # noqa: UP045
        "--target", "-t", help="Class index (default: each input's top-1 class).")] = None,
    preset_name: Annotated[str, typer.Option(
        "--preset", help="NeuroMask preset (see explain --help).")] = "default",
    nm_steps: Annotated[Optional[int], typer.Option(  # noqa: UP045
        "--nm-steps", help="NeuroMask steps (default: the preset's).")] = None,
    curve_steps: StepsOpt = 50,
    deletion_baseline: DelOpt = "zero",
    insertion_baseline: InsOpt = "blur",
    box: BoxOpt = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of every random method.")] = 0,
    input_name: InputOpt = None,
    output_name: OutputOpt = None,
    output_kind: KindOpt = OutputKind.auto,
    layout: LayoutOpt = None,
    preprocess: PrepOpt = None,
    size: SizeOpt = None,
    provider: Annotated[str, typer.Option("--provider", help="auto | cpu | cuda.")] = "auto",
    batch_size: Annotated[int, typer.Option("--batch-size", "-b")] = 64,
    threads: Annotated[Optional[int], typer.Option("--threads")] = None,  # noqa: UP045
    force: Annotated[bool, typer.Option("--force", help="Overwrite existing outputs.")] = False,
) -> None:
    """Run saliency methods on each input, score them, write CSV, JSON and report.html."""
    import csv
    import io
    import json
    import warnings

    from . import metrics, report
    from .baselines import METHODS, run_method
    from .errors import ConvergenceWarning
    from .optimize import preset
    from .outputs import atomic_write

    with _errors():
        names = [m.strip() for m in methods.split(",") if m.strip()]
        unknown = [m for m in names if m not in METHODS]
        if not names or unknown:
            msg = f"unknown method {unknown[0]!r}" if unknown else "no methods given"
            msg += f"; choose from {', '.join(METHODS)}"
            raise InputError(msg)
        names = list(dict.fromkeys(names))
        region = _region_arg(box)
        dele = _removal(deletion_baseline, "--deletion-baseline")
        ins = _removal(insertion_baseline, "--insertion-baseline")
        config = preset(preset_name).replace(steps=nm_steps)
        if out.exists() and not out.is_dir():
            msg = f"output {str(out)!r} exists and is not a directory; pick another with -o"
            raise InputError(msg)
        paths = {k: out / f for k, f in (("csv", "compare.csv"), ("json", "compare.json"),
                                         ("html", "report.html"))}
        existing = [str(p) for p in paths.values() if p.exists()]
        if existing and not force:
            msg = f"{existing[0]!r} already exists; pass --force to overwrite"
            raise InputError(msg)
        clf, spec, loaded = _load_for_inputs(model, inputs, input_name, output_name,
                                             output_kind, layout, preprocess, size, provider,
                                             batch_size, threads)
        xs = [inp.tensor for inp in loaded]
        targets = _targets(clf, xs, target)
        probs = clf.probs(xs)
        chan = spec.layout.index("C") - 1 if spec.is_image else None
        results: list[report.InputResult] = []
        notes: list[str] = []
        for inp, x, t, p in zip(loaded, xs, targets, probs, strict=True):
            image = inp.image if inp.image is not None else report.tensor_image(x, chan)
            geo = inp.geometry
            res = report.InputResult(inp.name, t, None, float(p[t]), image,
                                     to_image=geo.to_original if geo is not None else None)
            for name in names:
                opts: dict[str, Any] = {"config": config} if name == "neuromask" else {}
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always", ConvergenceWarning)
                    sal, secs = run_method(name, clf, x, t, seed=seed, **opts)
                notes += [f"{inp.name} {name}: {w.message}" for w in caught
                          if issubclass(w.category, ConvergenceWarning)]
                scores, d, i = metrics.evaluate(
                    clf, x, t, sal, steps=curve_steps, baseline=dele, insertion_baseline=ins,
                    region=np.asarray(region) if region else None, seed=seed)
                res.methods.append(report.MethodResult(name, sal, secs, scores, d, i))
            results.append(res)
        rows = report.summary(results)
        cols = ["method", *[c for c in metrics.METRICS if any(c in r for r in rows)], "seconds"]
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        doc = {"model": str(model), "methods": names, "curve_steps": curve_steps,
               "deletion_baseline": dele, "insertion_baseline": ins, "seed": seed,
               "neuromask_config": config.to_dict(), "box": region,
               "better": metrics.METRICS, "summary": rows,
               "inputs": [{"name": r.name, "target": r.target, "prob": r.prob,
                           "methods": {m.method: {**m.scores, "seconds": m.seconds}
                                       for m in r.methods}} for r in results],
               "warnings": notes}
        blobs = {"csv": buf.getvalue().encode(),
                 "json": (json.dumps(doc, indent=2) + "\n").encode(),
                 "html": report.render(results, f"neuromask compare: {model.name}").encode()}
        out.mkdir(parents=True, exist_ok=True)
        for kind, data in blobs.items():
            atomic_write(paths[kind], data)
    for note in notes:
        typer.echo(f"warning: {note}", err=True)
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{len(results)} input(s), {len(names)} method(s); files in {out}")
    for c in cols:
        better = metrics.METRICS.get(c)
        table.add_column(f"{c} ({'up' if better == 'higher' else 'down'})" if better else c,
                         justify="left" if c == "method" else "right")
    for r in rows:
        table.add_row(*[f"{r[c]:.4f}" if isinstance(r.get(c), float) else str(r.get(c, "-"))
                        for c in cols])
    Console(width=200).print(table)

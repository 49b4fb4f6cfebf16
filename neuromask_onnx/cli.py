"""The `neuromask` command line: each command parses its flags, calls one library function
and prints.

Importing this module imports typer and nothing heavy (no numpy, onnx, onnxruntime): each
command imports what it needs when it runs, so `--version` and `--help` are instant. The
NeuroMask hyperparameter flags are generated from `NeuroMaskConfig`'s fields
(`cliparams.config_command`): a new field is a new flag with no edit here. Choices are Enums,
counts have `min=`, floats must be finite (the shared option types: `cliopts`). What a
command prints is `cliprint`'s. Every `NeuromaskError` becomes one line on stderr and exit
code 1 (`cliparams.one_line_errors`); so does every usage error (`cliparams.OneLineGroup`).
Anything else escaping is a bug and keeps its traceback. Ctrl-C: see `entry`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from . import __version__
from . import cliopts as opts
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
from .cliparams import OneLineCommand, OneLineGroup, config_command, config_overrides
from .cliparams import one_line_errors as _errors
from .cliprint import print_demo, print_explained, print_ops, print_summary
from .cliprint import progress_bar as _bar
from .errors import InputError

app = typer.Typer(
    cls=OneLineGroup,
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    help="Explain ONNX classifiers with NeuroMask, on onnxruntime alone.",
)


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


ALIASES = {"learning_rate": ("--lr",)}
"""Short names kept beside the generated `--field-name` flags."""
ExplainCommand = config_command(_load_config, panel=opts.CFG_PANEL, aliases=ALIASES)
CompareCommand = config_command(_load_config, prefix="nm-", panel=opts.CFG_PANEL, skip=("seed",))
_MAX_PIXELS = 50_000_000  # preprocess.MAX_PIXELS (not imported: it would import numpy)


# --------------------------------------------------------------------------- instrument / ops


@app.command(cls=OneLineCommand)
def instrument(
    model: opts.ModelArg,
    output: Annotated[Path | None, typer.Option(
        "-o", "--out", help="Where to write the model.", show_default=False)] = None,
    *,
    input_name: opts.InputOpt = None,
    output_name: opts.OutputOpt = None,
    batch_size: opts.BatchOpt = 1,
    input_shape: opts.ShapeOpt = None,
    layout: opts.LayoutOpt = None,
    mask_axes: opts.AxesOpt = None,
    output_kind: opts.KindOpt = opts.OutputKind.auto,
    objective: Annotated[opts.Objective | None, typer.Option(
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
                              input_shape=opts.parse_ints(input_shape, "--input-shape"),
                              layout=layout, mask_axes=opts.parse_ints(mask_axes, "--mask-axes"),
                              output_kind=output_kind.value, baseline=True,
                              objective=objective.value if objective else "probability")
        return
    with _errors():
        from .outputs import write_instrumented

        if output is None:
            msg = ("Missing option '-o' / '--out': give -o OUT.onnx, or --triton REPO for a "
                   "Triton model repository")
            raise InputError(msg)
        m = write_instrumented(
            model, output, force=force, input_name=input_name, output_name=output_name,
            batch_size=batch_size, input_shape=opts.parse_ints(input_shape, "--input-shape"),
            layout=layout, mask_axes=opts.parse_ints(mask_axes, "--mask-axes"),
            output_kind=output_kind.value,
            objective=objective.value if objective else "cross_entropy", baseline=baseline)
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
        from .rewrite import op_report
        from .vjp_rules import VJP_RULES, ZERO_GRAD_OPS

        if model is None:
            typer.echo("Ops with gradient rules:")
            typer.echo("  " + " ".join(sorted(VJP_RULES)))
            typer.echo("Ops that pass no gradient (shape, comparison, index ops):")
            typer.echo("  " + " ".join(sorted(ZERO_GRAD_OPS)))
            return
        rows = op_report(model)
    print_ops(rows)


# --------------------------------------------------------------------------- explain


@app.command(cls=ExplainCommand)
def explain(
    ctx: typer.Context,
    model: opts.ModelArg,
    inputs: Annotated[list[Path] | None, typer.Argument(
        help="Images (png, jpg, bmp, tiff, webp), .npy tensors or directories of them.",
        show_default=False)] = None,
    out: Annotated[Path, typer.Option("-o", "--out", help="Output directory.")] = Path(
        "neuromask-output"),
    *,
    input_name: opts.InputOpt = None,
    output_name: opts.OutputOpt = None,
    output_kind: opts.KindOpt = opts.OutputKind.auto,
    target: Annotated[list[str] | None, typer.Option(
        "--target", "-t", help="Class index or label to explain (repeat for several; "
        "default: the top-1 class).")] = None,
    labels: Annotated[Path | None, typer.Option(
        "--labels", help="Text file of class names, one a line, line i = class i.")] = None,
    top_k: Annotated[int | None, typer.Option(
        "--top-k", "-k", min=1, help="Explain each of the top K classes.")] = None,
    preset_name: Annotated[str, typer.Option(
        "--preset", help="Hyperparameters: default, reference, reference-cifar, paper.",
        rich_help_panel=opts.CFG_PANEL)] = "default",
    preprocess: opts.PrepOpt = None,
    size: opts.ExplainSizeOpt = None,
    resize: opts.ResizeOpt = None,
    crop_fraction: opts.CropOpt = None,
    scale: opts.ScaleOpt = None,
    mean: opts.MeanOpt = None,
    std: opts.StdOpt = None,
    channel_order: opts.ChannelOrderOpt = None,
    layout: opts.LayoutOpt = None,
    provider: opts.ProviderOpt = opts.Provider.auto,
    batch_size: Annotated[int, typer.Option(
        "--batch-size", "-b", min=1, help="Jobs per session run.")] = 8,
    threads: opts.ThreadsOpt = None,
    max_pixels: opts.PixelsOpt = _MAX_PIXELS,
    force: opts.ForceOpt = False,
    quiet: opts.QuietOpt = False,
    score: Annotated[bool, typer.Option(
        "--score", help="Also score each map: deletion and insertion AUC under protocols A "
        "(deletion to zero, insertion from blur) and B (swapped), in the JSON and the table; "
        "about 200 more forward passes a map.")] = False,
    gradient: Annotated[opts.Gradient, typer.Option(
        "--gradient", help="The mask gradient from the rules (exact), or estimated from "
        "model runs (estimate); auto: exact when every op has a rule.")] = opts.Gradient.auto,
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
        prep = opts.explain_preprocessing(size, resize, crop_fraction, scale, mean, std,
                                     channel_order, layout)
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
    print_explained(run, out, score)


@app.command(cls=OneLineCommand)
def demo(
    out: Annotated[Path, typer.Option("-o", "--out", help="Output directory.")] = Path(
        "neuromask-demo"),
    *,
    provider: opts.ProviderOpt = opts.Provider.auto,
    threads: opts.ThreadsOpt = None,
    force: opts.ForceOpt = False,
    quiet: opts.QuietOpt = False,
) -> None:
    """Explain a real photo with a pretrained ImageNet classifier shipped with the project."""
    with _errors():
        from .demo import METHODS, run_demo

        with _bar(quiet, "steps") as progress:
            res = run_demo(out, force=force, provider=provider.value, threads=threads,
                           progress=progress)
    print_demo(res, out, quiet, f"NeuroMask beside {', '.join(METHODS[1:])}")


# --------------------------------------------------------------------------- evaluate / compare


@app.command(cls=OneLineCommand)
def evaluate(
    model: opts.ModelArg,
    input_path: Annotated[Path, typer.Argument(help="Image or .npy tensor.",
                                               show_default=False)],
    saliency_map: Annotated[Path, typer.Argument(
        help=".npy map over the mask axes (e.g. HxW), or input-shaped (summed over channels).",
        show_default=False)],
    *,
    target: Annotated[int | None, typer.Option(
        "--target", "-t", min=0, help="Class index (default: the top-1 class).")] = None,
    curve_steps: opts.CurveStepsOpt = 50,
    deletion_baseline: opts.DelOpt = opts.Removal.zero,
    insertion_baseline: opts.InsOpt = opts.Removal.blur,
    box: opts.BoxOpt = None,
    seed: Annotated[int, typer.Option("--seed", min=0,
                                      help="Seed of the tie-breaking order.")] = 0,
    input_name: opts.InputOpt = None,
    output_name: opts.OutputOpt = None,
    output_kind: opts.KindOpt = opts.OutputKind.auto,
    layout: opts.LayoutOpt = None,
    preprocess: opts.PrepOpt = None,
    size: opts.SizeOpt = None,
    provider: opts.ProviderOpt = opts.Provider.auto,
    batch_size: opts.BatchOpt = 64,
    threads: opts.ThreadsOpt = None,
    max_pixels: opts.PixelsOpt = _MAX_PIXELS,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Score one saliency map: deletion/insertion AUC, sparsity (+ pointing game, energy)."""
    import json

    with _errors():
        from .comparing import evaluate_map
        from .metrics import METRICS

        with _bar(quiet or as_json, "stages") as progress:
            t, scores = evaluate_map(
                model, input_path, saliency_map, target=target, curve_steps=curve_steps,
                deletion_baseline=deletion_baseline.value,
                insertion_baseline=insertion_baseline.value, box=opts.parse_ints(box, "--box"),
                seed=seed, input_name=input_name, output_name=output_name,
                output_kind=output_kind.value, layout=layout, preprocess=preprocess,
                size=opts.parse_ints(size, "--size"), provider=provider.value,
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
    model: opts.ModelArg,
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
        "--preset", help="NeuroMask preset (see explain --help).",
        rich_help_panel=opts.CFG_PANEL)] = "default",
    curve_steps: opts.CurveStepsOpt = 50,
    deletion_baseline: opts.DelOpt = opts.Removal.zero,
    insertion_baseline: opts.InsOpt = opts.Removal.blur,
    box: opts.BoxOpt = None,
    seed: Annotated[int, typer.Option("--seed", min=0,
                                      help="Seed of every random method.")] = 0,
    input_name: opts.InputOpt = None,
    output_name: opts.OutputOpt = None,
    output_kind: opts.KindOpt = opts.OutputKind.auto,
    layout: opts.LayoutOpt = None,
    preprocess: opts.PrepOpt = None,
    size: opts.SizeOpt = None,
    provider: opts.ProviderOpt = opts.Provider.auto,
    batch_size: opts.BatchOpt = 64,
    threads: opts.ThreadsOpt = None,
    max_pixels: opts.PixelsOpt = _MAX_PIXELS,
    force: opts.ForceOpt = False,
    quiet: opts.QuietOpt = False,
) -> None:
    """Run saliency methods on each input, score them, write CSV, JSON and report.html."""
    with _errors():
        from .comparing import compare_files
        from .optimize import preset

        config = preset(preset_name).replace(**config_overrides(ctx))
        with _bar(quiet, "method runs") as progress:
            res = compare_files(
                model, inputs, out, methods=methods.split(","), config=config, target=target,
                curve_steps=curve_steps, deletion_baseline=deletion_baseline.value,
                insertion_baseline=insertion_baseline.value, box=opts.parse_ints(box, "--box"),
                seed=seed, input_name=input_name, output_name=output_name,
                output_kind=output_kind.value, layout=layout, preprocess=preprocess,
                size=opts.parse_ints(size, "--size"), provider=provider.value,
                batch_size=batch_size, threads=threads, force=force, max_pixels=max_pixels,
                progress=progress)
    for note in res.notes:
        typer.echo(f"warning: {note}", err=True)
    if not quiet:
        print_summary(res.rows, res.columns, f"{len(res.results)} input(s), "
                       f"{len(res.rows)} method(s); files in {out}")


register(app, OneLineCommand)  # explain-dataset, serve (cli_serve.py)

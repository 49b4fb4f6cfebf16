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

"""The `neuromask` commands' shared option types: choices as Enums, flags as `Annotated` aliases
and the parsers of the comma-separated flags.

Kept apart from cli.py so that a command reads as its signature plus one library call. Like
cli.py this imports typer and nothing heavy (`--version` stays instant). Choices are Enums
(typer refuses anything else in one line), counts carry `min=`, floats go through
`cliparams.finite_float`. The comma-separated flags (`--input-shape 3,224,224`, `--mean`)
are parsed when the command runs; a bad one is an `InputError`, one line like every other.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

from .cliparams import finite_float
from .errors import InputError

CFG_PANEL = "NeuroMask (default: from --preset)"
PRE_PANEL = "Preprocessing (default: from --preprocess)"
EVAL_PANEL = "Evaluation"


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


def parse_floats(text: str | None, flag: str) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        values = tuple(finite_float(t) for t in text.split(",") if t.strip())
    except typer.BadParameter:
        msg = f"{flag} takes comma-separated finite numbers, got {text!r}"
        raise InputError(msg) from None
    return values


def explain_preprocessing(size: str | None, resize: Resize | None, crop_fraction: float | None,
                          scale: float | None, mean: str | None, std: str | None,
                          channel_order: ChannelOrder | None,
                          layout: str | None) -> dict[str, Any]:
    """`explain`'s preprocessing flags as the changes `pipeline.explain_files` applies."""
    hw = parse_ints(size, "--size")
    if hw is not None and len(hw) != 2:
        msg = f"--size takes H,W, got {size!r}"
        raise InputError(msg)
    return {"size": tuple(hw) if hw else None, "resize": resize.value if resize else None,
            "crop_fraction": crop_fraction, "scale": scale,
            "mean": parse_floats(mean, "--mean"), "std": parse_floats(std, "--std"),
            "channel_order": channel_order.value if channel_order else None,
            "layout": layout}


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
    "model's metadata says, else torchvision-imagenet).", panel=PRE_PANEL)]
CurveStepsOpt = Annotated[int, typer.Option(
    "--curve-steps", min=1, help="Deletion/insertion steps (curve points - 1).",
    rich_help_panel=EVAL_PANEL)]
DelOpt = Annotated[Removal, typer.Option(
    "--deletion-baseline", help="Removed pixels become this.", rich_help_panel=EVAL_PANEL)]
InsOpt = Annotated[Removal, typer.Option(
    "--insertion-baseline", help="Insertion starts from this.", rich_help_panel=EVAL_PANEL)]
BoxOpt = Annotated[str | None, typer.Option(
    "--box", help="Object box y0,x0,y1,x1 in model pixels: adds pointing game and energy.",
    rich_help_panel=EVAL_PANEL)]
SizeOpt = Annotated[str | None, _opt(
    "--size", help="Model input H,W for images (default: from the model).", panel=PRE_PANEL)]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress, no table.")]
BatchOpt = Annotated[int, typer.Option("--batch-size", "-b", min=1)]

# explain's preprocessing overrides
ExplainSizeOpt = Annotated[str | None, _opt(
    "--size", help="Model input H,W (default: from the model).", panel=PRE_PANEL)]
ResizeOpt = Annotated[Resize | None, _opt(
    "--resize", help="How the image meets the model's size.", panel=PRE_PANEL)]
CropOpt = Annotated[float | None, _float_opt(
    "--crop-fraction", help="center-crop: crop / resized size.", panel=PRE_PANEL)]
ScaleOpt = Annotated[float | None, _float_opt(
    "--scale", help="Pixel (0-255) multiplier before mean/std.", panel=PRE_PANEL)]
MeanOpt = Annotated[str | None, _opt(
    "--mean", help="Per-channel mean, comma-separated.", panel=PRE_PANEL)]
StdOpt = Annotated[str | None, _opt(
    "--std", help="Per-channel std, comma-separated.", panel=PRE_PANEL)]
ChannelOrderOpt = Annotated[ChannelOrder | None, typer.Option(
    "--channel-order", case_sensitive=False, rich_help_panel=PRE_PANEL, show_default=False)]

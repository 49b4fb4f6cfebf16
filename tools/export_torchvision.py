"""Export seeded random-weight torchvision classifiers (and two hand-made models) to ONNX.

Every architecture is built with `torch.manual_seed(0)` right before construction, so calling
`build(name)` twice gives the same weights: the tests export once and rebuild the torch module
to compute reference gradients. Each model is written with both torch exporters:

- "torchscript": `torch.onnx.export(..., dynamo=False, opset_version=17)`
- "dynamo":      `torch.onnx.export(..., dynamo=True, external_data=False)` (its default opset)

Input name is always "input". Sizes default to small images (fast tests); pass `size` to export
at another resolution (the benchmark uses 224, inception_v3 299).

    python tools/export_torchvision.py --out /tmp/nm_models [--size 224] [--exporter torchscript]
        [resnet18 mobilenet_v2 ...]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

EXPORTERS = ("torchscript", "dynamo")


class NHWCNet(nn.Module):
    """A tf2onnx-style model: input [N, H, W, 3], first op permutes to NCHW."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU6(),
            nn.Conv2d(32, 32, 3, padding=1, groups=32), nn.Hardswish(),
        )
        self.head = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 3, 1, 2)
        x = self.features(x)
        return self.head(x.mean(dim=(2, 3)))


class SoftmaxNet(nn.Module):
    """A model that outputs probabilities: the graph ends in Softmax."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(),
            nn.AvgPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.SiLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.head = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.head(self.features(x)), dim=1)


def _vit(size: int) -> nn.Module:
    from torchvision.models.vision_transformer import VisionTransformer

    net = VisionTransformer(image_size=size, patch_size=16, num_layers=4, num_heads=4,
                            hidden_dim=256, mlp_dim=512)
    # torchvision zero-initialises the head; random logits need a random head.
    nn.init.normal_(net.heads.head.weight, std=0.02)
    nn.init.normal_(net.heads.head.bias, std=0.02)
    return net


def _tv(name: str, **kwargs: object) -> Callable[[int], nn.Module]:
    def make(size: int) -> nn.Module:
        import torchvision

        return getattr(torchvision.models, name)(weights=None, **kwargs)

    return make


@dataclass(frozen=True)
class Arch:
    """How to build one architecture and the input it takes."""

    make: Callable[[int], nn.Module]
    size: int          # default (small) image size used by the tests
    layout: str = "NCHW"
    outputs: str = "logits"  # or "probabilities"
    bench_size: int = 224


ARCHS: dict[str, Arch] = {
    "resnet18": Arch(_tv("resnet18"), 64),
    "mobilenet_v2": Arch(_tv("mobilenet_v2"), 64),
    "mobilenet_v3_small": Arch(_tv("mobilenet_v3_small"), 64),
    "efficientnet_b0": Arch(_tv("efficientnet_b0"), 64),
    "squeezenet1_1": Arch(_tv("squeezenet1_1"), 64),
    # AdaptiveAvgPool2d(7) after five 2x poolings: the TorchScript exporter needs 7 | H/32.
    "vgg11_bn": Arch(_tv("vgg11_bn"), 224),
    "densenet121": Arch(_tv("densenet121"), 64),
    "googlenet": Arch(_tv("googlenet", aux_logits=False, init_weights=True), 64),
    "inception_v3": Arch(_tv("inception_v3", aux_logits=False, init_weights=True), 75,
                         bench_size=299),
    "shufflenet_v2_x1_0": Arch(_tv("shufflenet_v2_x1_0"), 64),
    "regnet_y_400mf": Arch(_tv("regnet_y_400mf"), 64),
    "convnext_tiny": Arch(_tv("convnext_tiny"), 64),
    "swin_t": Arch(_tv("swin_t"), 64),
    "vit_small": Arch(_vit, 64),
    "nhwc_net": Arch(lambda _size: NHWCNet(), 32, layout="NHWC"),
    "softmax_net": Arch(lambda _size: SoftmaxNet(), 32, outputs="probabilities"),
}

# The torchvision architectures (the hand-made models are test fixtures, not benchmarks).
BENCH_ARCHS = [n for n in ARCHS if n not in ("nhwc_net", "softmax_net")]


def input_shape(name: str, size: int | None = None, batch: int = 1) -> tuple[int, ...]:
    arch = ARCHS[name]
    s = size or arch.size
    return (batch, s, s, 3) if arch.layout == "NHWC" else (batch, 3, s, s)


def build(name: str, size: int | None = None) -> nn.Module:
    """The seeded random-weight module in eval mode; same weights on every call."""
    arch = ARCHS[name]
    torch.manual_seed(0)
    net = arch.make(size or arch.size)
    return net.eval()


def onnx_path(out_dir: str | Path, name: str, exporter: str, size: int | None = None,
              batch: int = 1) -> Path:
    s = size or ARCHS[name].size
    b = "" if batch == 1 else f"_b{batch}"
    return Path(out_dir) / f"{name}_{s}{b}_{exporter}.onnx"


def export(name: str, exporter: str, out_dir: str | Path, size: int | None = None,
           net: nn.Module | None = None, batch: int = 1, overwrite: bool = False) -> Path:
    """Export `name` with `exporter` into `out_dir`; return the file (cached unless overwrite).

    Both exporters bake the example's batch size into the graph (the dynamo one into every
    Reshape), so a model meant to run on batches of `batch` is exported with that batch.
    """
    if exporter not in EXPORTERS:
        msg = f"exporter must be one of {EXPORTERS}, got {exporter!r}"
        raise ValueError(msg)
    path = onnx_path(out_dir, name, exporter, size, batch)
    if path.exists() and not overwrite:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    net = net if net is not None else build(name, size)
    x = torch.randn(*input_shape(name, size, batch))
    tmp = path.with_name(path.name + ".tmp")
    # Both exporters warn and print progress chatter; none of it is actionable here. Grad
    # mode stays on: under no_grad, nn.MultiheadAttention takes its fused fast path
    # (aten::_native_multi_head_attention), which the TorchScript exporter cannot export.
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        if exporter == "torchscript":
            torch.onnx.export(net, (x,), str(tmp), dynamo=False, opset_version=17,
                              input_names=["input"], output_names=["output"])
        else:
            torch.onnx.export(net, (x,), str(tmp), dynamo=True, external_data=False,
                              input_names=["input"], output_names=["output"], verbose=False)
    tmp.replace(path)
    return path


def export_all(out_dir: str | Path, names: list[str] | None = None,
               exporters: tuple[str, ...] = EXPORTERS, size: int | None = None,
               batch: int = 1) -> dict[tuple[str, str], Path]:
    out = {}
    for name in names or list(ARCHS):
        net = build(name, size)
        for exp in exporters:
            out[name, exp] = export(name, exp, out_dir, size, net=net, batch=batch)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("names", nargs="*", help=f"architectures (default: all of {list(ARCHS)})")
    p.add_argument("--out", required=True, help="cache directory")
    p.add_argument("--size", type=int, default=None, help="image size (default: per model)")
    p.add_argument("--exporter", choices=[*EXPORTERS, "both"], default="both")
    p.add_argument("--batch", type=int, default=1, help="batch size baked into the export")
    args = p.parse_args(argv)
    bad = [n for n in args.names if n not in ARCHS]
    if bad:
        print(f"unknown architecture(s) {bad}; choose from {list(ARCHS)}", file=sys.stderr)
        return 1
    exporters = EXPORTERS if args.exporter == "both" else (args.exporter,)
    for (name, exp), path in export_all(args.out, args.names or None, exporters,
                                        args.size, args.batch).items():
        print(f"{name:20s} {exp:12s} {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

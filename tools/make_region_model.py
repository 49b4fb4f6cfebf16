"""Write models/region_cnn.onnx: a small CNN whose decision provably depends on one box only.

The known-answer fixture for NeuroMask. Input `image` float32 [N, 3, 32, 32] (NCHW, dynamic
batch), output `logits` float32 [N, 3].

    gate   = image * B            B: constant [1, 1, 32, 32], 1 on rows 8..15, cols 16..23, else 0
    h      = Relu(Conv(gate, K) + c)     K: 4 filters 3x3 over 3 channels, all weights >= 0
    f      = GlobalAveragePool(h)        [N, 4, 1, 1] -> Flatten -> [N, 4]
    logits = f @ A + a                   3 classes

Why the decision depends only on the box: the first op multiplies every pixel outside the box
by the constant 0, so d logits / d image is exactly 0 there and any change outside the box
leaves the logits bit-identical. Every later op only sees `gate`.

Why the box matters for class 0: the conv weights are non-negative and its bias c is 0, so f
grows with the (non-negative) pixel values inside the box; A gives class 0 positive weights on f
and the other classes none, while the biases a = [0, 1, 0.5] make class 1 win when the box is
dark (f = 0).
For any image with pixel values in [0.5, 1] inside the box, class 0 wins; masking the box out
(multiplying it by 0) makes class 1 win. A NeuroMask explanation of class 0 must therefore keep
the box on and can switch everything else off: the mask's maximum lies in the box and most of
its mass is inside it.

Run: python tools/make_region_model.py [OUT.onnx]   (default models/region_cnn.onnx)
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

SIZE = 32
BOX = (8, 16, 16, 24)  # rows [8, 16), cols [16, 24): top, bottom, left, right (exclusive)


def build(box: tuple[int, int, int, int] = BOX) -> onnx.ModelProto:
    """The model for `box` = (top, bottom, left, right), exclusive ends (the fixture: BOX)."""
    rng = np.random.default_rng(20190601)
    top, bottom, left, right = box
    gate = np.zeros((1, 1, SIZE, SIZE), np.float32)
    gate[..., top:bottom, left:right] = 1.0
    kernel = rng.uniform(0.0, 1.0, (4, 3, 3, 3)).astype(np.float32) / 27.0 * 4.0
    conv_bias = np.zeros(4, np.float32)
    head = np.zeros((4, 3), np.float32)
    head[:, 0] = rng.uniform(20.0, 30.0, 4)  # class 0 reads the box's brightness
    head_bias = np.array([0.0, 1.0, 0.5], np.float32)  # class 1 wins on a dark box
    inits = [
        numpy_helper.from_array(gate, "box_gate"),
        numpy_helper.from_array(kernel, "conv.weight"),
        numpy_helper.from_array(conv_bias, "conv.bias"),
        numpy_helper.from_array(head, "fc.weight"),
        numpy_helper.from_array(head_bias, "fc.bias"),
    ]
    nodes = [
        helper.make_node("Mul", ["image", "box_gate"], ["gated"], name="gate"),
        helper.make_node("Conv", ["gated", "conv.weight", "conv.bias"], ["conv"], name="conv",
                         kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv"], ["relu"], name="relu"),
        helper.make_node("GlobalAveragePool", ["relu"], ["pool"], name="pool"),
        helper.make_node("Flatten", ["pool"], ["feat"], name="flatten", axis=1),
        helper.make_node("Gemm", ["feat", "fc.weight", "fc.bias"], ["logits"], name="fc"),
    ]
    graph = helper.make_graph(
        nodes, "region_cnn",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, SIZE, SIZE])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])],
        inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)],
                              producer_name="neuromask-onnx tools/make_region_model.py")
    model.ir_version = 9
    model.doc_string = (f"decision depends only on the box rows {top}:{bottom}, cols "
                        f"{left}:{right} of a {SIZE}x{SIZE} NCHW image (see the generator)")
    onnx.checker.check_model(model, full_check=True)
    return model


def main() -> None:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else (
        Path(__file__).resolve().parent.parent / "models" / "region_cnn.onnx")
    out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(build(), str(out))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

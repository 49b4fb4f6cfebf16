"""Ops written out in standard ONNX ops before differentiation, so that their rules are the standard ones.

`graph.prepare` calls `lower_contrib` first, before any shape inference, and
`lower_space_to_depth_crd` once the shapes are known:

- `com.microsoft.BiasAdd(X, bias, skip)` is X + bias + skip (onnxruntime's transformer
  optimizer writes it for the bias and residual adds of a transformer block);
- `com.microsoft.NhwcConv(X, W, B)` is a `Conv` on channel-last data with channel-last
  weights, (M, kH, kW, C/group), and the `Conv` attributes (what onnxruntime's Stable
  Diffusion optimizer writes, between a Transpose pair);
- `SpaceToDepth` with mode="CRD" (opset 28) is Reshape -> Transpose -> Reshape.

The two contrib ops have kernels only in onnxruntime's CUDA and ROCm builds. Written out,
the instrumented model (which holds the prepared nodes) runs on any onnxruntime, the CPU
build included, and computes the same function. They must be lowered before shape inference:
onnx cannot infer a contrib op's output shape, and the fallback (running the model on
onnxruntime) has no CPU kernel to run.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from .graphtypes import PREFIX, Shape

MS = "com.microsoft"
# The op keys `lower_contrib` writes out (`neuromask ops` reports them as such).
LOWERED = {f"{MS}::BiasAdd": "written out as two Adds",
           f"{MS}::NhwcConv": "written out as Transpose, Conv, Transpose (runs on CPU too)"}
_TO_NCHW, _TO_NHWC = [0, 3, 1, 2], [0, 2, 3, 1]


def lower_contrib(nodes: list[onnx.NodeProto]) -> list[onnx.NodeProto]:
    """Replace BiasAdd and NhwcConv by their standard-op equivalents; other nodes unchanged."""
    out: list[onnx.NodeProto] = []
    for node in nodes:
        if node.domain == MS and node.op_type == "BiasAdd":
            out += _bias_add(node)
        elif node.domain == MS and node.op_type == "NhwcConv":
            out += _nhwc_conv(node)
        else:
            out.append(node)
    return out


def _bias_add(node: onnx.NodeProto) -> list[onnx.NodeProto]:
    x, bias, skip = node.input
    mid = f"{PREFIX}lower_{node.output[0]}_biased"
    return [helper.make_node("Add", [x, bias], [mid], name=f"{PREFIX}lower_{node.name}_bias"),
            helper.make_node("Add", [mid, skip], list(node.output), name=node.name)]


def _nhwc_conv(node: onnx.NodeProto) -> list[onnx.NodeProto]:
    x, w, *bias = node.input
    base = f"{PREFIX}lower_{node.output[0]}"
    attrs = list(node.attribute)
    conv = helper.make_node("Conv", [f"{base}_x", f"{base}_w", *bias], [f"{base}_y"],
                            name=node.name)
    conv.attribute.extend(attrs)
    # The weight's Transpose folds away when W is an initializer (the optimizer's usual case).
    return [helper.make_node("Transpose", [x], [f"{base}_x"], perm=_TO_NCHW,
                             name=f"{base}_tx"),
            helper.make_node("Transpose", [w], [f"{base}_w"], perm=_TO_NCHW, name=f"{base}_tw"),
            conv,
            helper.make_node("Transpose", [f"{base}_y"], list(node.output), perm=_TO_NHWC,
                             name=f"{base}_ty")]


def lower_space_to_depth_crd(nodes: list[onnx.NodeProto], consts: dict[str, np.ndarray],
                             shapes: dict[str, Shape],
                             dtypes: dict[str, int]) -> list[onnx.NodeProto]:
    """SpaceToDepth with mode="CRD" as Reshape -> Transpose -> Reshape.

    SpaceToDepth's mode attribute exists from opset 28 (ONNX's conformance case
    test_spacetodepth_crd_mode_example); the SpaceToDepth rule knows DCR only, so CRD is
    written out in standard ops, whose rules follow the real function.
    """
    out: list[onnx.NodeProto] = []
    for node in nodes:
        mode = next((a.s for a in node.attribute if a.name == "mode"), b"")
        x = node.input[0] if node.input else ""
        if node.op_type != "SpaceToDepth" or mode != b"CRD" or len(shapes.get(x, ())) != 4:
            out.append(node)
            continue
        b = next(int(a.i) for a in node.attribute if a.name == "blocksize")
        n, c, h, w = shapes[x]
        base = f"{PREFIX}s2d_{node.output[0]}"
        split, moved = (n, c, h // b, b, w // b, b), (n, c, b, b, h // b, w // b)
        consts[f"{base}_split"] = np.array(split, dtype=np.int64)
        consts[f"{base}_shape"] = np.array(shapes.get(node.output[0], (n, c * b * b, h // b,
                                                                       w // b)), dtype=np.int64)
        for name, shp, dt in ((f"{base}_split", (6,), TensorProto.INT64),
                              (f"{base}_shape", (4,), TensorProto.INT64),
                              (f"{base}_r", split, dtypes.get(x, TensorProto.FLOAT)),
                              (f"{base}_t", moved, dtypes.get(x, TensorProto.FLOAT))):
            shapes[name], dtypes[name] = tuple(shp), dt
        out += [helper.make_node("Reshape", [x, f"{base}_split"], [f"{base}_r"]),
                helper.make_node("Transpose", [f"{base}_r"], [f"{base}_t"], perm=[0, 1, 3, 5, 2, 4]),
                helper.make_node("Reshape", [f"{base}_t", f"{base}_shape"], [node.output[0]],
                                 name=node.name)]
    return out

"""VJP rule of Resize (and Upsample, which `graph.prepare` converts to it).

Resize is linear in X and separable: each resized axis contracts with an [out, in]
interpolation matrix. The rule reads each matrix off the node itself at build time, running
the same Resize on onnxruntime on an identity basis (length 1 along every other axis), so the
weights are exact for every mode, coordinate transform, rounding and antialias setting. With
`tf_crop_and_resize` the basis run takes the node's region of interest (and `axes`) and
extrapolation value 0: the outputs outside the region are that constant, whose gradient is
zero. Axes whose size does not change are skipped (their matrix is the identity), as
onnxruntime, which ignores the roi along them. Moved out of `shape` to keep both modules small.
"""

from __future__ import annotations

import numpy as np
import onnx

from ..graph import Emitter, attrs_of
from .basis import run_on_basis
from .registry import Grads, Needs, first_only, vjp_rule


def _resize_attr(node: onnx.NodeProto, name: str, default: str) -> str:
    v = attrs_of(node).get(name, default)
    return v.decode() if isinstance(v, bytes) else str(v)


def _resize_full(op: Emitter, node: onnx.NodeProto, idx: int) -> np.ndarray | None:
    """Resize's scales (idx 2) or sizes (idx 3) spelled out for every axis, or None."""
    if len(node.input) <= idx or not node.input[idx]:
        return None
    v = op.g.const(node.input[idx])
    if v is None or v.size == 0:
        return None
    rank = len(op.g.shape(node.input[0]))
    axes = attrs_of(node).get("axes")
    if axes is None:
        return v.reshape(-1)
    full = (np.ones(rank) if idx == 2 else np.array(op.g.shape(node.input[0]))).astype(v.dtype)
    for j, a in enumerate(int(a) % rank for a in axes):  # in the given order, not sorted
        full[a] = v.reshape(-1)[j]
    return full


def _resize_roi(op: Emitter, node: onnx.NodeProto) -> np.ndarray:
    """tf_crop_and_resize's roi, a constant."""
    v = op.g.const(node.input[1]) if len(node.input) > 1 and node.input[1] else None
    if v is None:
        msg = f"Resize {node.name!r}: tf_crop_and_resize with a computed or missing roi"
        raise NotImplementedError(msg)
    return np.asarray(v)


def _resize_matrix(op: Emitter, node: onnx.NodeProto, axis: int) -> np.ndarray:
    """The [out, in] interpolation matrix of one axis, read off the node itself at build time.

    Running the forward Resize on an identity basis (length 1 along every other axis) gives
    the exact weights for any mode, coordinate transform, rounding and antialias setting.
    """
    from onnx import TensorProto, numpy_helper

    sx, sy = op.g.shape(node.input[0]), op.g.shape(node.output[0])
    n, rank = sx[axis], len(sx)
    if axis == 0:
        msg = f"Resize {node.name!r}: resizing the batch axis has no gradient rule"
        raise NotImplementedError(msg)
    shp = [n] + [1] * (rank - 1)
    shp[axis] = n
    attrs = attrs_of(node)
    crop = _resize_attr(node, "coordinate_transformation_mode", "half_pixel") == \
        "tf_crop_and_resize"
    axes = attrs.pop("axes", None)
    attrs.pop("keep_aspect_ratio_policy", None)
    # tf_crop_and_resize keeps the node's own roi and axes (any roi samples a length-1 axis at
    # its one entry). onnxruntime copies an axis whose size does not change, roi or not (the
    # spec and the reference evaluator crop it): the rule skips those axes, as the runtime.
    keep = list(range(rank)) if axes is None or not crop else [int(a) % rank for a in axes]
    scales = _resize_full(op, node, 2)
    if scales is not None:
        sc = np.ones(rank, dtype=np.float32)
        sc[axis] = float(scales[axis])
        inits = [numpy_helper.from_array(sc[keep], "scales")]
        ins = ["x", "", "scales"]
    else:
        sizes = np.array(shp, dtype=np.int64)
        sizes[axis] = sy[axis]
        inits = [numpy_helper.from_array(sizes[keep], "sizes")]
        ins = ["x", "", "", "sizes"]
    if crop:
        inits.append(numpy_helper.from_array(_resize_roi(op, node), "roi"))
        ins[1] = "roi"
        attrs["extrapolation_value"] = 0.0  # a constant where the region leaves the image
        if axes is not None:
            attrs["axes"] = keep
    # float32, as this rule has always read the weights (the model's own kernel type)
    out = run_on_basis(node, "Resize", ins, attrs, inits, shp, max(op.g.opset, 18),
                       dtypes=(TensorProto.FLOAT,))
    return out.reshape(n, sy[axis]).T


@vjp_rule("Resize")
def _vjp_resize(op: Emitter, node: onnx.NodeProto, gy: str, needs: Needs) -> Grads:
    """gx = gy contracted, axis by axis, with each resized axis's interpolation matrix."""
    x = node.input[0]
    sx, sy = op.g.shape(x), op.g.shape(node.output[0])
    scales = _resize_full(op, node, 2)
    g, cur = gy, list(sy)
    for a in range(len(sx)):
        if sx[a] == sy[a] and (scales is None or float(scales[a]) == 1.0):
            continue
        g = op.axis_matmul(g, tuple(cur), a, _resize_matrix(op, node, a), x)
        cur[a] = sx[a]
    return first_only(node, g)

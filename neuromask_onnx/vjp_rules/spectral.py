"""VJP rule of the discrete Fourier transform: DFT.

DFT is linear in its signal: along one axis, the n x c input entries (c = 1 for a real signal,
2 for real and imaginary parts) map to the m x c' output entries (c' = 2, or 1 for the
real output of a one-sided inverse) by a fixed real matrix M that
its attributes (inverse, onesided) and `dft_length` (zero padding or truncation) set. The
gradient is M^T applied to gy. Like Resize's rule (`resize`), the rule reads M off the node
itself at build time: onnxruntime runs the same DFT on the n c basis vectors (a leading batch
axis of basis vectors, length 1 along every other axis), in float64 where it has the kernel,
so M is whatever the runtime computes, the one-sided inverse included. The gradient is then
one MatMul per slice: gy with the axis and the complex axis last, flattened to m c', times M^T.
`dft_length` and `axis` are shape data (`NONDIFF_OPERANDS`); they must be constants.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..graph import Emitter, attrs_of, normalize_axes
from .registry import Grads, vjp_rule

DFT_MATRIX_MAX = 1 << 24  # entries of M (n c x m c'): 128 MiB in float64


def _const_input(op: Emitter, node: onnx.NodeProto, i: int) -> np.ndarray | None:
    if len(node.input) <= i or not node.input[i]:
        return None
    v = op.g.const(node.input[i])
    if v is None:
        msg = f"DFT {node.name!r}: input {i + 1} ({node.input[i]!r}) is computed, not a constant"
        raise NotImplementedError(msg)
    return np.asarray(v)


def dft_axis(op: Emitter, node: onnx.NodeProto, rank: int) -> int:
    """The signal axis: an attribute up to DFT-17 (default 1), an input from DFT-20 (-2)."""
    if op.g.opset >= 20:
        v = _const_input(op, node, 2)
        axis = -2 if v is None else int(v.reshape(-1)[0])
    else:
        axis = int(attrs_of(node).get("axis", 1))
    return normalize_axes([axis], rank)[0]


def dft_matrix(op: Emitter, node: onnx.NodeProto, axis: int) -> np.ndarray:
    """M [n c, m c'] with out.flat = in.flat @ M along the axis, run on onnxruntime."""
    import onnxruntime as ort

    sx, sy = op.g.shape(node.input[0]), op.g.shape(node.output[0])
    rank, n, c, m = len(sx), sx[axis], sx[-1], sy[axis] * sy[-1]
    if n * c * m > DFT_MATRIX_MAX:
        msg = (f"DFT {node.name!r}: its matrix of {n * c} x {m} entries is over "
               f"{DFT_MATRIX_MAX}; transform shorter signals")
        raise NotImplementedError(msg)
    shp = [n * c] + [1] * rank  # a leading axis of basis vectors: the signal axis moves by 1
    shp[axis + 1], shp[-1] = n, c
    attrs = {k: v for k, v in attrs_of(node).items() if k != "axis"}
    inits, ins = [], ["x", ""]
    length = _const_input(op, node, 1)
    if length is not None:
        inits.append(numpy_helper.from_array(length.astype(np.int64), "len"))
        ins[1] = "len"
    if op.g.opset >= 20:
        inits.append(numpy_helper.from_array(np.array(axis + 1, np.int64), "axis"))
        ins.append("axis")
    else:
        attrs["axis"] = axis + 1
    last: Exception | None = None
    for dtype in (TensorProto.DOUBLE, TensorProto.FLOAT):  # float64 where the kernel exists
        g = helper.make_graph([helper.make_node("DFT", ins, ["y"], **attrs)], "basis",
                              [helper.make_tensor_value_info("x", dtype, shp)],
                              [helper.make_tensor_value_info("y", dtype, None)], inits)
        model = helper.make_model(g, opset_imports=[helper.make_opsetid("", op.g.opset)])
        model.ir_version = 8 if op.g.opset <= 18 else 9
        basis = np.eye(n * c, dtype=helper.tensor_dtype_to_np_dtype(dtype)).reshape(shp)
        try:
            sess = ort.InferenceSession(model.SerializeToString(),
                                        providers=["CPUExecutionProvider"])
            out = np.asarray(sess.run(None, {"x": basis})[0], dtype=np.float64)
        except Exception as exc:  # noqa: BLE001  (no float64 kernel: float32 next)
            last = exc
            continue
        return out.reshape(n * c, m)
    msg = f"DFT {node.name!r}: onnxruntime cannot run it on a basis ({last})"
    raise NotImplementedError(msg)


@vjp_rule("DFT")
def _vjp_dft(op: Emitter, node: onnx.NodeProto, gy: str) -> Grads:
    """gx = gy (axis and complex axis last, flattened) @ M^T, moved back into x's layout."""
    x = node.input[0]
    sx, sy = op.g.shape(x), op.g.shape(node.output[0])
    rank = len(sx)
    axis = dft_axis(op, node, rank)
    mat = dft_matrix(op, node, axis)
    perm = [a for a in range(rank - 1) if a != axis] + [axis, rank - 1]
    inv = [int(i) for i in np.argsort(perm)]
    lead = [sy[a] for a in perm[:-2]]
    g = op.Transpose(gy, perm=perm) if perm != list(range(rank)) else gy
    g = op.MatMul(op.reshape(g, [*lead, sy[axis] * sy[-1]]), op.const(mat.T, like=x))
    g = op.reshape(g, [*lead, sx[axis], sx[-1]])
    g = op.Transpose(g, perm=inv) if perm != list(range(rank)) else g
    return [g, *[None] * (len(node.input) - 1)]

"""VJP rules of the discrete Fourier transforms: DFT and STFT.

DFT is linear in its signal: along one axis, the n x c input entries (c = 1 for a real signal,
2 for real and imaginary parts) map to the m x c' output entries (c' = 2, or 1 for the
real output of a one-sided inverse) by a fixed real matrix M that
its attributes (inverse, onesided) and `dft_length` (zero padding or truncation) set. The
gradient is M^T applied to gy. Like Resize's rule (`resize`), the rule reads M off the node
itself at build time (`basis`): onnxruntime runs the same DFT on the n c basis vectors (a leading batch
axis of basis vectors, length 1 along every other axis), in float64 where it has the kernel,
so M is whatever the runtime computes, the one-sided inverse included. The gradient is then
one MatMul per slice: gy with the axis and the complex axis last, flattened to m c', times M^T.
`dft_length` and `axis` are shape data (`NONDIFF_OPERANDS`); they must be constants.

STFT is the same per frame: frame f of batch b is signal[b, f step : f step + L] times the
window, transformed. The per-frame matrix (window included) is read off STFT itself, run on
an L-long basis of one frame; the gradient applies its transpose to every frame of gy and
adds the frames back where they overlap (a ScatterElements with reduction add). The window,
frame_step and frame_length must be constants (a window computed from the data is refused).
Without an explicit `onesided`, onnx's shape inference (1.23) counts the two-sided bins where
the runtimes compute one-sided ones: the static shapes are wrong, so the rule refuses.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from ..graph import Emitter, attrs_of, normalize_axes
from .basis import run_on_basis
from .registry import Grads, Needs, first_only, vjp_rule

DFT_MATRIX_MAX = 1 << 24  # entries of M (n c x m c'; STFT: one frame's): 128 MiB in float64


def _const_input(op: Emitter, node: onnx.NodeProto, i: int) -> np.ndarray | None:
    if len(node.input) <= i or not node.input[i]:
        return None
    v = op.g.const(node.input[i])
    if v is None:
        msg = (f"{node.op_type} {node.name!r}: input {i + 1} ({node.input[i]!r}) is computed, "
               "not a constant")
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
    return run_on_basis(node, "DFT", ins, attrs, inits, shp, op.g.opset).reshape(n * c, -1)


@vjp_rule("DFT")
def _vjp_dft(op: Emitter, node: onnx.NodeProto, gy: str, needs: Needs) -> Grads:
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
    return first_only(node, g)


@vjp_rule("STFT")
def _vjp_stft(op: Emitter, node: onnx.NodeProto, gy: str, needs: Needs) -> Grads:
    """gx = overlap-add over the frames of (gy's frame @ M^T), M one windowed frame's DFT."""
    x = node.input[0]
    sx, sy = op.g.shape(x), op.g.shape(node.output[0])
    b, frames = sx[0], sy[1]
    c = sx[2] if len(sx) == 3 else 1  # a real signal may be [B, L] (onnxruntime: no [B, L, 1])
    if len(node.input) > 2 and node.input[2] and node.input[2] in needs:
        msg = f"STFT {node.name!r}: the window is computed from the data (only the signal)"
        raise NotImplementedError(msg)
    step_v, window, length_v = (_const_input(op, node, i) for i in (1, 2, 3))
    assert step_v is not None  # frame_step is a required input
    step = int(step_v.reshape(-1)[0])
    length = int(length_v.reshape(-1)[0]) if length_v is not None else (
        window.size if window is not None else 0)
    if length <= 0:
        msg = f"STFT {node.name!r}: neither a window nor a frame_length gives the frame's length"
        raise NotImplementedError(msg)
    out = sy[2] * sy[3]
    if length * c * out > DFT_MATRIX_MAX:
        msg = (f"STFT {node.name!r}: its frame matrix of {length * c} x {out} entries is over "
               f"{DFT_MATRIX_MAX}")
        raise NotImplementedError(msg)
    inits = [numpy_helper.from_array(np.array(step, np.int64), "step")]
    ins = ["x", "step", "", ""]
    if window is not None:
        inits.append(numpy_helper.from_array(window, "window"))
        ins[2] = "window"
    if length_v is not None:
        inits.append(numpy_helper.from_array(np.array(length, np.int64), "length"))
        ins[3] = "length"
    shape = [length * c, length, *sx[2:]]  # one frame per basis vector
    mat = run_on_basis(node, "STFT", ins, attrs_of(node), inits, shape, op.g.opset).reshape(
        length * c, -1)
    if mat.shape[1] != out:  # onnx's shape inference takes onesided's default as 0
        msg = (f"STFT {node.name!r}: onnx's shape inference gives {sy[2]} frequency bins, "
               f"onnxruntime {mat.shape[1] // sy[3]}; set the onesided attribute explicitly")
        raise NotImplementedError(msg)
    g = op.MatMul(op.reshape(gy, [b, frames, out]), op.const(mat.T, like=x))  # [b, f, L c]
    cols = [b, frames * length, *sx[2:]]
    g = op.reshape(g, cols)
    where = (np.arange(frames)[:, None] * step + np.arange(length)[None, :]).reshape(-1)
    where = where.reshape(1, -1, *[1] * (len(sx) - 2))
    index = np.broadcast_to(where, cols).astype(np.int64)
    gx = op.ScatterElements(op.zeros(sx, x), op.const(index), g, axis=1, reduction="add")
    return first_only(node, gx)

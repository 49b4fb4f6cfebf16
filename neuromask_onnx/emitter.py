"""`Emitter`: the small builder the VJP rules and the loss heads write their nodes through.

`op.Mul(a, b)` appends a node and returns its output name; every name it makes starts with
`nm_` (`graphtypes.PREFIX`) and is unique in the prepared `Graph`, whose element types it
keeps up to date. Constants are deduplicated by value. The helpers (`step`, `complement`,
`sum_to`) choose ops that onnxruntime keeps in its blocked NCHWc layout.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .graphtypes import PREFIX, Graph, Shape


class Emitter:
    """Appends nodes to `self.nodes`; `op.Relu(x)` returns the new output's name.

    Keyword arguments are ONNX attributes, except the reserved `_outputs` (number of outputs)
    and `_dtype` (element type of the output when it differs from the first input's).
    """

    def __init__(self, graph: Graph) -> None:
        self.g = graph
        self.nodes: list[onnx.NodeProto] = []
        self.new_consts: dict[str, np.ndarray] = {}
        self._const_cache: dict[tuple[str, Shape, bytes], str] = {}
        # Expand outputs -> the smaller value they broadcast (see differentiate's total()).
        self.broadcast_of: dict[str, str] = {}
        self._next_suffix: dict[str, int] = {}

    def fresh(self, hint: str) -> str:
        base = hint if hint.startswith(PREFIX) else PREFIX + hint
        base = "".join(c if c.isalnum() or c in "_./:-" else "_" for c in base)
        # Resume each hint's count where it stopped: scanning from 0 made a rule that emits
        # thousands of nodes (an unrolled LSTM) quadratic in their number.
        k = self._next_suffix.get(base, 0)
        name = f"{base}_{k}" if k else base
        while name in self.g.used_names:
            k += 1
            name = f"{base}_{k}"
        self._next_suffix[base] = k + 1
        self.g.used_names.add(name)
        return name

    def emit(self, op_type: str, inputs: Sequence[str], outputs: int = 1, dtype: int | None = None,
             names: Sequence[str] | None = None, **attrs: Any) -> list[str]:
        outs = list(names) if names else [self.fresh(op_type.lower()) for _ in range(outputs)]
        node = helper.make_node(op_type, list(inputs), outs, name=self.fresh("n_" + op_type),
                                **attrs)
        self.nodes.append(node)
        first = next((i for i in inputs if i), None)
        out_type = dtype if dtype is not None else self.g.dtypes.get(first or "", TensorProto.FLOAT)
        for o in outs:
            self.g.dtypes[o] = out_type
        return outs

    def __getattr__(self, op_type: str) -> Callable[..., str]:
        if not op_type[:1].isupper():
            raise AttributeError(op_type)

        def build(*inputs: str, _dtype: int | None = None, **attrs: Any) -> str:
            return self.emit(op_type, inputs, 1, _dtype, **attrs)[0]

        return build

    # constants -----------------------------------------------------------------------
    def const(self, value: Any, like: str | None = None, dtype: Any = None) -> str:
        """A constant initializer, deduplicated; dtype from `like` (a value name) if given."""
        if like is not None:
            dt = helper.tensor_dtype_to_np_dtype(self.g.dtypes.get(like, TensorProto.FLOAT))
        elif dtype is not None:
            dt = np.dtype(dtype)
        else:
            dt = np.asarray(value).dtype
        arr = np.ascontiguousarray(np.asarray(value, dtype=dt))
        key = (arr.dtype.str, tuple(arr.shape), arr.tobytes())
        if key in self._const_cache:
            return self._const_cache[key]
        name = self.fresh("c")
        self.new_consts[name] = arr
        self.g.consts[name] = arr
        self.g.shapes[name] = tuple(arr.shape)
        self.g.dtypes[name] = helper.np_dtype_to_tensor_dtype(arr.dtype)
        self._const_cache[key] = name
        return name

    def ints(self, values: Iterable[int]) -> str:
        return self.const(np.array(list(values), dtype=np.int64))

    def zeros(self, shape: Sequence[int], like: str) -> str:
        dt = self.g.dtypes.get(like, TensorProto.FLOAT)
        value = numpy_helper.from_array(np.zeros(1, dtype=helper.tensor_dtype_to_np_dtype(dt)))
        return self.emit("ConstantOfShape", [self.ints(shape)], dtype=dt, value=value)[0]

    def cast_like(self, x: str, like: str) -> str:
        return self.Cast(x, to=self.g.dtypes.get(like, TensorProto.FLOAT),
                         _dtype=self.g.dtypes.get(like, TensorProto.FLOAT))

    def mask_of(self, cond: str, like: str) -> str:
        """A boolean tensor as 0/1 of `like`'s type (Mul by it beats Where on ORT CPU)."""
        return self.cast_like(cond, like)

    def step(self, x: str, bound: float, above: bool) -> str:
        """[x > bound] (or [x < bound]) as 0/1 of x's type.

        For float32 this is one HardSigmoid, clamp(A (x - bound), 0, 1) with a power-of-two A
        so large that every difference of at least one float32 step saturates: A x is exact
        and the sum's rounding never flips its sign. Unlike Greater + Cast, onnxruntime runs
        HardSigmoid (and the Mul that applies the mask) in its blocked NCHWc layout, so the
        activations and gradients around a convolution need no reorder passes. The one
        inexact case: bound 0 and a subnormal 0 < x < 2^-127 gives a fraction, not 1.
        """
        b = float(np.float32(bound))
        if (self.g.dtypes.get(x) != TensorProto.FLOAT or not np.isfinite(b)
                or 0 < abs(b) < 2.0**-100):
            cmp = self.Greater if above else self.Less
            return self.mask_of(cmp(x, self.const(bound, like=x)), x)
        # A |b| stays below 2^125, so A and A * b are exact float32 numbers.
        a = 2.0 ** (127 if b == 0 else min(127, 124 - int(np.floor(np.log2(abs(b))))))
        if not above:
            return self.HardSigmoid(x, alpha=-a, beta=a * b)
        return self.HardSigmoid(x, alpha=a, beta=-a * b)

    def complement(self, p: str) -> str:
        """1 - p for p in [0, 1] (a sigmoid's output); float32 as HardSigmoid(p; -1, 1).

        Same rounding as Sub (-1 * p is exact) and the clamp is a no-op on [0, 1], but
        onnxruntime keeps HardSigmoid in the NCHWc layout and Sub not.
        """
        if self.g.dtypes.get(p) != TensorProto.FLOAT:
            return self.Sub(self.const(1.0, like=p), p)
        return self.HardSigmoid(p, alpha=-1.0, beta=1.0)

    # shape helpers ---------------------------------------------------------------------
    def reshape(self, x: str, shape: Sequence[int]) -> str:
        if 0 in shape:  # an empty tensor: 0 is a size here, not "copy the input's extent"
            return self.Reshape(x, self.ints(shape), allowzero=1)
        return self.Reshape(x, self.ints(shape))

    def sum_to(self, g: str, from_shape: Shape, to_shape: Shape) -> str:
        """Sum `g` (of `from_shape`) over the axes where `to_shape` was broadcast."""
        from_shape, to_shape = tuple(from_shape), tuple(to_shape)
        if from_shape == to_shape:
            return g
        if self._per_channel(g, from_shape, to_shape):
            # Sum over H W as GlobalAveragePool times H W (a depthwise 1x1 Conv): both stay
            # in onnxruntime's NCHWc layout, where ReduceSum costs a reorder of the whole
            # tensor. The mean-then-scale rounds differently from a sum, well within float32.
            n = from_shape[2] * from_shape[3]
            scale = self.const(np.full((from_shape[1], 1, 1, 1), float(n)), like=g)
            return self.Conv(self.GlobalAveragePool(g), scale, group=from_shape[1])
        lead = len(from_shape) - len(to_shape)
        padded = (1,) * lead + to_shape
        axes = [i for i, (f, t) in enumerate(zip(from_shape, padded, strict=True))
                if (t == 1 and f != 1) or i < lead]
        out = self.ReduceSum(g, self.ints(axes), keepdims=1) if axes else g
        return self.reshape(out, to_shape) if lead else out

    def _per_channel(self, g: str, full: Shape, small: Shape) -> bool:
        """float32 [N, C, H, W] summed to [N, C, 1, 1] (a squeeze-excite scale's gradient)."""
        return (self.g.dtypes.get(g) == TensorProto.FLOAT and len(full) == 4
                and len(small) == 4 and tuple(small) == (full[0], full[1], 1, 1)
                and full[2] * full[3] > 1)

    def expand_to(self, g: str, shape: Shape) -> str:
        out = self.Expand(g, self.ints(shape))
        self.broadcast_of[out] = g
        return out

    def axis_matmul(self, g: str, shape: Shape, axis: int, mat: np.ndarray, like: str) -> str:
        """Contract axis `axis` of `g` (extent mat.shape[0]) with `mat` [out, in]."""
        rank = len(shape)
        m = self.const(mat, like=like)
        if axis == rank - 1:
            return self.MatMul(g, m)
        if axis == rank - 2:
            return self.MatMul(self.const(mat.T, like=like), g)
        perm = [i for i in range(rank) if i != axis] + [axis]
        inv = list(np.argsort(perm))
        return self.Transpose(self.MatMul(self.Transpose(g, perm=perm), m), perm=inv)


"""A linear op's matrix, read off onnxruntime by running the op on an identity basis.

Resize, DFT and STFT are linear in their first input, with weights that depend on many
attributes (modes, coordinate transforms, rounding, antialiasing, one-sided spectra). Their
rules do not re-derive those weights: they run the same op, with the node's own attributes and
constant inputs, on the k basis vectors of its input (a leading axis of k, the rest of the
shape holding k entries) and read the matrix off the outputs, so it is whatever the runtime
computes. The runs happen once, at build time.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def run_on_basis(node: onnx.NodeProto, op_type: str, ins: list[str], attrs: dict[str, Any],
                 inits: list[onnx.TensorProto], shape: list[int], opset: int,
                 dtypes: Sequence[int] = (TensorProto.DOUBLE, TensorProto.FLOAT),
                 ) -> np.ndarray:
    """`op_type`(ins, attrs) on the identity basis of shape [k, *shape[1:]] (k =
    prod(shape[1:]), input "x"), on onnxruntime, in the first of `dtypes` it has a kernel for;
    the output as float64, in its own shape."""
    from ..runtime import session

    k = int(np.prod(shape[1:]))
    last: Exception | None = None
    for dtype in dtypes:
        np_dtype = helper.tensor_dtype_to_np_dtype(dtype)
        typed = [numpy_helper.from_array(numpy_helper.to_array(t).astype(np_dtype), t.name)
                 if t.data_type in (TensorProto.FLOAT, TensorProto.DOUBLE) else t for t in inits]
        g = helper.make_graph([helper.make_node(op_type, ins, ["y"], **attrs)], "basis",
                              [helper.make_tensor_value_info("x", dtype, shape)],
                              [helper.make_tensor_value_info("y", dtype, None)], typed)
        model = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
        model.ir_version = 8 if opset <= 18 else 9
        basis = np.eye(k, dtype=np_dtype).reshape(shape)
        try:
            out = session(model).run(None, {"x": basis})[0]
        except Exception as exc:  # noqa: BLE001  (no kernel at this type: the next one)
            last = exc
            continue
        return np.asarray(out, dtype=np.float64)
    msg = f"{node.op_type} {node.name!r}: onnxruntime cannot run it on a basis ({last})"
    raise NotImplementedError(msg)

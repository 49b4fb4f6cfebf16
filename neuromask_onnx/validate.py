"""Refuse a broken input model on load, in one line that names what is broken.

`graph.load_model` calls `validate` on every model it hands out. Two checks: every
initializer decodes to an array of its declared shape (a truncated or bit-flipped file often
still parses as protobuf), and `onnx.checker` with full shape and type inference. A model the
checker rejects but onnxruntime loads is accepted: exporters write value_info that strict
inference disputes, and onnxruntime is what runs the model. The message names the node
(`Name: conv OpType: Conv` in the checker's context) or the tensor.

Models above protobuf's 2 GB limit cannot be checked in memory and are passed through.
"""

from __future__ import annotations

import re
from typing import Any

import onnx
from onnx import numpy_helper

from .errors import InputError

_CHECKED: dict[tuple[int, int], bool] = {}  # (id, size) of protos already validated
_NODE = re.compile(r"Name:\s*(\S*)\s+OpType:\s*(\S+)")


def _graphs(g: onnx.GraphProto) -> list[onnx.GraphProto]:
    out = [g]
    for n in g.node:
        for a in n.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                out += _graphs(a.g)
            elif a.type == onnx.AttributeProto.GRAPHS:
                for sub in a.graphs:
                    out += _graphs(sub)
    return out


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    line = next((s.strip() for s in text.splitlines() if s.strip()), text)
    return line[:300]


def _describe(exc: BaseException) -> str:
    text = str(exc)
    found = _NODE.search(text)
    where = (f"node {found.group(1)!r} ({found.group(2)}): " if found and found.group(1)
             else f"a {found.group(2)} node: " if found else "")
    line = _first_line(exc)
    line = re.sub(r"^\[[A-Za-z]+ error\]\s*", "", line)
    line = line.split("==> Context:")[0].strip()
    return where + line


def _feeds(model: onnx.ModelProto,
           shapes: dict[str, tuple[int, ...]] | None = None) -> dict[str, Any] | None:
    """Zeros for every real input (batch 1 where dynamic); None if a size is unknown."""
    import numpy as np
    from onnx import helper

    inits = {t.name for t in model.graph.initializer}
    feeds = {}
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        t = vi.type.tensor_type
        if shapes is not None and vi.name in shapes:
            shape = list(shapes[vi.name])
        else:
            dims = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
            if any(d is None for d in dims[1:]) or not t.HasField("shape"):
                return None
            shape = [d if d is not None else 1 for d in dims]
        feeds[vi.name] = np.zeros(shape, helper.tensor_dtype_to_np_dtype(t.elem_type))
    return feeds


def _runtime_reason(exc: BaseException) -> str:
    """onnxruntime's first line without its status prefix, source location and C++ signature
    (`[ONNXRuntimeError] : 1 : FAIL : ... element_wise_ops.cc:2444 void ...() const [with T =
    double] fmod attribute must be true ...` -> `... fmod attribute must be true ...`)."""
    text = str(exc).strip()
    line = next((s.strip() for s in text.splitlines() if s.strip()), type(exc).__name__)
    line = re.sub(r"^\[ONNXRuntimeError\]\s*:\s*\d+\s*:\s*[A-Z_]+\s*:\s*", "", line)
    where = re.search(r"\S+\.(?:cc|cpp|h):\d+\s+", line)
    if where:
        rest = line[where.end():]
        if "[with " in rest and "] " in rest:
            rest = rest[rest.rindex("] ") + 2:]
        elif ") const " in rest:
            rest = rest.split(") const ", 1)[1]
        line = line[:where.start()] + rest
    return line.strip()[:300]


def runtime_error(model: onnx.ModelProto,
                  shapes: dict[str, tuple[int, ...]] | None = None) -> str | None:
    """Why onnxruntime cannot load the model, or run it on zeros of the given (or declared)
    input shapes; None when it can (or when the sizes are unknown and it loads)."""
    from .runtime import session

    try:
        sess = session(model, optimize=False, log_level=4)
        feeds = _feeds(model, shapes)
        if feeds is not None:
            sess.run(None, feeds)
    except Exception as exc:  # noqa: BLE001  (any refusal means: not runnable as it stands)
        text = str(exc)
        if (type(exc).__name__ == "NotImplemented" or "NOT_IMPLEMENTED" in text
                or "not support" in text.lower()):
            return None  # a kernel onnxruntime lacks (float64 LSTM) says nothing of the model
        return _runtime_reason(exc)
    return None


def validate(model: onnx.ModelProto, source: str) -> None:
    """Raise InputError naming the broken tensor or node; return quietly for a sound model."""
    key = (id(model), model.ByteSize())
    if _CHECKED.get(key):
        return
    fix = "re-export the model, or check it with onnx.checker.check_model"
    for g in _graphs(model.graph):
        for t in g.initializer:
            if t.data_location == onnx.TensorProto.EXTERNAL:
                continue  # load_model read external data already; a missing file fails there
            try:
                numpy_helper.to_array(t)
            except Exception as exc:  # noqa: BLE001  (numpy/protobuf raise many types here)
                msg = (f"{source}: initializer {t.name!r} cannot be decoded "
                       f"({_first_line(exc)}); the file is damaged: {fix}")
                raise InputError(msg) from None
    if model.ByteSize() < (2 << 30) - (64 << 20):
        from .precision import is_half, upcast_half

        # A half-precision model is explained through its exact float32 copy (`precision`):
        # judge that copy (bfloat16 Conv, say, has no schema before opset 22 and no CPU kernel).
        checked = upcast_half(model) if is_half(model) else model
        try:
            onnx.checker.check_model(checked, full_check=True)
        except Exception as exc:  # noqa: BLE001  (checker, inference and protobuf errors)
            refusal = runtime_error(checked)
            if refusal is not None:
                # The checker's complaint when it names a node; else onnxruntime's, which
                # decided: the checker's may be one it makes of any model onnxruntime runs
                # (a graph output declared without a shape).
                why = (_describe(exc) if _NODE.search(str(exc))
                       else f"onnxruntime refuses it ({refusal})")
                msg = f"{source} is not a valid ONNX model: {why}; {fix}"
                raise InputError(msg) from None
    if len(_CHECKED) > 16:
        _CHECKED.clear()
    _CHECKED[key] = True

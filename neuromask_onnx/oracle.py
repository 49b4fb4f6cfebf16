"""What the installed onnx / onnxruntime can be trusted with as a gradient check's oracle.

The rule table (tests/test_vjp_rules.py) checks each rule in float64 on onnx's reference
evaluator, and the fused-op rules in float64 on onnxruntime. Older releases of both get some
forms wrong or lack them; running the table at each release from the floors up (`.ci/lowest`)
found the faults named here. Each is decided by an explicit check, a release number or a probe,
never by catching whatever a check raises:

- `reference_fault(node)`: the installed onnx's reference evaluator is known wrong for this
  node (the release that fixed it is recorded); the case runs in float32 on onnxruntime.
- `ort_float64_missing(model)`: onnxruntime has no float64 kernel for an op of the model (a
  probe: the session refuses it with NOT_IMPLEMENTED); the case runs in float32.
- `unrunnable(model)`: no installed runtime can run the model at all (its opset is past what
  the installed onnx or onnxruntime knows); the case is skipped with that reason, as the
  package itself cannot run such a model there. (onnxruntime's process aborts on some forms
  before 1.30, a C++ bug, are not skipped: onnxruntime's floor is 1.30, see `.ci/lowest`.)

Releases are (major, minor) tuples; a fault applies below `fixed_in`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import onnx
from onnx import TensorProto, helper

Release = tuple[int, int]


def release(version: str) -> Release:
    """"1.23.2" -> (1, 23)."""
    major, minor = version.split(".")[:2]
    return int(major), int(minor)


def _attr(node: onnx.NodeProto, name: str, default: object = None) -> object:
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _always(_node: onnx.NodeProto) -> bool:
    return True


@dataclass(frozen=True)
class Fault:
    """`op_type` nodes for which `applies` holds are handled wrongly below release `fixed_in`;
    `ort_runs`: onnxruntime can run them instead (else nothing installed can be the oracle)."""

    op_type: str
    fixed_in: Release
    reason: str
    applies: Callable[[onnx.NodeProto], bool] = _always
    ort_runs: bool = True


_RECURRENT = ("LSTM", "GRU", "RNN")


def _not_forward(node: onnx.NodeProto) -> bool:
    return _attr(node, "direction", b"forward") != b"forward"


def _layout1(node: onnx.NodeProto) -> bool:
    return _attr(node, "layout", 0) == 1


def _reads_outer_scope(node: onnx.NodeProto) -> bool:
    """A subgraph of `node` reads a value it does not define (one of the enclosing graph's)."""
    for a in node.attribute:
        if a.type == onnx.AttributeProto.GRAPH:
            g = a.g
            known = {i.name for i in g.input} | {i.name for i in g.initializer}
            known |= {o for n in g.node for o in n.output}
            if any(i and i not in known for n in g.node for i in n.input):
                return True
    return False


# onnx's reference evaluator, found wrong at the releases below `fixed_in` (onnx 1.17 to 1.22).
REFERENCE_FAULTS: list[Fault] = [
    Fault("Conv", (1, 23), "reference Conv gets auto_pad SAME_UPPER / SAME_LOWER's shape wrong",
          lambda n: _attr(n, "auto_pad", b"NOTSET") in (b"SAME_UPPER", b"SAME_LOWER")),
    Fault("LSTM", (1, 23), "reference LSTM has no Y_c output",
          lambda n: len(n.output) > 2 and n.output[2] != ""),
    *(Fault(op, (1, 23), f"reference {op} runs the forward direction only", _not_forward)
      for op in _RECURRENT),
    *(Fault(op, (1, 23), f"reference {op} ignores layout 1 (and onnxruntime has no layout-1 "
            "kernel)", _layout1, ort_runs=False) for op in _RECURRENT),
    Fault("Scan", (1, 22), "reference Scan cannot read the enclosing graph's values in its body",
          _reads_outer_scope),
    Fault("ReverseSequence", (1, 23), "reference ReverseSequence fails with batch_axis 0",
          lambda n: _attr(n, "batch_axis", 1) == 0),
    *(Fault(op, (1, 20), f"reference {op} ignores noop_with_empty_axes",
            lambda n: _attr(n, "noop_with_empty_axes", 0) == 1 and len(n.input) < 2)
      for op in ("ReduceL1", "ReduceLogSum")),
    # found with the scatter reductions and spectral rules (onnx 1.20, 1.21, 1.22 run here)
    Fault("ScatterElements", (1, 22), "reference ScatterElements gets reduction mul wrong",
          lambda n: _attr(n, "reduction", b"none") == b"mul"),
    Fault("ScatterND", (1, 23), "reference ScatterND fails with reduction max / min",
          lambda n: _attr(n, "reduction", b"none") in (b"max", b"min")),
    Fault("STFT", (1, 23), "reference STFT gets a complex signal wrong (and onnxruntime's "
          "float32 differences of it come out near 1e17 and beyond)",
          lambda n: _attr(n, "onesided", 1) == 0, ort_runs=False),
    # not the evaluator: onnx's own shape inference rejects the model, so nothing can run it
    Fault("DFT", (1, 21), "onnx's shape inference rejects DFT with onesided and inverse (an "
          "inverse real FFT)", lambda n: _attr(n, "onesided", 0) == 1
          and _attr(n, "inverse", 0) == 1, ort_runs=False),
]

def reference_fault(node: onnx.NodeProto, onnx_release: Release | None = None) -> Fault | None:
    """The fault that keeps the reference evaluator of onnx `onnx_release` (default: the
    installed one) from being this node's oracle, or None where it can be."""
    at = onnx_release or release(onnx.__version__)
    faults = [f for f in REFERENCE_FAULTS
              if node.op_type == f.op_type and at < f.fixed_in and f.applies(node)]
    # one that onnxruntime cannot run either decides: then nothing installed is an oracle
    return min(faults, key=lambda f: f.ort_runs, default=None)


def describe(fault: Fault) -> str:
    return f"{fault.reason} before onnx {fault.fixed_in[0]}.{fault.fixed_in[1]}"


def _default_opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


@functools.cache
def ort_max_opset() -> int:
    """The newest default-domain opset the installed onnxruntime loads (a probe: an Identity
    model at each opset the installed onnx knows, newest first)."""
    from onnxruntime.capi.onnxruntime_pybind11_state import Fail

    from .runtime import session

    for opset in range(onnx.defs.onnx_opset_version(), 17, -1):
        vi = helper.make_tensor_value_info
        g = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "probe",
                              [vi("x", TensorProto.FLOAT, [1])], [vi("y", TensorProto.FLOAT, [1])])
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
        m.ir_version = 10 if opset > 18 else 8
        try:
            session(m)
        except Fail as exc:
            if "opset" not in str(exc):
                raise
            continue
        return opset
    return 17


def unrunnable(model: onnx.ModelProto) -> str:
    """Why neither installed runtime can run `model` (or "" where they can)."""
    import onnxruntime as ort

    opset = _default_opset(model)
    known = onnx.defs.onnx_opset_version()
    if opset > known:
        return f"opset {opset} is past onnx {onnx.__version__}'s {known}"
    if opset > ort_max_opset():
        return f"opset {opset} is past onnxruntime {ort.__version__}'s {ort_max_opset()}"
    return ""


def ort_float64_missing(model: onnx.ModelProto) -> str:
    """The first line of onnxruntime's refusal where it has no kernel for an op of `model` at
    the model's types (a probe: a session over the model), or "" where it has them all."""
    from onnxruntime.capi.onnxruntime_pybind11_state import NotImplemented as OrtNotImplemented

    from .runtime import session

    try:
        session(model)
    except OrtNotImplemented as exc:
        return str(exc).splitlines()[0][:200]
    return ""

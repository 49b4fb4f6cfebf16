"""Seeded mutations of the fixture models through `ops`, `instrument` and `explain`.

Each mutation breaks a fixture one way (byte flips, a truncation, an op type, an attribute,
dims, an element type). Every CLI run must end in success or in one `error: ...` line with
exit code 1: no traceback, no partial output file, and never "every op ... is supported"
for a model onnx.checker rejects.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from typer.testing import CliRunner

from neuromask_onnx.cli import app

MODELS = Path(__file__).resolve().parents[1] / "models"
FIXTURES = sorted(p for p in MODELS.glob("*.onnx"))
OP_TYPES = ["Relu", "Conv", "MatMul", "Add", "Softmax", "Reshape", "Transpose", "Gemm", "Sigmoid",
            "Concat", "Split", "LSTM", "If", "Loop", "NoSuchOp", "MaxPool", "Identity", "Cast"]
MUTATIONS = 300
SEED = 20261201
Mutate = Callable[[bytes, np.random.Generator], bytes]


def _parse(data: bytes) -> onnx.ModelProto:
    m = onnx.ModelProto()
    m.ParseFromString(data)
    return m


def flip_bytes(data: bytes, rng: np.random.Generator) -> bytes:
    buf = bytearray(data)
    for i in rng.integers(0, len(buf), int(rng.integers(1, 6))):
        buf[i] ^= 1 << int(rng.integers(0, 8))
    return bytes(buf)


def truncate(data: bytes, rng: np.random.Generator) -> bytes:
    return data[: int(rng.integers(0, len(data)))]


def op_type(data: bytes, rng: np.random.Generator) -> bytes:
    m = _parse(data)
    node = m.graph.node[int(rng.integers(0, len(m.graph.node)))]
    node.op_type = OP_TYPES[int(rng.integers(0, len(OP_TYPES)))]
    return m.SerializeToString()


def attribute(data: bytes, rng: np.random.Generator) -> bytes:
    m = _parse(data)
    nodes = [n for n in m.graph.node if n.attribute]
    if not nodes:
        return op_type(data, rng)
    a = nodes[int(rng.integers(0, len(nodes)))].attribute
    attr = a[int(rng.integers(0, len(a)))]
    if attr.type == onnx.AttributeProto.INT:
        attr.i = int(rng.integers(-3, 8))
    elif attr.type == onnx.AttributeProto.INTS:
        attr.ints[:] = [int(v) for v in rng.integers(-2, 6, int(rng.integers(0, 6)))]
    elif attr.type == onnx.AttributeProto.FLOAT:
        attr.f = float(rng.choice([0.0, -1.0, 1e30, float("nan")]))
    elif attr.type == onnx.AttributeProto.STRING:
        attr.s = b"bogus"
    else:
        attr.name = "bogus_attribute"
    return m.SerializeToString()


def dims(data: bytes, rng: np.random.Generator) -> bytes:
    m = _parse(data)
    pick = int(rng.integers(0, 3))
    if pick == 0 and m.graph.initializer:
        t = m.graph.initializer[int(rng.integers(0, len(m.graph.initializer)))]
        if t.dims:
            t.dims[int(rng.integers(0, len(t.dims)))] = int(rng.integers(0, 9))
    else:
        vis = [*m.graph.input, *m.graph.output] if pick == 1 else list(m.graph.input)
        vi = vis[int(rng.integers(0, len(vis)))]
        shape = vi.type.tensor_type.shape
        if shape.dim:
            d = shape.dim[int(rng.integers(0, len(shape.dim)))]
            d.dim_value = int(rng.integers(0, 9))
        else:
            shape.dim.add().dim_value = 2
    return m.SerializeToString()


def dtype(data: bytes, rng: np.random.Generator) -> bytes:
    m = _parse(data)
    types = [onnx.TensorProto.INT64, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16,
             onnx.TensorProto.INT8, onnx.TensorProto.BOOL, onnx.TensorProto.STRING]
    new = types[int(rng.integers(0, len(types)))]
    if rng.integers(0, 2) and m.graph.initializer:
        m.graph.initializer[int(rng.integers(0, len(m.graph.initializer)))].data_type = new
    else:
        m.graph.input[0].type.tensor_type.elem_type = new
    return m.SerializeToString()


KINDS: list[Mutate] = [flip_bytes, truncate, op_type, attribute, dims, dtype]


def _check(result: object, what: str, out: Path | None = None) -> None:
    exc = getattr(result, "exception", None)
    code = getattr(result, "exit_code", None)
    text = getattr(result, "output", "")
    assert exc is None or isinstance(exc, SystemExit), f"{what}: {exc!r}"[:400]
    assert code in (0, 1), f"{what}: exit {code}: {text}"
    if code == 1:
        lines = [s for s in text.splitlines() if s.strip()]
        assert len(lines) >= 1, what
        assert lines[-1].startswith("error: "), f"{what}: {text}"[:400]
        assert "Traceback" not in text, f"{what}: {text}"
        if out is not None:
            assert not out.exists(), f"{what}: partial output {out}"


@pytest.mark.slow
def test_mutated_fixtures_end_in_success_or_one_line(tmp_path: Path) -> None:
    runner = CliRunner()
    originals = {p: p.read_bytes() for p in FIXTURES}
    counts = {"ok": 0, "error": 0}
    for k in range(MUTATIONS):
        src = FIXTURES[k % len(FIXTURES)]
        kind = KINDS[(k // len(FIXTURES)) % len(KINDS)]
        rng = np.random.default_rng([SEED, k])  # each mutation reproducible on its own
        data = kind(originals[src], rng)
        path = tmp_path / f"m{k}.onnx"
        path.write_bytes(data)
        what = f"mutation {k} ({kind.__name__} of {src.name})"
        res = runner.invoke(app, ["ops", str(path)])
        _check(res, f"{what}: ops")
        broken = res.exit_code == 1
        out = tmp_path / f"i{k}.onnx"
        res = runner.invoke(app, ["instrument", str(path), "-o", str(out), "--batch-size", "2"])
        _check(res, f"{what}: instrument", out)
        counts["ok" if res.exit_code == 0 else "error"] += 1
        if broken:
            assert res.exit_code == 1, f"{what}: ops refused the model but instrument took it"
        if k % 5 == 0 and res.exit_code == 0:
            x = tmp_path / f"x{k}.npy"
            shape = [d.dim_value for d in onnx.load(str(out)).graph.input[0].type.tensor_type
                     .shape.dim][1:]
            np.save(x, rng.standard_normal(shape).astype(np.float32))
            res = runner.invoke(app, ["explain", str(path), str(x), "-o", str(tmp_path / f"e{k}"),
                                      "--steps", "2", "-q"])
            _check(res, f"{what}: explain")
    print(f"instrument: {counts['ok']} succeeded, {counts['error']} refused in one line")
    # The mutations must exercise both outcomes, or the test proves nothing.
    assert counts["ok"] > 20
    assert counts["error"] > 100

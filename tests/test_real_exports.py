"""tools/real_exports.py builds each exporter's style, and the simplifications undo it.

Per case: the built model carries the pattern it stands for, the prepared (simplified) graph
no longer does and computes the same logits, and the instrumented model's mask gradient is
the same with the simplifications on and off.
"""

from __future__ import annotations

import importlib.util
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from neuromask_onnx import instrument, simplify
from neuromask_onnx.graph import finish_model, graph_inputs, prepare

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.torch, pytest.mark.slow]

# case: (op counted, at least this many in the export, at most this many after simplify)
PATTERNS = {"tf2onnx_nhwc": ("Transpose", 100, 1), "keras3": ("Cast", 30, 0),
            "paddle": ("BatchNormalization", 50, 0)}


def _tool() -> Any:
    pytest.importorskip("torchvision")
    sys.path.insert(0, str(ROOT / "tools"))
    spec = importlib.util.spec_from_file_location("real_exports", ROOT / "tools" / "real_exports.py")
    assert spec is not None
    assert spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _run(model: onnx.ModelProto | str, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    src = model if isinstance(model, str) else model.SerializeToString()
    sess = ort.InferenceSession(src, providers=["CPUExecutionProvider"])
    return [np.asarray(v) for v in sess.run(None, feeds)]


def _feeds(x_name: str, shape: tuple[int, ...], layout: str) -> dict[str, np.ndarray]:
    mshape = (1, *shape[1:3], 1) if layout == "NHWC" else (1, 1, *shape[2:])
    return {x_name: np.random.default_rng(0).standard_normal(shape).astype(np.float32),
            "nm_mask": np.full(mshape, 0.7, np.float32), "nm_target": np.array([3], np.int64)}


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("real")


@pytest.mark.parametrize("name", list(PATTERNS))
def test_style_is_built_and_simplified_away(name: str, cache: Path) -> None:
    path, shape, layout = _tool().build(name, cache)
    op, at_least, at_most = PATTERNS[name]
    model = onnx.load(str(path))
    assert Counter(n.op_type for n in model.graph.node)[op] >= at_least
    x_name = graph_inputs(model)[0].name
    feeds = _feeds(x_name, shape, layout)
    with simplify.switched(True, skip=()):  # every pass, also those off by default
        g = prepare(model, {x_name: shape})
        on = _run(instrument(str(path)), feeds)
    assert Counter(n.op_type for n in g.nodes)[op] <= at_most
    read = {i for n in g.nodes for i in n.input}
    prepared = finish_model(g, g.nodes, [onnx.helper.make_tensor_value_info(
        x_name, onnx.TensorProto.FLOAT, list(shape))], list(model.graph.output),
        {k: v for k, v in g.consts.items() if k in read}, "p")
    x = feeds[x_name]
    want = _run(str(path), {x_name: x})[0]
    got = _run(prepared, {x_name: x})[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
    with simplify.switched(False):
        off = _run(instrument(str(path)), feeds)
    for a, b in zip(on, off, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-3 * np.abs(b).max())

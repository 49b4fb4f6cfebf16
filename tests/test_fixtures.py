"""End-to-end gradient checks on every fixture model in models/ (float32, onnxruntime).

For each models/*.onnx: instrument it, then (a) run the dot-product test on the instrumented
graph itself (mask and input -> nm_loss), (b) check that onnxruntime and onnx's reference
evaluator compute the same loss and mask gradient, and (c) compare nm_grad_mask with central
differences of nm_loss at the mask entries with the largest gradients. Tolerances are float32
ones: the models contain Relu/MaxPool/Clip kinks, so no test relies on more than ~1e-3.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper
from onnx.reference import ReferenceEvaluator

from neuromask_onnx import instrument, io_names, oracle
from neuromask_onnx.gradcheck import check_vjp
from neuromask_onnx.graph import graph_inputs, pruned

F32, F64 = onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE
MODELS = sorted((Path(__file__).resolve().parent.parent / "models").glob("*.onnx"))


def test_there_are_fixture_models(models_dir: Path) -> None:
    assert len(list(models_dir.glob("*.onnx"))) >= 6


class Fixture:
    """An instrumented fixture model and one seeded set of feeds for it."""

    def __init__(self, path: Path, rng: np.random.Generator) -> None:
        self.source = onnx.load(str(path))
        x_vi = graph_inputs(self.source)[0]
        first = x_vi.type.tensor_type.shape.dim[0]
        self.batch = first.dim_value if first.HasField("dim_value") else 2
        self.model = instrument(self.source, batch_size=self.batch)
        ins = {i.name: i for i in self.model.graph.input}
        self.x_name = x_vi.name
        shape = [d.dim_value for d in ins[self.x_name].type.tensor_type.shape.dim]
        mshape = [d.dim_value for d in ins[io_names.MASK].type.tensor_type.shape.dim]
        k = int({p.key: p.value for p in self.model.metadata_props}["neuromask.num_classes"])
        self.feeds = {
            self.x_name: rng.standard_normal(shape).astype(np.float32),
            io_names.MASK: rng.uniform(0.2, 0.9, mshape).astype(np.float32),
            io_names.TARGET: rng.integers(0, max(k, 2), self.batch).astype(np.int64),
        }
        self.sess = ort.InferenceSession(self.model.SerializeToString(),
                                         providers=["CPUExecutionProvider"])

    def run(self, mask: np.ndarray | None = None) -> dict[str, np.ndarray]:
        feeds = dict(self.feeds)
        if mask is not None:
            feeds[io_names.MASK] = mask.astype(np.float32)
        names = [o.name for o in self.sess.get_outputs()]
        return dict(zip(names, self.sess.run(None, feeds), strict=True))


def loss_only(model: onnx.ModelProto) -> onnx.ModelProto:
    """The instrumented graph with nm_loss as its only output (unused nodes pruned)."""
    return pruned(model, [io_names.LOSS])


@pytest.fixture(params=MODELS, ids=[p.stem for p in MODELS])
def fixture(request: pytest.FixtureRequest, rng: np.random.Generator) -> Fixture:
    return Fixture(request.param, rng)


def to_double(model: onnx.ModelProto) -> onnx.ModelProto:
    """The same graph in float64: float32 initializers, I/O, Cast targets and fill values,
    inside subgraphs (If branches) too."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    _graph_to_double(m.graph)
    return m


def _graph_to_double(g: onnx.GraphProto) -> None:
    for vi in [*g.input, *g.output]:
        if vi.type.tensor_type.elem_type == F32:
            vi.type.tensor_type.elem_type = F64
    del g.value_info[:]
    float32_operands = {n.input[i] for n in g.node if n.op_type == "Resize"
                        for i in (1, 2) if len(n.input) > i}  # roi and scales stay float32
    for t in g.initializer:
        if t.data_type == F32 and t.name not in float32_operands:
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float64),
                                               t.name))
    for node in g.node:
        for a in node.attribute:
            if a.name == "to" and a.i == F32:
                a.i = F64
            if a.type == onnx.AttributeProto.TENSOR and a.t.data_type == F32:
                a.t.CopyFrom(numpy_helper.from_array(
                    numpy_helper.to_array(a.t).astype(np.float64), a.t.name))
            if a.type == onnx.AttributeProto.GRAPH:
                _graph_to_double(a.g)


def _skip_reference_fault(model: onnx.ModelProto) -> None:
    """Skip where the installed onnx's reference evaluator is known wrong for a node (an older
    onnx, the lowest-versions job); the float32 onnxruntime check (a) still runs there."""
    fault = next(filter(None, map(oracle.reference_fault, model.graph.node)), None)
    if fault is not None:
        pytest.skip(oracle.describe(fault))


@pytest.mark.parametrize("backend", ["float32-onnxruntime", "float64-reference"])
def test_instrumented_graph_passes_the_dot_product_test(fixture: Fixture, backend: str,
                                                        rng: np.random.Generator) -> None:
    """(a) The whole instrumented forward (mask, x -> loss), differentiated again by vjp.

    In float32 a step small enough to cross no Relu/MaxPool kink drowns in rounding, so the
    float32 run only guards against gross errors (5%); the float64 run on the reference
    evaluator (eps 1e-6: no kink is crossed) is the sharp one.
    """
    m = loss_only(fixture.model)
    if backend == "float32-onnxruntime":
        result = check_vjp(m, fixture.feeds, rng=rng, wrt=[io_names.MASK], eps=1e-4,
                           backend="onnxruntime")
        assert result.error < 5e-2, result
        return
    _skip_reference_fault(fixture.model)
    feeds = {k: v.astype(np.float64) if v.dtype == np.float32 else v
             for k, v in fixture.feeds.items()}
    # The reference evaluator rounds Erf (and Gelu, which it expands to Erf) through float32;
    # those models have no kinks, so a larger step is safe.
    rounded = {n.op_type for n in fixture.model.graph.node} & {"Erf", "Gelu"}
    eps, tol = (1e-3, 1e-3) if rounded else (1e-6, 1e-5)
    result = check_vjp(to_double(m), feeds, rng=rng, wrt=[io_names.MASK, fixture.x_name],
                       eps=eps, backend="reference")
    assert result.error < tol, result


def test_onnxruntime_and_reference_evaluator_agree(fixture: Fixture) -> None:
    """(b) Same loss and mask gradient from two independent runtimes."""
    _skip_reference_fault(fixture.model)
    want = fixture.run()
    ref = ReferenceEvaluator(fixture.model)
    # The float32 masks are HardSigmoid steps with a slope near 2^127 (Emitter.step): numpy
    # overflows alpha * x to +-inf, which the clip turns into the exact 0 or 1 intended.
    with np.errstate(over="ignore"):
        outs = ref.run(None, fixture.feeds)
    got = dict(zip([o.name for o in fixture.model.graph.output], outs, strict=True))
    np.testing.assert_allclose(got[io_names.LOSS], want[io_names.LOSS], rtol=1e-4, atol=1e-5)
    g_ref, g_ort = got[io_names.GRAD_MASK], want[io_names.GRAD_MASK]
    scale = float(np.abs(g_ort).max())
    assert scale > 0
    np.testing.assert_allclose(g_ref, g_ort, rtol=0, atol=1e-3 * scale)


def test_mask_gradient_matches_finite_differences(fixture: Fixture) -> None:
    """(c) d sum(nm_loss) / d mask[i] at the four entries with the largest gradient."""
    base = fixture.run()
    grad = base[io_names.GRAD_MASK].astype(np.float64)
    mask = fixture.feeds[io_names.MASK].astype(np.float64)
    eps = 3e-3
    picks = np.argsort(-np.abs(grad).reshape(-1))[:4]
    for flat in picks:
        e = np.zeros(mask.size)
        e[flat] = eps
        e = e.reshape(mask.shape)
        up = fixture.run(mask + e)[io_names.LOSS].astype(np.float64).sum()
        down = fixture.run(mask - e)[io_names.LOSS].astype(np.float64).sum()
        numeric = (up - down) / (2 * eps)
        analytic = grad.reshape(-1)[flat]
        assert abs(numeric - analytic) <= 2e-2 * abs(analytic) + 3e-4, (flat, analytic, numeric)


def test_committed_fixtures_are_what_the_generators_write(models_dir: Path) -> None:
    """models/*.onnx must be reproducible from tools/: regenerate in memory and compare."""
    import importlib.util

    def load(name: str):  # type: ignore[no-untyped-def]
        path = models_dir.parent / "tools" / f"{name}.py"
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None
        assert spec.loader is not None
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod

    make = load("make_models")
    for name, build in make.MODELS.items():
        fresh = build().SerializeToString(deterministic=True)
        assert fresh == (models_dir / f"{name}.onnx").read_bytes(), name
    region = load("make_region_model").build()
    committed = onnx.load(str(models_dir / "region_cnn.onnx"))
    assert region.SerializeToString(deterministic=True) == committed.SerializeToString(
        deterministic=True)

"""`contract.resolve`: every decision about a model, made once, and the one layout detector."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from neuromask_onnx.baselines import Classifier
from neuromask_onnx.contract import (
    ModelOptions,
    describe_input,
    detect_layout,
    dynamic_shape,
    resolve,
)
from neuromask_onnx.errors import InputError, ModelContractError, UnsupportedOpError
from neuromask_onnx.explain import NeuroMask
from neuromask_onnx.rewrite import instrument

MODELS = Path(__file__).resolve().parent.parent / "models"


def _gemm(dims: list[int | str], k: int = 3, name: str = "x") -> onnx.ModelProto:
    """y = x W over the last axis, then a mean over the middle axes: [N, ..., F] -> [N, k]."""
    f = dims[-1]
    assert isinstance(f, int)
    w = helper.make_tensor("w", TensorProto.FLOAT, [f, k],
                           np.arange(f * k, dtype=np.float32).ravel() / 10)
    nodes = [helper.make_node("MatMul", [name, "w"], ["z"])]
    if len(dims) > 2:
        axes = helper.make_tensor("axes", TensorProto.INT64, [len(dims) - 2],
                                  list(range(1, len(dims) - 1)))
        nodes.append(helper.make_node("ReduceMean", ["z", "axes"], ["y"], keepdims=0))
        inits = [w, axes]
    else:
        nodes[0].output[0] = "y"
        inits = [w]
    x = helper.make_tensor_value_info(name, TensorProto.FLOAT, dims)
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [dims[0], k])
    g = helper.make_graph(nodes, "g", [x], [y], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])


def test_resolve_decides_each_part_of_the_contract() -> None:
    s = resolve(MODELS / "cnn_nchw.onnx")
    assert (s.input_name, s.output_name, s.logits_name) == ("input", "logits", "logits")
    assert (s.layout, s.mask_axes, s.output_kind, s.num_classes) == ("NCHW", (2, 3), "logits", 10)
    assert (s.input_shape, s.mask_shape, s.dims) == ((1, 3, 32, 32), (1, 1, 32, 32),
                                                      (None, 3, 32, 32))
    assert (s.gradient, s.no_rule, s.fixed_batch, s.dynamic) == ("exact", None, None, False)
    assert s.dtype == TensorProto.FLOAT
    assert s.np_dtype is np.float32
    # NHWC by the channel count; a final Softmax is stripped: the head reads its input
    t = resolve(MODELS / "cnn_nhwc_tf.onnx", batch_size=4)
    assert (t.layout, t.mask_axes, t.mask_shape) == ("NHWC", (1, 2), (4, 32, 32, 1))
    assert (t.output_name, t.output_kind, t.logits_name) == ("probs", "softmax", "logits")
    # a single sigmoid score is a two-class problem
    b = resolve(MODELS / "tabular_mlp.onnx")
    assert (b.layout, b.output_kind, b.num_classes, b.classes) == ("NF", "sigmoid", 1, 2)
    # the user's mask axes: layout "custom"; the options travel with the Spec
    c = resolve(MODELS / "cnn_nchw.onnx", mask_axes=[-1])
    assert (c.mask_axes, c.layout, c.options) == ((3,), "custom", ModelOptions(mask_axes=(-1,)))
    # a half model is explained in float32
    h = resolve(MODELS / "variants" / "cnn_nchw_fp16.onnx")
    assert h.np_dtype is np.float32


def test_rank3_input_one_detector_two_purposes() -> None:
    """The mask names a rank-3 input NTC (one mask value per time step); the file readers see
    generic axes NAB (not an image). One function answers both, by its `purpose`."""
    spec = resolve(MODELS / "timeseries_conv1d.onnx")
    assert (spec.layout, spec.mask_axes, spec.mask_shape) == ("NTC", (1,), (1, 24, 1))
    model = onnx.load(MODELS / "timeseries_conv1d.onnx")
    assert describe_input(model).layout == "NAB"
    dims = (None, 24, 4)
    assert detect_layout(dims, None, "s", purpose="mask") == "NTC"
    assert detect_layout(dims, None, "s", purpose="read") == "NAB"
    assert detect_layout((None, 12), None, "f", purpose="read") == "NA"
    assert detect_layout((None, 12), None, "f", purpose="mask") == "NF"
    # rank 4 is told apart the same way for both, dynamic sizes included
    for purpose in ("mask", "read"):
        assert detect_layout((None, 3, None, None), None, "i", purpose=purpose) == "NCHW"
        assert detect_layout((1, 64, 64, 1), None, "i", purpose=purpose) == "NHWC"
        with pytest.raises(ModelContractError, match="--layout NCHW or --layout NHWC"):
            detect_layout((1, 3, 64, 3), None, "i", purpose=purpose)
    # a user layout must fit the rank; the mask's must name C
    assert detect_layout(dims, "ntc", "s", purpose="mask") == "NTC"
    assert detect_layout(dims, "NTF", "s", purpose="read") == "NTF"
    with pytest.raises(InputError, match="N first and a C"):
        detect_layout(dims, "NTF", "s", purpose="mask")
    with pytest.raises(InputError, match="--layout NCHW does not fit input 's' of rank 3"):
        detect_layout(dims, "NCHW", "s", purpose="read")
    with pytest.raises(ModelContractError, match="--mask-axes"):
        detect_layout((None,) * 6, None, "v", purpose="mask")


def test_dynamic_input_resolves_at_the_shape_given() -> None:
    m = _gemm(["N", "T", 4])
    with pytest.raises(ModelContractError, match="--input-shape"):
        resolve(m)
    s = resolve(m, input_shape=(7, 4))
    assert (s.input_shape, s.dims, s.dynamic, s.layout) == ((1, 7, 4), (None, None, 4), True,
                                                            "NTC")
    assert dynamic_shape(m, None, (7, 4)) == (7, 4)
    # a static model is resolved at its own shape: the hint is dropped
    assert dynamic_shape(_gemm(["N", 5, 4]), None, (7, 4)) is None
    with pytest.raises(InputError, match="--input-shape"):
        resolve(m, input_shape=(1, 2, 3, 4))


def test_resolve_errors_one_text_each() -> None:
    two = _gemm(["N", 4])
    two.graph.input.append(helper.make_tensor_value_info("b", TensorProto.FLOAT, ["N", 4]))
    with pytest.raises(ModelContractError, match="name the one to explain with --input"):
        resolve(two)
    with pytest.raises(ModelContractError, match="has no input 'zz'"):
        resolve(two, input_name="zz")
    ids = helper.make_tensor_value_info("ids", TensorProto.INT64, ["N", 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8])
    ints = helper.make_model(helper.make_graph(
        [helper.make_node("Cast", ["ids"], ["y"], to=TensorProto.FLOAT)], "ids", [ids], [y]))
    for call in (lambda: resolve(ints), lambda: describe_input(ints)):
        with pytest.raises(ModelContractError, match=r"no float input.*not float"):
            call()
    with pytest.raises(ModelContractError, match="has no output 'nope'"):
        resolve(_gemm(["N", 4]), output_name="nope")
    fixed = _gemm([1, 4])
    assert resolve(fixed).fixed_batch == 1
    with pytest.raises(ModelContractError, match="fixed batch size of 1"):
        resolve(fixed, batch_size=4)
    with pytest.raises(InputError, match="batch size must be at least 1"):
        resolve(fixed, batch_size=0)
    with pytest.raises(InputError, match="gradient must be auto, exact or estimate"):
        resolve(fixed, gradient="numeric")  # type: ignore[arg-type]


def test_gradient_decision() -> None:
    forest = MODELS / "sklearn" / "forest_known_answer.onnx"
    with pytest.raises(UnsupportedOpError, match="TreeEnsembleClassifier"):
        resolve(forest)
    auto = resolve(forest, gradient="auto")
    assert auto.gradient == "estimate"
    assert auto.no_rule is not None
    assert auto.no_rule[0] == "TreeEnsembleClassifier"
    assert resolve(forest, gradient="estimate").no_rule is None
    assert resolve(MODELS / "tabular_mlp.onnx", gradient="auto").gradient == "exact"


def test_instrument_with_a_spec_is_instrument_with_its_options() -> None:
    spec = resolve(MODELS / "cnn_nchw.onnx", mask_axes=[-1], output_kind="logits")
    a = instrument(MODELS / "cnn_nchw.onnx", spec=spec, batch_size=2)
    b = instrument(MODELS / "cnn_nchw.onnx", mask_axes=[-1], output_kind="logits", batch_size=2)
    assert a.SerializeToString() == b.SerializeToString()
    props = {p.key: p.value for p in a.metadata_props}
    assert (props["neuromask.mask_axes"], props["neuromask.layout"]) == ("3", "custom")
    assert "Spec(input_name='input', output_name='logits', input_shape=(2, 3, 32, 32)" \
        in a.doc_string


def test_explainers_read_the_spec() -> None:
    spec = resolve(MODELS / "cnn_nhwc_tf.onnx")
    nm = NeuroMask(MODELS / "cnn_nhwc_tf.onnx", provider="cpu")
    clf = Classifier(MODELS / "cnn_nhwc_tf.onnx", provider="cpu")
    for got in (nm, clf):
        assert (got.input_name, got.mask_axes, got.dims) == (spec.input_name, spec.mask_axes,
                                                               spec.dims)
    assert (nm.layout, nm.num_classes, nm.dtype) == ("NHWC", 5, np.float32)
    assert clf.neuromask(nm.config).spec is clf.spec  # passed on, not resolved again


def test_auto_falls_back_where_a_rule_refuses_a_form(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every op has a rule, so the contract says exact; a rule that refuses its node's form
    while the model is built still turns `--gradient auto` into the estimate (as the probe
    model did), and `--gradient exact` into the one-line error."""
    from neuromask_onnx.vjp_rules import rule_for as real

    def refuse(*_: object) -> list[str | None]:
        msg = "a form this rule does not take"
        raise NotImplementedError(msg)

    monkeypatch.setattr("neuromask_onnx.reverse.rule_for",
                        lambda n: refuse if n.op_type == "Gemm" else real(n))
    x = np.zeros((1, 3, 32, 32), np.float32)
    nm = NeuroMask(MODELS / "cnn_nchw.onnx", provider="cpu", batch_size=1)
    assert (nm.gradient, nm.gradient_note) == ("exact", None)
    assert nm.predict(x).shape == (1, 10)
    assert nm.gradient == "estimate"
    assert nm.gradient_note is not None
    assert "op Gemm" in nm.gradient_note
    strict = NeuroMask(MODELS / "cnn_nchw.onnx", provider="cpu", batch_size=1, gradient="exact")
    with pytest.raises(UnsupportedOpError, match="Gemm"):
        strict.predict(x)

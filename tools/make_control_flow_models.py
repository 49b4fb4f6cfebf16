"""Write the control-flow fixture models in models/ (seeded numpy + onnx.helper, no torch).

    python tools/make_control_flow_models.py   # rewrites models/cf_*.onnx; prints sha256

Each model puts the classifier's work inside subgraphs that read outer-scope values (the
input, weights in the main graph's initializers), as spox- and torch-scripted exports do:

- cf_if_const_lstm: the main graph is one `If` on a sample-rate switch frozen into the graph
  (16000 == 16000); its then-branch holds another constant `If` whose branch runs an LSTM;
- cf_if_data: an `If` on the sign of a hidden activation's sum (data-dependent);
- cf_loop_static: a `Loop` with a constant trip count (3) carrying a state and emitting a
  scan output, its body reading the projected input from the outer scope;
- cf_scan_rnn: a `Scan` over the time axis of the input (axis 1, reverse direction) running a
  tanh recurrence, its body reading the weights from the outer scope.

Byte-for-byte reproducible; models/README.md lists each file's sha256.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

F = TensorProto.FLOAT
N = helper.make_node
OUT = Path(__file__).resolve().parent.parent / "models"
PRODUCER = "neuromask-onnx tools/make_control_flow_models.py"


def _w(rng: np.random.Generator, name: str, shape: Sequence[int]) -> onnx.TensorProto:
    fan = int(np.prod(shape[:-1])) if len(shape) > 1 else 1
    arr = rng.standard_normal(shape) / np.sqrt(max(fan, 1))
    return numpy_helper.from_array(arr.astype(np.float32), name)


def _c(name: str, value: object, dtype: type = np.int64) -> onnx.NodeProto:
    return N("Constant", [], [name], value=numpy_helper.from_array(np.asarray(value, dtype), name))


def _model(name: str, nodes: list[onnx.NodeProto], inputs: list[onnx.ValueInfoProto],
           outputs: list[onnx.ValueInfoProto], inits: list[onnx.TensorProto]) -> onnx.ModelProto:
    g = helper.make_graph(nodes, name, inputs, outputs, inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)],
                          producer_name=f"{PRODUCER} ({name})")
    m.ir_version = 8
    onnx.checker.check_model(m, full_check=True)
    return m


def _out(name: str, shape: Sequence[int | str | None] | None = None) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, F, shape)


def cf_if_const_lstm() -> onnx.ModelProto:
    rng = np.random.default_rng(31)
    t, c, h, k = 8, 3, 5, 3
    inits = [_w(rng, "W", (1, 4 * h, c)), _w(rng, "R", (1, 4 * h, h)),
             _w(rng, "B", (1, 8 * h)), _w(rng, "head", (h, k)), _w(rng, "conv_w", (k, c, 3)),
             numpy_helper.from_array(np.array(16000, np.int64), "sample_rate")]
    lstm_branch = helper.make_graph([
        N("Transpose", ["input"], ["x_tnc"], perm=[1, 0, 2], name="to_time_major"),
        N("LSTM", ["x_tnc", "W", "R", "B"], ["", "y_h"], hidden_size=h, name="lstm"),
        _c("squeeze_axes", [0]),
        N("Squeeze", ["y_h", "squeeze_axes"], ["last"], name="squeeze"),
        N("MatMul", ["last", "head"], ["lstm_logits"], name="head"),
    ], "lstm_branch", [], [_out("lstm_logits")])
    conv_branch = helper.make_graph([
        N("Transpose", ["input"], ["x_nct"], perm=[0, 2, 1], name="to_channels_first"),
        N("Conv", ["x_nct", "conv_w"], ["conv"], pads=[1, 1], name="conv"),
        _c("time_axis", [2]),
        N("ReduceMean", ["conv", "time_axis"], ["conv_logits"], keepdims=0, name="pool"),
    ], "conv_branch", [], [_out("conv_logits")])
    wide = helper.make_graph([
        _c("threshold", 8000),
        N("Greater", ["sample_rate", "threshold"], ["is_wide"], name="wide_test"),
        N("If", ["is_wide"], ["wide_logits"], then_branch=lstm_branch, else_branch=conv_branch,
          name="inner_if"),
    ], "wideband", [], [_out("wide_logits")])
    narrow = helper.make_graph([
        N("Transpose", ["input"], ["n_nct"], perm=[0, 2, 1], name="narrow_transpose"),
        N("Conv", ["n_nct", "conv_w"], ["n_conv"], pads=[1, 1], name="narrow_conv"),
        _c("narrow_axis", [2]),
        N("ReduceMax", ["n_conv", "narrow_axis"], ["narrow_logits"], keepdims=0, name="narrow"),
    ], "narrowband", [], [_out("narrow_logits")])
    nodes = [_c("expected_rate", 16000),
             N("Equal", ["sample_rate", "expected_rate"], ["rate_ok"], name="rate_switch"),
             N("If", ["rate_ok"], ["logits"], then_branch=wide, else_branch=narrow,
               name="rate_if")]
    return _model("cf_if_const_lstm", nodes,
                  [helper.make_tensor_value_info("input", F, ["N", t, c])],
                  [_out("logits", ["N", k])], inits)


def cf_if_data() -> onnx.ModelProto:
    rng = np.random.default_rng(32)
    f, h, k = 6, 5, 3
    inits = [_w(rng, "W1", (f, h)), _w(rng, "b1", (h,)), _w(rng, "W2", (h, k)),
             _w(rng, "W3", (h, k)), _w(rng, "W4", (f, k))]
    then = helper.make_graph([
        N("Tanh", ["hidden"], ["t_act"], name="then_tanh"),
        N("MatMul", ["t_act", "W2"], ["then_logits"], name="then_head"),
    ], "positive", [], [_out("then_logits")])
    other = helper.make_graph([
        N("Sigmoid", ["hidden"], ["e_act"], name="else_sigmoid"),
        N("MatMul", ["e_act", "W3"], ["e_head"], name="else_head"),
        N("MatMul", ["features", "W4"], ["e_skip"], name="else_skip"),
        N("Add", ["e_head", "e_skip"], ["else_logits"], name="else_add"),
    ], "negative", [], [_out("else_logits")])
    nodes = [N("MatMul", ["features", "W1"], ["proj"], name="proj"),
             N("Add", ["proj", "b1"], ["hidden"], name="bias"),
             N("ReduceSum", ["hidden"], ["total"], keepdims=0, name="total"),
             N("Constant", [], ["zero"], value=numpy_helper.from_array(np.array(0, np.float32))),
             N("Greater", ["total", "zero"], ["positive"], name="sign"),
             N("If", ["positive"], ["logits"], then_branch=then, else_branch=other,
               name="sign_if")]
    return _model("cf_if_data", nodes, [helper.make_tensor_value_info("features", F, ["N", f])],
                  [_out("logits", ["N", k])], inits)


def cf_loop_static() -> onnx.ModelProto:
    rng = np.random.default_rng(33)
    f, h, k = 6, 4, 3
    inits = [_w(rng, "Wx", (f, h)), _w(rng, "Wh", (h, h)), _w(rng, "head", (h, k))]
    body = helper.make_graph([
        N("Identity", ["cond_in"], ["cond_out"], name="keep_going"),
        N("MatMul", ["h_in", "Wh"], ["hw"], name="recur"),
        N("Add", ["hw", "xp"], ["pre"], name="join"),
        N("Tanh", ["pre"], ["h_out"], name="act"),
        N("Identity", ["h_out"], ["h_scan"], name="emit"),
    ], "step", [helper.make_tensor_value_info("i", TensorProto.INT64, []),
                helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
                _out("h_in", ["N", h])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []), _out("h_out", ["N", h]),
         _out("h_scan", ["N", h])])
    nodes = [N("MatMul", ["features", "Wx"], ["xp"], name="project"),
             _c("trips", 3), N("Constant", [], ["go"],
                               value=numpy_helper.from_array(np.array(True), "go")),
             N("Tanh", ["xp"], ["h0"], name="init"),
             N("Loop", ["trips", "go", "h0"], ["h_final", "h_all"], body=body, name="loop"),
             _c("steps_axis", [0]),
             N("ReduceMean", ["h_all", "steps_axis"], ["h_mean"], keepdims=0, name="mean"),
             N("Add", ["h_final", "h_mean"], ["summary"], name="summary"),
             N("MatMul", ["summary", "head"], ["logits"], name="head")]
    return _model("cf_loop_static", nodes,
                  [helper.make_tensor_value_info("features", F, ["N", f])],
                  [_out("logits", ["N", k])], inits)


def cf_scan_rnn() -> onnx.ModelProto:
    rng = np.random.default_rng(34)
    t, c, h, k = 5, 3, 4, 3
    inits = [_w(rng, "Wx", (c, h)), _w(rng, "Wh", (h, h)), _w(rng, "head", (h, k)),
             numpy_helper.from_array(np.zeros((1, h), np.float32), "h_zero")]
    body = helper.make_graph([
        N("MatMul", ["x_t", "Wx"], ["xw"], name="inp"),
        N("MatMul", ["h_in", "Wh"], ["hw"], name="recur"),
        N("Add", ["xw", "hw"], ["pre"], name="join"),
        N("Tanh", ["pre"], ["h_out"], name="act"),
        N("Identity", ["h_out"], ["y_t"], name="emit"),
    ], "cell", [_out("h_in", ["N", h]), _out("x_t", ["N", c])],
        [_out("h_out", ["N", h]), _out("y_t", ["N", h])])
    nodes = [N("Shape", ["series"], ["shape"], name="shape"),
             _c("zero_start", [0]), _c("one_end", [1]),
             N("Slice", ["shape", "zero_start", "one_end"], ["batch"], name="batch"),
             _c("one", [1]),
             N("Concat", ["batch", "one"], ["tile_reps"], axis=0, name="reps"),
             N("Tile", ["h_zero", "tile_reps"], ["h0"], name="h0"),
             N("Scan", ["h0", "series"], ["h_last", "ys"], body=body, num_scan_inputs=1,
               scan_input_axes=[1], scan_input_directions=[1], scan_output_axes=[1],
               name="scan"),
             _c("time_axis", [1]),
             N("ReduceMean", ["ys", "time_axis"], ["y_mean"], keepdims=0, name="mean"),
             N("Add", ["y_mean", "h_last"], ["summary"], name="summary"),
             N("MatMul", ["summary", "head"], ["logits"], name="head")]
    return _model("cf_scan_rnn", nodes,
                  [helper.make_tensor_value_info("series", F, ["N", t, c])],
                  [_out("logits", ["N", k])], inits)


MODELS: dict[str, Callable[[], onnx.ModelProto]] = {
    "cf_if_const_lstm": cf_if_const_lstm,
    "cf_if_data": cf_if_data,
    "cf_loop_static": cf_loop_static,
    "cf_scan_rnn": cf_scan_rnn,
}


def main() -> None:
    OUT.mkdir(exist_ok=True)
    for name, build in MODELS.items():
        data = build().SerializeToString(deterministic=True)
        path = OUT / f"{name}.onnx"
        path.write_bytes(data)
        print(f"{path.name:24s} {len(data):7d} B  sha256 {hashlib.sha256(data).hexdigest()}")


if __name__ == "__main__":
    main()

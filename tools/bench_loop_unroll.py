"""Unrolled Loop against the reverse Loop (vjp_rules/loop.py): build, session and run times.

A float32 Loop h = tanh(h W + b) over h [B, H] (4 body nodes with the condition's Identity)
for N iterations, differentiated by `reverse.vjp` once unrolled (`unroll.UNROLL_LIMIT` high)
and once as a reverse Loop (limit 0). Prints one row per N and mode: the gradient model's
node count (subgraphs included), seconds to build it, to create its onnxruntime session
(one thread) and the median of `--runs` runs. What `unroll.UNROLL_LIMIT` was chosen from.
`--op scan`: the same recurrence as a Scan over an input sequence (x_t Wx + h Wh).

    python tools/bench_loop_unroll.py --iterations 10 50 250 1000 --hidden 32
    python tools/bench_loop_unroll.py --op scan --iterations 100 500 --batch 1 --hidden 16
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from neuromask_onnx import unroll
from neuromask_onnx.reverse import vjp

F = TensorProto.FLOAT


def loop_model(trips: int, batch: int, hidden: int) -> onnx.ModelProto:
    n = helper.make_node
    vi = helper.make_tensor_value_info
    body = helper.make_graph(
        [n("Identity", ["c_in"], ["c_out"]), n("MatMul", ["h_in", "W"], ["hw"]),
         n("Add", ["hw", "b"], ["pre"]), n("Tanh", ["pre"], ["h_out"])], "step",
        [vi("i", TensorProto.INT64, []), vi("c_in", TensorProto.BOOL, []),
         vi("h_in", F, [batch, hidden])],
        [vi("c_out", TensorProto.BOOL, []), vi("h_out", F, [batch, hidden])])
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(np.array(trips, np.int64), "M"),
             numpy_helper.from_array((rng.standard_normal((hidden, hidden)) * 0.3
                                      ).astype(np.float32), "W")]
    g = helper.make_graph([n("Loop", ["M", "", "h0"], ["h"], body=body)], "bench",
                          [vi("h0", F, [batch, hidden]), vi("b", F, [batch, hidden])],
                          [vi("h", F, [batch, hidden])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])
    m.ir_version = 8
    return m


def scan_model(trips: int, batch: int, hidden: int) -> onnx.ModelProto:
    """h = tanh(x_t Wx + h Wh) by a Scan over x [trips, batch, hidden]; its feeds: h0, x."""
    n = helper.make_node
    vi = helper.make_tensor_value_info
    body = helper.make_graph(
        [n("MatMul", ["x_t", "Wx"], ["xw"]), n("MatMul", ["h_in", "Wh"], ["hw"]),
         n("Add", ["xw", "hw"], ["pre"]), n("Tanh", ["pre"], ["h_out"])], "cell",
        [vi("h_in", F, [batch, hidden]), vi("x_t", F, [batch, hidden])],
        [vi("h_out", F, [batch, hidden])])
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array((rng.standard_normal((hidden, hidden)) * 0.3
                                      ).astype(np.float32), k) for k in ("Wx", "Wh")]
    g = helper.make_graph([n("Scan", ["h0", "b"], ["h"], body=body, num_scan_inputs=1)],
                          "bench", [vi("h0", F, [batch, hidden]),
                                    vi("b", F, [trips, batch, hidden])],
                          [vi("h", F, [batch, hidden])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])
    m.ir_version = 8
    return m


def count(graph: onnx.GraphProto) -> int:
    return sum(1 + sum(count(a.g) for a in nd.attribute if a.type == a.GRAPH)
               for nd in graph.node)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iterations", type=int, nargs="+", default=[10, 50, 250, 1000])
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--hidden", type=int, default=32)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--op", choices=["loop", "scan"], default="loop",
                    help="scan: a Scan whose scan input `b` [N, B, H] gets the gradient")
    a = ap.parse_args()
    rng = np.random.default_rng(1)
    print("iterations mode      nodes  build_s  session_s  run_ms")
    for trips in a.iterations:
        m = (scan_model if a.op == "scan" else loop_model)(trips, a.batch, a.hidden)
        feeds = {k: rng.standard_normal((a.batch, a.hidden)).astype(np.float32)
                 for k in ("h0", "b", "nm_cot_h")}
        if a.op == "scan":
            feeds["b"] = rng.standard_normal((trips, a.batch, a.hidden)).astype(np.float32)
        for mode, limit in (("unrolled", 10**9), ("loop", 0)):
            unroll.UNROLL_LIMIT = limit
            t0 = time.perf_counter()
            vm = vjp(m, wrt=["h0", "b"], of=["h"])
            t1 = time.perf_counter()
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = opts.inter_op_num_threads = 1
            sess = ort.InferenceSession(vm.SerializeToString(), opts,
                                        providers=["CPUExecutionProvider"])
            t2 = time.perf_counter()
            times = []
            for _ in range(a.runs):
                s = time.perf_counter()
                sess.run(None, feeds)
                times.append(time.perf_counter() - s)
            print(f"{trips:10d} {mode:9s} {count(vm.graph):6d} {t1 - t0:8.2f} {t2 - t1:10.2f} "
                  f"{1e3 * float(np.median(times)):7.2f}")


if __name__ == "__main__":
    main()

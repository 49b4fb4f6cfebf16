"""A/B in one process: the instrumented model under onnxruntime session options other than
the benchmark's (execution order, memory pattern, arena, denormals as zero, and the model
onnxruntime optimised once, saved, and loaded with its optimizer off), each against the
plain forward under the default options; CPU time of one thread, fastest run of `--reps` in
alternating blocks (medians beside).

    python tools/ab_session_options.py --cache /tmp/nm_bench [--reps 80] [efficientnet_lite0 ...]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_gradient as bench

VARIANTS: dict[str, dict[str, Any]] = {
    "default": {},
    "execution_order=PRIORITY_BASED": {"execution_order": ort.ExecutionOrder.PRIORITY_BASED},
    "enable_mem_pattern=False": {"enable_mem_pattern": False},
    "enable_cpu_mem_arena=False": {"enable_cpu_mem_arena": False},
    "session.set_denormal_as_zero=1": {"cfg:session.set_denormal_as_zero": "1"},
    "optimised once, saved, optimizer off": {"presaved": True},
}


def _session(model: bytes | str, **kw: Any) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    for k, v in kw.items():
        if k.startswith("cfg:"):
            opts.add_session_config_entry(k[4:], v)
        else:
            setattr(opts, k, v)
    return ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])


def _presaved(model: bytes, tmp: Path) -> ort.InferenceSession:
    path = str(tmp / "optimised.onnx")
    _session(model, optimized_model_filepath=path)
    return _session(path, graph_optimization_level=ort.GraphOptimizationLevel.ORT_DISABLE_ALL)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="*", default=["efficientnet_lite0", "tf2onnx_nhwc"])
    ap.add_argument("--cache", type=Path, required=True)
    ap.add_argument("--reps", type=int, default=80)
    args = ap.parse_args()
    bench.CLOCK = time.thread_time
    print(f"onnxruntime {ort.__version__}, one thread, CPU time, instrumented / forward: "
          "fastest run (median)\n")
    print("| model | " + " | ".join(VARIANTS) + " |\n|---|" + "---|" * len(VARIANTS))
    for name in args.names:
        path, shape, layout = bench.case(name, args.cache)
        model = bench._instrument(path).SerializeToString()
        with tempfile.TemporaryDirectory() as tmp:
            sessions = {k: _presaved(model, Path(tmp)) if v.get("presaved")
                        else _session(model, **v) for k, v in VARIANTS.items()}
            fwd = _session(str(path))
            x_name = fwd.get_inputs()[0].name
            feeds = bench._feeds(x_name, shape, layout)
            times: dict[str, list[float]] = {k: [] for k in ["forward", *sessions]}
            for _ in range(max(1, args.reps // 4)):
                times["forward"] += bench._block(fwd, {x_name: feeds[x_name]}, 4)
                for k, s in sessions.items():
                    times[k] += bench._block(s, feeds, 4)
        f, fm = min(times["forward"]), statistics.median(times["forward"])
        cells = [f"{min(times[k]) / f:.2f} ({statistics.median(times[k]) / fm:.2f})"
                 for k in sessions]
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()

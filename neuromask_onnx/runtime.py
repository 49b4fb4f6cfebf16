"""The one place onnxruntime sessions are made, and the runner interface the optimiser drives.

- `available_provider`: "auto" / "cpu" / "cuda" to an execution provider, or one line saying
  what to install.
- `session`: an InferenceSession with the project's options (quiet logs; deterministic
  kernels and thread counts where asked; optimisation off for the shape probes, which must run
  a graph exactly as written).
- `run_padded` / `pad_rows`: rows through a session a batch at a time, the last batch padded
  with copies of its last row where the session's batch is fixed (every caller: NeuroMask's
  predictions and chunks, the baselines' Classifier, hence the metrics).
- `blas_on_one_thread`: numpy's BLAS held to one thread while an optimiser alternates small
  numpy products with session runs (its idle threads otherwise take onnxruntime's cores).
- `Runner`: what `explain.NeuroMask` needs of a model: bind the per-chunk inputs once, then
  run(mask) -> (loss, d loss / d mask, probabilities). `SessionRunner` is the local one (CPU,
  or CUDA with I/O binding); `estimate.EstimateRunner` (a gradient-free estimate) and
  `remote.RemoteRunner` (a model served by Triton or KServe) are the others.

onnxruntime is imported here at module level, so modules that must start fast (the CLI's
`--version`, the loaders) import this one inside their functions.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Literal, Protocol

import numpy as np
import onnx
import onnxruntime as ort

from .errors import InputError
from .io_names import BASELINE, GRAD_MASK, LOSS, MASK, PROBS, TARGET

Provider = Literal["auto", "cpu", "cuda"]
CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"


def available_provider(provider: Provider) -> str:
    """The execution provider for "auto" (CUDA when onnxruntime-gpu sees one), "cpu" or
    "cuda" (an InputError if onnxruntime has no CUDA)."""
    have = ort.get_available_providers()
    if provider == "cuda" or (provider == "auto" and CUDA in have):
        if CUDA not in have:
            msg = ("provider cuda asked for but onnxruntime has no CUDAExecutionProvider "
                   "(install onnxruntime-gpu, or use --provider cpu)")
            raise InputError(msg)
        return CUDA
    if provider not in ("auto", "cpu"):
        msg = f"provider must be auto, cpu or cuda, got {provider!r}"
        raise InputError(msg)
    return CPU


def session(model: onnx.ModelProto | bytes, provider: str = CPU, *, threads: int | None = None,
            deterministic: bool = False, optimize: bool = True,
            log_level: int = 3) -> ort.InferenceSession:
    """An onnxruntime session over `model` (a ModelProto or its serialised bytes).

    threads: intra-op threads (None: onnxruntime's choice); deterministic: deterministic
    kernels (the optimiser's runs repeat to the bit); optimize=False: no graph optimisation
    (the shape probes); log_level: onnxruntime's severity floor (3 = errors only)."""
    opts = ort.SessionOptions()
    opts.log_severity_level = log_level
    if deterministic:
        opts.use_deterministic_compute = True
    if threads:
        opts.intra_op_num_threads = threads
    if not optimize:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    data = model if isinstance(model, bytes) else model.SerializeToString()
    return ort.InferenceSession(data, opts, providers=[provider])


@contextmanager
def blas_on_one_thread() -> Iterator[None]:
    """numpy's BLAS (OpenBLAS, MKL, ...) on one thread for the duration.

    The trap: after each of the optimiser's small products (the mask's upsampling and its
    adjoint, a few million flops) OpenBLAS's worker threads busy-wait for the next one, on
    the cores onnxruntime's intra-op threads need for the session run that follows. On two
    cores the 16-step default took 3.47 s an image instead of 2.61 s (README, "Explaining
    costs"); one thread is plenty for products that small."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        yield


def pad_rows(a: np.ndarray, size: int) -> np.ndarray:
    """`a` with copies of its last row appended up to `size` rows (a fixed session batch)."""
    if len(a) >= size:
        return a
    return np.concatenate([a, np.repeat(a[-1:], size - len(a), axis=0)])


def run_padded(run: Callable[[list[np.ndarray], int], Sequence[np.ndarray]],
               arrays: Sequence[np.ndarray], size: int, *, pad: bool) -> list[np.ndarray]:
    """Rows of `arrays` (equal lengths, rows first) through `run`, `size` rows at a time.

    run(chunks, n) gets one chunk of each array and the number n of real rows in them; pad:
    the last chunk is padded to `size` rows with copies of its last row (a session with a
    fixed batch), else it runs short. `run` returns its outputs for the real rows (trim with
    [:n]); they are joined along the rows, in order.
    """
    total = len(arrays[0])
    if total == 0:
        msg = "no samples to run"
        raise InputError(msg)
    if any(len(a) != total for a in arrays):
        msg = f"arrays of {[len(a) for a in arrays]} rows cannot run as one batch"
        raise InputError(msg)
    outs: list[Sequence[np.ndarray]] = []
    for lo in range(0, total, size):
        parts = [a[lo:lo + size] for a in arrays]
        n = len(parts[0])
        if pad:
            parts = [pad_rows(p, size) for p in parts]
        outs.append(run(parts, n))
    return [np.concatenate([o[i] for o in outs]) for i in range(len(outs[0]))]


class Runner(Protocol):
    """One instrumented model at one batch size, as the optimiser drives it."""

    mask_shape: tuple[int, ...]
    has_baseline: bool
    batch: int
    provider: str
    seconds: float

    def bind(self, x_name: str, x: np.ndarray, target: np.ndarray,
             baseline: np.ndarray | None) -> None:
        """The inputs that stay fixed over a chunk's steps."""

    def run(self, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(loss [batch], d loss / d mask [mask_shape], probabilities [batch, classes])."""


class SessionRunner:
    """One instrumented model in one local session, at a fixed batch size."""

    def __init__(self, model: onnx.ModelProto, provider: str, threads: int | None) -> None:
        t0 = time.perf_counter()
        self.session = session(model, provider, threads=threads, deterministic=True)
        self.seconds = time.perf_counter() - t0
        self.provider = self.session.get_providers()[0]
        ins = {i.name: i for i in self.session.get_inputs()}
        self.mask_shape = tuple(ins[MASK].shape)
        self.has_baseline = BASELINE in ins
        self.batch = self.mask_shape[0]
        self.binding: Any = None
        self.feeds: dict[str, np.ndarray] = {}

    def bind(self, x_name: str, x: np.ndarray, target: np.ndarray,
             baseline: np.ndarray | None) -> None:
        feeds = {x_name: x, TARGET: target}
        if self.has_baseline:
            assert baseline is not None
            feeds[BASELINE] = baseline
        if self.provider == CUDA:
            b = self.session.io_binding()
            for name, value in feeds.items():  # copied to the GPU once per chunk
                b.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(value, "cuda", 0))
            for name in (LOSS, GRAD_MASK, PROBS):
                b.bind_output(name, "cpu")
            self.binding = b
        else:
            self.feeds = feeds

    def run(self, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if self.binding is not None:
            self.binding.bind_cpu_input(MASK, mask)
            self.session.run_with_iobinding(self.binding)
            loss, grad, probs = self.binding.copy_outputs_to_cpu()
        else:
            loss, grad, probs = self.session.run([LOSS, GRAD_MASK, PROBS],
                                                 {**self.feeds, MASK: mask})
        return loss, grad, probs

"""NeuroMask, Captum-style: `NeuroMask(model, config).attribute(x, target=None)`.

The model is instrumented once per batch size (`rewrite.instrument`); each optimisation step is
one onnxruntime run that returns the per-sample cross-entropy of the masked prediction and its
gradient w.r.t. the mask. Everything else (sigmoid with temperature, the upsampling of a coarse
mask and its adjoint, sparsity, smoothness, RMSProp) is numpy in `mask`, `optimize` and
`smoothness`.

Jobs = (input, target, restart) triples, run `batch_size` at a time through one session. A
job's W0 depends only on (seed, restart), never on its batch position, so a batch gives the
masks its jobs give one by one. Models with a fixed batch axis get padded chunks. On CUDA the
input, target and baseline stay on the device (I/O binding); only the mask and the small
outputs cross each step.

This module resolves the model and plans the jobs; the loop over one chunk of jobs (classic
and areas objectives) is `chunks.ChunkOptimizer`, a mixin of `NeuroMask`, and the result types
(`Explanation`, `TopClass`, `Progress`, `diagnose`) are `results`'s, re-exported here.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from .chunks import ChunkOptimizer, Job
from .contract import ModelOptions, Spec, decide, dynamic_shape
from .errors import ConvergenceWarning, InputError, UnsupportedOpError
from .estimate import EstimateRunner, estimated_note
from .graph import load_model
from .mask import masked_out
from .optimize import NeuroMaskConfig, StepInfo
from .results import Explanation, Progress, TopClass, diagnose
from .rewrite import instrument
from .runtime import (
    Provider,
    Runner,
    SessionRunner,
    available_provider,
    blas_on_one_thread,
    run_padded,
)

__all__ = ["Explanation", "NeuroMask", "Progress", "Target", "TopClass", "by_shape", "diagnose"]

Target = int | str


# --------------------------------------------------------------------------- the explainer


class NeuroMask(ChunkOptimizer):
    """Learn NeuroMask relevance masks for an ONNX classifier on onnxruntime.

    Args:
        model: an ONNX model or a path to one (never modified).
        config: hyperparameters (default: `NeuroMaskConfig()`, the tuned default preset).
        input_name / output_name / output_kind / layout / mask_axes: as in `instrument`.
        provider: "auto" (CUDA when onnxruntime-gpu sees a GPU, else CPU), "cpu" or "cuda".
        batch_size: how many (input, target, restart) jobs share one session run.
        labels: class names, index = class id (for `target="tabby"` and the reports; default:
            the model's `neuromask.labels` metadata, if any).
        threads: onnxruntime intra-op threads (default: onnxruntime's choice).
        rows_per_run: areas mode: how many of a step's rows (2 per area and job) share one
            session run. Default: 2 on CPU, where a row costs least at batch 1-2
            (tools/bench_gradient.py --rows: +16 % per row at 8 rows on two cores), and all
            of them on CUDA.
        input_shape: one input's shape without the batch axis, for models whose non-batch
            dims are dynamic (the shape they are first instrumented at).
        gradient: "auto" (exact where every op has a rule, else estimated), "exact" or
            "estimate".
        spec: a `contract.resolve` result to use instead of the arguments above (a
            `baselines.Classifier` passes its own).
    """

    def __init__(self, model: onnx.ModelProto | str | Path, config: NeuroMaskConfig | None = None,
                 *, input_name: str | None = None, output_name: str | None = None,
                 output_kind: str = "auto", layout: str | None = None,
                 mask_axes: Sequence[int] | None = None, provider: Provider = "auto",
                 batch_size: int = 8, labels: Sequence[str] | None = None,
                 threads: int | None = None, rows_per_run: int | None = None,
                 input_shape: Sequence[int] | None = None, gradient: str = "auto",
                 spec: Spec | None = None) -> None:
        if batch_size < 1:
            msg = f"batch size must be at least 1, got {batch_size}"
            raise InputError(msg)
        self.model = load_model(model)
        self.config = config or NeuroMaskConfig()
        self.provider_name = available_provider(provider)
        self.batch_size = batch_size
        if rows_per_run is not None and rows_per_run < 1:
            msg = f"rows per run must be at least 1, got {rows_per_run}"
            raise InputError(msg)
        self.rows_per_run = rows_per_run
        if labels is None:  # the model's own class names, where its metadata has them
            from .preprocess import model_labels

            labels = model_labels(self.model)
        self.labels = list(labels) if labels is not None else None
        self.threads = threads
        # Every decision about the model, made once (`contract.resolve`; it raises the
        # user-facing errors). gradient: exact (rules), estimate (model runs, `estimate`) or
        # auto (exact where every op on the path has a rule). A model with dynamic non-batch
        # dims is resolved at `input_shape`; each input shape later gets its own instrumented
        # model (`_runner`).
        if spec is None:
            opts = ModelOptions(input_name, output_name, output_kind,  # type: ignore[arg-type]
                                layout, None if mask_axes is None else tuple(mask_axes))
            spec = decide(self.model, opts, gradient,  # type: ignore[arg-type]
                          input_shape=dynamic_shape(self.model, input_name, input_shape))
        self.spec: Spec | None = spec
        self._may_estimate = gradient == "auto"
        self.gradient: str = spec.gradient
        self.gradient_note = None if spec.no_rule is None else estimated_note(*spec.no_rule)
        self.input_name = spec.input_name
        self.num_classes = spec.num_classes
        self.mask_axes = spec.mask_axes
        self.layout = spec.layout
        self.dims = spec.dims
        self.fixed_batch = spec.fixed_batch
        self.dtype = spec.np_dtype  # the instrumented model's: a half model runs in float32
        if self.labels is not None and len(self.labels) != max(self.num_classes, 2):
            msg = (f"the labels list has {len(self.labels)} names but the model has "
                   f"{self.num_classes} classes")
            raise InputError(msg)
        self._runners: dict[tuple[int, tuple[int, ...]], Runner] = {}
        self._timings = {"instrument": 0.0, "session": 0.0}
        self.model_runs = 0
        """Rows run through the instrumented model so far (one forward and one backward pass
        each; padding included)."""

    # ----------------------------------------------------------------- model plumbing

    def _instrumented(self, batch: int, shape: tuple[int, ...] | None,
                      exact: bool) -> onnx.ModelProto:
        assert self.spec is not None, "a served model is not instrumented here"
        c = self.config
        classic = c.mode == "classic"
        return instrument(self.model, spec=self.spec, batch_size=batch, input_shape=shape,
                          objective="cross_entropy" if classic else "probability",
                          baseline=c.baseline != "zero" if classic else True, gradient=exact)

    def _runner(self, batch: int, shape: tuple[int, ...]) -> Runner:
        key = (batch, shape)
        if key not in self._runners:
            runner = self._new_runner(batch, shape)
            self._timings["session"] += runner.seconds
            self._runners[key] = runner
        return self._runners[key]

    def _new_runner(self, batch: int, shape: tuple[int, ...]) -> Runner:
        """The hook where a run of the instrumented model comes from (`remote` overrides it
        with a `runtime.Runner` over a served model)."""
        dynamic = any(d is None for d in self.dims[1:])
        at = shape if dynamic else None
        t0 = time.perf_counter()
        runner: Runner | None = None
        if self.gradient == "exact":
            try:
                runner = SessionRunner(self._instrumented(batch, at, True), self.provider_name,
                                       self.threads)
            except UnsupportedOpError as exc:  # a rule refused the node's form
                if not self._may_estimate:
                    raise
                self.gradient = "estimate"
                self.gradient_note = estimated_note(exc.op_type, exc.node_name)
        if runner is None:
            runner = EstimateRunner(lambda b: self._instrumented(b, at, False), batch,
                                    self.provider_name, self.threads, self.mask_axes,
                                    self.config)
        self._timings["instrument"] += time.perf_counter() - t0
        return runner

    def _chunk_size(self, jobs: int) -> tuple[int, bool]:
        """(session batch, pad?): a fixed batch axis forces its size and padding."""
        if self.fixed_batch is not None:
            return self.fixed_batch, True
        return min(self.batch_size, jobs), False

    def _check(self, x: np.ndarray) -> np.ndarray:
        want = self.dims[1:]
        if x.ndim != len(want) or any(w is not None and w != s for w, s in
                                      zip(want, x.shape, strict=True)):
            shown = ["?" if w is None else w for w in want]
            msg = (f"input has shape {list(x.shape)} but model input {self.input_name!r} takes "
                   f"{shown} (without the batch axis)")
            raise InputError(msg)
        if not np.all(np.isfinite(x)):
            msg = "input holds NaN or infinite values"
            raise InputError(msg)
        return np.ascontiguousarray(x, self.dtype)

    def _baseline(self, x: np.ndarray, kind: str | None = None) -> np.ndarray | None:
        """The value a masked-out element takes, [N, ...] like x (None: zero, in-graph).

        kind: zero, blur, mean or noise (default: the classic mode's `baseline`); in areas
        mode every substrate is an explicit array, zeros included."""
        c = self.config
        kind = c.baseline if kind is None else kind
        if kind == "zero" and c.mode == "classic":
            return None
        return masked_out(x, kind, self.mask_axes, blur_sigma=c.blur_sigma,
                          noise_std=c.noise_std, seed=c.seed)

    # ----------------------------------------------------------------- public API

    def predict(self, x: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
        """Class probabilities [N, K] of the unmasked inputs x [N, ...] (or a list of inputs,
        which may differ in shape where the model's dims are dynamic)."""
        xs = [self._check(np.asarray(a)) for a in x]
        return self._probs(xs)

    def _probs(self, xs: list[np.ndarray]) -> np.ndarray:
        groups = by_shape(xs)
        if len(groups) > 1:  # one instrumented model per shape, results in input order
            every = np.zeros((len(xs), max(self.num_classes, 2)))
            for idx in groups.values():
                every[idx] = self._probs([xs[i] for i in idx])
            return every
        size, pad = self._chunk_size(len(xs))

        def run(parts: list[np.ndarray], n: int) -> list[np.ndarray]:
            batch = parts[0]
            runner = self._runner(len(batch), tuple(batch.shape[1:]))
            runner.bind(self.input_name, batch, np.zeros(len(batch), np.int64),
                        self._baseline(batch))
            _, _, probs = runner.run(np.ones(runner.mask_shape, self.dtype))
            self.model_runs += len(batch)
            return [probs[:n].astype(np.float64)]

        (probs,) = run_padded(run, [np.stack(xs)], size, pad=pad)
        return probs

    def attribute(self, x: np.ndarray | Sequence[np.ndarray],
                  target: Target | Sequence[Target | Sequence[Target]] | None = None, *,
                  top_k: int | None = None,
                  callback: Callable[[Progress], None] | None = None,
                  ) -> Explanation | list[Explanation]:
        """Learn masks for x: one input (no batch axis) or a batch (a leading axis / a list).

        target: None (the top-1 class, or the top `top_k` classes), a class index or label
        for every input, or one entry per input (an index, a label, or a list of them).
        Returns one Explanation for one input and one target, otherwise a list ordered by
        input, then target.
        """
        rank = len(self.dims)
        if isinstance(x, np.ndarray) and x.ndim == rank - 1:
            xs, single = [x], True
        elif isinstance(x, np.ndarray) and x.ndim == rank:
            xs, single = list(x), False
        elif isinstance(x, np.ndarray):
            msg = (f"input has {x.ndim} axes; model input {self.input_name!r} takes {rank - 1} "
                   f"(one input) or {rank} (a batch)")
            raise InputError(msg)
        else:
            xs, single = list(x), False
        if not xs:
            msg = "no inputs to explain"
            raise InputError(msg)
        if target is None or isinstance(target, (int, str, np.integer)):
            per: list[Any] = [target] * len(xs)
        else:
            per = list(target)
            if len(per) != len(xs):
                msg = f"{len(per)} targets for {len(xs)} inputs; give one entry per input"
                raise InputError(msg)
        out = self.explain_many(xs, per, top_k=top_k, callback=callback)
        flat = [e for row in out for e in row]
        if single and len(flat) == 1:
            return flat[0]
        return flat

    def class_index(self, target: Target) -> int:
        if isinstance(target, str):
            if self.labels is None or target not in self.labels:
                if target.isdigit():
                    return self.class_index(int(target))
                if self.labels is None:
                    hint = "no labels were given: pass --labels or a class index"
                else:
                    import difflib

                    close = difflib.get_close_matches(target, self.labels, n=3, cutoff=0.5)
                    hint = (f"did you mean {', '.join(map(repr, close))}?" if close
                            else "pass a class index or a label from the labels")
                msg = f"unknown label {target!r}; {hint}"
                raise InputError(msg)
            return self.labels.index(target)
        k = max(self.num_classes, 2)
        if not 0 <= int(target) < k:
            msg = f"target class {int(target)} is out of range: the model has {k} classes"
            raise InputError(msg)
        return int(target)

    def _label(self, c: int) -> str | None:
        return self.labels[c] if self.labels is not None else None

    def explain_many(self, xs: Sequence[np.ndarray], targets: Sequence[Any], *,
                     top_k: int | None = None,
                     callback: Callable[[Progress], None] | None = None,
                     ) -> list[list[Explanation]]:
        """Masks for every input and each of its targets; one inner list per input."""
        xs = [self._check(np.asarray(a)) for a in xs]
        if top_k is not None and top_k < 1:
            msg = f"top-k must be at least 1, got {top_k}"
            raise InputError(msg)
        groups = by_shape(xs)
        if len(groups) > 1:
            # Dynamic dims (the checks above passed): one instrumented model per input shape.
            rows: list[list[Explanation]] = [[] for _ in xs]
            for idx in groups.values():
                part = self.explain_many([xs[i] for i in idx], [targets[i] for i in idx],
                                         top_k=top_k, callback=callback)
                for i, row in zip(idx, part, strict=True):
                    rows[i] = row
            return rows
        with blas_on_one_thread():
            return self._explain_one_shape(xs, targets, top_k, callback)

    def _explain_one_shape(self, xs: list[np.ndarray], targets: Sequence[Any],
                           top_k: int | None, callback: Callable[[Progress], None] | None,
                           ) -> list[list[Explanation]]:
        """explain_many for inputs of one shape (one instrumented model)."""
        t0 = time.perf_counter()
        probs = self._probs(xs)
        t_predict = time.perf_counter() - t0
        wanted: list[list[int]] = []
        for i, t in enumerate(targets):
            if t is None:
                order = np.argsort(-probs[i], kind="stable")
                wanted.append([int(c) for c in order[: top_k or 1]])
            elif isinstance(t, (int, str, np.integer)):
                wanted.append([self.class_index(t if isinstance(t, str) else int(t))])
            else:
                wanted.append([self.class_index(c) for c in t])
        c = self.config
        jobs = [Job(i, t, r) for i, ts in enumerate(wanted) for t in ts for r in range(c.restarts)]
        size, pad = self._chunk_size(len(jobs))
        chunks = [jobs[lo:lo + size] for lo in range(0, len(jobs), size)]
        results: dict[tuple[int, int, int], dict[str, Any]] = {}
        done = 0
        for ci, chunk in enumerate(chunks):
            def report(info: StepInfo, ci: int = ci, done: int = done) -> None:
                if callback is not None:
                    callback(Progress(ci + 1, len(chunks), info.step, info.total, done,
                                      len(jobs)))

            if c.mode == "areas":
                results.update(self._run_chunk_areas(xs, chunk, report))
            else:
                results.update(self._run_chunk(xs, chunk, size if pad else len(chunk), report))
            done += len(chunk)
            if callback is not None:
                callback(Progress(ci + 1, len(chunks), c.steps, c.steps, done, len(jobs)))
        out: list[list[Explanation]] = []
        for i, ts in enumerate(wanted):
            row = []
            for t in ts:
                best = min(range(c.restarts), key=lambda r: (results[(i, t, r)]["total"], r))
                row.append(self._explanation(results[(i, t, best)], probs[i], t, best, top_k,
                                             t_predict / len(xs)))
            out.append(row)
        return out

    def _explanation(self, r: dict[str, Any], before: np.ndarray, target: int, restart: int,
                     top_k: int | None, t_predict: float) -> Explanation:
        after = r["probs"]
        order = np.argsort(-before, kind="stable")[: max(5, top_k or 1)]
        top = tuple(TopClass(int(k), self._label(int(k)), float(before[k])) for k in order)
        notes = diagnose(r["mask"], r["losses"], after, target)
        for note in notes:
            warnings.warn(note, ConvergenceWarning, stacklevel=4)
        timings = {**r["timings"], "predict": t_predict}
        return Explanation(
            mask=r["mask"], target=target, label=self._label(target),
            prob_before=float(before[target]), prob_after=float(after[target]), top_k=top,
            losses=np.asarray(r["losses"], np.float32), final_losses=r["final"],
            steps=r["steps"], stopped_early=r["early"], restart=restart, config=self.config,
            seed=self.config.seed, provider=r["provider"], timings=timings,
            warnings=tuple(notes), weights=r["weights"], passes=r["passes"],
            details={"areas": r["areas"]} if "areas" in r else {})


def by_shape(xs: Sequence[np.ndarray]) -> dict[tuple[int, ...], list[int]]:
    """Input indices grouped by shape, in first-seen order."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, a in enumerate(xs):
        groups.setdefault(tuple(a.shape), []).append(i)
    return groups

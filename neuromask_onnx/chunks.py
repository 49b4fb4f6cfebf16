"""The optimisation of one chunk of jobs: the classic objective and the areas objective.

A chunk is up to `batch_size` jobs (input, target, restart) that share one session run per
step. `ChunkOptimizer` is a mixin of `explain.NeuroMask`: its methods read the explainer's
resolved model contract (`input_name`, `mask_axes`, `dtype`, `fixed_batch`), its config and
its runners (`_runner`, `_baseline`), declared below for the type checker, and count the rows
they run in `model_runs`. Each returns, per job, the raw result dict that
`NeuroMask._explanation` turns into an `Explanation`.

- classic (`_run_chunk`): sigmoid(W / T), upsampled to the mask axes; the instrumented
  model's loss and mask gradient, plus sparsity and smoothness, give RMSProp its loss and
  gradient (`optimize.optimize`).
- areas (`_run_chunk_areas`): `areas.AreasObjective`, every job's preserve and delete rows of
  every area in one run per step (split into the model's fixed batch where it has one);
  `init="prior"` starts from gradient x input against the substrates (`_prior_weights`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy.special import expit

from . import areas
from .mask import apply, upsample, upsample_matrix
from .optimize import NeuroMaskConfig, StepInfo, optimize
from .runtime import Runner, run_padded
from .smoothness import laplacian_kernel, smoothness, sparsity


@dataclass
class Job:
    input: int
    target: int
    restart: int


class ChunkOptimizer:
    """The optimisation loops of `explain.NeuroMask` (a mixin; see the module docstring)."""

    config: NeuroMaskConfig
    input_name: str
    mask_axes: tuple[int, ...]
    dtype: type[np.floating[Any]]
    provider_name: str
    fixed_batch: int | None
    rows_per_run: int | None
    model_runs: int
    _timings: dict[str, float]

    if TYPE_CHECKING:  # NeuroMask's; declared for the type checker only
        def _runner(self, batch: int, shape: tuple[int, ...]) -> Runner: ...

        def _baseline(self, x: np.ndarray, kind: str | None = None) -> np.ndarray | None: ...

    def _run_chunk(self, xs: list[np.ndarray], chunk: list[Job], batch: int,
                   report: Callable[[StepInfo], None]) -> dict[tuple[int, int, int], Any]:
        c = self.config
        n = len(chunk)
        padded = chunk + [chunk[-1]] * (batch - n)
        runner = self._runner(batch, xs[0].shape)
        x = np.stack([xs[j.input] for j in padded])
        target = np.array([j.target for j in padded], np.int64)
        runner.bind(self.input_name, x, target, self._baseline(x))
        full = tuple(runner.mask_shape[a] for a in self.mask_axes)
        coarse = c.coarse_shape(full)
        mats = [None if cs == s else upsample_matrix(s, cs, c.upsample)
                for s, cs in zip(full, coarse, strict=True)]
        kernel = laplacian_kernel(c.laplacian_size, len(coarse)) if len(coarse) <= 3 else None
        inv_t = np.float32(1.0 / c.temperature)
        last: dict[str, np.ndarray] = {}

        def fun(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            s = expit(w * inv_t).astype(np.float32)
            m = upsample(mats, s)
            pred, gm, probs = runner.run(m.reshape(runner.mask_shape).astype(self.dtype))
            self.model_runs += batch
            gm = gm.astype(np.float32).reshape(m.shape)
            gs = apply(mats, gm, adjoint=True)
            gw = gs * s * (np.float32(1.0) - s) * inv_t
            sp, gsp = sparsity(w, c.tau, c.sparse_reduce)
            if kernel is not None and c.smooth_weight > 0:
                sm, gsm = smoothness(w, kernel, c.smooth_norm, c.smooth_reduce)
            else:
                sm, gsm = np.zeros(w.shape[0], np.float32), np.zeros_like(w)
            f32 = np.float32
            total = f32(c.pred_weight) * pred.astype(f32) + f32(c.sparse_weight) * sp \
                + f32(c.smooth_weight) * sm
            grad = f32(c.pred_weight) * gw + f32(c.sparse_weight) * gsp \
                + f32(c.smooth_weight) * gsm
            last.update(total=total, pred=pred, sparse=sp, smooth=sm, probs=probs, mask=m)
            return total, grad

        w0 = np.stack([np.random.default_rng([c.seed, j.restart]).uniform(
            -c.tau, c.tau, coarse).astype(np.float32) for j in padded])
        t0 = time.perf_counter()
        res = optimize(fun, w0, steps=c.steps, learning_rate=c.learning_rate, decay=c.decay,
                       epsilon=c.epsilon, momentum=c.momentum, tolerance=c.tolerance,
                       patience=c.patience, callback=report)
        fun(res.w)  # the final weights: losses, mask and masked probabilities
        seconds = time.perf_counter() - t0
        steps_run = int(res.steps.max())
        timings = {"optimize": seconds, "per_step": seconds / (steps_run + 1),
                   "instrument": self._timings["instrument"],
                   "session": self._timings["session"], "batch": float(batch)}
        out = {}
        for b, job in enumerate(chunk):
            out[(job.input, job.target, job.restart)] = {
                "mask": last["mask"][b].astype(np.float32),
                "weights": res.w[b].copy(),
                "total": float(last["total"][b]),
                "final": {k: float(last[k][b]) for k in ("total", "pred", "sparse", "smooth")},
                "probs": last["probs"][b].astype(np.float64),
                "losses": res.losses[b],
                "steps": int(res.steps[b]),
                "early": bool(res.stopped_early[b]),
                "timings": dict(timings),
                "provider": runner.provider,
                "passes": int(res.steps[b]) + 1,
            }
        return out


    def _run_chunk_areas(self, xs: list[np.ndarray], chunk: list[Job],
                         report: Callable[[StepInfo], None],
                         ) -> dict[tuple[int, int, int], Any]:
        """The areas objective (`areas.AreasObjective`) for a chunk of jobs: every job's
        preserve and delete rows of every area in one session run per step (split into the
        model's fixed batch where it has one)."""
        c = self.config
        jobs = len(chunk)
        per = len(c.areas) * (2 if c.halves == "both" else 1)
        total_rows = jobs * per
        cuda = self.provider_name == "CUDAExecutionProvider"
        piece = self.fixed_batch or min(total_rows, self.rows_per_run or (
            total_rows if cuda else 2))
        runner = self._runner(piece, xs[0].shape)
        x_rows = np.stack([xs[j.input] for j in chunk for _ in range(per)])
        t_rows = np.array([j.target for j in chunk for _ in range(per)], np.int64)
        bases = [self._baseline(x_rows, kind) for kind in c.substrates]
        full = tuple(runner.mask_shape[a] for a in self.mask_axes)
        coarse = c.coarse_shape(full)
        mats = [None if cs == s else upsample_matrix(s, cs, c.upsample)
                for s, cs in zip(full, coarse, strict=True)]

        seen: dict[str, np.ndarray] = {}

        def run_rows(masks: np.ndarray, which: int) -> tuple[np.ndarray, np.ndarray]:
            def run(parts: list[np.ndarray], k: int) -> list[np.ndarray]:
                x, t, b, m = parts
                runner.bind(self.input_name, x, t, b)
                p, g, q = runner.run(m.reshape(runner.mask_shape).astype(self.dtype))
                self.model_runs += piece
                return [p[:k], g[:k].reshape(k, *full), q[:k]]

            base = bases[which]
            assert base is not None  # areas mode: every substrate is an explicit array
            p, g, seen["probs"] = run_padded(run, [x_rows, t_rows, base, masks], piece, pad=True)
            return p, g

        kernel = laplacian_kernel(c.laplacian_size, len(coarse)) if len(coarse) <= 3 else None
        obj = areas.AreasObjective(c, jobs, run_rows,
                                   lambda v, adjoint: apply(mats, v, adjoint), kernel)
        t0 = time.perf_counter()
        if c.init == "prior":
            w0 = self._prior_weights(runner, x_rows[::per], t_rows[::per], bases, per, full,
                                     mats)
        else:
            w0 = np.concatenate([areas.init_weights(c, coarse, j.restart) for j in chunk])
        res = optimize(obj, w0, steps=c.steps, learning_rate=c.learning_rate, decay=c.decay,
                       epsilon=c.epsilon, momentum=c.momentum, tolerance=c.tolerance,
                       patience=c.patience, callback=report, method=c.optimizer,
                       beta1=c.beta1, beta2=c.beta2)
        seconds = time.perf_counter() - t0
        # The map comes from the final weights (no model run needed); the probabilities and
        # losses are those of the last step's run.
        k = len(c.areas)
        final = upsample(mats, expit(res.w * obj.inv_t))  # at the last step's T
        steps_run = int(res.steps.max())
        timings = {"optimize": seconds, "per_step": seconds / max(steps_run, 1),
                   "instrument": self._timings["instrument"],
                   "session": self._timings["session"], "batch": float(piece)}
        last = obj.last
        largest = int(np.argmax(c.areas))
        out = {}
        for b, job in enumerate(chunk):
            rows = slice(b * k, (b + 1) * k)
            p_rows = last["p"][rows]
            # "after" = the kept (or, with halves="delete", the deleted) input of the largest
            # area, at the last step
            probs = seen["probs"][b * per + largest * len(obj.halves)].astype(np.float64)
            out[(job.input, job.target, job.restart)] = {
                "mask": (final[rows].mean(axis=0) if obj.detail is None else areas.with_detail(
                    final[rows].mean(axis=0), obj.detail[b], c.detail_weight, c.detail_sigma)
                         ).astype(np.float32),
                "weights": res.w[rows].copy(),
                "total": float(last["total"][rows].sum()),
                "final": {key: float(last[key][rows].sum())
                          for key in ("total", "pred", "sparse", "smooth")},
                "probs": probs,
                "losses": np.sum([res.losses[b * k + i] for i in range(k)], axis=0),
                "steps": int(res.steps[rows].max()),
                "early": bool(res.stopped_early[rows].all()),
                "timings": dict(timings),
                "provider": runner.provider,
                "passes": int(res.steps[rows].max()) * per
                + (len(c.substrates) if c.init == "prior" else 0),
                "areas": {f"{a:g}": {h: float(p_rows[i, hi]) for hi, h in
                                     enumerate(obj.halves)} for i, a in enumerate(c.areas)},
            }
        return out


    def _prior_weights(self, runner: Runner, x: np.ndarray, target: np.ndarray,
                       bases: Sequence[np.ndarray | None], per: int, full: tuple[int, ...],
                       mats: Sequence[np.ndarray | None]) -> np.ndarray:
        """init prior: a row per job and substrate b at mask = 1 gives d p / d mask = the sum
        over channels of (x - b) d p / d x_bar (gradient x input against b); summed over the
        substrates (one alone can be blind: a blur keeps a region's mean brightness) and
        smoothed by the upsampling's adjoint (each cell averages the pixels it covers)."""
        c = self.config
        piece = runner.batch
        n, nb = len(x), len(bases)
        # every (job, substrate) pair is one row; rows share runs, so no padding is wasted
        xs = np.repeat(x, nb, axis=0)
        ts = np.repeat(target, nb)
        bs = np.stack([np.zeros_like(x[0]) if b is None else b[j * per]
                       for j in range(n) for b in bases])

        def run(parts: list[np.ndarray], k: int) -> list[np.ndarray]:
            runner.bind(self.input_name, *parts)
            _, gi, _ = runner.run(np.ones(runner.mask_shape, self.dtype))
            self.model_runs += piece
            return [gi[:k].reshape(k, *full).astype(np.float32)]

        (rows,) = run_padded(run, [xs, ts, bs], piece, pad=True)
        g = rows.reshape(n, nb, *full).sum(axis=1)
        cover = apply(mats, np.ones((1, *full), np.float32), adjoint=True)
        coarse = apply(mats, g, adjoint=True) / np.maximum(cover, 1e-12)
        return np.concatenate([areas.prior_weights(c, v) for v in coarse])



"""The mask gradient from model runs alone, for models with an op that has no gradient rule.

Tree ensembles are piecewise constant (their exact gradient is zero almost everywhere), and an
op without a rule stops the exact gradient. `EstimateRunner` has the interface of explain's
exact runner (`bind`, `run(mask) -> (loss, grad_mask, probs)`) on a forward-only instrumented
model (`instrument(..., gradient=False)`: mask in, loss and probabilities out). Each `run` is
one batched session run of 2 d + 1 rows per job: the mask itself and d antithetic pairs
m +- sigma U_i, with U_i = A u_i and u_i random orthogonal directions of norm sqrt(n) drawn
at the mask's own resolution (the coarse grid of n cells NeuroMask optimises, A its
upsampling; with d >= n they form a full basis and only n are used). Then

    g_coarse = 1 / (2 sigma d) sum_i (L(m + sigma U_i) - L(m - sigma U_i)) u_i

estimates the gradient of the Gaussian-smoothed loss w.r.t. the coarse mask, and the runner
returns P g_coarse with A^T P = I (P = pinv(A)^T per axis), so that explain's adjoint step
gives back exactly g_coarse. The directions are shared by the jobs of a batch and drawn from a
generator seeded by the config's seed at every `bind`: a job's mask does not depend on which
batch it runs in, and runs repeat.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import onnx

from .errors import InputError, ModelContractError
from .io_names import BASELINE, LOSS, MASK, PROBS, TARGET
from .mask import upsample, upsample_matrix
from .optimize import NeuroMaskConfig
from .runtime import SessionRunner

DIRECTIONS = 16
"""Antithetic direction pairs per step (the default budget: 2 d + 1 model rows per job)."""
SIGMA = 0.2
"""Perturbation size in mask units (the mask lives in [0, 1])."""
_SEED_TAG = 0x657374  # 'est'


def _upsample_mats(full: Sequence[int], config: NeuroMaskConfig) -> list[np.ndarray | None]:
    coarse = [-(-s // config.mask_scale) for s in full]
    return [None if c == s else upsample_matrix(s, c, config.upsample)
            for s, c in zip(full, coarse, strict=True)]


class EstimateRunner(SessionRunner):
    """Forward-only instrumented model at batch jobs x (2 d + 1); estimates the mask gradient.

    Args:
        build: instruments the model at a given batch size with `gradient=False`.
        batch: jobs per run (the batch explain's optimiser sees).
        mask_axes: the input axes the mask varies over (explain's `mask_axes`).
        config: NeuroMask config (mask_scale, upsample and seed are read).
    """

    def __init__(self, build: Callable[[int], onnx.ModelProto], batch: int, provider: str,
                 threads: int | None, mask_axes: Sequence[int], config: NeuroMaskConfig,
                 directions: int | None = None, sigma: float | None = None) -> None:
        directions = DIRECTIONS if directions is None else directions
        sigma = SIGMA if sigma is None else sigma
        if directions < 1 or not sigma > 0:
            msg = (f"the gradient estimate needs at least one direction and a positive sigma, "
                   f"got {directions} and {sigma}")
            raise InputError(msg)
        self.directions, self.sigma, self.config = directions, float(sigma), config
        self.rows = 2 * directions + 1
        try:
            model = build(batch * self.rows)
        except ModelContractError as exc:
            if "fixed batch size" not in str(exc):
                raise
            msg = (f"the gradient estimate runs {self.rows} perturbed copies of each input in one "
                   "batch, which this model's fixed batch axis does not allow; re-export it with "
                   "a dynamic batch axis (or use --gradient exact if every op has a rule)")
            raise ModelContractError(msg) from None
        super().__init__(model, provider, threads)
        self.batch = batch
        self.mask_shape = (batch, *self.mask_shape[1:])
        self.full = tuple(int(self.mask_shape[a]) for a in mask_axes)
        self.mats = _upsample_mats(self.full, config)
        self.pinvs = [None if a is None else np.linalg.pinv(a.astype(np.float64)).T
                      for a in self.mats]
        self.coarse = tuple(s if a is None else a.shape[1]
                            for s, a in zip(self.full, self.mats, strict=True))
        self.rng = np.random.default_rng([config.seed, _SEED_TAG])
        self.runs = 0
        """Session runs so far (one per optimisation step, plus the predictions)."""
        self.evaluations = 0
        """Model rows evaluated so far (runs x jobs x (2 d + 1))."""

    def bind(self, x_name: str, x: np.ndarray, target: np.ndarray,
             baseline: np.ndarray | None) -> None:
        feeds = {x_name: np.repeat(x, self.rows, axis=0),
                 TARGET: np.repeat(target, self.rows, axis=0)}
        if self.has_baseline:
            assert baseline is not None
            feeds[BASELINE] = np.repeat(baseline, self.rows, axis=0)
        self.binding = None  # plain runs: the batch goes in with every mask anyway
        self.feeds = feeds
        self.rng = np.random.default_rng([self.config.seed, _SEED_TAG])

    def _directions(self) -> tuple[np.ndarray, int]:
        """d directions [d, *coarse] and how many of them are used (the rest are zero).

        The used ones are random orthogonal directions of norm sqrt(n) (n = coarse mask
        size; QR of a Gaussian block, so E[u u^T] = I). With d >= n the first n form a full
        basis, which makes the estimate the central difference of the loss along every
        coordinate, without sampling noise; the other rows repeat the mask unperturbed (a
        partial second block would bias the estimate toward its directions).
        """
        n = int(np.prod(self.coarse))
        k = min(self.directions, n)
        q, r = np.linalg.qr(self.rng.standard_normal((n, k)))
        u = np.zeros((self.directions, n))
        u[:k] = (q * np.where(np.diag(r) < 0, -1.0, 1.0)).T * np.sqrt(n)
        return u.reshape(self.directions, *self.coarse), k

    def run(self, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        b, d, s = self.batch, self.directions, self.sigma
        m = mask.astype(np.float64).reshape(b, *self.full)
        u, used = self._directions()
        big = upsample(self.mats, u)  # [d, *full]
        rows = np.concatenate([m[:, None], m[:, None] + s * big[None], m[:, None] - s * big[None]],
                              axis=1)  # [b, 2d + 1, *full]
        feed = rows.reshape(b * self.rows, *self.mask_shape[1:]).astype(mask.dtype)
        loss, probs = self.session.run([LOSS, PROBS], {**self.feeds, MASK: feed})
        self.runs += 1
        self.evaluations += b * self.rows
        loss = np.asarray(loss, np.float64).reshape(b, self.rows)
        probs = np.asarray(probs).reshape(b, self.rows, -1)
        slope = (loss[:, 1:d + 1] - loss[:, d + 1:]) / (2.0 * s * used)  # [b, d]
        g_coarse = np.tensordot(slope, u, axes=(1, 0))  # [b, *coarse]
        grad = upsample(self.pinvs, g_coarse).reshape(self.mask_shape).astype(mask.dtype)
        return loss[:, 0].astype(np.float32), grad, probs[:, 0]


def estimated_note(op_type: str, node_name: str) -> str:
    """The one line saying why the mask gradient is estimated (`--gradient auto`)."""
    return (f"op {op_type} (node {node_name!r}) has no gradient rule: the mask gradient is "
            f"estimated from batched model runs ({DIRECTIONS} antithetic direction pairs a step)")


def record(runners: Sequence[Any], gradient: str) -> dict[str, Any]:
    """The JSON record of which gradient was used and how many model runs it took."""
    est = [r for r in runners if isinstance(r, EstimateRunner)]
    if gradient != "estimate" or not est:
        return {"kind": gradient}
    return {"kind": "estimate", "model_runs": sum(r.runs for r in est),
            "model_evaluations": sum(r.evaluations for r in est),
            "directions": est[0].directions, "sigma": est[0].sigma}

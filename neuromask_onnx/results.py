"""What NeuroMask returns and reports: `Explanation`, `TopClass`, `Progress`, `diagnose`.

Plain data, apart from the explainer (`explain.NeuroMask` makes them) so that the modules
that only read results (`outputs`, `pipeline`, the metrics and reports) need not import the
explainer. `diagnose` says why a learned mask should not be trusted; its lines become
`ConvergenceWarning`s and the `warnings` of the Explanation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .optimize import NeuroMaskConfig


@dataclass(frozen=True)
class TopClass:
    index: int
    label: str | None
    prob: float


@dataclass(frozen=True)
class Explanation:
    """One learned mask and everything needed to judge it."""

    mask: np.ndarray
    """float32 mask over the mask axes at model resolution (e.g. [H, W]), values in [0, 1]."""
    target: int
    label: str | None
    prob_before: float
    """Target probability on the unmasked input."""
    prob_after: float
    """Target probability on the masked input."""
    top_k: tuple[TopClass, ...]
    """The original (unmasked) prediction's top classes."""
    losses: np.ndarray
    """Total loss at every step."""
    final_losses: dict[str, float]
    """total, pred, sparse and smooth at the final weights."""
    steps: int
    stopped_early: bool
    restart: int
    """Which restart won (lowest final total loss)."""
    config: NeuroMaskConfig
    seed: int
    provider: str
    timings: dict[str, float]
    warnings: tuple[str, ...] = ()
    weights: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32), repr=False)
    """The mask weights W at the mask resolution (before sigmoid and upsampling)."""
    passes: int = 0
    """Rows this explanation ran through the instrumented model (one forward and one
    backward pass each), padding excluded."""
    details: dict[str, Any] = field(default_factory=dict)
    """areas mode: the target probability of each area's kept and deleted input at the last
    step, e.g. {"0.05": {"preserve": 0.71, "delete": 0.02}, ...}."""
    scores: dict[str, float] = field(default_factory=dict)
    """The map's own deletion / insertion AUCs under both protocols (`metrics.self_check`),
    when asked for (`explain --score`)."""


@dataclass(frozen=True)
class Progress:
    """What the progress callback sees after every step of every chunk."""

    chunk: int
    chunks: int
    step: int
    steps: int
    jobs_done: int
    jobs: int



def diagnose(mask: np.ndarray, losses: np.ndarray, probs_after: np.ndarray,
             target: int) -> list[str]:
    """Why a learned mask should not be trusted (empty when nothing looks wrong)."""
    notes = []
    if mask.max() < 0.05:
        notes.append("the mask collapsed to all-off (max < 0.05): the sparsity weight may be "
                     "too high for this model; lower --sparse-weight or raise --pred-weight")
    elif mask.min() > 0.95:
        notes.append("the mask collapsed to all-on (min > 0.95): raise --sparse-weight or run "
                     "more --steps")
    if len(losses) > 1 and abs(float(losses[-1]) - float(losses[0])) <= 1e-6 * max(
            1.0, abs(float(losses[0]))):
        notes.append("the loss never moved: the model's output may not depend on the input; "
                     "check --output and --output-kind")
    if int(np.argmax(probs_after)) != target:
        notes.append(f"the masked input is no longer classified as the target {target} "
                     f"(p = {float(probs_after[target]):.3g}): lower --sparse-weight or "
                     "raise --pred-weight")
    return notes


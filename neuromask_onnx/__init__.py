"""neuromask-onnx: explain ONNX classifiers with NeuroMask, on onnxruntime alone."""

from __future__ import annotations

__version__ = "0.1.0"

from .errors import (
    ConvergenceWarning,
    InputError,
    ModelContractError,
    NeuromaskError,
    UnsupportedOpError,
)
from .explain import Explanation, NeuroMask
from .optimize import PRESETS, NeuroMaskConfig
from .preprocess import load_input
from .rewrite import instrument, save_model, vjp

__all__ = [
    "PRESETS",
    "ConvergenceWarning",
    "Explanation",
    "NeuroMask",
    "NeuroMaskConfig",
    "InputError",
    "ModelContractError",
    "NeuromaskError",
    "UnsupportedOpError",
    "__version__",
    "instrument",
    "load_input",
    "save_model",
    "vjp",
]

"""neuromask-onnx: explain ONNX classifiers with NeuroMask, on onnxruntime alone."""

from __future__ import annotations

__version__ = "0.1.0"

from .errors import (  # noqa: E402
    ConvergenceWarning,
    InputError,
    ModelContractError,
    NeuromaskError,
    UnsupportedOpError,
)
from .rewrite import instrument, save_model, vjp  # noqa: E402

__all__ = [
    "ConvergenceWarning",
    "InputError",
    "ModelContractError",
    "NeuromaskError",
    "UnsupportedOpError",
    "__version__",
    "instrument",
    "save_model",
    "vjp",
]

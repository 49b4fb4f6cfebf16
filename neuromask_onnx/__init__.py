"""neuromask-onnx: explain ONNX classifiers with NeuroMask, on onnxruntime alone.

The public names below are imported on first use (PEP 562 `__getattr__`), so that
`import neuromask_onnx` and `neuromask --version` cost nothing: onnxruntime, onnx, numpy and
scipy load only when a command or a caller needs them.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_LAZY = {
    "ConvergenceWarning": "errors",
    "InputError": "errors",
    "ModelContractError": "errors",
    "NeuromaskError": "errors",
    "UnsupportedOpError": "errors",
    "Explanation": "explain",
    "NeuroMask": "explain",
    "PRESETS": "optimize",
    "NeuroMaskConfig": "optimize",
    "load_input": "preprocess",
    "instrument": "rewrite",
    "save_model": "files",
    "vjp": "reverse",
}

if TYPE_CHECKING:
    from .errors import (
        ConvergenceWarning,
        InputError,
        ModelContractError,
        NeuromaskError,
        UnsupportedOpError,
    )
    from .explain import Explanation, NeuroMask
    from .files import save_model
    from .optimize import PRESETS, NeuroMaskConfig
    from .preprocess import load_input
    from .reverse import vjp
    from .rewrite import instrument


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    msg = f"module {__name__!r} has no attribute {name!r}"
    raise AttributeError(msg)


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])


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

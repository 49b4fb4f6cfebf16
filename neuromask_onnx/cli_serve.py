"""The serving and scale side of the command line, kept out of cli.py.

- `instrument MODEL --triton REPO`: `instrument_triton` (cli.py's `instrument` hands over
  when --triton is given; the option types are `TritonOpt` and friends below).
- `explain --server URL --served-model NAME INPUT...`: `remote_model` (cli.py's `explain`
  builds a `remote.RemoteNeuroMask` from it instead of a local `NeuroMask`).
- `explain-dataset` and `serve`: commands added by `register(app)`.

This module imports nothing from cli.py at import time (cli.py imports the option types from
here); the commands reach cli.py's `_errors` when they run.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

if TYPE_CHECKING:
    from .remote import ServedModel

_TRITON = "Triton repository (with --triton)"
_REMOTE = "Served model (with --server)"

TritonOpt = Annotated[Optional[Path], typer.Option(  # noqa: UP045
    "--triton", help="Write a Triton model repository here instead of -o: "
    "REPO/NAME/config.pbtxt and REPO/NAME/1/model.onnx.", rich_help_panel=_TRITON,
    show_default=False)]
TritonNameOpt = Annotated[Optional[str], typer.Option(  # noqa: UP045
    "--triton-name", help="Model name in the repository (default: the file's stem).",
    rich_help_panel=_TRITON, show_default=False)]
PythonBackendOpt = Annotated[bool, typer.Option(
    "--python-backend", help="Triton's Python backend (model.py running model.onnx with "
    "onnxruntime) instead of the onnxruntime backend.", rich_help_panel=_TRITON)]
MaxBatchOpt = Annotated[int, typer.Option(
    "--max-batch-size", min=1, help="Triton max_batch_size (dynamic batching).",
    rich_help_panel=_TRITON)]
TritonLabelsOpt = Annotated[Optional[Path], typer.Option(  # noqa: UP045
    "--labels", help="Class names, one a line (default: the model's metadata).",
    rich_help_panel=_TRITON, show_default=False)]
TritonPrepOpt = Annotated[Optional[str], typer.Option(  # noqa: UP045
    "--preprocess", help="Preprocessing preset to record (default: the model's metadata).",
    rich_help_panel=_TRITON, show_default=False)]
ServerOpt = Annotated[Optional[str], typer.Option(  # noqa: UP045
    "--server", help="Run the model on this KServe-V2 inference server (Triton, KServe, "
    "MLServer): grpc://HOST:PORT or http://HOST:PORT. MODEL is then the first input.",
    rich_help_panel=_REMOTE, show_default=False)]
ServedOpt = Annotated[Optional[str], typer.Option(  # noqa: UP045
    "--served-model", help="Name of the instrumented model on the server.",
    rich_help_panel=_REMOTE, show_default=False)]
ServerTimeoutOpt = Annotated[float, typer.Option(
    "--server-timeout", help="Seconds per server call (transient errors are retried 3 "
    "times).", rich_help_panel=_REMOTE)]


def instrument_triton(model: Path, repo: Path, *, name: str | None, python_backend: bool,
                      max_batch_size: int, labels: Path | None, preprocess: str | None,
                      force: bool, **instrument_opts: Any) -> None:
    """`neuromask instrument MODEL --triton REPO`."""
    from .cli import _errors, _read_labels
    from .preprocess import preprocessing_preset
    from .triton import write_repository

    with _errors():
        target = write_repository(
            model, repo, name=name, max_batch_size=max_batch_size,
            python_backend=python_backend, labels=_read_labels(labels),
            preprocessing=preprocessing_preset(preprocess) if preprocess else None,
            force=force, **instrument_opts)
    kind = "python" if python_backend else "onnxruntime"
    typer.echo(f"wrote Triton model {target.name!r} ({kind} backend, max_batch_size "
               f"{max_batch_size}) in {target}")


def remote_model(server: str, served_model: str | None, timeout: float = 30.0) -> ServedModel:
    """The served model behind `explain --server` (errors are NeuromaskErrors)."""
    from .errors import InputError
    from .remote import ServedModel

    if not served_model:
        msg = "--server needs --served-model NAME (the instrumented model's name there)"
        raise InputError(msg)
    return ServedModel.connect(server, served_model, timeout=timeout)


def register(app: typer.Typer) -> None:
    """Add the serving commands to the `neuromask` app."""

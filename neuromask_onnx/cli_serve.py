"""The serving and scale side of the command line, kept out of cli.py.

- `instrument MODEL --triton REPO`: `instrument_triton` (cli.py's `instrument` hands over
  when --triton is given; the option types are `TritonOpt` and friends below).
- `explain --server URL --served-model NAME INPUT...`: the options below (`pipeline`
  builds a `remote.RemoteNeuroMask` from `remote.remote_model` instead of a local `NeuroMask`).
- `explain-dataset` and `serve`: commands added by `register(app)`.

This module imports nothing from cli.py (cli.py imports the option types from here); errors
become one line through `cliparams.one_line_errors`, as in cli.py.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from .cliparams import finite_float


class ServedObjective(str, Enum):
    """The losses a served instrumented model can have (`serve --objective`)."""

    probability = "probability"
    cross_entropy = "cross_entropy"


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
    "times).", rich_help_panel=_REMOTE, parser=finite_float, metavar="<float>")]


def instrument_triton(model: Path, repo: Path, *, name: str | None, python_backend: bool,
                      max_batch_size: int, labels: Path | None, preprocess: str | None,
                      force: bool, **instrument_opts: Any) -> None:
    """`neuromask instrument MODEL --triton REPO`."""
    from .cliparams import one_line_errors as _errors
    from .errors import InputError
    from .outputs import check_writable
    from .pipeline import read_labels as _read_labels
    from .preprocess import preprocessing_preset
    from .triton import write_repository

    with _errors():
        check_writable(repo, "--triton")
        try:
            target = write_repository(
                model, repo, name=name, max_batch_size=max_batch_size,
                python_backend=python_backend, labels=_read_labels(labels),
                preprocessing=preprocessing_preset(preprocess) if preprocess else None,
                force=force, **instrument_opts)
        except OSError as exc:
            msg = f"cannot write the Triton repository {str(repo)!r}: {exc.strerror or exc}"
            raise InputError(msg) from None
    kind = "python" if python_backend else "onnxruntime"
    typer.echo(f"wrote Triton model {target.name!r} ({kind} backend, max_batch_size "
               f"{max_batch_size}) in {target}")


def explain_dataset(
    model: Annotated[Path, typer.Argument(help="The ONNX classifier.", show_default=False)],
    source: Annotated[Path, typer.Argument(
        help="A directory of images/.npy, a file list (.txt) or a manifest (.parquet/.csv "
        "with columns input[, target]).", show_default=False)],
    out: Annotated[Path, typer.Option("-o", "--out", help="Output directory.")] = Path(
        "neuromask-dataset"),
    *,
    address: Annotated[Optional[str], typer.Option(  # noqa: UP045
        "--address", help="Join this Ray cluster (default: start a local one).",
        show_default=False)] = None,
    num_cpus: Annotated[int, typer.Option("--num-cpus", min=1,
                                          help="CPUs of the local Ray.")] = 2,
    actors: Annotated[Optional[int], typer.Option(  # noqa: UP045
        "--actors", min=1, help="Actor pool size (default: --num-cpus).",
        show_default=False)] = None,
    object_store_mb: Annotated[int, typer.Option(
        "--object-store-mb", min=64, help="Object store of the local Ray (MiB).")] = 256,
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", min=1,
                                            help="Inputs per actor call and session run.")] = 8,
    preset_name: Annotated[str, typer.Option("--preset", help="NeuroMask preset.")] = "default",
    steps: Annotated[Optional[int], typer.Option(  # noqa: UP045
        "--steps", help="RMSProp steps (default: the preset's).", show_default=False)] = None,
    seed: Annotated[Optional[int], typer.Option(  # noqa: UP045
        "--seed", help="Seed of W0.", show_default=False)] = None,
    preprocess: Annotated[Optional[str], typer.Option(  # noqa: UP045
        "--preprocess", help="Preprocessing preset (default: the model's metadata).",
        show_default=False)] = None,
    labels: Annotated[Optional[Path], typer.Option(  # noqa: UP045
        "--labels", help="Class names, one a line.", show_default=False)] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress.")] = False,
) -> None:
    """Explain every input of SOURCE on Ray: per-input files plus summary.parquet/.csv;
    a rerun skips inputs whose outputs are complete."""
    from .cliparams import one_line_errors as _errors
    from .dataset import explain_dataset as run
    from .optimize import preset
    from .pipeline import read_labels as _read_labels
    from .preprocess import preprocessing_preset

    def show(done: int, total: int) -> None:
        if not quiet:
            typer.echo(f"{done}/{total} inputs", err=True)

    with _errors():
        rows = run(model, source, out, config=preset(preset_name).replace(steps=steps, seed=seed),
                   preprocessing=preprocessing_preset(preprocess) if preprocess else None,
                   labels=_read_labels(labels), address=address, num_cpus=num_cpus,
                   actors=actors, batch_size=batch_size, object_store_mb=object_store_mb,
                   progress=show)
    bad = [r for r in rows if str(r["status"]).startswith("error")]
    typer.echo(f"{len(rows)} inputs, {len(rows) - len(bad)} explained, {len(bad)} errors; "
               f"summary in {out / 'summary.parquet'} and {out / 'summary.csv'}")
    for r in bad:
        typer.echo(f"{r['input']}: {r['status']}", err=True)


def serve(
    model: Annotated[Optional[Path], typer.Argument(  # noqa: UP045
        help="The ONNX classifier (or --predictor-host).", show_default=False)] = None,
    *,
    predictor_host: Annotated[Optional[str], typer.Option(  # noqa: UP045
        "--predictor-host", help="Explain the instrumented model served at this V2 server "
        "(grpc://HOST:PORT or http://HOST:PORT) instead of MODEL.", show_default=False)] = None,
    served_model: ServedOpt = None,
    host: Annotated[str, typer.Option("--host", help="Address to bind (loopback unless "
                                      "you open it).")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=1, max=65535)] = 8080,
    grpc_port: Annotated[Optional[int], typer.Option(  # noqa: UP045
        "--grpc-port", min=1, max=65535, help="Also serve V2 infer over gRPC on HOST:PORT "
        "(default: off).", show_default=False)] = None,
    objective: Annotated[ServedObjective, typer.Option(
        "--objective", help="Loss of the instrumented model served over V2 infer "
        "(probability: the default preset; cross_entropy: the classic presets).")
    ] = ServedObjective.probability,
    name: Annotated[Optional[str], typer.Option(  # noqa: UP045
        "--name", help="Model name in the URLs (default: the file's stem).",
        show_default=False)] = None,
    workers: Annotated[int, typer.Option(
        "--workers", min=1, help="Requests explained at once (one session each).")] = 1,
    max_steps: Annotated[int, typer.Option("--max-steps", min=1)] = 1000,
    max_instances: Annotated[int, typer.Option("--max-instances", min=1)] = 8,
    max_pixels: Annotated[int, typer.Option("--max-pixels", min=1)] = 16_000_000,
    max_body_mb: Annotated[int, typer.Option("--max-body-mb", min=1)] = 20,
    preprocess: Annotated[Optional[str], typer.Option(  # noqa: UP045
        "--preprocess", help="Preprocessing preset (default: the model's metadata).",
        show_default=False)] = None,
    labels: Annotated[Optional[Path], typer.Option(  # noqa: UP045
        "--labels", help="Class names, one a line.", show_default=False)] = None,
) -> None:
    """Serve MODEL's explanations with KServe: V1 :predict and :explain on HOST:PORT, and
    its instrumented model over V2 infer (for `explain --server`)."""
    import re

    from .cliparams import one_line_errors as _errors
    from .pipeline import read_labels as _read_labels
    from .preprocess import preprocessing_preset
    from .serve import Limits, run
    from .serve import model as build

    with _errors():
        try:
            import kserve  # noqa: F401
        except ImportError:
            from .errors import InputError

            msg = "serve runs on KServe; pip install 'neuromask-onnx[serve]'"
            raise InputError(msg) from None
        stem = served_model if model is None else model.name.split(".")[0]
        stem = re.sub(r"[^A-Za-z0-9_-]", "_", stem or "model")
        m = build(model, name=name or stem, predictor=predictor_host, served_model=served_model,
                  preprocessing=preprocessing_preset(preprocess) if preprocess else None,
                  labels=_read_labels(labels), workers=workers,
                  objective=objective.value,
                  limits=Limits(max_body_mb << 20, max_instances, max_pixels, max_steps))
    grpc = f", gRPC on {host}:{grpc_port}" if grpc_port else ""
    typer.echo(f"serving {m.name!r} on http://{host}:{port}/v1/models/{m.name}:explain "
               f"(V2 infer at /v2/models/{m.name}/infer{grpc})", err=True)
    run(m, host=host, port=port, grpc_port=grpc_port)


def register(app: typer.Typer, cls: type[Any] | None = None) -> None:
    """Add the serving commands to the `neuromask` app (`cls`: the app's command class)."""
    app.command("explain-dataset", cls=cls)(explain_dataset)
    app.command("serve", cls=cls)(serve)

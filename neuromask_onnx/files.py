"""Writing and hashing files: the one place that puts bytes on disk safely.

The bottom of the package's import graph: it imports nothing of the package, so every module
(outputs, rewrite, dataset, triton) can use it without an import cycle. Every write goes
through a temporary file in the same directory and a rename, so a crash or Ctrl-C never
leaves a half-written file; a failed write removes its temporary file and re-raises (the
callers turn an OSError into one `InputError` line). onnx is imported only by `save_model`'s
external-data path, so importing this module costs nothing.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import onnx

EXTERNAL_DATA_BYTES = 1_500_000_000
"""Models larger than this are saved with their weights in an external data file (protobuf
cannot serialise a message over 2 GB)."""


def atomic_write(path: Path, data: bytes) -> None:
    """Write through a temporary file and a rename: a crash or Ctrl-C leaves no half file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # mkstemp creates 0600; give the file the mode a plain open() would.
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        Path(tmp).replace(path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def sha256(path: str | Path) -> str:
    """The hex SHA-256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def save_model(model: onnx.ModelProto, path: str | Path) -> None:
    """Write atomically; weights over 1.5 GB go to an external data file beside it."""
    path = Path(path)
    if model.ByteSize() <= EXTERNAL_DATA_BYTES:
        atomic_write(path, model.SerializeToString())
        return
    import onnx

    tmp = path.with_name(f".{path.name}.tmp")
    try:
        onnx.save(model, str(tmp), save_as_external_data=True, location=f"{path.name}.data")
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise

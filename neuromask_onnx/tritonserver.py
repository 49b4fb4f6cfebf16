"""Start the Triton Inference Server binary that `nvidia-pytriton` ships, on loopback.

NVIDIA's Triton comes as containers; the only pip-installable build is the one inside the
`nvidia-pytriton` wheel (its Python backend only, no onnxruntime backend). `local_server`
runs that binary over a model repository written by `triton.write_repository(...,
python_backend=True)`, for tests, benchmarks and trying things out; production serves the
onnxruntime-backend repository in an NVIDIA Triton container.

What the binary needs (found by hand, see shared/research/serving-and-scale.md): a copy of
the server tree with the Python-backend stub of this interpreter's version placed in
`backends/python/`, the wheel's bundled libraries and this interpreter's libpython on
`LD_LIBRARY_PATH`, and this environment's `bin` first on `PATH` (the stub takes its
site-packages from the first `python3` there, so `model.py` sees this environment's numpy and
onnxruntime). HTTP, gRPC and metrics bind 127.0.0.1 on free ports.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .errors import InputError
from .localserver import free_port, read_log, stop, wait_ready


def server_dist() -> Path:
    """The `tritonserver` tree inside the installed nvidia-pytriton wheel."""
    try:
        import pytriton
    except ImportError:
        msg = "the Triton binary comes with nvidia-pytriton; pip install nvidia-pytriton"
        raise InputError(msg) from None
    return Path(pytriton.__file__).parent / "tritonserver"


@dataclass
class LocalServer:
    http_port: int
    grpc_port: int
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def grpc_url(self) -> str:
        return f"grpc://127.0.0.1:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def log_text(self) -> str:
        return read_log(self.log)


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready",
                                    timeout=1) as r:
            return bool(r.status == 200)
    except OSError:
        return False


@contextlib.contextmanager
def local_server(repository: str | Path, *, timeout: float = 60.0,
                 workdir: str | Path | None = None) -> Iterator[LocalServer]:
    """Run tritonserver over `repository` until the block ends (SIGTERM, then SIGKILL)."""
    dist = server_dist()
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    stub = dist / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.exists():
        msg = f"nvidia-pytriton has no Python-backend stub for Python {version}"
        raise InputError(msg)
    with tempfile.TemporaryDirectory(prefix="nm-triton-", dir=workdir) as tmp:
        tree = Path(tmp) / "tritonserver"
        shutil.copytree(dist, tree, ignore=shutil.ignore_patterns("python_backend_stubs"))
        shutil.copy(stub, tree / "backends" / "python" / "triton_python_backend_stub")
        env = os.environ.copy()
        libs = [str(dist.parent.parent / "nvidia_pytriton.libs"),
                str(Path(sys.base_prefix) / "lib")]
        if env.get("LD_LIBRARY_PATH"):
            libs.append(env["LD_LIBRARY_PATH"])
        env["LD_LIBRARY_PATH"] = ":".join(libs)
        env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
        http, grpc, metrics = free_port(), free_port(), free_port()
        log = Path(tmp) / "tritonserver.log"
        cmd = [str(tree / "bin" / "tritonserver"), f"--model-repository={repository}",
               f"--backend-directory={tree / 'backends'}",
               f"--cache-directory={tree / 'caches'}",
               "--http-address=127.0.0.1", f"--http-port={http}",
               "--grpc-address=127.0.0.1", f"--grpc-port={grpc}",
               "--metrics-address=127.0.0.1", f"--metrics-port={metrics}",
               "--allow-metrics=false", "--exit-timeout-secs=1", "--log-verbose=0"]
        with log.open("wb") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env,
                                    cwd=tmp)
        server = LocalServer(http, grpc, proc, log)
        try:
            wait_ready(proc, lambda: _ready(http), log=log, timeout=timeout,
                       what="tritonserver", interval=0.1)
            yield server
        finally:
            stop(proc, 10)

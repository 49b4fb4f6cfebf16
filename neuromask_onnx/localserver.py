"""Start a server process on loopback, wait until it is ready, and always stop it.

The tests, the load test and `tritonserver.local_server` all run real servers in child
processes on free 127.0.0.1 ports; this module is the one copy of how: `free_port()` picks a
port, `wait_ready` polls a readiness probe until it says yes (failing with the tail of the
server's log when the process exits first or a deadline passes), `stop` ends a process
(SIGTERM, a grace period, then SIGKILL), and `serving(...)` does all three for
`python -m neuromask_onnx serve ARGS --port PORT`, whose readiness is KServe's
`GET /v1/models/NAME` answering `"ready": true`.

Conventions: the child's stdout and stderr go to one log file; the child imports this same
copy of the package (its PYTHONPATH is the directory holding it); nothing here imports kserve
or tritonclient (their V2 protos clash in one process, and the callers load one or the other).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parent.parent
"""The directory that holds this package: the child server's PYTHONPATH."""

LOG_TAIL = 2000
"""Characters of the server's log quoted when it does not become ready."""


class ServerStartError(RuntimeError):
    """A server process exited, or was not ready by its deadline; the message ends with its
    log's tail."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def stop(proc: subprocess.Popen[bytes], grace: float) -> None:
    """SIGTERM `proc`, give it `grace` seconds to exit, then SIGKILL it; returns once it has
    been reaped. A process that has already exited is left as it is."""
    proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def read_log(log: Path) -> str:
    """The text of a server's log so far ("" before it exists)."""
    return log.read_text(errors="replace") if log.exists() else ""


def wait_ready(proc: subprocess.Popen[bytes], ready: Callable[[], bool], *, log: Path,
               timeout: float | None, what: str, interval: float) -> float:
    """Call `ready()` every `interval` seconds until it returns True; the seconds that took.
    Raises ServerStartError (with the log's tail) when `proc` exits first or `timeout`
    seconds pass (None: no deadline)."""
    t0 = time.monotonic()
    while not ready():
        rc = proc.poll()
        late = timeout is not None and time.monotonic() - t0 > timeout
        if rc is not None or late:
            why = f"exited with {rc}" if rc is not None else f"was not ready after {timeout} s"
            msg = f"{what} {why} (log {log}): {read_log(log)[-LOG_TAIL:]}"
            raise ServerStartError(msg)
        time.sleep(interval)
    return time.monotonic() - t0


def kserve_ready(url: str) -> bool:
    """Whether KServe's model endpoint `url` (`.../v1/models/NAME`) says `"ready": true`."""
    try:
        with urllib.request.urlopen(url, timeout=1) as r:
            return bool(json.loads(r.read())["ready"])
    except OSError:
        return False


@dataclass
class Served:
    """A running `neuromask serve` child."""

    port: int
    name: str
    process: subprocess.Popen[bytes]
    log: Path
    ready_s: float
    """Seconds from the start until the model reported ready."""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def model_url(self) -> str:
        """KServe's V1 endpoint of the model: add `:predict` or `:explain`."""
        return f"{self.url}/v1/models/{self.name}"

    def log_text(self) -> str:
        return read_log(self.log)


@contextlib.contextmanager
def serving(args: Sequence[str], name: str, *, log: str | Path | None = None,
            timeout: float | None = 90.0, grace: float = 15.0,
            env: Mapping[str, str] | None = None,
            command: Sequence[str] | None = None) -> Iterator[Served]:
    """Run `python -m neuromask_onnx serve ARGS --port PORT` on a free loopback port until the
    block ends, then `stop` it (`grace` seconds after SIGTERM). Yields once `/v1/models/NAME`
    reports ready; raises ServerStartError with the log's tail if the process exits first or
    `timeout` seconds pass (None: wait as long as it lives).

    `log` is where the child's stdout and stderr go (default: a `server.log` in a new
    temporary directory, kept for reading afterwards); `env` is added to this process's
    environment; `command` replaces `python -m neuromask_onnx serve` (for tests of this
    module)."""
    port = free_port()
    path = Path(log) if log is not None else (
        Path(tempfile.mkdtemp(prefix="nm-serve-")) / "server.log")
    child_env = {**os.environ, "PYTHONPATH": str(PACKAGE_ROOT), **(env or {})}
    cmd = [*(command or [sys.executable, "-m", "neuromask_onnx", "serve"]), *args,
           "--port", str(port)]
    with path.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=child_env)
    try:
        url = f"http://127.0.0.1:{port}/v1/models/{name}"
        took = wait_ready(proc, lambda: kserve_ready(url), log=path, timeout=timeout,
                          what="`neuromask serve`", interval=0.2)
        yield Served(port, name, proc, path, took)
    finally:
        stop(proc, grace)

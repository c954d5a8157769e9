"""Start one of our HTTP services as its own process on a free 127.0.0.1 port, the way users run it."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def served(module: str, *args: str, timeout_s: float = 90.0) -> Iterator[tuple[str, subprocess.Popen]]:
    """``python -m MODULE --port P ARGS...`` until ``/healthz`` answers 200; yields (base URL, process).

    The process gets SIGTERM on exit (its output is then in ``proc.stdout``'s captured text via
    ``proc.output``); a process that dies while starting fails the test with its output.
    """
    port = free_port()
    cmd = [sys.executable, "-m", module, "--port", str(port), *args]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            assert proc.poll() is None, f"{module} exited while starting:\n{proc.stdout.read()[-3000:]}"
            try:
                if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass  # not listening yet
            assert time.monotonic() < deadline, f"{module} did not come up in {timeout_s:.0f} s"
            time.sleep(0.2)
        yield url, proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.output = proc.communicate(timeout=30)[0]  # type: ignore[attr-defined]
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.output = proc.communicate()[0]  # type: ignore[attr-defined]

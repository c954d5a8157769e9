"""Sandboxed executor for untrusted matplotlib code: a pre-forked zygote per worker, one forked child per sample.

Usage::

    from reward_servers.sandbox import Sandbox, SandboxConfig

    with Sandbox(SandboxConfig(timeout_s=10)) as sb:
        res = sb.run("import matplotlib.pyplot as plt\\nplt.plot([1, 2, 3])")
        res.status, res.png[:8], res.trace["calls"], res.isolation

    python -m pytest tests/reward_servers -q          # tests (hostile corpus in test_hostile.py)

How it works: ``Sandbox`` starts ``python -m reward_servers.zygote`` with a minimal environment and talks to it over
an inherited socketpair (length-prefixed pickles; both ends are trusted). The zygote imports and warms numpy, scipy
and matplotlib once, isolates itself once (namespaces, private tmpfs), then forks one child per sample
(``reward_servers/_child.py``). Everything a child sends back is untrusted: a bounded JSON header plus raw PNG
bytes that the zygote decodes before accepting.

Sandbox: what is covered and what is not
-----------------------------------------
Covered (as root, isolation ``netns+mountns+setuid+rlimits``; this is what CI and the dev machines run):

* No network: the zygote lives in a new, empty network namespace (not even loopback is up), so connections to
  127.0.0.1 or anywhere else fail.
* Filesystem writes: /tmp, /var/tmp and /dev/shm are private tmpfs mounts (size-capped) that the host never sees;
  the child runs as an unprivileged per-worker uid (61000 + worker_index, locked so two live zygotes never share
  one) in a fresh 0700 directory, so it cannot write anywhere root owns. The private tmpfs is replaced after every
  sample, so nothing a sample leaves survives into the next one.
* Secrets: the zygote starts with a minimal environment (nothing of the caller's environment but PATH, locale and
  Python/venv variables), the child's environment is cleared again, /root and /home are hidden under empty tmpfs
  (the Python installation is bind-mounted back read-only), /etc/passwd and /etc/group are replaced by minimal
  copies, and a different uid cannot read /proc/<pid>/environ of the zygote or of the caller.
* Resources: RLIMIT_AS, RLIMIT_CPU, RLIMIT_FSIZE, RLIMIT_NPROC (per sandbox uid, so fork bombs are bounded),
  RLIMIT_NOFILE, no core files, a wall-clock timeout; figure size and dpi are clamped before anything is drawn;
  stdout/stderr are drained by the zygote keeping only tails, so printing gigabytes costs neither memory nor disk.
* Processes: each child runs in its own session; on exit or timeout every process descended from the zygote is
  killed (the zygote is a child subreaper, so orphans and double-forked daemons come back to it), and in root mode
  every process of the sandbox uid is killed with ``kill(-1, SIGKILL)`` from a helper running as that uid.
  The child cannot signal the zygote or the caller (different uid, PR_SET_NO_NEW_PRIVS, no capabilities).
* Crashes: segfaults, aborts, ``os._exit``, a killed zygote - the caller gets a status, never an exception, and a
  dead zygote is restarted (its registered targets are re-sent).

Not covered (know these before trusting a score):

* No seccomp filter: the kernel's whole syscall surface is reachable; a kernel exploit escapes everything.
* The filesystem outside /root, /home and the tmpfs mounts is readable (e.g. the repository and the virtualenv),
  and the child shares the host PID namespace (it can list processes, not signal them).
* The child is a fork of the zygote, so its memory holds a copy of the zygote's heap: remnants of earlier requests
  (e.g. reference code rendered before) may be readable by a determined program. Registered targets are kept in
  ``MADV_DONTFORK`` memory and are not inherited, but this is best effort, not a guarantee.
* The result channel is the child's own file descriptor: user code can forge its result header (its images are
  still decoded and validated, so a forged result is no better than drawing the picture).
* Root where namespaces are refused (e.g. a container's seccomp profile): ``setuid+rlimits+socket-deny`` - the
  separate uid still applies, files the sample leaves in the shared /tmp are deleted after it, sockets are
  refused at the Python level only (ctypes can bypass it).
* Without root: a user namespace (``userns+netns+mountns+rlimits``) gives the same network and filesystem isolation
  but no separate uid; without user namespaces only ``rlimits+socket-deny`` is left (Python-level socket refusal,
  which ctypes can bypass). ``isolation="strict"`` refuses to start without a network namespace.
* No cgroup: memory is bounded per process (RLIMIT_AS), not per sample; 32 processes x memory_mb is the worst case.
"""

from __future__ import annotations

import base64
import os
import pickle
import socket
import struct
import subprocess
import sys
import threading
from dataclasses import asdict, dataclass, field
from typing import Any

STATUSES = (
    "ok",
    "no_code",
    "syntax_error",
    "exec_error",
    "timeout",
    "memory",
    "killed",
    "no_figure",
    "bad_request",
)
ISOLATION_MODES = ("auto", "strict", "none")

# Environment variables handed to the zygote; everything else (tokens, keys, ...) stays with the caller.
_ZYGOTE_ENV_KEEP = (
    "PATH",
    "LANG",
    "LC_ALL",
    "LC_CTYPE",
    "TZ",
    "PYTHONPATH",
    "VIRTUAL_ENV",
    "HOME",
    "MPLCONFIGDIR",
)
_FRAME = struct.Struct(">Q")
_MAX_MESSAGE_BYTES = 1 << 30
_START_TIMEOUT_S = 120.0
# Extra time the caller waits beyond the sample timeout: kill/reap, PNG validation, reference render, scoring.
_REPLY_GRACE_S = 30.0


@dataclass
class SandboxConfig:
    """Limits and options of one sandbox (one zygote); see docs/reward_servers_contract.md."""

    timeout_s: float = 10.0
    cpu_s: int = 20
    memory_mb: int = 2048
    max_file_mb: int = 32
    max_procs: int = 32
    max_open_files: int = 256
    dpi: int = 100
    max_fig_inches: float = 20.0
    max_dpi: int = 200
    max_figures: int = 4
    max_code_bytes: int = 1_000_000
    output_tail_bytes: int = 4096
    trace: bool = True
    isolation: str = "auto"

    def __post_init__(self) -> None:
        if self.isolation not in ISOLATION_MODES:
            raise ValueError(
                f"SandboxConfig.isolation must be one of {ISOLATION_MODES}, got {self.isolation!r}"
            )
        positive = ("timeout_s", "cpu_s", "memory_mb", "max_file_mb", "max_procs", "max_open_files", "dpi")
        positive += ("max_fig_inches", "max_dpi", "max_figures", "max_code_bytes", "output_tail_bytes")
        for name in positive:
            if not getattr(self, name) > 0:
                raise ValueError(f"SandboxConfig.{name} must be > 0, got {getattr(self, name)!r}")


@dataclass
class RenderResult:
    """Outcome of running one program: status, PNG images, output tails and the execution trace."""

    status: str
    error: str | None = None
    images: list[bytes] = field(default_factory=list)
    stdout: str = ""
    stderr: str = ""
    trace: dict = field(default_factory=dict)
    isolation: str = ""
    duration_s: float = 0.0

    @property
    def png(self) -> bytes | None:
        """The first figure's PNG (the "render"), or None."""
        return self.images[0] if self.images else None

    def to_dict(self) -> dict:
        """JSON-able dict; PNGs are base64 strings under ``images_b64``."""
        d = asdict(self)
        d["images_b64"] = [base64.b64encode(b).decode("ascii") for b in d.pop("images")]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> RenderResult:
        """Inverse of :meth:`to_dict`."""
        d = dict(d)
        images = [base64.b64decode(s) for s in d.pop("images_b64", [])]
        return cls(images=images, **d)


@dataclass
class ScoreResult:
    """A reward for one program; ``score`` is 0.0 for any status other than "ok"."""

    score: float
    status: str
    error: str | None
    metrics: dict[str, float] = field(default_factory=dict)
    render: RenderResult | None = None

    def to_dict(self) -> dict:
        """JSON-able dict (the render, when present, as :meth:`RenderResult.to_dict`)."""
        return {
            "score": self.score,
            "status": self.status,
            "error": self.error,
            "metrics": dict(self.metrics),
            "render": self.render.to_dict() if self.render is not None else None,
        }


class ZygoteDied(RuntimeError):
    """The zygote closed its socket (crashed, was killed, or exited)."""


def send_msg(sock: socket.socket, obj: Any) -> None:
    """Send one length-prefixed pickle (only between trusted processes: Sandbox <-> zygote)."""
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    sock.sendall(_FRAME.pack(len(data)) + data)


def recv_msg(sock: socket.socket) -> Any:
    """Receive one length-prefixed pickle; raises ZygoteDied on EOF."""
    (n,) = _FRAME.unpack(_recv_exact(sock, _FRAME.size))
    if n > _MAX_MESSAGE_BYTES:
        raise ZygoteDied(f"message of {n} bytes exceeds the {_MAX_MESSAGE_BYTES} byte cap")
    buf = _recv_exact(sock, n)
    try:
        return pickle.loads(buf)
    finally:
        buf[:] = bytes(len(buf))  # why: do not leave target images/reference code lying in freed memory


def _recv_exact(sock: socket.socket, n: int) -> bytearray:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = sock.recv_into(view[got:], n - got)
        if k == 0:
            raise ZygoteDied("zygote socket closed")
        got += k
    return buf


def _bad_request(error: str) -> RenderResult:
    return RenderResult(status="bad_request", error=error)


class Sandbox:
    """One zygote process; thread-safe (samples run one at a time under an internal lock).

    Args:
        config: limits and options; defaults to ``SandboxConfig()``.
        worker_index: selects the sandbox uid (61000 + worker_index when running as root).
    """

    def __init__(self, config: SandboxConfig | None = None, worker_index: int = 0) -> None:
        self.config = config or SandboxConfig()
        self.worker_index = int(worker_index)
        self._lock = threading.RLock()
        self._proc: subprocess.Popen | None = None
        self._sock: socket.socket | None = None
        self._targets: dict[str, bytes] = {}
        self._hello: dict = {}
        self.restarts = 0

    # ---------------------------------------------------------------- lifecycle
    def start(self) -> None:
        """Start the zygote and wait until it is warm and isolated; raises RuntimeError if it cannot start."""
        with self._lock:
            if self.alive:
                return
            self._spawn()
            for target_id, png in self._targets.items():
                self._register(target_id, png)

    def close(self) -> None:
        """Stop the zygote (and with it any running sample)."""
        with self._lock:
            self._stop_zygote()

    def __enter__(self) -> Sandbox:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def alive(self) -> bool:
        """True while the zygote process runs."""
        return self._proc is not None and self._proc.poll() is None and self._sock is not None

    @property
    def isolation(self) -> str:
        """The isolation level in force (e.g. ``netns+mountns+setuid+rlimits``); empty before start."""
        return self._hello.get("isolation", "")

    @property
    def zygote_pid(self) -> int | None:
        """PID of the zygote process (diagnostics and tests)."""
        return self._proc.pid if self._proc is not None else None

    @property
    def sandbox_uid(self) -> int | None:
        """The uid samples run as (None when they run as the zygote's own uid)."""
        return self._hello.get("uid")

    # ---------------------------------------------------------------- API
    def run(self, code: str, timeout_s: float | None = None) -> RenderResult:
        """Run ``code`` in a fresh child and return its render; never raises for bad code."""
        err = self._check_request(code, timeout_s)
        if err is not None:
            return err
        if not code.strip():
            return RenderResult(status="no_code", error="empty code")
        timeout = float(timeout_s if timeout_s is not None else self.config.timeout_s)
        reply = self._call({"op": "run", "code": code, "timeout_s": timeout}, timeout)
        if "died" in reply:
            return RenderResult(status="killed", error=reply["died"], isolation=self.isolation)
        if "internal" in reply:
            return _bad_request(f"sandbox internal error: {reply['internal']}")
        return reply["render"]

    def register_target(self, target_id: str, png: bytes) -> None:
        """Cache a target image in the zygote under ``target_id``; raises ValueError if it is not a PNG."""
        if not isinstance(target_id, str) or not target_id:
            raise ValueError(f"target_id must be a non-empty str, got {target_id!r}")
        if not isinstance(png, bytes | bytearray) or not bytes(png[:8]) == b"\x89PNG\r\n\x1a\n":
            raise ValueError(f"target {target_id!r}: not PNG bytes")
        png = bytes(png)
        with self._lock:
            reply = self._call({"op": "register_target", "target_id": target_id, "png": png}, 0.0)
            if not reply.get("error") and "died" not in reply:
                self._targets[target_id] = png
        if "died" in reply or "internal" in reply:
            raise RuntimeError(f"register_target({target_id!r}): {reply.get('died') or reply['internal']}")
        if reply.get("error"):
            raise ValueError(f"register_target({target_id!r}): {reply['error']}")

    def score(
        self,
        code: str,
        *,
        target_id: str | None = None,
        target_png: bytes | None = None,
        reference_code: str | None = None,
        reward: str = "render",
        timeout_s: float | None = None,
        return_render: bool = False,
    ) -> ScoreResult:
        """Render ``code`` and score it against a target image and/or a reference program's render."""
        err = self._check_request(code, timeout_s)
        if err is None and target_id is None and target_png is None and reference_code is None:
            err = _bad_request("score needs target_id, target_png or reference_code")
        if err is None and target_id is not None and target_id not in self._targets:
            err = _bad_request(f"unknown target id {target_id!r}")
        if err is None and reference_code is not None and not isinstance(reference_code, str):
            err = _bad_request(f"reference_code must be str, got {type(reference_code).__name__}")
        if err is None and target_png is not None and not isinstance(target_png, bytes):
            err = _bad_request(f"target_png must be bytes, got {type(target_png).__name__}")
        if err is None and not isinstance(reward, str):
            err = _bad_request(f"reward must be str, got {type(reward).__name__}")
        if err is not None:
            return ScoreResult(0.0, err.status, err.error, {}, err if return_render else None)
        if not code.strip():
            render = RenderResult(status="no_code", error="empty code")
            return ScoreResult(0.0, "no_code", "empty code", {}, render if return_render else None)
        timeout = float(timeout_s if timeout_s is not None else self.config.timeout_s)
        request = {
            "op": "score",
            "code": code,
            "timeout_s": timeout,
            "target_id": target_id,
            "target_png": target_png,
            "reference_code": reference_code,
            "reward": reward,
        }
        # why 2x: the zygote may render the reference program before the candidate.
        reply = self._call(request, 2 * timeout)
        if "died" in reply:
            render = RenderResult(status="killed", error=reply["died"], isolation=self.isolation)
            return ScoreResult(0.0, "killed", reply["died"], {}, render if return_render else None)
        if "internal" in reply:
            return ScoreResult(0.0, "bad_request", f"sandbox internal error: {reply['internal']}", {}, None)
        result: ScoreResult = reply["score"]
        if not return_render:
            result.render = None
        return result

    # ---------------------------------------------------------------- internals
    def _check_request(self, code: object, timeout_s: float | None) -> RenderResult | None:
        if not isinstance(code, str):
            return _bad_request(f"code must be str, got {type(code).__name__}")
        n = len(code.encode("utf-8", "surrogatepass"))
        if n > self.config.max_code_bytes:
            return _bad_request(f"code is {n} bytes, over max_code_bytes={self.config.max_code_bytes}")
        if timeout_s is not None and not (isinstance(timeout_s, int | float) and 0 < timeout_s <= 3600):
            return _bad_request(f"timeout_s must be in (0, 3600], got {timeout_s!r}")
        return None

    def _call(self, request: dict, timeout_s: float) -> dict:
        """Send a request, restarting a dead zygote; returns ``{"died": reason}`` if it dies mid-request.

        The zygote acknowledges each request before acting on it: a zygote found dead before the ack (e.g. killed
        between samples) is restarted and the request re-sent once; one that dies after the ack had the sample in
        flight, which is reported, not retried.
        """
        with self._lock:
            for attempt in range(2):
                if not self.alive:
                    if self._proc is not None:
                        self.restarts += 1
                    self._stop_zygote()
                    self.start()
                acked = False
                try:
                    assert self._sock is not None
                    self._sock.settimeout(_START_TIMEOUT_S)
                    send_msg(self._sock, request)
                    ack = recv_msg(self._sock)
                    if not ack.get("ack"):
                        raise ZygoteDied(f"protocol error: expected an ack, got {sorted(ack)}")
                    acked = True
                    self._sock.settimeout(timeout_s + _REPLY_GRACE_S)
                    reply = recv_msg(self._sock)
                except (ZygoteDied, OSError, TimeoutError) as e:
                    code = self._proc.poll() if self._proc is not None else None
                    self._stop_zygote()
                    self.restarts += 1
                    self.start()
                    if acked or attempt == 1:
                        return {
                            "died": f"sandbox zygote died during the request ({e}; exit code {code}); restarted"
                        }
                    continue
                if reply.get("fatal"):
                    raise RuntimeError(f"sandbox zygote error: {reply['fatal']}")
                return reply
            raise AssertionError("unreachable")

    def _register(self, target_id: str, png: bytes) -> None:
        assert self._sock is not None
        self._sock.settimeout(_START_TIMEOUT_S)
        send_msg(self._sock, {"op": "register_target", "target_id": target_id, "png": png})
        recv_msg(self._sock)  # ack
        reply = recv_msg(self._sock)
        if reply.get("error"):
            raise RuntimeError(
                f"re-registering target {target_id!r} after a restart failed: {reply['error']}"
            )

    def _spawn(self) -> None:
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        env = {k: os.environ[k] for k in _ZYGOTE_ENV_KEEP if k in os.environ}
        env.update(MPLBACKEND="Agg", OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        env["PYTHONPATH"] = os.pathsep.join(p for p in (_repo_root(), env.get("PYTHONPATH", "")) if p)
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "reward_servers.zygote", str(child.fileno())],
                pass_fds=(child.fileno(),),
                env=env,
                cwd="/",
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                start_new_session=True,  # why: a Ctrl-C to the caller's process group must not hit the zygote
            )
        finally:
            child.close()
        self._sock = parent
        try:
            self._sock.settimeout(_START_TIMEOUT_S)
            send_msg(self._sock, {"config": asdict(self.config), "worker_index": self.worker_index})
            hello = recv_msg(self._sock)
        except (ZygoteDied, OSError, TimeoutError) as e:
            self._stop_zygote()
            raise RuntimeError(f"sandbox zygote failed to start: {e}") from e
        if hello.get("fatal"):
            self._stop_zygote()
            raise RuntimeError(f"sandbox zygote refused to start: {hello['fatal']}")
        self._hello = hello

    def _stop_zygote(self) -> None:
        if self._sock is not None:
            try:
                self._sock.settimeout(2.0)
                send_msg(self._sock, {"op": "shutdown"})
            except OSError:
                pass  # already gone: nothing to tell it
            self._sock.close()
            self._sock = None
        if self._proc is not None:
            try:
                self._proc.wait(timeout=5.0)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(timeout=5.0)
            self._proc = None

    def __del__(self) -> None:
        if getattr(self, "_proc", None) is not None:
            self._stop_zygote()


def _repo_root() -> str:
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

"""The zygote: a warm, isolated process that forks one child per sample and collects its result.

Started by :class:`reward_servers.sandbox.Sandbox` as ``python -m reward_servers.zygote FD`` where FD is one end of a
socketpair. Protocol (length-prefixed pickles, both ends trusted): the first message is
``{"config": dict, "worker_index": int}``, answered by ``{"isolation", "uid", "pid"}`` or ``{"fatal": reason}``;
then requests ``{"op": "run" | "score" | "register_target" | "ping" | "shutdown", ...}``, one reply each.

Order of start-up, and why: (1) set thread/backend variables, import and warm numpy/scipy/matplotlib (font cache,
mathtext, 3-D) so that children pay nothing for it; (2) isolate once - per-worker uid lock, then as root
``unshare(CLONE_NEWNS | CLONE_NEWNET)``, private tmpfs over /tmp, /var/tmp, /dev/shm, empty tmpfs over /root and
/home with the Python installation bind-mounted back read-only, minimal /etc/passwd and /etc/group; (3)
``PR_SET_CHILD_SUBREAPER`` so that every orphan of a sample comes back here to be killed; (4) ``gc.freeze()`` so
children do not copy the warm heap just by collecting garbage.
"""

from __future__ import annotations

import os

os.environ.setdefault("MPLBACKEND", "Agg")
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import ctypes  # noqa: E402
import fcntl  # noqa: E402
import gc  # noqa: E402
import hashlib  # noqa: E402
import importlib  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import mmap  # noqa: E402
import select  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import struct  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from collections import OrderedDict  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402

WARM_MODULES = (
    "numpy", "scipy", "scipy.special", "scipy.stats", "scipy.interpolate", "scipy.integrate", "scipy.spatial",
    "scipy.optimize", "matplotlib", "matplotlib.pyplot", "matplotlib.patches", "matplotlib.collections",
    "matplotlib.lines", "matplotlib.path", "matplotlib.transforms", "matplotlib.colors", "matplotlib.cm",
    "matplotlib.gridspec", "matplotlib.ticker", "matplotlib.patheffects", "matplotlib.tri", "matplotlib.table",
    "matplotlib.font_manager", "mpl_toolkits.mplot3d", "mpl_toolkits.mplot3d.art3d", "PIL.Image", "math",
    "random", "itertools", "functools", "collections", "fractions", "decimal", "string", "re", "textwrap",
    "colorsys", "statistics", "dataclasses", "typing", "copy", "warnings",
)  # fmt: skip

_CLONE_NEWNS, _CLONE_NEWNET, _CLONE_NEWUSER = 0x00020000, 0x40000000, 0x10000000
_MS_RDONLY, _MS_NOSUID, _MS_NODEV, _MS_REMOUNT, _MS_BIND = 1, 2, 4, 32, 4096
_MS_REC, _MS_PRIVATE = 16384, 1 << 18
_MNT_DETACH = 2
_PR_SET_CHILD_SUBREAPER = 36
_UID_BASE, _UID_STRIDE, _UID_TRIES = 61000, 256, 16
_HIDDEN_DIRS = ("/root", "/home")
_TMP_DIRS = ("/tmp", "/var/tmp", "/dev/shm")
_U32 = struct.Struct(">I")
_MAX_HEADER_BYTES = 8 << 20
_MAX_PNG_BYTES = 64 << 20
_MAX_PNG_PIXELS = 40_000_000
_REFERENCE_CACHE = 256


def _warm(dpi: int) -> None:
    for name in WARM_MODULES:
        try:
            importlib.import_module(name)
        except ImportError:  # optional module missing from this environment: children import it themselves
            continue
    import matplotlib.pyplot as plt

    from reward_servers import _child, tracer  # noqa: F401 - imported so children inherit them warm

    # Default size, the configured dpi: glyph and text-layout caches are keyed by size and dpi.
    fig = plt.figure()
    ax = fig.add_subplot(1, 2, 1)
    ax.plot([0, 1], [0, 1], label="a")
    ax.bar([0.5], [0.5])
    ax.scatter([0.2], [0.3])
    ax.set_title(r"$\alpha^2 + \frac{1}{2}$")
    ax.text(0.1, 0.1, "warm", fontweight="bold")
    ax.set_xlabel("x")
    ax.legend()
    ax3 = fig.add_subplot(1, 2, 2, projection="3d")
    ax3.plot([0, 1], [0, 1], [0, 1])
    ax3.text(0, 0, 0, "z")
    fig.savefig(io.BytesIO(), format="png", dpi=dpi)
    fig2, ax2 = plt.subplots()
    ax2.plot([0, 1], [0, 1])
    ax2.set_title("title")
    fig2.savefig(io.BytesIO(), format="png", dpi=dpi)
    plt.close("all")


# ------------------------------------------------------------------------------------------------ isolation
@dataclass
class Isolation:
    """What :func:`_isolate` achieved; decides how children are confined and cleaned up."""

    level: str
    uid: int | None
    gid: int | None
    private_tmp: bool  # /tmp etc. are private tmpfs mounts that may be replaced between samples
    socket_deny: bool
    nproc: int
    tmp_size_mb: int
    # Handles on directories Python needs that a mask would hide, bound back after every (re)mount.
    kept: list[tuple[int, str]] = field(default_factory=list)


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _check(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _mount(src: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    enc = lambda s: s.encode() if s is not None else None  # noqa: E731
    rc = _libc().mount(enc(src), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data))
    _check(rc, f"mount({src!r}, {target!r}, {fstype!r})")


def _mount_tmpfs(target: str, size_mb: int, mode: str) -> None:
    _mount("tmpfs", target, "tmpfs", _MS_NOSUID | _MS_NODEV, f"size={size_mb}m,mode={mode}")


def _lock_uid(worker_index: int) -> tuple[int, int]:
    """Pick a sandbox uid no other live zygote on this host uses; returns (uid, lock fd kept open for life)."""
    lock_dir = "/run/lock" if os.path.isdir("/run/lock") else tempfile.gettempdir()
    for k in range(_UID_TRIES):
        uid = _UID_BASE + worker_index % _UID_STRIDE + k * _UID_STRIDE
        fd = os.open(os.path.join(lock_dir, f"codepercept-sandbox-{uid}.lock"), os.O_CREAT | os.O_RDWR, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return uid, fd
        except BlockingIOError:
            os.close(fd)
    raise RuntimeError(f"no free sandbox uid for worker {worker_index} after {_UID_TRIES} tries")


def _kept_paths() -> list[str]:
    """Directories under a masked dir (/root, /home, /tmp ...) that Python needs (the interpreter, stdlib, venv,
    this package: a checkout may well live in /tmp): they are bound back after masking."""
    candidates = {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix, *sys.path) if p}
    candidates.add(os.path.dirname(os.path.realpath(sys.executable)))
    masked = (*_HIDDEN_DIRS, *_TMP_DIRS)
    hidden = [p for p in candidates if os.path.isdir(p) and any(p.startswith(d + "/") for d in masked)]
    hidden.sort(key=len)
    kept: list[str] = []
    for p in hidden:
        if not any(p == k or p.startswith(k + "/") for k in kept):
            kept.append(p)
    return kept


def _open_kept(under: tuple[str, ...]) -> list[tuple[int, str]]:
    """O_PATH handles on the :func:`_kept_paths` below ``under``, taken before masking (afterwards the paths
    no longer resolve)."""
    paths = [p for p in _kept_paths() if any(p.startswith(d + "/") for d in under)]
    return [(os.open(p, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC), p) for p in paths]


def _restore_kept(kept: list[tuple[int, str]], under: tuple[str, ...]) -> None:
    """Bind the kept directories below ``under`` back in place, read-only, from their handles."""
    for fd, path in kept:
        if any(path.startswith(d + "/") for d in under):
            os.makedirs(path, mode=0o755, exist_ok=True)
            _mount(f"/proc/self/fd/{fd}", path, None, _MS_BIND | _MS_REC)
            _mount(None, path, None, _MS_BIND | _MS_REMOUNT | _MS_RDONLY | _MS_NOSUID | _MS_NODEV)


class _NoNamespaces(OSError):
    """unshare() itself was refused (e.g. a container's seccomp profile): nothing was changed yet."""


def _isolate_root(cfg: dict, uid: int) -> list[tuple[int, str]]:
    libc = _libc()
    if libc.unshare(_CLONE_NEWNS | _CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise _NoNamespaces(err, f"unshare(CLONE_NEWNS | CLONE_NEWNET): {os.strerror(err)}")
    _mount(None, "/", None, _MS_REC | _MS_PRIVATE)  # why: our mounts must never propagate to the host
    # The Python installation and this checkout may live under a dir about to be masked (/root/.pyenv, a CI
    # clone in /tmp): hold handles on them, mask, then bind them back read-only.
    kept = _open_kept((*_TMP_DIRS, *_HIDDEN_DIRS))
    tmp_mb = _tmp_size_mb(cfg)
    for d in _TMP_DIRS:
        if os.path.isdir(d):
            _mount_tmpfs(d, tmp_mb, "1777")
    for d in _HIDDEN_DIRS:
        if os.path.isdir(d):
            _mount_tmpfs(d, 1, "755")
    _restore_kept(kept, (*_TMP_DIRS, *_HIDDEN_DIRS))
    _fake_etc(uid)
    return kept


def _fake_etc(uid: int) -> None:
    """Replace /etc/passwd and /etc/group by minimal copies (no host user names for the sample to read)."""
    files = {
        "/etc/passwd": f"root:x:0:0:root:/root:/bin/sh\nsandbox:x:{uid}:{uid}:sandbox:/tmp:/bin/false\n"
        "nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
        "/etc/group": f"root:x:0:\nsandbox:x:{uid}:\nnogroup:x:65534:\n",
    }
    for target, text in files.items():
        if not os.path.isfile(target):
            continue
        src = f"/tmp/.zygote-{os.path.basename(target)}"
        with open(src, "w") as f:
            f.write(text)
        os.chmod(src, 0o644)
        _mount(src, target, None, _MS_BIND)
        _mount(None, target, None, _MS_BIND | _MS_REMOUNT | _MS_RDONLY)
        os.unlink(src)  # the bind mount keeps the inode alive


def _isolate_userns(cfg: dict) -> list[tuple[int, str]]:
    """Unprivileged: a user namespace mapping our uid to root inside, plus net and mount namespaces."""
    uid, gid = os.getuid(), os.getgid()
    _check(_libc().unshare(_CLONE_NEWUSER | _CLONE_NEWNS | _CLONE_NEWNET), "unshare(CLONE_NEWUSER | ...)")
    with open("/proc/self/setgroups", "w") as f:
        f.write("deny")
    with open("/proc/self/uid_map", "w") as f:
        f.write(f"0 {uid} 1")
    with open("/proc/self/gid_map", "w") as f:
        f.write(f"0 {gid} 1")
    _mount(None, "/", None, _MS_REC | _MS_PRIVATE)
    kept = _open_kept(_TMP_DIRS)
    for d in _TMP_DIRS:
        if os.path.isdir(d):
            _mount_tmpfs(d, _tmp_size_mb(cfg), "1777")
    _restore_kept(kept, _TMP_DIRS)
    return kept


def _tmp_size_mb(cfg: dict) -> int:
    return max(64, 4 * int(cfg["max_file_mb"]))


def _count_own_processes() -> int:
    uid, n = os.getuid(), 0
    for pid in _all_pids():
        if _proc_uid(pid) == uid:
            n += 1
    return n


def _isolate(cfg: dict, worker_index: int) -> Isolation:
    """Isolate the zygote once; every child inherits the namespaces."""
    mode, tmp_mb = cfg["isolation"], _tmp_size_mb(cfg)
    if mode != "none" and os.geteuid() == 0:
        uid, _lock_fd = _lock_uid(worker_index)  # the fd stays open (and locked) for the zygote's life
        try:
            kept = _isolate_root(cfg, uid)
            return Isolation(
                "netns+mountns+setuid+rlimits", uid, uid, True, False, int(cfg["max_procs"]), tmp_mb, kept
            )
        except _NoNamespaces as e:
            if mode == "strict":
                raise RuntimeError(f"isolation='strict' but no network namespace is available: {e}") from e
            # Root without namespaces: still a separate uid (no signals, no root files), sockets refused in Python.
            return Isolation(
                "setuid+rlimits+socket-deny", uid, uid, False, True, int(cfg["max_procs"]), tmp_mb
            )
    # Without a separate uid RLIMIT_NPROC counts all our processes: allow for the ones that exist already.
    nproc = int(cfg["max_procs"]) + _count_own_processes() + 8
    if mode != "none":
        try:
            kept = _isolate_userns(cfg)
            return Isolation("userns+netns+mountns+rlimits", None, None, True, False, nproc, tmp_mb, kept)
        except OSError as e:
            if mode == "strict":
                raise RuntimeError(f"isolation='strict' but no network namespace is available: {e}") from e
    return Isolation("rlimits+socket-deny", None, None, False, True, nproc, tmp_mb)


def _remove_owned_by(uid: int) -> None:
    """Shared-/tmp fallback: delete top-level entries of the temp dirs that the sandbox uid created."""
    for d in _TMP_DIRS:
        try:
            entries = list(os.scandir(d))
        except OSError:
            continue
        for e in entries:
            try:
                if e.stat(follow_symlinks=False).st_uid != uid:
                    continue
                if e.is_dir(follow_symlinks=False):
                    shutil.rmtree(e.path, ignore_errors=True)  # rmtree does not follow symlinks
                else:
                    os.unlink(e.path)
            except FileNotFoundError:
                continue


def _check_memory_limit(cfg: dict) -> None:
    """Children start with the zygote's address space; a limit below it would fail every sample."""
    with open("/proc/self/status") as f:
        vm_kb = next(int(line.split()[1]) for line in f if line.startswith("VmSize:"))
    need_mb = vm_kb // 1024 + 128
    if cfg["memory_mb"] < need_mb:
        raise RuntimeError(
            f"SandboxConfig.memory_mb={cfg['memory_mb']} is below what a warm child needs (~{need_mb} MB: the "
            f"zygote's {vm_kb // 1024} MB address space plus headroom)"
        )


# ------------------------------------------------------------------------------------------- processes
def _all_pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def _proc_uid(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("Uid:"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return None


def _descendants(root_pid: int) -> list[int]:
    """All live descendants of ``root_pid`` (via /proc/<pid>/task/<tid>/children)."""
    out: list[int] = []
    stack = [root_pid]
    while stack:
        pid = stack.pop()
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except (FileNotFoundError, ProcessLookupError):
            continue
        for tid in tids:
            try:
                with open(f"/proc/{pid}/task/{tid}/children") as f:
                    kids = [int(k) for k in f.read().split()]
            except (FileNotFoundError, ProcessLookupError):
                continue
            out.extend(kids)
            stack.extend(kids)
    return out


def _reap() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _kill_uid(uid: int) -> None:
    """As root: fork a helper that becomes ``uid`` and SIGKILLs every process of it (atomic w.r.t. forks)."""
    pid = os.fork()
    if pid == 0:
        try:
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)
            for _ in range(100):
                try:
                    os.kill(-1, signal.SIGKILL)  # every process we may signal, except ourselves
                except ProcessLookupError:
                    break
        finally:
            os._exit(0)
    os.waitpid(pid, 0)


def _kill_all(iso: Isolation, deadline_s: float = 5.0) -> list[int]:
    """Kill every process a sample left behind; returns pids still alive after ``deadline_s`` (should be none)."""
    me = os.getpid()
    end = time.monotonic() + deadline_s
    while True:
        left = _descendants(me)
        if not left:
            return []
        if iso.uid is not None:
            _kill_uid(iso.uid)
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass  # exited between the scan and the kill
        _reap()
        if time.monotonic() > end:
            return _descendants(me)
        time.sleep(0.001)


# --------------------------------------------------------------------------------------------- samples
class _Tail:
    """Keeps the last ``cap`` bytes of a stream."""

    def __init__(self, cap: int) -> None:
        self.cap, self.buf, self.total = cap, bytearray(), 0

    def add(self, data: bytes) -> None:
        self.total += len(data)
        self.buf += data
        if len(self.buf) > 2 * self.cap:
            del self.buf[: len(self.buf) - self.cap]

    def text(self) -> str:
        return bytes(self.buf[-self.cap :]).decode("utf-8", "replace")


class Zygote:
    """The request loop; one sample at a time."""

    def __init__(self, sock: socket.socket, cfg: dict, iso: Isolation) -> None:
        self.sock, self.cfg, self.iso = sock, cfg, iso
        self.targets: dict[str, tuple[mmap.mmap, tuple[int, ...] | None]] = {}
        self.references: OrderedDict[str, tuple] = OrderedDict()  # sha256(code) -> _stash(render)
        self.sample_no = 0

    def serve(self) -> None:
        from reward_servers.sandbox import ZygoteDied, recv_msg, send_msg

        while True:
            try:
                req = recv_msg(self.sock)
            except ZygoteDied:
                return  # the Sandbox went away
            op = req.get("op")
            if op == "shutdown":
                return
            send_msg(self.sock, {"ack": True})  # from here on the request counts as in flight
            try:
                reply = self._handle(op, req)
            except Exception as e:  # noqa: BLE001 - one bad request must not take the worker down: report it
                traceback.print_exc()
                reply = {"internal": f"{type(e).__name__}: {e}"}
            send_msg(self.sock, reply)

    def _handle(self, op: str, req: dict) -> dict:
        if op == "run":
            return {"render": self.render(req["code"], req["timeout_s"])}
        if op == "score":
            return {"score": self.score(req)}
        if op == "register_target":
            return {"error": self.register_target(req["target_id"], req["png"])}
        if op == "ping":
            return {"ok": True}
        return {"fatal": f"unknown op {op!r}"}

    # -------------------------------------------------------------- render
    def render(self, code: str, timeout_s: float):  # -> RenderResult
        from reward_servers._child import ChildSetup, child_main
        from reward_servers.sandbox import RenderResult

        t0 = time.monotonic()
        cfg, iso = self.cfg, self.iso
        if len(code.encode("utf-8", "surrogatepass")) > cfg["max_code_bytes"]:
            return RenderResult(
                "bad_request", f"code over max_code_bytes={cfg['max_code_bytes']}", isolation=iso.level
            )
        self.sample_no += 1
        tmpdir = self._make_tmpdir()
        pipes = [os.pipe() for _ in range(3)]  # stdout, stderr, result
        setup = ChildSetup(
            code=code,
            tmpdir=tmpdir,
            stdout_fd=pipes[0][1],
            stderr_fd=pipes[1][1],
            result_fd=pipes[2][1],
            uid=iso.uid,
            gid=iso.gid,
            nproc=iso.nproc,
            socket_deny=iso.socket_deny,
            drop_caps=iso.level.startswith("userns"),
            config=cfg,
        )
        pid = os.fork()
        if pid == 0:
            child_main(setup)  # never returns
        for _, w in pipes:
            os.close(w)
        try:
            outcome = self._collect(pid, [r for r, _ in pipes], t0 + timeout_s)
        finally:
            left = _kill_all(iso)
            self._clean_tmp(tmpdir)
        status, error, images, trace = self._classify(outcome, timeout_s)
        if left:
            error = (error or "") + f" [sandbox: {len(left)} processes survived cleanup]"
        return RenderResult(
            status=status,
            error=error,
            images=images,
            stdout=outcome["stdout"].text(),
            stderr=outcome["stderr"].text(),
            trace=trace,
            isolation=iso.level,
            duration_s=time.monotonic() - t0,
        )

    def _make_tmpdir(self) -> str:
        base = "/tmp" if self.iso.private_tmp else tempfile.gettempdir()
        path = tempfile.mkdtemp(prefix=f"sample{self.sample_no}-", dir=base)
        if self.iso.uid is not None:
            os.chown(path, self.iso.uid, self.iso.gid)
        os.chmod(path, 0o700)
        return path

    def _clean_tmp(self, tmpdir: str) -> None:
        if self.iso.private_tmp:
            # A fresh tmpfs per sample: whatever the sample wrote anywhere in /tmp, /var/tmp, /dev/shm is gone.
            for d in _TMP_DIRS:
                if os.path.isdir(d) and (d == "/tmp" or os.listdir(d)):
                    _check(_libc().umount2(d.encode(), _MNT_DETACH), f"umount2({d!r})")
                    _mount_tmpfs(d, self.iso.tmp_size_mb, "1777")
                    _restore_kept(self.iso.kept, (d,))
        else:
            if os.path.lexists(tmpdir):
                if os.path.islink(tmpdir):
                    os.unlink(tmpdir)
                else:
                    shutil.rmtree(tmpdir, ignore_errors=True)
            if self.iso.uid is not None:
                _remove_owned_by(self.iso.uid)

    def _collect(self, pid: int, fds: list[int], deadline: float) -> dict:
        """Drain stdout/stderr/result until the child exits or the deadline passes."""
        cap = int(self.cfg["output_tail_bytes"])
        out, err = _Tail(cap), _Tail(cap)
        result = bytearray()
        overflow = False
        sinks = {fds[0]: out, fds[1]: err}
        pidfd = os.pidfd_open(pid)
        open_fds = set(fds)
        exited = timed_out = False
        max_result = _MAX_HEADER_BYTES + int(self.cfg["max_figures"]) * _MAX_PNG_BYTES
        try:
            while open_fds or not exited:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    timed_out = True
                    break
                watch = list(open_fds) + ([] if exited else [pidfd])
                ready, _, _ = select.select(watch, [], [], remaining)
                for fd in ready:
                    if fd == pidfd:
                        exited = True
                        continue
                    data = os.read(fd, 1 << 20)
                    if not data:
                        open_fds.discard(fd)
                    elif fd in sinks:
                        sinks[fd].add(data)
                    elif len(result) + len(data) > max_result:
                        overflow = True
                    else:
                        result += data
                if overflow:
                    break
                if exited:
                    # Child gone; grandchildren may still hold the pipes: do not wait for EOF from them.
                    break
            if not exited:
                os.kill(pid, signal.SIGKILL)  # pidfd pins the pid: this cannot hit a recycled process
            _, wstatus, usage = os.wait4(pid, 0)
            _kill_all(self.iso)
            # Every writer is dead now: whatever is still in the pipes can be drained to EOF.
            for fd in list(open_fds):
                while True:
                    data = os.read(fd, 1 << 20)
                    if not data:
                        break
                    if fd in sinks:
                        sinks[fd].add(data)
                    elif len(result) + len(data) <= max_result:
                        result += data
                    else:
                        overflow = True
                        break
        finally:
            os.close(pidfd)
            for fd in fds:
                os.close(fd)
        return {
            "wstatus": wstatus,
            "cpu_s": usage.ru_utime + usage.ru_stime,
            "timed_out": timed_out,
            "overflow": overflow,
            "result": bytes(result),
            "stdout": out,
            "stderr": err,
        }

    def _classify(self, o: dict, timeout_s: float) -> tuple[str, str | None, list[bytes], dict]:
        ws = o["wstatus"]
        if o["timed_out"]:
            return "timeout", f"wall-clock timeout after {timeout_s:g} s", [], {}
        if os.WIFSIGNALED(ws):
            sig = os.WTERMSIG(ws)
            name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else str(sig)
            # SIGXCPU at the soft limit; SIGKILL at the hard one if the program ignored SIGXCPU.
            if sig == signal.SIGXCPU or (sig == signal.SIGKILL and o["cpu_s"] >= self.cfg["cpu_s"]):
                return "timeout", f"CPU time limit ({self.cfg['cpu_s']} s) exceeded", [], {}
            tail = o["stderr"].text()
            if sig == signal.SIGABRT and ("bad_alloc" in tail or "MemoryError" in tail or "memory" in tail):
                return "memory", "aborted on a failed allocation (bad_alloc)", [], {}
            return "killed", f"child killed by {name}", [], {}
        if o["overflow"]:
            return "exec_error", "result larger than the result cap", [], {}
        code = os.WEXITSTATUS(ws)
        parsed = _parse_result(o["result"], int(self.cfg["max_figures"]))
        if isinstance(parsed, str):
            if code != 0:
                last = o["stderr"].text().strip().splitlines()[-1:] or [""]
                return "exec_error", f"child exited with code {code} without a result {last[0][:300]}", [], {}
            return "exec_error", f"child produced no valid result: {parsed}", [], {}
        status, error, trace, images = parsed
        return status, error, images, trace

    # --------------------------------------------------------------- score
    def register_target(self, target_id: str, png: bytes) -> str | None:
        err = _validate_png(png, decode=True)
        if err is not None:
            return err
        # why MADV_DONTFORK: sample children are forks of this process and must not inherit target images.
        self.targets[target_id] = (_private_copy(png), None)
        _wipe_bytes(png)
        return None

    def _target_rgb(self, target_id: str | None, target_png: bytes | None):  # -> np.ndarray | None
        import numpy as np

        from reward_servers import scoring

        if target_png is not None:
            return scoring.decode_png(target_png)
        if target_id is None:
            return None
        buf, shape = self.targets[target_id]
        if shape is None:
            arr = scoring.decode_png(bytes(buf))
            priv = _private_copy(np.ascontiguousarray(arr).tobytes())
            self.targets[target_id] = (priv, arr.shape)
            buf, shape = priv, arr.shape
        return np.frombuffer(buf, dtype=np.uint8, count=int(np.prod(shape))).reshape(shape)

    def score(self, req: dict):  # -> ScoreResult
        from reward_servers.sandbox import RenderResult, ScoreResult

        target_id = req.get("target_id")
        if target_id is not None and target_id not in self.targets:
            return ScoreResult(0.0, "bad_request", f"unknown target id {target_id!r}", {}, None)
        reference = None
        if req.get("reference_code") is not None:
            key = hashlib.sha256(req["reference_code"].encode("utf-8", "surrogatepass")).hexdigest()
            stashed = self.references.get(key)
            if stashed is not None:
                reference = _unstash(stashed)
            else:
                reference = self.render(req["reference_code"], req["timeout_s"])
                if reference.status not in ("timeout", "killed"):  # transient failures are not cached
                    self.references[key] = _stash(reference)  # wipes reference.images in place
                    reference = _unstash(self.references[key])
                    while len(self.references) > _REFERENCE_CACHE:
                        self.references.popitem(last=False)
            if target_id is None and req.get("target_png") is None and reference.status != "ok":
                err = f"reference code did not render ({reference.status}: {reference.error})"
                return ScoreResult(0.0, "bad_request", err, {}, None)
        render: RenderResult = self.render(req["code"], req["timeout_s"])
        if render.status != "ok":
            return ScoreResult(0.0, render.status, render.error, {}, render)
        try:
            scoring = importlib.import_module("reward_servers.scoring")
            target = self._target_rgb(target_id, req.get("target_png"))
        except ImportError as e:
            return ScoreResult(0.0, "bad_request", f"scoring is unavailable: {e}", {}, render)
        except ValueError as e:
            return ScoreResult(0.0, "bad_request", f"target image: {e}", {}, render)
        try:
            usable_ref = reference if reference is not None and reference.status == "ok" else None
            value, metrics = scoring.score_render(render, target, usable_ref, req.get("reward", "render"))
        except (KeyError, ValueError) as e:  # unknown reward name, unusable images
            return ScoreResult(0.0, "bad_request", f"score_render: {type(e).__name__}: {e}", {}, render)
        return ScoreResult(float(value), "ok", None, {k: float(v) for k, v in metrics.items()}, render)


# ------------------------------------------------------------------------------------ untrusted result
def _parse_result(data: bytes, max_figures: int) -> tuple[str, str | None, dict, list[bytes]] | str:
    """Validate what a child sent; returns (status, error, trace, images) or a reason string."""
    from reward_servers.sandbox import STATUSES

    if len(data) < _U32.size:
        return "empty result"
    (n,) = _U32.unpack_from(data, 0)
    if n > _MAX_HEADER_BYTES or _U32.size + n > len(data):
        return "bad header length"
    try:
        header = json.loads(data[_U32.size : _U32.size + n])
    except (ValueError, RecursionError) as e:
        return f"header is not JSON: {e}"
    if not isinstance(header, dict):
        return "header is not an object"
    status, error, trace, n_images = (header.get(k) for k in ("status", "error", "trace", "n_images"))
    if status not in STATUSES or status in ("bad_request", "no_code", "killed"):
        return f"bad status {status!r}"
    if error is not None and not isinstance(error, str):
        return "bad error field"
    if not isinstance(trace, dict) or _depth(trace) > 8:
        return "bad trace"
    if not isinstance(n_images, int) or not 0 <= n_images <= max_figures:
        return "bad image count"
    images, pos = [], _U32.size + n
    for _ in range(n_images):
        if pos + _U32.size > len(data):
            return "truncated image"
        (m,) = _U32.unpack_from(data, pos)
        png = data[pos + _U32.size : pos + _U32.size + m]
        pos += _U32.size + m
        if len(png) != m:
            return "truncated image"
        bad = _validate_png(png, decode=True)
        if bad is not None:
            return bad
        images.append(png)
    if status == "ok" and not images:
        return "status ok without images"
    return status, (error[:4000] if error else None), trace, images


def _depth(obj: object, limit: int = 9) -> int:
    if limit <= 0:
        return 1
    if isinstance(obj, dict):
        return 1 + max((_depth(v, limit - 1) for v in obj.values()), default=0)
    if isinstance(obj, list):
        return 1 + max((_depth(v, limit - 1) for v in obj), default=0)
    return 0


def _validate_png(png: bytes, decode: bool = False) -> str | None:
    if not isinstance(png, bytes | bytearray) or png[:8] != b"\x89PNG\r\n\x1a\n" or len(png) < 24:
        return "not a PNG"
    if len(png) > _MAX_PNG_BYTES:
        return "PNG too large"
    w, h = struct.unpack(">II", png[16:24])
    if w == 0 or h == 0 or w * h > _MAX_PNG_PIXELS:
        return f"PNG size {w}x{h} out of bounds"
    if decode:
        from PIL import Image

        try:
            with Image.open(io.BytesIO(png)) as im:
                if im.format != "PNG":
                    return "not a PNG"
                im.load()
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
            return f"PNG does not decode: {e}"
    return None


def _stash(render):  # (RenderResult) -> tuple
    """Keep a reference render's images in MADV_DONTFORK memory: it may be the target, children must not see it."""
    from dataclasses import replace

    images = [(_private_copy(png), len(png)) for png in render.images]
    for png in render.images:
        _wipe_bytes(png)
    return replace(render, images=[]), images


def _unstash(stashed):  # (tuple) -> RenderResult
    from dataclasses import replace

    render, images = stashed
    return replace(render, images=[bytes(m[:n]) for m, n in images])


def _private_copy(data: bytes) -> mmap.mmap:
    m = mmap.mmap(-1, max(len(data), 1))
    m.madvise(mmap.MADV_DONTFORK)
    m[: len(data)] = data
    return m


def _wipe_bytes(b: bytes) -> None:
    """Zero a bytes object's buffer in place (CPython layout) so forked children cannot find it later."""
    if isinstance(b, bytes) and len(b) > 64:  # short bytes objects may be shared; ours are whole images
        ctypes.memset(id(b) + sys.getsizeof(b"") - 1, 0, len(b))


# ---------------------------------------------------------------------------------------------- main
def main(argv: list[str]) -> int:
    """Entry point: ``python -m reward_servers.zygote FD``."""
    from reward_servers.sandbox import ZygoteDied, recv_msg, send_msg

    sock = socket.socket(fileno=int(argv[1]))
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        init = recv_msg(sock)
    except ZygoteDied:
        return 1
    cfg, worker_index = init["config"], int(init["worker_index"])
    try:
        _warm(int(cfg["dpi"]))
        _check_memory_limit(cfg)
        iso = _isolate(cfg, worker_index)
        _check(_libc().prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0), "prctl(PR_SET_CHILD_SUBREAPER)")
        if iso.uid is not None:
            _kill_uid(iso.uid)  # leftovers of a previous zygote that died with this uid
    except (OSError, RuntimeError) as e:
        send_msg(sock, {"fatal": f"{type(e).__name__}: {e}"})
        return 1
    gc.collect()
    gc.freeze()  # why: keeps the warm heap out of the children's GC passes, so they do not copy it
    send_msg(sock, {"isolation": iso.level, "uid": iso.uid, "pid": os.getpid()})
    try:
        Zygote(sock, cfg, iso).serve()
    except (BrokenPipeError, ConnectionResetError):
        return 0  # the Sandbox went away mid-reply
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

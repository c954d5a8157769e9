"""Code that runs in a forked sample child: limits, privilege drop, user code, figure capture, result.

Called only by the zygote right after ``os.fork()``; :func:`child_main` never returns (it ends in ``os._exit``).
The result goes back over a pipe as ``[u32 header length][JSON header]`` then ``[u32 length][PNG]`` per image;
the zygote treats all of it as untrusted (the user code shares this process and could have written it itself).
"""

from __future__ import annotations

import builtins
import ctypes
import errno
import io
import json
import os
import resource
import signal
import struct
import sys
import traceback
from dataclasses import dataclass

import matplotlib

matplotlib.use("Agg")
import matplotlib.figure  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402

from reward_servers import tracer  # noqa: E402

_U32 = struct.Struct(">I")
_PR_SET_PDEATHSIG = 1
_PR_SET_NO_NEW_PRIVS = 38
_PR_CAPBSET_DROP = 24
_LINUX_CAPABILITY_VERSION_3 = 0x20080522
RESULT_FD = 3  # the result pipe is moved here; everything above is closed


@dataclass
class ChildSetup:
    """What the zygote decided for this child before forking."""

    code: str
    tmpdir: str
    stdout_fd: int
    stderr_fd: int
    result_fd: int
    uid: int | None  # None: keep the zygote's uid (non-root modes)
    gid: int | None
    nproc: int
    socket_deny: bool
    drop_caps: bool
    config: dict


def child_main(setup: ChildSetup) -> None:
    """Run one sample in this (freshly forked) process and exit; never returns."""
    code = 70
    try:
        _confine(setup)
        _run_and_report(setup)
        code = 0
    except BaseException:  # noqa: BLE001 - last resort in a child about to _exit: say what broke on stderr
        try:
            traceback.print_exc()
            sys.stderr.flush()
        except BaseException:  # noqa: BLE001 - stderr itself may be what broke
            code = 71
    finally:
        os._exit(code)


def _confine(s: ChildSetup) -> None:
    os.setsid()
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # why: over-size writes fail with EFBIG instead of killing
    # stdio: stdin from /dev/null, stdout/stderr into the zygote's draining pipes, result pipe on fd 3.
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.dup2(s.stdout_fd, 1)
    os.dup2(s.stderr_fd, 2)
    os.dup2(s.result_fd, RESULT_FD)
    os.closerange(RESULT_FD + 1, 1 << 20)  # close every inherited fd (zygote socket, pipes, locks)
    os.set_inheritable(RESULT_FD, False)
    sys.stdin = open(0, closefd=False)  # noqa: SIM115 - wraps fd 0 for the child's lifetime
    sys.stdout = open(1, "w", encoding="utf-8", errors="backslashreplace", closefd=False)  # noqa: SIM115
    sys.stderr = open(2, "w", encoding="utf-8", errors="backslashreplace", closefd=False)  # noqa: SIM115

    cfg = s.config
    mb = 1 << 20
    limits = {
        resource.RLIMIT_AS: cfg["memory_mb"] * mb,
        resource.RLIMIT_CPU: cfg["cpu_s"],
        resource.RLIMIT_FSIZE: cfg["max_file_mb"] * mb,
        resource.RLIMIT_NPROC: s.nproc,
        resource.RLIMIT_NOFILE: cfg["max_open_files"],
        resource.RLIMIT_CORE: 0,
    }
    for which, soft in limits.items():
        # CPU: SIGXCPU at the soft limit, SIGKILL one second later (the zygote reports both as "timeout").
        hard = soft + 1 if which == resource.RLIMIT_CPU else soft
        resource.setrlimit(which, (soft, hard))

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")
    if s.uid is not None and s.gid is not None:
        os.setgroups([])
        os.setresgid(s.gid, s.gid, s.gid)
        os.setresuid(s.uid, s.uid, s.uid)
    elif s.drop_caps:
        _drop_capabilities(libc)
    # After the uid change (which clears it): die with the zygote rather than linger.
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG)")

    os.chdir(s.tmpdir)
    os.environ.clear()
    os.environ.update(
        PATH="/usr/local/bin:/usr/bin:/bin",
        HOME=s.tmpdir,
        TMPDIR=s.tmpdir,
        MPLCONFIGDIR=s.tmpdir,
        MPLBACKEND="Agg",
        LANG="C.UTF-8",
        OPENBLAS_NUM_THREADS="1",
        OMP_NUM_THREADS="1",
    )
    if s.socket_deny:
        _deny_sockets()
    _clamp_matplotlib(cfg)
    if cfg["trace"]:
        tracer.install()


def _drop_capabilities(libc: ctypes.CDLL) -> None:
    """User-namespace mode: we are "root" inside the namespace; give up every capability for good.

    Without this the child could e.g. unmount the private /tmp and reach the host's. The bounding set is emptied
    first so that exec() cannot hand capabilities back.
    """
    for cap in range(64):
        if libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 and ctypes.get_errno() != errno.EINVAL:
            raise OSError(ctypes.get_errno(), f"prctl(PR_CAPBSET_DROP, {cap})")
    header = (ctypes.c_uint32 * 2)(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (ctypes.c_uint32 * 6)()  # two __user_cap_data_struct {effective, permitted, inheritable}, all zero
    if libc.capset(header, data) != 0:
        raise OSError(ctypes.get_errno(), "capset(0)")


def _deny_sockets() -> None:
    """Weakest fallback (no netns): refuse socket creation at the Python level (ctypes can bypass it)."""
    import _socket
    import socket

    def refuse(*args: object, **kwargs: object) -> None:
        raise PermissionError("network access is disabled in the sandbox")

    class DeniedSocket(socket.socket):
        def __init__(self, *args: object, **kwargs: object) -> None:
            refuse()

    socket.socket = DeniedSocket  # type: ignore[misc]
    _socket.socket = DeniedSocket  # type: ignore[misc]
    socket.socketpair = socket.create_connection = socket.fromfd = refuse  # type: ignore[assignment]
    _socket.socketpair = refuse  # type: ignore[attr-defined]


_SAVED: list[matplotlib.figure.Figure] = []  # figures the user saved (kept even if closed afterwards)


def _clamp_matplotlib(cfg: dict) -> None:
    """Bound figure size and dpi before user code can allocate a gigantic canvas."""
    max_in = float(cfg["max_fig_inches"])
    max_dpi = float(cfg["max_dpi"])
    Figure = matplotlib.figure.Figure
    orig_init, orig_set_size, orig_set_dpi = Figure.__init__, Figure.set_size_inches, Figure._set_dpi
    orig_savefig = Figure.savefig

    def clamp_size(w: float, h: float) -> tuple[float, float]:
        return (min(max(float(w), 0.1), max_in), min(max(float(h), 0.1), max_in))

    def set_size_inches(self, w, h=None, forward=True):  # type: ignore[no-untyped-def]
        if h is None:  # set_size_inches((w, h))
            w, h = w
        return orig_set_size(self, *clamp_size(w, h), forward=forward)

    def _set_dpi(self, dpi, forward=True):  # type: ignore[no-untyped-def]
        return orig_set_dpi(self, min(float(dpi), max_dpi), forward=forward)

    def __init__(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        figsize = kwargs.pop("figsize", None)
        if figsize is None and args:  # Figure(figsize, dpi, ...) positional form
            figsize, args = args[0], args[1:]
        if figsize is None:
            figsize = matplotlib.rcParams["figure.figsize"]
        dpi = kwargs.pop("dpi", None)
        if dpi is None and args:
            dpi, args = args[0], args[1:]
        if dpi is None:
            dpi = matplotlib.rcParams["figure.dpi"]
        kwargs["figsize"] = clamp_size(*figsize)
        kwargs["dpi"] = min(float(dpi), max_dpi)
        orig_init(self, *args, **kwargs)

    def savefig(self, fname, *args, **kwargs):  # type: ignore[no-untyped-def]
        if self not in _SAVED and len(_SAVED) < int(cfg["max_figures"]):
            _SAVED.append(self)
        dpi = kwargs.get("dpi")
        if dpi is None:
            dpi = matplotlib.rcParams["savefig.dpi"]
        if dpi == "figure":
            dpi = self.dpi
        kwargs["dpi"] = min(float(dpi), max_dpi)
        return orig_savefig(self, fname, *args, **kwargs)

    Figure.__init__ = __init__  # type: ignore[method-assign]
    Figure.set_size_inches = set_size_inches  # type: ignore[method-assign]
    Figure._set_dpi = _set_dpi  # type: ignore[method-assign]
    Figure.dpi = property(Figure._get_dpi, _set_dpi)  # type: ignore[method-assign] - the property held the old one
    Figure.savefig = savefig  # type: ignore[method-assign]
    plt.show = lambda *a, **k: None  # why: Agg warns "cannot show"; the figure is captured afterwards anyway


def _run_and_report(s: ChildSetup) -> None:
    cfg = s.config
    builtins_snapshot = dict(builtins.__dict__)
    status, error = "ok", None
    try:
        compiled = compile(s.code, "<sample>", "exec")
    except (SyntaxError, ValueError) as e:  # ValueError: null bytes in source
        _send(s, "syntax_error", f"{type(e).__name__}: {e}", {}, [])
        return
    exc: BaseException | None = None
    try:
        exec(compiled, {"__name__": "__main__", "__builtins__": builtins})
    except BaseException as e:  # noqa: BLE001 - any exception from user code is a result, not a crash
        exc = e
    finally:
        # why: user code may have replaced builtins (len, isinstance, ...) that the code below relies on.
        builtins.__dict__.clear()
        builtins.__dict__.update(builtins_snapshot)
        _flush_stdio()
    if isinstance(exc, SystemExit):
        if exc.code not in (None, 0):
            status, error = "exec_error", f"SystemExit: {exc.code!r}"
    elif isinstance(exc, MemoryError):
        status, error = "memory", f"MemoryError: {exc}"
    elif exc is not None:
        status, error = "exec_error", _format_exc(exc)
    del exc

    images: list[bytes] = []
    trace: dict = {}
    if status == "ok":
        try:
            figures = _figures_to_capture(int(cfg["max_figures"]))
            if not figures:
                status, error = "no_figure", "the code left no figure with anything drawn"
            for fig in figures:
                buf = io.BytesIO()
                fig.savefig(buf, format="png", dpi=cfg["dpi"], facecolor="white")
                images.append(buf.getvalue())
            if cfg["trace"] and figures:
                trace = tracer.build_trace(figures)
        except MemoryError as e:
            status, error, images = "memory", f"MemoryError while rendering: {e}", []
        except BaseException as e:  # noqa: BLE001 - a figure that fails to render is the sample's error
            status, error, images = "exec_error", "while rendering: " + _format_exc(e), []
    _send(s, status, error, trace, images)


def _figures_to_capture(max_figures: int) -> list[matplotlib.figure.Figure]:
    open_figs = [plt.figure(n) for n in plt.get_fignums()]
    figs = list(_SAVED) + [f for f in open_figs if f not in _SAVED]
    figs.sort(key=lambda f: getattr(f, "number", 0) or 0)
    drawn = [f for f in figs if f.axes or f.texts or f.images or f.patches or f.lines or f.artists]
    return drawn[:max_figures]


def _format_exc(e: BaseException) -> str:
    tb = traceback.extract_tb(e.__traceback__)
    where = next((f"line {fr.lineno}: " for fr in reversed(tb) if fr.filename == "<sample>"), "")
    return f"{where}{type(e).__name__}: {e}"[:2000]


def _flush_stdio() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass  # closed or broken by user code: the tails are best effort


def _send(s: ChildSetup, status: str, error: str | None, trace: dict, images: list[bytes]) -> None:
    doc = {"status": status, "error": error, "trace": trace, "n_images": len(images)}
    try:
        header = json.dumps(doc, allow_nan=False, default=str).encode()
    except (ValueError, TypeError, RecursionError) as e:
        doc["trace"] = {"error": f"trace is not JSON: {e}"}
        header = json.dumps(doc, default=str).encode()
    parts = [_U32.pack(len(header)), header]
    for png in images:
        parts += [_U32.pack(len(png)), png]
    data = b"".join(parts)
    view = memoryview(data)
    while view:
        n = os.write(RESULT_FD, view)
        view = view[n:]

"""The Sandbox API against a real zygote: statuses, images, limits, targets and scores, restarts, isolation levels.

python -m pytest tests/reward_servers/test_sandbox.py -q
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
from PIL import Image

from reward_servers.sandbox import RenderResult, Sandbox, SandboxConfig, ScoreResult

IS_ROOT = os.geteuid() == 0
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PLOT = "import matplotlib.pyplot as plt\nplt.plot([0, 1, 2], [0, 1, 4], 'b-')\nplt.title('square')\n"
OTHER = "import matplotlib.pyplot as plt\nplt.bar([0, 1, 2], [3, 1, 2], color='red')\nplt.title('bars')\n"


@pytest.fixture(scope="module")
def sb():
    with Sandbox(SandboxConfig(timeout_s=5.0, max_figures=3), worker_index=3) as s:
        yield s


@pytest.fixture(scope="module")
def weak_sb():
    """isolation="none": no namespaces, Python-level socket refusal; also a 1 s CPU limit and no tracer."""
    with Sandbox(SandboxConfig(timeout_s=8.0, cpu_s=1, isolation="none", trace=False), worker_index=4) as s:
        yield s


def _size(png: bytes) -> tuple[int, int]:
    return Image.open(io.BytesIO(png)).size


def test_benign_render(sb: Sandbox) -> None:
    res = sb.run(PLOT + "print('hello')")
    assert res.status == "ok" and res.error is None
    assert _size(res.png) == (640, 480)
    assert res.stdout == "hello\n"
    assert res.duration_s > 0
    assert res.isolation == ("netns+mountns+setuid+rlimits" if IS_ROOT else res.isolation)
    assert res.trace["calls"] == {"plot": 1} and res.trace["texts"] == ["square"]


@pytest.mark.parametrize(
    ("code", "status", "in_error"),
    [
        ("def f(:\n    pass", "syntax_error", "SyntaxError"),
        ("x = 1\ny = x / 0", "exec_error", "line 2: ZeroDivisionError"),
        ("import no_such_module_xyz", "exec_error", "ModuleNotFoundError"),
        ("print('no plot')", "no_figure", "no figure"),
        ("import matplotlib.pyplot as plt\nplt.figure()", "no_figure", "no figure"),
        ("   \n", "no_code", "empty"),
        ("x = bytearray(64 * 1024**3)", "memory", "MemoryError"),
        ("import time\ntime.sleep(30)", "timeout", "wall-clock"),
    ],
    ids=["syntax", "exception", "import", "no_plot", "empty_figure", "blank", "memory", "wall_timeout"],
)
def test_statuses(sb: Sandbox, code: str, status: str, in_error: str) -> None:
    res = sb.run(code, timeout_s=1.5)
    assert res.status == status, res.error
    assert in_error in res.error
    assert res.images == []


@pytest.mark.parametrize("ignore_sigxcpu", [False, True], ids=["sigxcpu", "sigxcpu_ignored"])
def test_cpu_limit_is_a_timeout(weak_sb: Sandbox, ignore_sigxcpu: bool) -> None:
    prefix = "import signal\nsignal.signal(signal.SIGXCPU, signal.SIG_IGN)\n" if ignore_sigxcpu else ""
    res = weak_sb.run(prefix + "while True:\n    pass", timeout_s=60.0)
    # SIGXCPU after 1 s of CPU, long before the wall clock (generous: the CI machine may be loaded)
    assert res.status == "timeout" and "CPU time limit" in res.error


@pytest.mark.parametrize(
    ("kwargs", "in_error"),
    [
        ({"code": b"print(1)"}, "must be str"),
        ({"code": "x = 1\n" * 200_000}, "max_code_bytes"),
        ({"code": PLOT, "timeout_s": -1}, "timeout_s"),
        ({"code": PLOT, "timeout_s": "soon"}, "timeout_s"),
    ],
    ids=["bytes", "too_big", "negative_timeout", "str_timeout"],
)
def test_bad_requests(sb: Sandbox, kwargs: dict, in_error: str) -> None:
    res = sb.run(**kwargs)
    assert res.status == "bad_request" and in_error in res.error


def test_figures_are_capped_and_saved_figures_kept(sb: Sandbox) -> None:
    code = (
        "import matplotlib.pyplot as plt\n"
        "f = plt.figure(figsize=(2, 2)); plt.plot([1, 2]); f.savefig('a.png'); plt.close(f)\n"
        "for i in range(4):\n    plt.figure(figsize=(3, 2)); plt.plot([i, 0])\n"
    )
    res = sb.run(code)
    assert res.status == "ok"
    assert len(res.images) == sb.config.max_figures == 3
    assert _size(res.images[0]) == (200, 200)  # the saved-then-closed figure comes first
    assert [_size(p) for p in res.images[1:]] == [(300, 200)] * 2


def test_sizes_clamped_after_creation(sb: Sandbox) -> None:
    code = "import matplotlib.pyplot as plt\nfig = plt.figure()\nfig.set_size_inches(1e6, 3)\nfig.dpi = 1e5\nplt.plot([1])"
    res = sb.run(code)
    assert res.status == "ok" and _size(res.png) == (2000, 300)
    assert res.trace["figures"][0]["dpi"] == sb.config.max_dpi


def test_each_sample_gets_a_fresh_tmp(sb: Sandbox) -> None:
    first = sb.run(
        "import os\nopen('mine.txt', 'w').write('1')\nopen('/tmp/shared.txt', 'w').write('1')\n"
        "print(os.getcwd())"
    )
    second = sb.run(
        "import os\nprint(sorted(os.listdir('.')), os.path.exists('/tmp/shared.txt'), os.getcwd())"
    )
    assert first.status == second.status == "no_figure"
    assert "[] False" in second.stdout
    assert first.stdout.strip() != second.stdout.split()[-1]


def test_result_round_trips_through_json(sb: Sandbox) -> None:
    res = sb.run(PLOT)
    back = RenderResult.from_dict(json.loads(json.dumps(res.to_dict())))
    assert back == res


def test_concurrent_callers_are_serialised(sb: Sandbox) -> None:
    results: list[RenderResult] = []
    threads = [threading.Thread(target=lambda: results.append(sb.run(PLOT))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [r.status for r in results] == ["ok"] * 4


def test_register_target_and_score(sb: Sandbox) -> None:
    target = sb.run(PLOT).png
    sb.register_target("square", target)
    same = sb.score(PLOT, target_id="square", return_render=True)
    other = sb.score(OTHER, target_id="square")
    assert isinstance(same, ScoreResult) and same.status == "ok"
    assert same.render is not None and same.render.status == "ok" and other.render is None
    assert same.score > 0.9 and other.score < same.score
    assert same.metrics and all(isinstance(v, float) for v in same.metrics.values())
    by_png = sb.score(PLOT, target_png=target)
    assert by_png.status == "ok" and by_png.score == pytest.approx(same.score)


def test_score_against_reference_code(sb: Sandbox) -> None:
    same = sb.score(PLOT, reference_code=PLOT)
    other = sb.score(OTHER, reference_code=PLOT)
    assert same.status == other.status == "ok"
    assert same.score > other.score


def test_score_failures(sb: Sandbox) -> None:
    failed = sb.score("1/0", reference_code=PLOT)
    assert (failed.score, failed.status) == (0.0, "exec_error")
    assert sb.score(PLOT, target_id="no-such-target").status == "bad_request"
    assert sb.score(PLOT).status == "bad_request"
    assert sb.score(PLOT, reference_code="1/0").status == "bad_request"
    assert "target image" in sb.score(PLOT, target_png=b"\x89PNG\r\n\x1a\n junk").error
    assert "target_png must be bytes" in sb.score(PLOT, target_png="x").error  # type: ignore[arg-type]
    assert "unknown reward" in sb.score(PLOT, reference_code=PLOT, reward="no-such-reward").error
    with pytest.raises(ValueError, match="not PNG"):
        sb.register_target("junk", b"not a png")
    with pytest.raises(ValueError, match="does not decode"):
        sb.register_target(
            "broken", b"\x89PNG\r\n\x1a\n" + bytes(8) + b"\x00\x00\x00\x10\x00\x00\x00\x10" + bytes(64)
        )
    assert sb.run(PLOT).status == "ok"  # still serving


def test_dead_zygote_is_restarted_with_its_targets() -> None:
    with Sandbox(SandboxConfig(timeout_s=8.0), worker_index=5) as s:
        target = s.run(PLOT).png
        s.register_target("t", target)
        # 1. killed between samples: the next call restarts it transparently
        old = s.zygote_pid
        os.kill(old, signal.SIGKILL)
        res = s.run(PLOT)
        assert res.status == "ok" and s.zygote_pid != old and s.restarts == 1
        assert s.score(PLOT, target_id="t").score > 0.9  # target re-sent to the new zygote
        # 2. killed while a sample runs: that sample is "killed", the next one works
        pid = s.zygote_pid
        killer = threading.Timer(0.5, os.kill, (pid, signal.SIGKILL))
        killer.start()
        res = s.run("import time\ntime.sleep(5)")
        killer.join()
        assert res.status == "killed" and "restarted" in res.error
        assert s.run(PLOT).status == "ok" and s.restarts == 2
        # 3. close() stops it for good
        pid = s.zygote_pid
        s.close()
        assert not s.alive and not os.path.exists(f"/proc/{pid}")  # exited and reaped


def test_isolation_none_refuses_sockets(weak_sb: Sandbox) -> None:
    assert weak_sb.isolation == "rlimits+socket-deny" and weak_sb.sandbox_uid is None
    res = weak_sb.run("import socket\nsocket.socket(socket.AF_INET, socket.SOCK_STREAM)")
    assert res.status == "exec_error" and "network access is disabled" in res.error
    res = weak_sb.run(PLOT)
    assert res.status == "ok" and res.png is not None and res.trace == {}  # trace=False


NON_ROOT_SCRIPT = """
import json, sys
from reward_servers.sandbox import Sandbox, SandboxConfig
out = {}
with Sandbox(SandboxConfig(timeout_s=5)) as sb:
    out["isolation"] = sb.isolation
    out["plot"] = sb.run("import matplotlib.pyplot as plt\\nplt.plot([1, 2])").status
    out["net"] = sb.run("import socket\\nsocket.create_connection(('127.0.0.1', 9), timeout=1)").error
    r = sb.run("import ctypes\\nl = ctypes.CDLL(None, use_errno=True)\\nprint(l.umount2(b'/tmp', 2), ctypes.get_errno())")
    out["umount"] = r.stdout.strip()
print(json.dumps(out))
"""


def _system_python() -> str | None:
    """An interpreter 'nobody' can execute (the venv's may live under /root) with our Python version."""
    exe = shutil.which(f"python{sys.version_info[0]}.{sys.version_info[1]}", path="/usr/bin:/usr/local/bin")
    return exe


@pytest.mark.skipif(
    not IS_ROOT or _system_python() is None, reason="needs root (to drop to nobody) and /usr/bin/python3.x"
)
def test_non_root_zygote_uses_a_user_namespace() -> None:
    site = next(p for p in sys.path if p.endswith("site-packages"))
    env = {
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": f"{REPO}:{site}",
        "MPLCONFIGDIR": "/nonexistent",
        "HOME": "/",
    }
    cmd = [
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        _system_python(),
        "-c",
        NON_ROOT_SCRIPT,
    ]
    t0 = time.monotonic()
    proc = subprocess.run(cmd, env=env, cwd="/", capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    if not out["isolation"].startswith("userns"):
        pytest.skip(
            f"user namespaces unavailable here; fell back to {out['isolation']} in {time.monotonic() - t0:.1f}s"
        )
    assert out["isolation"] == "userns+netns+mountns+rlimits"
    assert out["plot"] == "ok"
    assert "unreachable" in out["net"]
    assert out["umount"].split()[0] == "-1"  # capabilities dropped: cannot unmount the private /tmp


NO_NAMESPACE_SCRIPT = """
import json, os
from reward_servers.sandbox import Sandbox, SandboxConfig
out = {}
with Sandbox(SandboxConfig(timeout_s=5), worker_index=11) as sb:
    out["isolation"] = sb.isolation
    out["plot"] = sb.run("import matplotlib.pyplot as plt\\nplt.plot([1, 2])").status
    out["net"] = sb.run("import socket\\nsocket.create_connection(('127.0.0.1', 9), timeout=1)").error
    out["uid"] = sb.run("open('/tmp/PROBE', 'w').write('x')\\nimport os\\nprint(os.getuid())").stdout.strip()
    out["probe_left"] = os.path.exists("/tmp/PROBE")
    out["sandbox_uid"] = sb.sandbox_uid
print(json.dumps(out))
"""


@pytest.mark.skipif(not IS_ROOT or shutil.which("setpriv") is None, reason="needs root and setpriv")
def test_root_without_namespaces_falls_back_to_setuid() -> None:
    """As root but without CAP_SYS_ADMIN (unshare refused, as under a container's seccomp profile)."""
    probe = f"cpx-nocap-{os.getpid()}"
    cmd = ["setpriv", "--bounding-set=-sys_admin", "--inh-caps=-sys_admin", sys.executable, "-c"]
    proc = subprocess.run(
        [*cmd, NO_NAMESPACE_SCRIPT.replace("PROBE", probe)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["isolation"] == "setuid+rlimits+socket-deny"
    assert out["plot"] == "ok" and "network access is disabled" in out["net"]
    assert out["uid"] == str(out["sandbox_uid"]) and not out["probe_left"]
    assert not os.path.exists(f"/tmp/{probe}")


def test_memory_limit_below_the_zygote_is_refused() -> None:
    with pytest.raises(RuntimeError, match="memory_mb=64"):
        Sandbox(SandboxConfig(memory_mb=64), worker_index=12).start()


def test_python_paths_under_masked_tmp_stay_importable(tmp_path, monkeypatch):
    """A checkout or virtualenv under /tmp (as a CI clone may be) must stay importable, read-only, across the
    fresh /tmp every sample gets."""
    if os.geteuid() != 0:
        pytest.skip("the masks exist in root mode")
    pkg = Path(tempfile.mkdtemp(prefix="kept-path-", dir="/tmp"))
    pkg.chmod(0o755)  # like a checkout: readable by the sandbox uid
    try:
        (pkg / "cp_kept_probe.py").write_text("def value():\n    return 42\n")
        monkeypatch.setenv("PYTHONPATH", str(pkg))
        code = (
            "import cp_kept_probe\nimport matplotlib.pyplot as plt\n"
            "plt.title(str(cp_kept_probe.value()))\nplt.plot([1, 2])\n"
        )
        with Sandbox(SandboxConfig(timeout_s=20)) as sb:
            for _ in range(2):  # the second sample runs after /tmp was replaced
                res = sb.run(code)
                assert res.status == "ok", res.error
                assert "42" in res.trace["texts"]
            res = sb.run(f"open({str(pkg / 'x.txt')!r}, 'w').write('x')")
            assert res.status == "exec_error" and "Read-only" in (res.error or "") + res.stderr
        assert not (pkg / "x.txt").exists()
    finally:
        shutil.rmtree(pkg, ignore_errors=True)

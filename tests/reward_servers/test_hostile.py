"""Hostile programs against the real sandbox: one test per program, the same five checks for each.

For every program: (1) the status is the expected one, (2) a TCP and a UDP listener on 127.0.0.1 receive nothing,
(3) no file carrying the test's token appears outside the sandbox (real /tmp, /var/tmp, /dev/shm, the test's cwd,
the repository, $HOME), (4) no process of the sandbox is left (no descendant of the zygote, no process of the
sandbox uid), (5) the same sandbox then renders a benign plot correctly.

    python -m pytest tests/reward_servers/test_hostile.py -q
"""

from __future__ import annotations

import io
import os
import socket
import uuid
from dataclasses import dataclass

import pytest
from PIL import Image

from reward_servers.sandbox import Sandbox, SandboxConfig

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOKEN = f"cpxhostile{uuid.uuid4().hex[:12]}"
SECRET = f"s3cr3t-{uuid.uuid4().hex}"
PLOT = "\nimport matplotlib.pyplot as plt\nplt.plot([0, 1, 2], [2, 0, 1])\n"
BENIGN = (
    "import matplotlib.pyplot as plt\nplt.bar(['a', 'b'], [1, 2], color='tab:green')\nplt.title('benign')\n"
)
HANG_TIMEOUT = 1.5


@dataclass
class Case:
    id: str
    code: str
    statuses: tuple[str, ...]
    timeout_s: float = 5.0


CASES = [
    # --- time
    Case("infinite_loop", "while True:\n    pass", ("timeout",), HANG_TIMEOUT),
    Case("sleep_forever", "import time\ntime.sleep(10**6)", ("timeout",), HANG_TIMEOUT),
    Case(
        "busy_threads",
        "import threading\ndef spin():\n    while True: pass\n"
        "for _ in range(8):\n    threading.Thread(target=spin, daemon=True).start()\nspin()",
        ("timeout",),
        HANG_TIMEOUT,
    ),
    Case("ignore_sigterm", "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\ntime.sleep(60)",
         ("timeout",), HANG_TIMEOUT),
    Case("sigstop_self", "import os, signal\nos.kill(os.getpid(), signal.SIGSTOP)", ("timeout",), HANG_TIMEOUT),
    # --- processes
    Case("fork_bomb", "import os\nwhile True:\n    os.fork()", ("exec_error", "timeout", "killed"), HANG_TIMEOUT),
    Case(
        "fork_and_sleep",
        "import os, time\nfor _ in range(200):\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
        "time.sleep(60)",
        ("timeout", "exec_error"),
        HANG_TIMEOUT,
    ),
    Case(
        "daemon_escapes_session",
        "import os, time\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n        time.sleep(600)\n"
        "    os._exit(0)\n" + PLOT,
        ("ok",),
    ),
    Case(
        "multiprocessing_pool",
        "import multiprocessing as mp\nwith mp.Pool(4) as p:\n    print(sum(p.map(abs, range(-50, 50))))" + PLOT,
        ("ok",),
    ),
    Case("subprocess_shell", "import subprocess\nsubprocess.run(['sh', '-c', 'sleep 600 &'], check=True)" + PLOT,
         ("ok",)),
    Case("kill_parent", "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)" + PLOT, ("exec_error",)),
    # kill(-1) signals every process the uid may signal except the caller: only the sandbox's own processes.
    Case("kill_minus_one", "import os, signal\nos.kill(-1, signal.SIGKILL)" + PLOT, ("ok",)),
    Case("setuid_root", "import os\nos.setuid(0)" + PLOT, ("exec_error",)),
    Case("read_zygote_memory", "import os\nopen(f'/proc/{os.getppid()}/mem', 'rb').read(16)", ("exec_error",)),
    # --- exits and crashes
    Case("os_exit_3", "import os\nos._exit(3)", ("exec_error",)),
    Case("os_exit_0", "import os\nos._exit(0)", ("exec_error",)),
    Case("sys_exit_1", "import sys\nsys.exit(1)", ("exec_error",)),
    Case("sys_exit_0_with_figure", PLOT + "import sys\nsys.exit(0)", ("ok",)),
    Case("segfault_ctypes", "import ctypes\nctypes.string_at(0)", ("killed",)),
    Case("abort", "import os\nos.abort()", ("killed",)),
    Case("deep_recursion", "def f(n):\n    return f(n + 1)\nf(0)", ("exec_error",)),
    Case(
        "deep_recursion_unlimited",
        "import sys\nsys.setrecursionlimit(10**8)\ndef f(n):\n    return f(n + 1)\nf(0)",
        ("killed", "memory", "exec_error", "timeout"),
        HANG_TIMEOUT,
    ),
    # --- memory and figure size
    Case("memory_bomb_one_block", "x = bytearray(16 * 1024**3)", ("memory",)),
    Case("memory_bomb_growing", "blocks = []\nwhile True:\n    blocks.append(bytearray(50 * 1024**2))", ("memory",)),
    Case("numpy_huge_array", "import numpy as np\na = np.ones((200_000, 200_000))", ("memory",)),
    Case("huge_figsize", "import matplotlib.pyplot as plt\nplt.figure(figsize=(300, 300))\nplt.plot([1, 2])",
         ("ok",)),
    Case(
        "huge_dpi_savefig",
        "import matplotlib.pyplot as plt\nfig = plt.figure(dpi=10000)\nfig.set_size_inches(500, 500)\n"
        "plt.plot([1, 2])\nfig.savefig('big.png', dpi=100000)",
        ("ok",),
    ),
    # --- files
    Case(
        "disk_fill_one_file",
        "with open('big.bin', 'wb') as f:\n    for _ in range(10_000):\n        f.write(b'x' * 2**20)",
        ("exec_error",),
    ),
    Case(
        "disk_fill_many_files",
        "i = 0\nwhile True:\n    with open(f'f{i}.bin', 'wb') as f:\n        f.write(b'x' * 7 * 2**20)\n    i += 1",
        ("exec_error", "timeout"),
        HANG_TIMEOUT + 2,
    ),
    Case("write_repo", f"open({REPO!r} + '/{TOKEN}.py', 'w').write('x')", ("exec_error",)),
    Case("write_cwd_of_caller", f"open({os.getcwd()!r} + '/{TOKEN}.txt', 'w').write('x')", ("exec_error",)),
    Case("write_root_home", f"open('/root/{TOKEN}', 'w').write('x')", ("exec_error",)),
    Case("write_real_tmp", f"open('/tmp/{TOKEN}', 'w').write('x')\nopen('/var/tmp/{TOKEN}', 'w').write('x')" + PLOT,
         ("ok",)),
    Case("write_dev_shm", f"open('/dev/shm/{TOKEN}', 'w').write('x')" + PLOT, ("ok",)),
    Case("delete_tmpdir", "import os, shutil\nshutil.rmtree(os.getcwd())" + PLOT, ("ok",)),
    Case(
        "tmpdir_swapped_for_symlink",
        f"import os\nd = os.getcwd()\nos.chdir('/')\nos.rename(d, d + '.moved')\nos.symlink({REPO!r}, d)" + PLOT,
        ("ok",),
    ),
    Case("many_open_files", "fs = [open('/dev/null') for _ in range(10_000)]", ("exec_error",)),
    # --- secrets
    Case(
        "read_passwd",
        "print(open('/etc/passwd').read())\nprint(open('/etc/group').read())" + PLOT,
        ("ok",),
    ),
    Case(
        "read_environment",
        "import os\nprint(dict(os.environ))\n"
        "for p in ['/proc/self/environ', f'/proc/{os.getppid()}/environ', '/proc/CALLER/environ']:\n"
        "    try:\n        print(open(p, 'rb').read())\n    except OSError as e:\n        print('denied', p, e)\n"
        + PLOT,
        ("ok",),
    ),
    # --- network
    Case(
        "tcp_to_listener",
        "import socket\ns = socket.create_connection(('127.0.0.1', PORT), timeout=1)\ns.sendall(b'leak')",
        ("exec_error",),
    ),
    Case("udp_to_listener", "import socket\nsocket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'leak', "
         "('127.0.0.1', PORT))", ("exec_error",)),
    Case("bash_dev_tcp", "import subprocess\nsubprocess.run(['bash', '-c', 'echo leak > /dev/tcp/127.0.0.1/PORT'],"
         " check=True)", ("exec_error",)),
    # --- tampering with the runtime
    Case(
        "replace_builtins_after_plotting",
        PLOT + "import builtins\nbuiltins.len = lambda x: 0\nbuiltins.isinstance = None\nbuiltins.open = None",
        ("ok",),
    ),
    Case("replace_builtins_before_plotting", "import builtins\nbuiltins.isinstance = None" + PLOT, ("exec_error",)),
    Case("break_json", "import json\njson.dumps = lambda *a, **k: 'garbage'" + PLOT, ("exec_error",)),
    Case("forge_result", "import os\nos.write(3, b'\\x00\\x00\\x00\\x05hello')\nos._exit(0)", ("exec_error",)),
    Case("close_all_fds", "import os\nos.closerange(0, 4096)" + PLOT, ("exec_error",)),
    # --- output and input sizes
    Case("print_1gb", "s = 'x' * 2**20\nfor _ in range(1024):\n    print(s)" + PLOT, ("ok", "timeout"), 4.0),
    Case("print_1gb_stderr_raw", "import os\nb = b'y' * 2**20\nfor _ in range(1024):\n    os.write(2, b)" + PLOT,
         ("ok", "timeout"), 4.0),
    Case("non_utf8_output", "import sys\nsys.stdout.buffer.write(b'\\xff\\xfe\\x80 bytes\\n')" + PLOT, ("ok",)),
    # A lone surrogate cannot be encoded as UTF-8 source: the program does not compile.
    Case("lone_surrogate_in_code", "s = '\udcff'\nprint(s)" + PLOT, ("syntax_error",)),
    Case("null_byte_in_code", "x = 1\x00", ("syntax_error",)),
    Case("empty_code", "", ("no_code",)),
    Case("whitespace_code", "  \n\t\n", ("no_code",)),
    Case("no_figure", "x = sum(range(10))\nprint(x)", ("no_figure",)),
    Case("code_10mb", "x = 1\n" + "#" * (10 * 2**20), ("bad_request",)),
]  # fmt: skip


@pytest.fixture(scope="module")
def sandbox():
    os.environ["CODEPERCEPT_TEST_SECRET"] = SECRET  # the zygote must not inherit it
    # strict == auto as root (and fails loudly elsewhere instead of silently weakening the checks below)
    isolation = "strict" if os.geteuid() == 0 else "auto"
    cfg = SandboxConfig(
        timeout_s=5.0,
        cpu_s=10,
        memory_mb=1024,
        max_file_mb=8,
        max_procs=24,
        max_fig_inches=10,
        isolation=isolation,
    )
    sb = Sandbox(cfg, worker_index=7)
    sb.start()
    yield sb
    sb.close()
    os.environ.pop("CODEPERCEPT_TEST_SECRET", None)


@pytest.fixture(scope="module")
def listeners():
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    tcp.bind(("127.0.0.1", 0))
    tcp.listen(8)
    tcp.setblocking(False)
    port = tcp.getsockname()[1]
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", port))
    udp.setblocking(False)
    yield port, tcp, udp
    tcp.close()
    udp.close()


def _received_anything(tcp: socket.socket, udp: socket.socket) -> bool:
    try:
        conn, _ = tcp.accept()
        conn.close()
        return True
    except BlockingIOError:
        pass
    try:
        udp.recvfrom(65536)
        return True
    except BlockingIOError:
        return False


def _files_with_token() -> list[str]:
    dirs = {"/tmp", "/var/tmp", "/dev/shm", os.getcwd(), REPO, os.path.expanduser("~")}
    found = []
    for d in dirs:
        try:
            found += [os.path.join(d, n) for n in os.listdir(d) if TOKEN in n]
        except OSError:
            continue
    return found


def _sandbox_processes(sb: Sandbox) -> list[int]:
    """Live descendants of the zygote plus any process of the sandbox uid (zombies awaiting reaping excluded)."""
    pids = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/status") as f:
                fields = dict(line.split(":", 1) for line in f if ":" in line)
        except OSError:
            continue
        state = fields.get("State", "").strip()[:1]
        uid = int(fields.get("Uid", "-1").split()[0])
        ppid = int(fields.get("PPid", "0").strip())
        if state != "Z" and ((sb.sandbox_uid is not None and uid == sb.sandbox_uid) or ppid == sb.zygote_pid):
            pids.append(int(name))
    return pids


@pytest.mark.timeout(60)
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_hostile_program(sandbox: Sandbox, listeners, case: Case) -> None:
    port, tcp, udp = listeners
    zygote_before, restarts_before = sandbox.zygote_pid, sandbox.restarts
    code = case.code.replace("PORT", str(port)).replace("CALLER", str(os.getpid()))
    res = sandbox.run(code, timeout_s=case.timeout_s)

    assert res.status in case.statuses, f"{case.id}: {res.status} ({res.error}) stderr={res.stderr[-300:]!r}"
    assert not _received_anything(tcp, udp), f"{case.id}: the listener on 127.0.0.1 received data"
    assert _files_with_token() == [], f"{case.id}: files appeared outside the sandbox"
    assert _sandbox_processes(sandbox) == [], f"{case.id}: sandbox processes left behind"
    assert SECRET not in res.stdout + res.stderr + repr(res.trace), f"{case.id}: secret leaked"
    assert len(res.stdout) <= 2 * sandbox.config.output_tail_bytes
    assert len(res.stderr) <= 2 * sandbox.config.output_tail_bytes
    # The child can never take the zygote down (separate uid): no restart happened.
    assert (sandbox.zygote_pid, sandbox.restarts) == (zygote_before, restarts_before)

    benign = sandbox.run(BENIGN)
    assert benign.status == "ok", f"after {case.id}: {benign.status} {benign.error} {benign.stderr[-300:]}"
    assert Image.open(io.BytesIO(benign.png)).size == (640, 480)
    assert benign.trace["texts"] == ["benign"]


def test_corpus_is_large_enough() -> None:
    assert len(CASES) >= 30 and len({c.id for c in CASES}) == len(CASES)


def test_huge_figure_is_clamped(sandbox: Sandbox) -> None:
    res = sandbox.run(
        "import matplotlib.pyplot as plt\nplt.figure(figsize=(300, 300), dpi=1000)\nplt.plot([1, 2])"
    )
    assert res.status == "ok"
    side = int(sandbox.config.max_fig_inches * sandbox.config.dpi)
    assert Image.open(io.BytesIO(res.png)).size == (side, side)
    assert res.trace["figures"][0]["size_in"] == [sandbox.config.max_fig_inches] * 2


def test_passwd_is_the_minimal_copy(sandbox: Sandbox) -> None:
    with open("/etc/passwd") as f:
        host_users = {line.split(":")[0] for line in f if line.strip()} - {"root", "nobody"}
    res = sandbox.run("print(open('/etc/passwd').read())")
    assert res.status == "no_figure"
    seen = {line.split(":")[0] for line in res.stdout.splitlines() if ":" in line}
    assert seen and not (seen & host_users)


def test_output_tails_keep_the_end(sandbox: Sandbox) -> None:
    res = sandbox.run("for i in range(100_000):\n    print(i)\nimport sys\nprint('err-end', file=sys.stderr)")
    assert res.status == "no_figure"
    assert res.stdout.rstrip().endswith("99999")
    assert len(res.stdout) <= sandbox.config.output_tail_bytes
    assert res.stderr.strip() == "err-end"


def test_non_utf8_output_is_replaced(sandbox: Sandbox) -> None:
    res = sandbox.run("import sys\nsys.stdout.buffer.write(b'\\xff\\xfe ok\\n')")
    assert res.status == "no_figure"
    assert "\ufffd\ufffd ok" in res.stdout


def test_code_not_a_string(sandbox: Sandbox) -> None:
    res = sandbox.run(b"print(1)")  # type: ignore[arg-type]
    assert res.status == "bad_request" and "str" in res.error


@pytest.mark.skipif(os.geteuid() != 0, reason="the full isolation level needs root")
def test_strict_isolation_level(sandbox: Sandbox) -> None:
    assert sandbox.isolation == "netns+mountns+setuid+rlimits"
    assert sandbox.sandbox_uid is not None and sandbox.sandbox_uid >= 61000


def test_cannot_read_other_processes_environment(sandbox: Sandbox) -> None:
    code = "for pid in [CALLER, ZYGOTE]:\n    try:\n        open(f'/proc/{pid}/environ', 'rb').read()\n"
    code += "        print('read', pid)\n    except PermissionError:\n        print('denied', pid)\n"
    res = sandbox.run(code.replace("CALLER", str(os.getpid())).replace("ZYGOTE", str(sandbox.zygote_pid)))
    assert res.stdout.split("\n")[:2] == [f"denied {os.getpid()}", f"denied {sandbox.zygote_pid}"]

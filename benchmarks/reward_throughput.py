"""Reward throughput: the pool through HTTP vs a fresh interpreter per sample vs warm in-process exec.

Run (a few minutes on 2 cores; the machine should be otherwise idle for clean figures)::

    python benchmarks/reward_throughput.py                 # 16 samples x 3 repeats, pools of 1 and 2 workers
    python benchmarks/reward_throughput.py --samples 32 --repeats 5 --workers 1 2 4

The same work in every mode, on the fixed STEM corpus (benchmarks/stem_corpus.py: charts, function plots,
geometry with patches and labels, 3-D solids): run the script, render its figure to PNG at dpi 100, score the
PNG against the script's target image with the default ``render`` reward (SSIM + edge F1 + pixel RMS).

(a) ``subprocess``: a fresh ``python`` per sample (the peers' way, as the CodePercept evaluation script does),
    ``savefig`` injected for ``plt.show()``; the parent scores the PNG. One sample at a time.
(b) ``pool/HTTP``: ``python -m reward_servers.server --workers N`` in its own process, fed by RewardClient with
    one batch per repeat; targets registered by id beforehand. Each sample runs sandboxed (fork from a warm
    zygote, namespaces, setuid, rlimits) and is traced, which (a) and (c) do not do. Every sample carries a
    unique comment, so the result cache never answers: this measures computation, not the cache.
(c) ``in-process``: the same scripts exec-ed in this (warm) process with no isolation: the floor.

Printed: samples/s per mode (median over repeats), the ratios b/a and b/c, b per worker vs c, and the scaling
from 1 to N workers, each ratio the median of per-repeat ratios (the modes of one repeat run back to back, so a
load swing on a shared machine mostly cancels out). A diagnostic line gives one Sandbox called directly (no
HTTP, no pool), which splits b's overhead into the sandbox's part and the service's part; another runs
wait-bound samples (0.25 s sleep + a tiny plot) through 1 and N workers, which shows the pool's parallel
dispatch apart from CPU contention (on a 2-core machine shared with other jobs, CPU-bound scaling is capped).
"""

from __future__ import annotations

import argparse
import io
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script: make `benchmarks` and the repo importable

os.environ.setdefault("MPLBACKEND", "Agg")
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import httpx  # noqa: E402
import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from benchmarks.stem_corpus import CORPUS  # noqa: E402
from reward_servers.client import RewardClient  # noqa: E402
from reward_servers.sandbox import RenderResult, Sandbox, SandboxConfig  # noqa: E402
from reward_servers.scoring import decode_png, score_render  # noqa: E402

DPI = 100


def samples(n: int, tag: str) -> list[tuple[str, str]]:
    """n (corpus name, code) pairs cycling the corpus, each made unique by a comment (defeats the cache)."""
    names = list(CORPUS)
    return [
        (names[k % len(names)], CORPUS[names[k % len(names)]] + f"# {tag} sample {k}\n") for k in range(n)
    ]


def _with_savefig(code: str, path: str) -> str:
    save = f"plt.savefig({path!r}, dpi={DPI})"
    return code.replace("plt.show()", save) if "plt.show()" in code else code + "\n" + save + "\n"


def _score(png: bytes, target_rgb) -> float:
    render = RenderResult(status="ok", images=[png])
    return score_render(render, target_rgb, None, "render")[0]


def warm_render(code: str) -> bytes:
    """Runs code in this process, returns the PNG of its figure (no isolation)."""
    buf = io.BytesIO()
    namespace = {"__name__": "__main__"}
    exec(compile(code.replace("plt.show()", "pass"), "<sample>", "exec"), namespace)  # noqa: S102 - the floor
    plt.savefig(buf, format="png", dpi=DPI)
    plt.close("all")
    return buf.getvalue()


def run_inprocess(batch: list[tuple[str, str]], targets: dict) -> tuple[float, list[float]]:
    """(c): exec each sample here, score it; returns (seconds, scores)."""
    t0 = time.perf_counter()
    scores = [_score(warm_render(code), targets[name]) for name, code in batch]
    return time.perf_counter() - t0, scores


def run_subprocess(batch: list[tuple[str, str]], targets: dict, workdir: str) -> tuple[float, list[float]]:
    """(a): one fresh interpreter per sample, as the peers do; returns (seconds, scores)."""
    t0 = time.perf_counter()
    scores = []
    for k, (name, code) in enumerate(batch):
        png_path = os.path.join(workdir, f"out{k}.png")
        script = os.path.join(workdir, f"sample{k}.py")
        Path(script).write_text(_with_savefig(code, png_path))
        proc = subprocess.run([sys.executable, script], capture_output=True, timeout=30, cwd=workdir)
        if proc.returncode != 0:
            raise RuntimeError(f"sample {name} failed in a subprocess: {proc.stderr.decode()[-500:]}")
        scores.append(_score(Path(png_path).read_bytes(), targets[name]))
    return time.perf_counter() - t0, scores


def run_pool(client: RewardClient, batch: list[tuple[str, str]]) -> tuple[float, list[float]]:
    """(b): one batch through HTTP to the pool; returns (seconds, scores)."""
    t0 = time.perf_counter()
    results = client.score([{"code": code, "target_id": name} for name, code in batch])
    elapsed = time.perf_counter() - t0
    bad = [(name, r.status, r.error) for (name, _), r in zip(batch, results, strict=True) if r.status != "ok"]
    if bad:
        raise RuntimeError(f"pool returned non-ok results: {bad[:3]}")
    return elapsed, [r.score for r in results]


def sleepers(n: int, tag: str) -> list[tuple[str, str]]:
    """n samples that mostly wait (0.25 s sleep, then a tiny plot): scaling with workers free of CPU contention."""
    code = "import time\nimport matplotlib.pyplot as plt\ntime.sleep(0.25)\nplt.plot([0, 1], [0, 1])\n"
    name = next(iter(CORPUS))
    return [(name, code + f"# {tag} sleeper {k}\n") for k in range(n)]


def run_sandbox(sandbox: Sandbox, batch: list[tuple[str, str]]) -> tuple[float, list[float]]:
    """Diagnostic: the same samples through one Sandbox called directly (no HTTP, no pool)."""
    t0 = time.perf_counter()
    results = [sandbox.score(code, target_id=name) for name, code in batch]
    elapsed = time.perf_counter() - t0
    bad = [(name, r.status, r.error) for (name, _), r in zip(batch, results, strict=True) if r.status != "ok"]
    if bad:
        raise RuntimeError(f"sandbox returned non-ok results: {bad[:3]}")
    return elapsed, [r.score for r in results]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(workers: int) -> tuple[subprocess.Popen, str]:
    """Starts the reward server in its own process and waits until it is healthy."""
    port = _free_port()
    cmd = [sys.executable, "-m", "reward_servers.server", "--port", str(port), "--workers", str(workers)]
    proc = subprocess.Popen(cmd + ["--log-level", "warning"], cwd=REPO, stdout=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"reward server exited with code {proc.returncode}")
        try:
            if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                return proc, url
        except httpx.TransportError:
            time.sleep(0.2)  # not listening yet
    proc.kill()
    raise RuntimeError("reward server did not become healthy in 120 s")


def main(argv: list[str] | None = None) -> int:
    """Runs the benchmark and prints the table; returns 0."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--samples", type=int, default=16, help="samples per repeat (cycling the corpus)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="pool sizes for (b)")
    args = ap.parse_args(argv)
    # A SIGTERM (e.g. from a job runner) unwinds like Ctrl-C, so the servers started below are stopped.
    signal.signal(signal.SIGTERM, signal.default_int_handler)

    target_pngs = {name: warm_render(code) for name, code in CORPUS.items()}
    targets = {name: decode_png(png) for name, png in target_pngs.items()}
    servers = {w: start_server(w) for w in args.workers}
    clients = {w: RewardClient(url, timeout_s=600) for w, (_, url) in servers.items()}
    modes = ["a", *(f"b{w}" for w in args.workers), "c", "sandbox", *(f"sleep{w}" for w in args.workers)]
    rates: dict[str, list[float]] = {m: [] for m in modes}
    sandbox = Sandbox(SandboxConfig())
    try:
        sandbox.start()
        for name, png in target_pngs.items():
            sandbox.register_target(name, png)
        for client in clients.values():
            client.register_targets(target_pngs)
            run_pool(client, samples(len(CORPUS), "warm-up"))  # first touch of every target per worker
        with tempfile.TemporaryDirectory() as workdir:
            subprocess.run(
                [sys.executable, "-c", "import matplotlib.pyplot"], check=True
            )  # warm the page cache
            for r in range(args.repeats):
                batch = samples(args.samples, f"repeat {r}")
                # The ratios that matter most (b/c) are measured back to back; (a), the slowest, comes last.
                timings = {"c": run_inprocess(batch, targets)}
                for w, client in clients.items():
                    timings[f"b{w}"] = run_pool(client, samples(args.samples, f"repeat {r} w{w}"))
                timings["sandbox"] = run_sandbox(sandbox, batch)
                for (
                    w,
                    client,
                ) in clients.items():  # wait-bound samples: the pool's parallelism without CPU limits
                    timings[f"sleep{w}"] = run_pool(client, sleepers(args.samples, f"repeat {r} w{w}"))
                timings["a"] = run_subprocess(batch, targets, workdir)
                for mode, (seconds, scores) in timings.items():
                    rates[mode].append(len(scores) / seconds)
                    if not mode.startswith("sleep"):  # sleepers are not drawings of their target
                        assert all(s > 0.9 for s in scores), (
                            f"{mode}: a sample scored below 0.9 against itself"
                        )
                line = "  ".join(f"{m}={v[-1]:.2f}/s" for m, v in rates.items())
                print(f"repeat {r + 1}/{args.repeats}: {line}", flush=True)
    finally:
        sandbox.close()
        for client in clients.values():
            client.close()
        for proc, _ in servers.values():
            proc.terminate()
            proc.wait(timeout=30)
    report(rates, args)
    return 0


def report(rates: dict[str, list[float]], args: argparse.Namespace) -> None:
    """Prints median rates and the ratios; ratios are medians of per-repeat ratios (modes of one repeat ran
    back to back, so a load swing on a shared machine cancels out of them)."""

    def ratio(num: str, den: str, scale: float = 1.0) -> float:
        return statistics.median(n / d / scale for n, d in zip(rates[num], rates[den], strict=True))

    med = {m: statistics.median(v) for m, v in rates.items()}
    w1 = min(args.workers)
    print(f"\nReward throughput, {args.samples} STEM samples x {args.repeats} repeats (median samples/s)")
    print(f"host: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at the end")
    print(f"  (a) fresh python per sample      {med['a']:8.2f}")
    for w in args.workers:
        print(f"  (b) pool via HTTP, {w} worker(s)   {med[f'b{w}']:8.2f}")
    print(f"  (c) warm in-process exec         {med['c']:8.2f}")
    print(f"  diagnostic: one Sandbox, direct  {med['sandbox']:8.2f}   (b without HTTP and pool)")
    print("ratios (median over repeats of the per-repeat ratio):")
    print(f"  b/a, {w1} worker(s):               {ratio(f'b{w1}', 'a'):6.2f}x   (target >= 5x)")
    print(f"  b/c, {w1} worker(s):               {ratio(f'b{w1}', 'c'):6.2f}x")
    for w in args.workers:
        print(f"  b per worker / c, {w} worker(s):  {ratio(f'b{w}', 'c', w):6.2f}x   (target >= 0.8x)")
    for w in args.workers:
        if w != w1:
            print(
                f"  scaling {w1} -> {w} workers:         {ratio(f'b{w}', f'b{w1}'):6.2f}x   (ideal {w / w1:.0f}x)"
            )
    print(f"  b/sandbox direct, {w1} worker(s):  {ratio(f'b{w1}', 'sandbox'):6.2f}x   (cost of HTTP + pool)")
    for w in args.workers:
        if w != w1:
            s = ratio(f"sleep{w}", f"sleep{w1}")
            print(
                f"  scaling {w1} -> {w}, wait-bound samples: {s:6.2f}x   (pool parallelism without CPU limits)"
            )


if __name__ == "__main__":
    sys.exit(main())

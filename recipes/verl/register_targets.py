"""Registers the target images of R1 parquet files with reward services, by ``extra_info.target_id``.

verl hands a reward function strings only, so ``compute_score`` names each row's image by the ``target_id`` of
its ``extra_info`` (``data_tools/exports.py``); the service must hold those images before the first step, or
every sample comes back unscored (``scored`` 0). ``r1_grpo.sh`` runs this before training::

    python recipes/verl/register_targets.py --url http://10.0.0.5:8000 data/icc/exports/r1/*.parquet

Run it again after a reward service restarts (the service keeps targets in memory). Every URL must take every
image: a service that does not is an error (exit status 1), not a warning.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time
from collections.abc import Iterator, Sequence

import httpx
import pyarrow.parquet as pq

URL_ENV = "CODEPERCEPT_REWARD_URL"


def iter_targets(path: str, image_key: str = "images", batch_rows: int = 256) -> Iterator[tuple[str, bytes]]:
    """``(target_id, png)`` for each row of an R1 parquet file that names a target; reads in batches.

    Raises:
        ValueError: the file lacks the columns, or a row with a target_id has no image bytes.
    """
    parquet = pq.ParquetFile(path)
    missing = {image_key, "extra_info"} - set(parquet.schema_arrow.names)
    if missing:
        raise ValueError(f"{path}: no column(s) {sorted(missing)}; is this an R1 export (--formats r1)?")
    for batch in parquet.iter_batches(batch_size=batch_rows, columns=[image_key, "extra_info"]):
        columns = (batch.column(image_key).to_pylist(), batch.column("extra_info").to_pylist())
        for images, extra in zip(*columns, strict=True):
            target_id = (extra or {}).get("target_id")
            if target_id is None:
                continue
            png = images[0].get("bytes") if images else None
            if not png:
                raise ValueError(
                    f"{path}: row with target_id {target_id!r} has no image bytes in {image_key!r}"
                )
            yield str(target_id), png


def _alive(pid: int) -> bool:
    """Whether process ``pid`` still runs (an exited child its parent has not reaped yet does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"  # the state field; Z: a zombie
    except (OSError, IndexError):  # no procfs: trust kill()
        return True


def wait_healthy(url: str, timeout_s: float, server_pid: int | None = None) -> None:
    """Waits until ``url/healthz`` answers 200.

    Args:
        url: the service.
        timeout_s: how long to wait.
        server_pid: the service's process, when the caller started it: its exit ends the wait at once.

    Raises:
        TimeoutError: not healthy within ``timeout_s``, or ``server_pid`` exited first.
    """
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while True:
        if server_pid is not None and not _alive(server_pid):
            raise TimeoutError(
                f"reward service process {server_pid} exited before {url} was healthy (see its log)"
            )
        try:
            response = httpx.get(url.rstrip("/") + "/healthz", timeout=5)
            if response.status_code == 200:
                return
            last = f"HTTP {response.status_code}"
        except httpx.TransportError as exc:
            last = type(exc).__name__
        if time.monotonic() >= deadline:
            raise TimeoutError(f"reward service {url} not healthy after {timeout_s:.0f} s ({last})")
        time.sleep(1.0)


def register(urls: Sequence[str], paths: Sequence[str], chunk: int = 256, image_key: str = "images") -> int:
    """Registers every target of ``paths`` on every URL, ``chunk`` images per request; returns the count.

    Raises:
        ValueError: a bad file, or one target_id with two different images.
        reward_servers.client.RewardClientError: a service refused or could not be reached.
    """
    from reward_servers.client import RewardClient

    seen: dict[
        str, str
    ] = {}  # target_id -> sha256 of its image (the same item in train and validation is fine)
    pending: dict[str, bytes] = {}
    clients = [RewardClient(url) for url in urls]  # one per URL: each must take every image

    def flush() -> None:
        for client in clients:
            client.register_targets(pending)
        pending.clear()

    try:
        for path in paths:
            for target_id, png in iter_targets(path, image_key):
                digest = hashlib.sha256(png).hexdigest()
                if seen.setdefault(target_id, digest) != digest:
                    raise ValueError(f"{path}: target_id {target_id!r} names two different images")
                pending[target_id] = png
                if len(pending) >= chunk:
                    flush()
        if pending:
            flush()
    finally:
        for client in clients:
            client.close()
    return len(seen)


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the exit status (2: bad arguments or files, 1: a service failed)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("paths", nargs="+", help="R1 parquet files")
    p.add_argument(
        "--url", default=os.environ.get(URL_ENV), help=f"service URL(s), comma-separated [${URL_ENV}]"
    )
    p.add_argument("--wait", type=float, default=0.0, help="seconds to wait for each service's /healthz")
    p.add_argument(
        "--server-pid", type=int, help="with --wait: stop waiting if this process (the service) exits"
    )
    p.add_argument("--chunk", type=int, default=256, help="images per request")
    p.add_argument("--image-key", default="images")
    args = p.parse_args(argv)
    urls = [u.strip() for u in (args.url or "").split(",") if u.strip()]
    if not urls:
        p.error(f"no service URL: pass --url or set {URL_ENV}")
    if args.chunk < 1:
        p.error(f"--chunk must be >= 1, got {args.chunk}")
    for path in args.paths:
        if not os.path.isfile(path):
            p.error(f"no such file: {path}")
    from reward_servers.client import RewardClientError

    try:
        for url in urls:
            if args.wait > 0:
                wait_healthy(url, args.wait, args.server_pid)
        count = register(urls, args.paths, args.chunk, args.image_key)
    except ValueError as exc:
        print(f"register_targets: error: {exc}", file=sys.stderr)
        return 2
    except (TimeoutError, RewardClientError) as exc:
        print(f"register_targets: error: {exc}", file=sys.stderr)
        return 1
    print(f"registered {count} targets from {len(args.paths)} file(s) on {', '.join(urls)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

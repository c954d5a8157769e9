"""``codepercept-rl submit``: run a codepercept-rl command as a job on a Ray cluster.

    codepercept-rl submit --address http://HEAD:8265 -- train recipes/r1_qwen3vl_8b.yaml model.path=/ckpt/s1/hf
    codepercept-rl submit --address http://HEAD:8265 --no-wait -- sft recipes/s1_qwen3vl_8b.yaml
    codepercept-rl submit --address http://HEAD:8265 --status JOB_ID   # or --logs JOB_ID, --stop JOB_ID

The command after ``--`` runs as ``codepercept-rl <args>`` on the cluster's head node, through Ray's job server
(the dashboard, port 8265 by default; ``ray start --head`` starts it). ``--address`` defaults to
``RAY_API_SERVER_ADDRESS`` or ``RAY_ADDRESS``, as with ``ray job submit``; a cluster with token authentication
needs its ``RAY_AUTH_MODE=token`` and ``RAY_AUTH_TOKEN`` here too. Walk-through: recipes/ray/README.md.

The job's runtime env carries:

- ``working_dir``: ``--working-dir`` (default ``.``) is zipped and uploaded, without runs, data, virtualenvs,
  caches and weight files (``DEFAULT_EXCLUDES``, plus ``--exclude``); Ray puts its copy first on the job's
  ``PYTHONPATH``, so the job runs this checkout's code. ``--working-dir none`` uploads nothing: the cluster's
  installed codepercept-rl runs, and relative paths resolve on the head node as usual;
- ``env_vars``: ``OMP_NUM_THREADS=1``, ``TOKENIZERS_PARALLELISM=false``, every ``WANDB_*`` and
  ``CODEPERCEPT_*`` variable set here, then ``--env K=V`` (which wins);
- ``pip`` / ``py_executable`` when given (``--pip``, ``--py-executable``); they apply to the job's Ray workers.

For ``train`` and ``sft`` it appends ``ray.address=auto`` (join the cluster) and ``ray.num_cpus=null`` (the
nodes' CPUs are set by ``ray start``; Ray refuses ``num_cpus`` when joining a cluster) unless the command line
sets them. Then it streams the job's logs until the job ends and exits 0 if it SUCCEEDED, 1 otherwise; Ctrl-C
stops following, not the job. With a working dir, give absolute paths on a filesystem every node sees for
``trainer.default_local_dir`` and the data: a relative run directory would land in the job's unpacked copy.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shlex
import sys
import time
from collections.abc import Sequence
from typing import Any

from codepercept_rl.errors import UserError

# Gitignore-style patterns, relative to the working dir. Root-anchored ("/data") where a package folder of the
# same name exists deeper down (codepercept_rl/data). Ray also applies the dir's .gitignore.
DEFAULT_EXCLUDES = [
    ".git", ".venv*", "__pycache__", "*.egg-info", ".pytest_cache", ".ruff_cache", ".cache",
    "/runs", "/outputs", "/data", "/wandb", "/build", "/dist", "checkpoints",
    "*.parquet", "*.arrow", "*.safetensors", "*.pt", "*.pth", "*.bin", "*.gguf", "*.ckpt",
]  # fmt: skip
DEFAULT_ENV = {"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
PASSTHROUGH_PREFIXES = ("WANDB_", "CODEPERCEPT_")
RAY_JOBS = ("train", "sft")  # subcommands that start Ray themselves and must join the cluster
_CHATTY_RAY_LOGGERS = (
    "ray._private.runtime_env.packaging",
    "ray.dashboard.modules.dashboard_sdk",
    "ray.dashboard.modules.job.sdk",
)
_SECRET_WORDS = {"KEY", "TOKEN", "SECRET", "PASSWORD"}  # env names holding one of these are not echoed


def parse_env(items: Sequence[str]) -> dict[str, str]:
    """``["K=V", ...]`` -> ``{"K": "V"}``.

    Raises:
        UserError: an item without ``=`` or with an empty name.
    """
    env = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"--env {item!r}: expected NAME=VALUE")
        env[key] = value
    return env


def job_env(extra: dict[str, str], environ: dict[str, str] | None = None) -> dict[str, str]:
    """The job's ``env_vars``: the defaults, this shell's ``WANDB_*`` / ``CODEPERCEPT_*``, then ``extra``."""
    environ = dict(os.environ if environ is None else environ)
    passthrough = {k: v for k, v in environ.items() if k.startswith(PASSTHROUGH_PREFIXES)}
    return {**DEFAULT_ENV, **passthrough, **extra}


def job_args(args: Sequence[str]) -> list[str]:
    """The codepercept-rl arguments to run; ``train`` / ``sft`` get the overrides that join the cluster.

    Raises:
        UserError: no command, or a ``ray.num_cpus`` that Ray would refuse on a cluster.
    """
    args = list(args)
    if not args:
        raise UserError("no command to submit: add it after '--', e.g. -- train recipes/r1_tiny_cpu.yaml")
    if args[0] == "codepercept-rl":
        args = args[1:]
    if not args or args[0] not in RAY_JOBS:
        return args
    given = {a.split("=", 1)[0] for a in args[1:] if "=" in a}
    added = [] if "ray.address" in given else ["ray.address=auto"]
    num_cpus = next((a.split("=", 1)[1] for a in args if a.startswith("ray.num_cpus=")), None)
    if num_cpus is None:
        added.append("ray.num_cpus=null")
    elif num_cpus.strip().lower() not in ("null", "none", "~", ""):
        raise UserError(f"ray.num_cpus={num_cpus}: a job joining a cluster cannot set its CPUs; "
                        "set them per node with `ray start --num-cpus N`")  # fmt: skip
    # Right after the last positional (recipe or override): argparse takes no overrides after `--resume`.
    at = max(i for i, a in enumerate(args) if not a.startswith("-")) + 1
    return args[:at] + added + args[at:]


def runtime_env(
    working_dir: str | None,
    env_vars: dict[str, str],
    excludes: Sequence[str] = (),
    pip: Sequence[str] = (),
    py_executable: str | None = None,
) -> dict[str, Any]:
    """The job's Ray runtime env (see the module docstring).

    Raises:
        UserError: ``working_dir`` is not a directory.
    """
    env: dict[str, Any] = {"env_vars": dict(env_vars)}
    if working_dir is not None:
        if not os.path.isdir(working_dir):
            raise UserError(f"--working-dir {working_dir}: not a directory (or 'none' to upload nothing)")
        env["working_dir"] = os.path.abspath(working_dir)
        env["excludes"] = [*DEFAULT_EXCLUDES, *excludes]
    if pip:
        env["pip"] = list(pip)
    if py_executable:
        env["py_executable"] = py_executable
    return env


def _address(given: str | None) -> str:
    address = given or os.environ.get("RAY_API_SERVER_ADDRESS") or os.environ.get("RAY_ADDRESS")
    if not address:
        raise UserError("no Ray job server address: pass --address http://HEAD:8265 or set RAY_ADDRESS")
    if "://" not in address and address != "auto":  # "auto": the Ray started on this machine
        address = f"http://{address}"
    return address


def _client(address: str) -> Any:
    from ray.job_submission import JobSubmissionClient

    # Ray's upload chatter (an INFO line per .gitignore it reads, a WARNING per default exclude) would bury
    # the job's own logs; its size warnings (WARNING) and errors stay.
    for name in _CHATTY_RAY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    logging.getLogger("ray._private.runtime_env.working_dir").setLevel(logging.ERROR)

    from ray.exceptions import AuthenticationError

    try:
        return JobSubmissionClient(address)
    except AuthenticationError:
        raise UserError(f"the Ray cluster at {address} uses token authentication: set RAY_AUTH_MODE=token and "
                        "RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH) to the cluster's token here "
                        "(recipes/ray/README.md)") from None  # fmt: skip
    except ConnectionError as e:
        raise UserError(f"cannot reach the Ray job server at {address} ({e}); it is the head's dashboard "
                        "address (port 8265 by default, `ray start --head --dashboard-host 0.0.0.0`), "
                        "not the GCS port 6379") from None  # fmt: skip


def _job_call(fn: Any, job_id: str) -> Any:
    """A client call about one job, with 'no such job' turned into a one-line error."""
    try:
        return fn(job_id)
    except RuntimeError as e:  # the client's error for an HTTP error answer (404: no such job)
        raise UserError(f"job {job_id}: {str(e).splitlines()[0]}") from None


def _submit(
    client: Any, entrypoint: str, env: dict[str, Any], job_id: str | None, wait_s: float = 60.0
) -> str:
    """Submits the job; waits up to ``wait_s`` for the head's job agent (it registers after the dashboard)."""
    deadline = time.monotonic() + wait_s
    waiting = False
    while True:
        try:
            return client.submit_job(entrypoint=entrypoint, runtime_env=env, submission_id=job_id)
        except RuntimeError as e:  # the server refused it: a taken job id, a bad runtime env, no agent yet
            reason = str(e).splitlines()[0]
            if "No available agent" not in reason or time.monotonic() > deadline:
                raise UserError(f"the job server refused the job: {reason}") from None
        if not waiting:
            print("codepercept-rl submit: waiting for the head's job agent ...", file=sys.stderr)
            waiting = True
        time.sleep(2.0)


def _masked(env_vars: dict[str, str]) -> str:
    def shown(key: str, value: str) -> str:
        return f"{key}=***" if _SECRET_WORDS & set(key.upper().split("_")) else f"{key}={value}"

    return " ".join(shown(k, v) for k, v in env_vars.items())


def _hints(address: str, job_id: str, stop: bool = True) -> str:
    base = f"codepercept-rl submit --address {address}"
    return f"logs: {base} --logs {job_id}" + (f"; stop: {base} --stop {job_id}" if stop else "")


async def _tail(client: Any, job_id: str) -> None:
    async for chunk in client.tail_job_logs(job_id):
        sys.stdout.write(chunk)
        sys.stdout.flush()


def follow(client: Any, address: str, job_id: str) -> int:
    """Streams the job's logs until it ends; returns 0 if it SUCCEEDED, else 1 (130 on Ctrl-C)."""
    from ray.job_submission import JobStatus

    _job_call(client.get_job_status, job_id)  # no such job: one line, before any streaming
    try:
        asyncio.run(_tail(client, job_id))
        status = client.get_job_status(job_id)
        while not status.is_terminal():  # the log stream can close a moment before the status settles
            time.sleep(0.5)
            status = client.get_job_status(job_id)
    except KeyboardInterrupt:
        print(f"\ncodepercept-rl submit: stopped following job {job_id}; it keeps running ({_hints(address, job_id)})",
              file=sys.stderr)  # fmt: skip
        return 130
    if status == JobStatus.SUCCEEDED:
        print(f"codepercept-rl submit: job {job_id} SUCCEEDED", file=sys.stderr)
        return 0
    info = client.get_job_info(job_id)
    if info.driver_exit_code is not None:
        reason = f"the command exited with status {info.driver_exit_code}"
    else:  # stopped, or it never ran (e.g. its runtime env could not be set up)
        reason = (info.message or "no message").strip().splitlines()[0]
    print(f"codepercept-rl submit: job {job_id} {status.value}: {reason} ({_hints(address, job_id, stop=False)})",
          file=sys.stderr)  # fmt: skip
    return 1


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="codepercept-rl submit",
        usage="codepercept-rl submit [--address URL] [options] -- COMMAND [ARGS...]\n"
        "       codepercept-rl submit [--address URL] (--status | --logs | --stop) JOB_ID",
        description="Run a codepercept-rl command (train, sft, eval, ...) as a Ray job on a cluster.",
    )
    p.add_argument("--address", help="the job server, http://HEAD:8265 (default: $RAY_API_SERVER_ADDRESS, "
                   "$RAY_ADDRESS)")  # fmt: skip
    p.add_argument("--working-dir", default=".", help="uploaded as the job's working dir (default: .); "
                   "'none' uploads nothing and runs the cluster's installed codepercept-rl")  # fmt: skip
    p.add_argument("--exclude", action="append", default=[], metavar="PATTERN",
                   help="more gitignore-style patterns to leave out of the upload (repeatable)")  # fmt: skip
    p.add_argument("--env", action="append", default=[], metavar="K=V", help="a job env var (repeatable)")
    p.add_argument("--pip", action="append", default=[], metavar="PKG", help="a pip package (repeatable)")
    p.add_argument("--py-executable", help="runtime env py_executable for the job's Ray workers")
    p.add_argument("--job-id", help="the submission id (default: Ray picks raysubmit_...)")
    p.add_argument("--no-wait", action="store_true", help="print the job id and return at once")
    actions = p.add_mutually_exclusive_group()
    actions.add_argument("--status", metavar="JOB_ID", help="print a job's status and exit")
    actions.add_argument("--logs", metavar="JOB_ID", help="stream a job's logs until it ends")
    actions.add_argument("--stop", metavar="JOB_ID", help="stop a running job")
    p.add_argument(
        "command", nargs=argparse.REMAINDER, help="after '--': the codepercept-rl command and args"
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Submit a job (and follow it), or look at / stop one; returns the exit code."""
    args = _parser().parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if args.status or args.logs or args.stop:
        if command:
            raise UserError("--status / --logs / --stop take a job id, not a command")
        address = _address(args.address)
        client = _client(address)
        if args.status:
            info = _job_call(client.get_job_info, args.status)
            message = (
                (info.message or "").strip().split("\n")[0]
            )  # a failed job's message goes on with its logs
            print(f"{args.status} {info.status.value}" + (f": {message}" if message else ""))
            return 0
        if args.logs:
            return follow(client, address, args.logs)
        stopped = _job_call(client.stop_job, args.stop)
        print(f"{args.stop} {'stop requested' if stopped else 'was not running'}")
        return 0

    cli_args = job_args(command)
    working_dir = None if args.working_dir.lower() == "none" else args.working_dir
    env = runtime_env(working_dir, job_env(parse_env(args.env)), args.exclude, args.pip, args.py_executable)
    entrypoint = shlex.join(["codepercept-rl", *cli_args])
    address = _address(args.address)
    client = _client(address)
    uploaded = (
        f"{env['working_dir']} (zipped and uploaded)" if working_dir else "none (the nodes' installed code)"
    )
    print(f"codepercept-rl submit: {entrypoint}\n  working_dir: {uploaded}\n"
          f"  env: {_masked(env['env_vars'])}", file=sys.stderr)  # fmt: skip
    job_id = _submit(client, entrypoint, env, args.job_id)
    if args.no_wait:
        print(job_id)
        print(f"codepercept-rl submit: job {job_id} submitted ({_hints(address, job_id)})", file=sys.stderr)
        return 0
    print(f"codepercept-rl submit: job {job_id} submitted; following its logs (Ctrl-C stops following)",
          file=sys.stderr)  # fmt: skip
    return follow(client, address, job_id)

"""One Tracker for every job: a console line per step, ``metrics.jsonl`` in the run directory, and W&B on request.

Usage::

    with Tracker(run_dir, project="codepercept-rl", experiment="s1-tiny", backends=["console", "jsonl", "wandb"],
                 config=to_dict(cfg), job_type="sft") as tracker:
        for step in range(n):
            tracker.log({"train/loss": loss, "timing_s/step": dt}, step=step)
        tracker.log_table("samples", ["target", "render", "score"], rows, step=step)

W&B never crashes a job: with no API key (or ``wandb_mode=offline``) it logs offline into ``run_dir/wandb``
(sync later with ``wandb sync``); if even that fails to start, it is disabled with one warning and the other
backends go on. Metric names follow verl where the meaning is the same (``actor/pg_loss``, ``timing_s/gen`` ...).

``metrics.jsonl`` has one JSON object per ``log`` call: ``{"step": int, "time": unix_s, <name>: value, ...}``.
A resumed job appends; readers keep the last record of each step (:func:`read_metrics`).
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from codepercept_rl.utils.io import atomic_write_json

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
BACKENDS = ("console", "jsonl", "wandb")


class Tracker:
    """Logs scalar metrics, tables and images of one run to the configured backends.

    Args:
        run_dir: the run directory (created if missing); ``metrics.jsonl`` and W&B files go there.
        project: W&B project (verl ``trainer.project_name``).
        experiment: run name (verl ``trainer.experiment_name``).
        backends: any of ``console``, ``jsonl``, ``wandb``.
        config: the resolved job config, recorded with the run.
        wandb_mode: ``auto`` (online with an API key, offline without), ``online``, ``offline``, ``disabled``.
        group: W&B group (e.g. the recipe, so S1, R1 and eval of one pipeline sit together).
        job_type: W&B job type (``sft``, ``grpo``, ``eval`` ...).
        tags: W&B tags.
        console_keys: metrics shown on the console line (prefix match); None shows all.
        stream: where console lines go (stdout by default).
    """

    def __init__(
        self,
        run_dir: str | os.PathLike,
        *,
        project: str = "codepercept-rl",
        experiment: str = "run",
        backends: Sequence[str] = ("console", "jsonl"),
        config: Mapping[str, Any] | None = None,
        wandb_mode: str = "auto",
        group: str | None = None,
        job_type: str | None = None,
        tags: Sequence[str] = (),
        console_keys: Sequence[str] | None = None,
        stream: io.TextIOBase | None = None,
    ) -> None:
        unknown = [b for b in backends if b not in BACKENDS]
        if unknown:
            raise ValueError(f"unknown tracking backend(s) {unknown}; choose from {list(BACKENDS)}")
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.backends = list(backends)
        self.console_keys = list(console_keys) if console_keys is not None else None
        self._stream = stream or sys.stdout
        self._jsonl = None
        self._wandb = None  # the wandb module once a run is live
        self._wandb_run = None
        self.wandb_mode_used: str | None = None
        self._t0 = time.time()
        if "jsonl" in self.backends:
            # Line-buffered append: each record reaches the file when logged, a resumed job appends.
            self._jsonl = open(self.run_dir / METRICS_FILE, "a", buffering=1, encoding="utf-8")  # noqa: SIM115
        if config is not None:
            atomic_write_json(self.run_dir / "config.json", _jsonable(config))
        if "wandb" in self.backends:
            self._start_wandb(project, experiment, config, wandb_mode, group, job_type, tags)

    # ------------------------------------------------------------------------------------------------------------
    def log(self, metrics: Mapping[str, Any], step: int) -> None:
        """Record scalar ``metrics`` for ``step`` on every backend. Non-finite values are kept as null in JSONL."""
        scalars = {k: _scalar(v) for k, v in metrics.items()}
        if self._jsonl is not None:
            record = {"step": int(step), "time": round(time.time(), 3), **scalars}
            self._jsonl.write(json.dumps(record, allow_nan=False, default=str) + "\n")
        if "console" in self.backends:
            self._stream.write(self._console_line(scalars, step) + "\n")
            self._stream.flush()
        if self._wandb_run is not None:
            self._wandb_run.log({k: v for k, v in metrics.items()}, step=int(step))

    def log_table(self, name: str, columns: Sequence[str], rows: Iterable[Sequence[Any]], step: int) -> None:
        """Log a table of samples. PIL images and PNG bytes become W&B images; JSONL gets a ``tables/`` file.

        The JSONL copy stores images as PNG files next to it (``tables/<name>/<step>_<row>_<col>.png``).
        """
        rows = [list(r) for r in rows]
        table_dir = self.run_dir / "tables" / name
        json_rows = []
        for r_i, row in enumerate(rows):
            json_row = []
            for c_i, cell in enumerate(row):
                png = _as_png_bytes(cell)
                if png is not None:
                    table_dir.mkdir(parents=True, exist_ok=True)
                    path = table_dir / f"{step:06d}_{r_i}_{c_i}.png"
                    path.write_bytes(png)
                    json_row.append({"image": str(path.relative_to(self.run_dir))})
                else:
                    json_row.append(_jsonable(cell))
            json_rows.append(json_row)
        if "jsonl" in self.backends:
            table_dir.mkdir(parents=True, exist_ok=True)
            with open(table_dir / "rows.jsonl", "a", encoding="utf-8") as f:
                f.write(
                    json.dumps({"step": step, "columns": list(columns), "rows": json_rows}, default=str)
                    + "\n"
                )
        if self._wandb_run is not None:
            wb = self._wandb
            data = [[_to_wandb_cell(wb, c) for c in row] for row in rows]
            self._wandb_run.log({name: wb.Table(columns=list(columns), data=data)}, step=int(step))

    def summary(self, values: Mapping[str, Any]) -> None:
        """Final numbers of the run: ``summary.json`` in the run dir and the W&B run summary."""
        path = self.run_dir / "summary.json"
        old = json.loads(path.read_text()) if path.exists() else {}
        old.update(_jsonable(dict(values)))
        atomic_write_json(path, old)
        if self._wandb_run is not None:
            for k, v in values.items():
                self._wandb_run.summary[k] = v

    def finish(self) -> None:
        """Flush and close every backend. Safe to call twice."""
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None
        if self._wandb_run is not None:
            run, self._wandb_run = self._wandb_run, None
            try:
                run.finish()
            except Exception as e:  # noqa: BLE001 - W&B must never fail a finished job
                log.warning("W&B finish failed (%s); the run's local files are kept in %s", e, self.run_dir)

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.finish()

    # ------------------------------------------------------------------------------------------------------------
    def _console_line(self, scalars: Mapping[str, Any], step: int) -> str:
        items = [
            (k, v)
            for k, v in scalars.items()
            if self.console_keys is None or any(k.startswith(p) for p in self.console_keys)
        ]
        parts = [f"step {step}"]
        for k, v in items:
            parts.append(f"{k} {_fmt(v)}")
        parts.append(f"elapsed {time.time() - self._t0:.1f}s")
        return " | ".join(parts)

    def _start_wandb(
        self,
        project: str,
        experiment: str,
        config: Mapping[str, Any] | None,
        mode: str,
        group: str | None,
        job_type: str | None,
        tags: Sequence[str],
    ) -> None:
        if mode == "disabled":
            return
        try:
            import wandb
        except ImportError:
            log.warning("tracking.backends has wandb but the wandb package is not installed; W&B disabled")
            return
        if mode == "auto":
            mode = "online" if _wandb_has_key() else "offline"
        attempts = [mode] if mode == "offline" else [mode, "offline"]
        for attempt in attempts:
            try:
                self._wandb_run = wandb.init(
                    project=project,
                    name=experiment,
                    group=group,
                    job_type=job_type,
                    tags=list(tags) or None,
                    config=_jsonable(dict(config)) if config is not None else None,
                    dir=str(self.run_dir),
                    mode=attempt,
                    reinit="finish_previous",
                    settings=wandb.Settings(init_timeout=60, silent=True, console="off"),
                )
                self._wandb = wandb
                self.wandb_mode_used = attempt
                return
            except Exception as e:  # noqa: BLE001 - any W&B failure degrades to offline, then to off
                log.warning("W&B %s init failed: %s", attempt, " ".join(str(e).split())[:300])
        log.warning("W&B disabled for this run; console/JSONL tracking continues in %s", self.run_dir)


def read_metrics(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of ``run_dir/metrics.jsonl``, one per step (the last one written wins), sorted by step.

    Raises:
        FileNotFoundError: the run directory has no metrics file.
    """
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no {METRICS_FILE} in {run_dir}")
    by_step: dict[int, dict[str, Any]] = {}
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                # A job killed mid-write leaves a torn last line; skip it rather than lose the file.
                log.warning("%s:%d: skipping a line that is not JSON", path, line_no)
                continue
            if isinstance(record, dict) and isinstance(record.get("step"), int):
                by_step.setdefault(record["step"], {}).update(record)
    return [by_step[s] for s in sorted(by_step)]


def _wandb_has_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    return netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="ignore")


def _scalar(v: Any) -> Any:
    if hasattr(v, "item") and callable(v.item):  # torch / numpy scalars
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, (bool, int, float, str)) or v is None:
        return v
    return str(v)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str, allow_nan=True))


def _as_png_bytes(cell: Any) -> bytes | None:
    if isinstance(cell, (bytes, bytearray)) and bytes(cell[:8]) == b"\x89PNG\r\n\x1a\n":
        return bytes(cell)
    try:
        from PIL import Image
    except ImportError:
        return None
    if isinstance(cell, Image.Image):
        buf = io.BytesIO()
        cell.save(buf, format="PNG")
        return buf.getvalue()
    return None


def _to_wandb_cell(wb: Any, cell: Any) -> Any:
    png = _as_png_bytes(cell)
    if png is None:
        return cell
    from PIL import Image

    return wb.Image(Image.open(io.BytesIO(png)))

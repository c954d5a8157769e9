"""The per-item results file: append-only JSONL, one fsync'd line per finished item, read back on resume.

    with ResultsFile(out_dir / "results.jsonl") as results:
        done = results.records            # id -> record already on disk (a resumed run skips these)
        results.append(record)            # one line, flushed and fsync'd before it returns

Crash safety: a line is written with one ``write`` and fsync'd, so after a kill the file holds whole lines plus
at most one torn last line (no trailing newline, or not valid JSON). Opening the file drops that torn tail
(truncating to the last complete line) before appending, so the item it held is simply done again. A record
is final once its line is complete: resuming never scores an item twice. ``read_results`` is the read-only
view used by reports and comparisons (it ignores a torn tail without touching the file).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from codepercept_rl.errors import UserError

RESULTS_FILE = "results.jsonl"


def _parse_lines(data: bytes, path: Path) -> tuple[dict[str, dict[str, Any]], int]:
    """Records by id and the byte length of the valid prefix (everything after it is a torn tail)."""
    records: dict[str, dict[str, Any]] = {}
    valid_end = 0
    pos = 0
    while pos < len(data):
        nl = data.find(b"\n", pos)
        if nl < 0:
            break  # no newline: the last write was cut short
        line = data[pos:nl]
        try:
            rec = json.loads(line) if line.strip() else None
        except json.JSONDecodeError:
            if data.find(b"\n", nl + 1) >= 0 or data[nl + 1 :].strip():
                raise UserError(
                    f"{path}: line at byte {pos} is not valid JSON and is not the last line"
                ) from None
            break  # a torn last line that happens to end with a newline byte
        if rec is not None:
            if not isinstance(rec, dict) or not isinstance(rec.get("id"), str):
                raise UserError(f"{path}: line at byte {pos} is not a result record (no string 'id')")
            records[rec["id"]] = rec
        pos = valid_end = nl + 1
    return records, valid_end


def read_results(path: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """Records of a results file by item id (a torn last line is ignored).

    Raises:
        UserError: the file is missing or a line other than the last is corrupt.
    """
    p = Path(path)
    if p.is_dir():
        p = p / RESULTS_FILE
    if not p.is_file():
        raise UserError(f"no results file at '{p}'")
    records, _ = _parse_lines(p.read_bytes(), p)
    return records


class ResultsFile:
    """Append-only per-item results with fsync per item (module docstring)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = self.path.read_bytes() if self.path.exists() else b""
        self.records, valid_end = _parse_lines(data, self.path)
        self.dropped_tail_bytes = len(data) - valid_end
        self._f = open(self.path, "ab")  # noqa: SIM115 - closed in close()
        if self.dropped_tail_bytes:
            self._f.truncate(valid_end)
            self._f.flush()
            os.fsync(self._f.fileno())

    def append(self, record: dict[str, Any]) -> None:
        """Writes one record as one line and fsyncs it.

        Raises:
            ValueError: the record has no string ``id`` or its id is already in the file (never score twice).
        """
        rid = record.get("id")
        if not isinstance(rid, str):
            raise ValueError(f"result record needs a string 'id', got {rid!r}")
        if rid in self.records:
            raise ValueError(f"item {rid!r} already has a result in {self.path}")
        line = json.dumps(record, ensure_ascii=False, allow_nan=False) + "\n"
        self._f.write(line.encode("utf-8"))
        self._f.flush()
        os.fsync(self._f.fileno())
        self.records[rid] = record

    def close(self) -> None:
        """Closes the file."""
        self._f.close()

    def __enter__(self) -> ResultsFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

"""Benchmark statistics: the paper's Final, per-category breakdowns, bootstrap CIs and paired comparisons.

Formulas (all scores on the 0-100 scale):

- ``Exec`` = 100 x (items whose code rendered) / (scored items);
- ``Image``, ``Code`` = means of the per-item scores over the items where they are defined (``Code`` is
  undefined for items with a missing or broken reference; ``image_judge`` / ``code_judge`` also for judge
  failures); every model-side failure is a defined 0;
- ``Final`` = (Image + Code + Exec) / 3 (``paper_final``), with the judges' Image / Code when a judge ran
  (``final``) and always with the deterministic ones (``final_det``).

Confidence intervals: percentile bootstrap over items, ``n_boot`` resamples (default 1000) drawn with
``numpy.random.default_rng(seed)`` (default seed 0), so a report is reproducible; each resample recomputes the
statistic as defined above (means skip undefined entries), and the interval is the (alpha/2, 1 - alpha/2)
quantiles. ``compare`` pairs two runs on their common item ids: per-item difference of the per-item final
score (B - A), win / tie / loss with a tie margin, and a paired bootstrap CI of the mean difference (the same
resampled item indices for both runs).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from codepercept_rl.eval.scoring import BAD_ITEM

SCORE_KEYS = ("exec", "image", "code", "image_judge", "code_judge")
# Headline metrics: name -> how to compute it from the per-item score columns.
FINAL_PARTS = {"final_det": ("image", "code", "exec"), "final": ("image_judge", "code_judge", "exec")}


def paper_final(image: float, code: float, exec_rate: float) -> float:
    """The paper's Final score: (Image + Code + Exec) / 3, all on 0-100 (Exec as a percentage)."""
    return (image + code + exec_rate) / 3.0


def _matrix(records: Sequence[Mapping[str, Any]]) -> np.ndarray:
    """(N, len(SCORE_KEYS)) per-item scores, NaN where undefined."""
    out = np.full((len(records), len(SCORE_KEYS)), np.nan)
    for i, rec in enumerate(records):
        scores = rec.get("scores") or {}
        for j, key in enumerate(SCORE_KEYS):
            v = scores.get(key)
            if v is not None:
                out[i, j] = float(v)
    return out


def _nanmean(x: np.ndarray, axis: int = 0) -> np.ndarray:
    count = np.sum(~np.isnan(x), axis=axis)
    total = np.nansum(x, axis=axis)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def _statistics(m: np.ndarray) -> dict[str, float]:
    """Means of every score column and the two Finals from an (N, K) matrix (or (B, N, K) -> arrays)."""
    means = _nanmean(m, axis=-2)  # (..., K)
    col = {key: means[..., j] for j, key in enumerate(SCORE_KEYS)}
    out = dict(col)
    for name, (img, code, ex) in FINAL_PARTS.items():
        out[name] = paper_final(col[img], col[code], col[ex])
    return out


@dataclass
class Summary:
    """Scores of one set of items: means, CIs, counts."""

    n: int
    scores: dict[str, float | None]
    ci: dict[str, tuple[float, float] | None]
    defined: dict[str, int]

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return {"n": self.n, "scores": self.scores, "ci": self.ci, "defined": self.defined}


def summarize_items(
    records: Sequence[Mapping[str, Any]], *, n_boot: int = 1000, seed: int = 0, alpha: float = 0.05
) -> Summary:
    """Means, the Finals and bootstrap CIs over scored records (bad items must already be left out)."""
    m = _matrix(records)
    n = len(records)
    point = _statistics(m) if n else {k: np.nan for k in (*SCORE_KEYS, *FINAL_PARTS)}
    ci: dict[str, tuple[float, float] | None] = {}
    if n and n_boot > 0:
        rng = np.random.default_rng(seed)
        idx = rng.integers(0, n, size=(n_boot, n))
        boot = _statistics(m[idx])  # each (n_boot,)
        for key, values in boot.items():
            finite = values[np.isfinite(values)]
            ci[key] = (
                (float(np.quantile(finite, alpha / 2)), float(np.quantile(finite, 1 - alpha / 2)))
                if finite.size and np.isfinite(point[key])
                else None
            )
    else:
        ci = {key: None for key in point}
    defined = {key: int(np.sum(~np.isnan(m[:, j]))) for j, key in enumerate(SCORE_KEYS)}
    scores = {k: (float(v) if np.isfinite(v) else None) for k, v in point.items()}
    return Summary(n, scores, ci, defined)


@dataclass
class EvalSummary:
    """Everything the report shows."""

    overall: Summary
    by_category: dict[str, Summary]
    status_counts: dict[str, int]
    n_items: int
    n_bad_items: int
    judge_failures: dict[str, int]
    reference_problems: int
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (``summary.json``)."""
        return {
            "n_items": self.n_items,
            "n_bad_items": self.n_bad_items,
            "overall": self.overall.to_dict(),
            "by_category": {k: v.to_dict() for k, v in self.by_category.items()},
            "status_counts": self.status_counts,
            "judge_failures": self.judge_failures,
            "items_without_code_reference": self.reference_problems,
            **self.extra,
        }


def summarize(
    records: Iterable[Mapping[str, Any]], *, n_boot: int = 1000, seed: int = 0, alpha: float = 0.05
) -> EvalSummary:
    """Overall and per-category summaries of a run's records, with failure counts (module docstring)."""
    records = list(records)
    scored = [r for r in records if r.get("status") != BAD_ITEM]
    by_cat: dict[str, list[Mapping[str, Any]]] = {}
    for r in scored:
        by_cat.setdefault(str(r.get("category") or "all"), []).append(r)
    judge_failures = Counter()
    for r in scored:
        for kind in ("image", "code"):
            if (r.get("judge") or {}).get(f"{kind}_error"):
                judge_failures[kind] += 1
    return EvalSummary(
        extra={"as_released": released_counting(records)},
        overall=summarize_items(scored, n_boot=n_boot, seed=seed, alpha=alpha),
        by_category={
            cat: summarize_items(rs, n_boot=n_boot, seed=seed, alpha=alpha)
            for cat, rs in sorted(by_cat.items())
        },
        status_counts=dict(Counter(str(r.get("status")) for r in records).most_common()),
        n_items=len(records),
        n_bad_items=len(records) - len(scored),
        judge_failures=dict(judge_failures),
        reference_problems=sum(1 for r in scored if (r.get("scores") or {}).get("code") is None),
    )


# Outcomes the released STEM2Code script never scores: no code block, generation failed (it retries them on the
# next run and leaves them out of the Image and Code means).
RELEASED_DROPS = frozenset({"no_code", "api_error", "gen_error"})


def released_counting(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The released script's counting, for comparison with published numbers (not a fair score).

    Its ``calculate.py`` averages Image and Code over the answers that had code and got both scores, and divides
    rendered images by the whole bench for Exec. Here: Image / Code (and the judge ones) are means over records
    whose status is not in ``RELEASED_DROPS``; Exec is over all scored records; Finals as usual.
    """
    scored = [r for r in records if r.get("status") != BAD_ITEM]
    kept = [r for r in scored if r.get("status") not in RELEASED_DROPS]
    m_all, m_kept = _matrix(scored), _matrix(kept)
    if not scored:
        return {"dropped": 0, "scores": {}}
    col = {key: float(_nanmean(m_kept)[j]) if kept else float("nan") for j, key in enumerate(SCORE_KEYS)}
    col["exec"] = float(_nanmean(m_all)[SCORE_KEYS.index("exec")])
    out = dict(col)
    for name, (img, code, ex) in FINAL_PARTS.items():
        out[name] = paper_final(col[img], col[code], col[ex])
    return {
        "dropped": len(scored) - len(kept),
        "scores": {k: (v if np.isfinite(v) else None) for k, v in out.items()},
    }


def item_final(record: Mapping[str, Any], judged: bool) -> float | None:
    """Per-item Final: (image + code + exec) / 3 with the judge or deterministic scores; None if undefined."""
    s = record.get("scores") or {}
    img, code, ex = FINAL_PARTS["final" if judged else "final_det"]
    values = [s.get(img), s.get(code), s.get(ex)]
    if any(v is None for v in values):
        return None
    return paper_final(*(float(v) for v in values))


@dataclass
class Comparison:
    """A vs B on their common items."""

    metric: str
    n_common: int
    only_a: int
    only_b: int
    mean_a: float | None
    mean_b: float | None
    mean_diff: float | None
    ci: tuple[float, float] | None
    wins: int  # B better than A by more than the tie margin
    ties: int
    losses: int
    per_item: list[dict[str, Any]]

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return dict(self.__dict__)


def bootstrap_mean_ci(
    values: Sequence[float] | np.ndarray, *, n_boot: int = 1000, seed: int = 0, alpha: float = 0.05
) -> tuple[float, float] | None:
    """Percentile bootstrap CI of the mean of ``values`` (resampled with replacement, ``n_boot`` times).

    Given per-item differences, it is the paired CI of the mean difference. ``None`` for no values or
    ``n_boot=0``.
    """
    x = np.asarray(values, dtype=float)
    if not x.size or n_boot <= 0:
        return None
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(n_boot, x.size))].mean(axis=1)
    return float(np.quantile(means, alpha / 2)), float(np.quantile(means, 1 - alpha / 2))


def compare(
    a: Mapping[str, Mapping[str, Any]],
    b: Mapping[str, Mapping[str, Any]],
    *,
    judged: bool = False,
    tie_margin: float = 1.0,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> Comparison:
    """Paired comparison of two runs' records (by id) on the per-item Final (module docstring).

    Args:
        a, b: records by item id (``read_results``).
        judged: compare the judge Final instead of the deterministic one.
        tie_margin: |B - A| <= this (points of 100) is a tie.
    """
    common = sorted(
        i for i in set(a) & set(b) if a[i].get("status") != BAD_ITEM and b[i].get("status") != BAD_ITEM
    )
    per_item, da, db = [], [], []
    for i in common:
        fa, fb = item_final(a[i], judged), item_final(b[i], judged)
        if fa is None or fb is None:
            continue
        da.append(fa)
        db.append(fb)
        per_item.append(
            {
                "id": i,
                "a": fa,
                "b": fb,
                "diff": fb - fa,
                "status_a": a[i].get("status"),
                "status_b": b[i].get("status"),
            }
        )
    va, vb = np.asarray(da), np.asarray(db)
    diff = vb - va
    ci = bootstrap_mean_ci(diff, n_boot=n_boot, seed=seed, alpha=alpha)
    return Comparison(
        metric="final" if judged else "final_det",
        n_common=int(diff.size),
        only_a=len(set(a) - set(b)),
        only_b=len(set(b) - set(a)),
        mean_a=float(va.mean()) if va.size else None,
        mean_b=float(vb.mean()) if vb.size else None,
        mean_diff=float(diff.mean()) if diff.size else None,
        ci=ci,
        wins=int(np.sum(diff > tie_margin)),
        ties=int(np.sum(np.abs(diff) <= tie_margin)),
        losses=int(np.sum(diff < -tie_margin)),
        per_item=per_item,
    )

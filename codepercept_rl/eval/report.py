"""Reports of an evaluation run: ``report.md``, ``gallery.html``, ``summary.png``, ``summary.json``.

    write_report(out_dir)            # reads out_dir/results.jsonl, writes the four files next to it

The gallery is one static HTML page with a little inline JS (no network, no external assets): one card per
item with the reference image, the rendered answer, the scores, the status and the code; buttons filter to
failures (any status but ``ok``), to no-code answers, to errors and to bad items, a select filters by category,
and cards can be sorted by score. Images are the PNG files under ``references/`` and ``renders/`` next to it.
Everything from the model (code, error text) is HTML-escaped; nothing from it is executed by the page.
"""

from __future__ import annotations

import html
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from codepercept_rl.eval.results import read_results
from codepercept_rl.eval.stats import SCORE_KEYS, Comparison, EvalSummary, item_final, summarize
from codepercept_rl.utils.io import atomic_write_json, atomic_write_text

LABELS = {
    "final": "Final (judge)",
    "final_det": "Final (det.)",
    "exec": "Exec %",
    "image": "Image (det.)",
    "code": "Code (det.)",
    "image_judge": "Image (judge)",
    "code_judge": "Code (judge)",
}


def _fmt(v: float | None) -> str:
    return "–" if v is None else f"{v:.2f}"


def _ci(ci: tuple[float, float] | list[float] | None) -> str:
    return "" if not ci else f"[{ci[0]:.2f}, {ci[1]:.2f}]"


def _columns(summary: EvalSummary) -> list[str]:
    judged = (
        summary.overall.defined.get("image_judge", 0) > 0 or summary.overall.defined.get("code_judge", 0) > 0
    )
    cols = ["final"] if judged else []
    cols += ["final_det", "exec", "image", "code"]
    if judged:
        cols += ["image_judge", "code_judge"]
    return cols


def markdown_report(summary: EvalSummary, meta: Mapping[str, Any] | None = None) -> str:
    """The Markdown report: headline table with CIs, per-category table, failure counts."""
    meta = dict(meta or {})
    cols = _columns(summary)
    o = summary.overall
    lines = ["# Evaluation report", ""]
    for key in ("model", "model_name", "bench", "generator", "judge_model", "code_judge_model"):
        if meta.get(key):
            lines.append(f"- **{key}**: `{meta[key]}`")
    lines += [
        f"- **items**: {summary.n_items} ({o.n} scored, {summary.n_bad_items} bad bench items left out)",
        "",
        "Final = (Image + Code + Exec) / 3 on a 0-100 scale (the paper's formula). "
        "*Final (det.)* uses the deterministic Image (render similarity) and Code (trace: element kinds and "
        "positions, texts, types, colours, layout) scores; "
        "*Final (judge)* the LLM judges'. Failures (no code, API errors, exec errors, timeouts) count as 0. "
        "Brackets: 95% percentile bootstrap CI over items (seeded).",
        "",
        "| | " + " | ".join(LABELS[c] for c in cols) + " |",
        "|---|" + "---|" * len(cols),
        "| score | " + " | ".join(_fmt(o.scores.get(c)) for c in cols) + " |",
        "| 95% CI | " + " | ".join(_ci(o.ci.get(c)) for c in cols) + " |",
    ]
    released = summary.extra.get("as_released") or {}
    if released.get("scores"):
        lines.append("| as released‡ | " + " | ".join(_fmt(released["scores"].get(c)) for c in cols) + " |")
        lines += [
            "",
            f"‡ The released script's counting, for comparison with published numbers only: it drops the "
            f"{released['dropped']} answers with no code or a failed generation from Image and Code (Exec stays "
            "over all items), which favours models that fail to answer.",
        ]
    lines += [
        "",
        "## By category",
        "",
        "| category | n | " + " | ".join(LABELS[c] for c in cols) + " |",
        "|---|---|" + "---|" * len(cols),
    ]
    for cat, s in summary.by_category.items():
        lines.append(f"| {cat} | {s.n} | " + " | ".join(_fmt(s.scores.get(c)) for c in cols) + " |")
    lines += ["", "## Outcomes", "", "| status | items |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in summary.status_counts.items()]
    lines += [
        "",
        f"- items without a usable code reference (left out of Code): {summary.reference_problems}",
        f"- judge failures after retries (left out of the judge's mean): image {summary.judge_failures.get('image', 0)}, "
        f"code {summary.judge_failures.get('code', 0)}",
        "",
    ]
    return "\n".join(lines)


_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Evaluation gallery</title>
<style>
body{{font-family:sans-serif;margin:12px;background:#f4f4f4}}
.bar button{{margin:2px;padding:4px 10px}} .bar button.on{{background:#333;color:#fff}}
#grid{{display:flex;flex-wrap:wrap;gap:10px;margin-top:10px}}
.card{{background:#fff;border:2px solid #ccc;padding:8px;width:412px}}
.card.fail{{border-color:#c33}} .card.ok{{border-color:#3a3}}
.imgs{{display:flex;gap:6px}} .imgs figure{{margin:0;width:200px}}
.imgs img{{width:200px;height:155px;object-fit:contain;background:#fff;border:1px solid #ddd}}
.none{{width:200px;height:155px;display:flex;align-items:center;justify-content:center;background:#eee;color:#888}}
pre{{max-height:200px;overflow:auto;background:#f8f8f8;font-size:11px}} .err{{color:#a00;font-size:12px}}
table.sc td{{padding:0 6px;font-size:13px}}
</style></head><body>
<h2>Evaluation gallery</h2>
<div>{headline}</div>
<div class="bar">
<button data-f="all" class="on">all ({n_all})</button>
<button data-f="fail">failures ({n_fail})</button>
<button data-f="no_code">no code</button>
<button data-f="error">errors</button>
<button data-f="bad_item">bad items</button>
<select id="cat"><option value="">all categories</option>{cat_options}</select>
<select id="sort"><option value="">bench order</option><option value="asc">score ascending</option>
<option value="desc">score descending</option></select>
<span id="count"></span>
</div>
<div id="grid">
{cards}
</div>
<script>
(function(){{
  var filter="all", grid=document.getElementById("grid");
  var cards=Array.prototype.slice.call(grid.children);
  function show(){{
    var cat=document.getElementById("cat").value, n=0;
    cards.forEach(function(c){{
      var s=c.dataset.status, ok;
      if(filter==="all") ok=true;
      else if(filter==="fail") ok=s!=="ok";
      else if(filter==="error") ok=s!=="ok"&&s!=="no_code"&&s!=="bad_item";
      else ok=s===filter;
      if(cat&&c.dataset.cat!==cat) ok=false;
      c.style.display=ok?"":"none"; if(ok) n++;
    }});
    document.getElementById("count").textContent=n+" shown";
  }}
  document.querySelectorAll(".bar button").forEach(function(b){{
    b.addEventListener("click",function(){{
      filter=b.dataset.f;
      document.querySelectorAll(".bar button").forEach(function(x){{x.classList.toggle("on",x===b);}});
      show();
    }});
  }});
  document.getElementById("cat").addEventListener("change",show);
  document.getElementById("sort").addEventListener("change",function(e){{
    var v=e.target.value, sorted=cards.slice();
    if(v) sorted.sort(function(a,b){{var d=parseFloat(a.dataset.score)-parseFloat(b.dataset.score);return v==="asc"?d:-d;}});
    sorted.forEach(function(c){{grid.appendChild(c);}});
  }});
  var q=new URLSearchParams(location.search).get("filter"); if(q){{
    var b=document.querySelector('.bar button[data-f="'+q+'"]'); if(b) b.click();
  }}
  show();
}})();
</script></body></html>
"""


def _img(path: str | None, alt: str) -> str:
    if not path:
        return f'<div class="none">{html.escape(alt)}</div>'
    return f'<img src="{html.escape(path, quote=True)}" alt="{html.escape(alt, quote=True)}" loading="lazy">'


def _card(rec: Mapping[str, Any], judged: bool) -> str:
    status = str(rec.get("status"))
    scores = rec.get("scores") or {}
    final = item_final(rec, judged)
    files = rec.get("files") or {}
    rows = "".join(
        f"<tr><td>{LABELS[k]}</td><td>{_fmt(scores.get(k))}</td></tr>"
        for k in SCORE_KEYS
        if scores.get(k) is not None
    )
    code = rec.get("code") or (rec.get("generation") or {}).get("text") or ""
    err = rec.get("error")
    return (
        f'<div class="card {"ok" if status == "ok" else "fail"}" data-status="{html.escape(status, quote=True)}" '
        f'data-cat="{html.escape(str(rec.get("category")), quote=True)}" data-score="{final if final is not None else -1}">'
        f"<b>{html.escape(str(rec.get('id')))}</b> · {html.escape(str(rec.get('category')))} · "
        f"<b>{html.escape(status)}</b> · final {_fmt(final)}"
        f'<div class="imgs"><figure>{_img(files.get("reference"), "no reference image")}<figcaption>reference</figcaption></figure>'
        f"<figure>{_img(files.get('render'), 'no render')}<figcaption>answer</figcaption></figure></div>"
        f'<table class="sc">{rows}</table>'
        + (f'<div class="err">{html.escape(str(err)[:400])}</div>' if err else "")
        + f"<details><summary>code</summary><pre>{html.escape(code[:20000])}</pre></details></div>"
    )


def gallery_html(records: list[Mapping[str, Any]], summary: EvalSummary) -> str:
    """The gallery page (module docstring); image paths are relative to the run directory."""
    judged = "final" in _columns(summary)
    o = summary.overall
    headline = " · ".join(f"{LABELS[c]} <b>{_fmt(o.scores.get(c))}</b>" for c in _columns(summary))
    cats = sorted({str(r.get("category")) for r in records})
    return _PAGE.format(
        headline=headline,
        n_all=len(records),
        n_fail=sum(1 for r in records if r.get("status") != "ok"),
        cat_options="".join(
            f'<option value="{html.escape(c, quote=True)}">{html.escape(c)}</option>' for c in cats
        ),
        cards="\n".join(_card(r, judged) for r in records),
    )


def summary_plot(summary: EvalSummary, path: str | os.PathLike) -> Path:
    """A PNG with the headline scores (with CI error bars), per-category Final and the outcome counts."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = _columns(summary)
    o = summary.overall
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    vals = [o.scores.get(c) or 0.0 for c in cols]
    errs = [
        [0, 0] if not o.ci.get(c) else [v - o.ci[c][0], o.ci[c][1] - v]
        for c, v in zip(cols, vals, strict=True)
    ]
    axes[0].bar(
        [LABELS[c] for c in cols],
        vals,
        yerr=list(zip(*errs, strict=True)) if errs else None,
        capsize=4,
        color="#4477aa",
    )
    axes[0].set_ylim(0, 100)
    axes[0].set_title("Scores (95% bootstrap CI)")
    axes[0].tick_params(axis="x", rotation=30)
    key = cols[0]
    cats = list(summary.by_category)
    axes[1].barh(cats, [summary.by_category[c].scores.get(key) or 0.0 for c in cats], color="#66ccee")
    axes[1].set_xlim(0, 100)
    axes[1].set_title(f"{LABELS[key]} by category")
    statuses = list(summary.status_counts)
    axes[2].bar(statuses, [summary.status_counts[s] for s in statuses], color="#ee6677")
    axes[2].set_title("Outcomes (items)")
    axes[2].tick_params(axis="x", rotation=30)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def write_report(
    out_dir: str | os.PathLike, *, meta: Mapping[str, Any] | None = None, n_boot: int = 1000, seed: int = 0
) -> EvalSummary:
    """Writes ``report.md``, ``gallery.html``, ``summary.png`` and ``summary.json`` from ``results.jsonl``.

    Returns:
        The summary the files were made from.
    """
    out = Path(out_dir)
    records = sorted(read_results(out).values(), key=lambda r: (r.get("index", 1 << 30), str(r["id"])))
    summary = summarize(records, n_boot=n_boot, seed=seed)
    summary.extra["bootstrap"] = {"n_boot": n_boot, "seed": seed, "alpha": 0.05, "method": "percentile"}
    if meta:
        summary.extra["meta"] = dict(meta)
    atomic_write_json(out / "summary.json", summary.to_dict())
    atomic_write_text(out / "report.md", markdown_report(summary, meta))
    atomic_write_text(out / "gallery.html", gallery_html(records, summary))
    summary_plot(summary, out / "summary.png")
    return summary


def compare_markdown(cmp: Comparison, name_a: str, name_b: str, top: int = 10) -> str:
    """A vs B as Markdown: means, paired difference with CI, win/tie/loss, largest per-item changes."""
    lines = [
        f"# {name_b} vs {name_a}",
        "",
        f"Metric: per-item {LABELS[cmp.metric]} on {cmp.n_common} common items "
        f"({cmp.only_a} only in A, {cmp.only_b} only in B).",
        "",
        "| A | B | B - A | 95% CI (paired bootstrap) | wins (B) | ties | losses (B) |",
        "|---|---|---|---|---|---|---|",
        f"| {_fmt(cmp.mean_a)} | {_fmt(cmp.mean_b)} | {_fmt(cmp.mean_diff)} | {_ci(cmp.ci)} | {cmp.wins} | "
        f"{cmp.ties} | {cmp.losses} |",
        "",
        "## Largest changes",
        "",
        "| item | A | B | B - A | status A | status B |",
        "|---|---|---|---|---|---|",
    ]
    for row in sorted(cmp.per_item, key=lambda r: -abs(r["diff"]))[:top]:
        lines.append(
            f"| {row['id']} | {row['a']:.2f} | {row['b']:.2f} | {row['diff']:+.2f} | {row['status_a']} | "
            f"{row['status_b']} |"
        )
    return "\n".join(lines) + "\n"


def load_meta(out_dir: str | os.PathLike) -> dict[str, Any]:
    """The run's ``run.json`` (settings) if present."""
    path = Path(out_dir) / "run.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


__all__ = [
    "compare_markdown",
    "gallery_html",
    "load_meta",
    "markdown_report",
    "summary_plot",
    "write_report",
]

"""Evaluation harness: STEM2Code-style Image / Code / Exec / Final scores, reports, comparisons, Table-1 protocol.

    codepercept-rl eval --model runs/r1/hf --bench BENCH --out runs/eval/r1
    codepercept-rl eval --endpoint http://127.0.0.1:8000/v1 --model-name NAME --bench BENCH --out OUT
    codepercept-rl eval compare runs/eval/s1 runs/eval/r1

Modules: ``bench`` (loaders), ``generate`` (engines and OpenAI-compatible endpoints), ``scoring`` (one item,
sandboxed), ``judges`` (LLM judge seam), ``results`` (resumable JSONL), ``harness`` (the loop), ``stats``
(Final, bootstrap CIs, paired comparison), ``report`` (Markdown, HTML gallery, plot), ``caption_solver``
(captioner-solver protocol). The command itself: ``codepercept_rl/jobs/eval.py``.
"""

from codepercept_rl.eval.bench import BenchItem, load_bench
from codepercept_rl.eval.caption_solver import answers_match, run_caption_solver
from codepercept_rl.eval.generate import (
    CODE_PROMPT,
    EngineGenerator,
    Generation,
    Generator,
    GenRequest,
    OpenAIGenerator,
)
from codepercept_rl.eval.harness import run_eval
from codepercept_rl.eval.judges import ItemJudge, JudgeResult, LLMItemJudge
from codepercept_rl.eval.report import compare_markdown, write_report
from codepercept_rl.eval.results import ResultsFile, read_results
from codepercept_rl.eval.scoring import ItemScorer, answer_code
from codepercept_rl.eval.stats import compare, paper_final, summarize

__all__ = [
    "CODE_PROMPT",
    "BenchItem",
    "EngineGenerator",
    "GenRequest",
    "Generation",
    "Generator",
    "ItemJudge",
    "ItemScorer",
    "JudgeResult",
    "LLMItemJudge",
    "OpenAIGenerator",
    "ResultsFile",
    "answer_code",
    "answers_match",
    "compare",
    "compare_markdown",
    "load_bench",
    "paper_final",
    "read_results",
    "run_caption_solver",
    "run_eval",
    "summarize",
    "write_report",
]

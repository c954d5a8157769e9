"""data_tools: build image-caption-code (ICC) datasets, the upstream of S1 (SFT) and R1 (GRPO) training.

Run it::

    codepercept-rl data build --families all --num 1000 --out data/icc --workers 2 --seed 0
    codepercept-rl data show data/icc
    codepercept-rl data filter data/icc --out data/icc_clean --blank --dedup --exec
    codepercept-rl data export data/icc_clean --formats r1,s1,hf
    codepercept-rl data teacher reproduce --seeds seeds/ --out data/teacher --endpoint URL --model M
    python -m pytest tests/data_tools -q         # tests (real sandbox renders, real HTTP on 127.0.0.1)
    python benchmarks/data_build.py              # items/s at 1 and 2 workers

(``python -m codepercept_rl.data_cli ...`` is the same command.)

Modules
-------
- ``generators``: 14 parametric families (``FAMILIES``): the paper's eight solid-geometry ones (cube_net,
  three_view, cross_section, cube_stacking, combined_solid, polyhedron, spatial_curve, surface_integral),
  four plane STEM ones (function_plot, plane_geometry, stat_chart, physics) and two miniature-pipeline ones
  (shapes, bars: short canonical programs a tiny model can learn). Generators only write code.
- ``render``: ``Renderer``, parallel rendering through ``reward_servers`` sandboxes (never in-process).
- ``captions``: captions from the execution trace, and a sentence-level checker against the trace.
- ``teacher``: OpenAI-compatible client (retries, disk cache), Image Reproduce / Image Diversity pipelines with
  render-and-repair and three judge checks, resumable teacher builds.
- ``filters`` / ``dedup`` / ``policy``: blank, executability, near-duplicate and R1 difficulty filters.
- ``exports``: verl R1 parquet, S1 chat JSONL, Hugging Face dataset; leakage-free splits.
- ``build`` / ``store`` / ``show``: sharded, resumable builds; the on-disk layout; contact sheets.

Dataset layout on disk
----------------------
::

    DIR/manifest.json                  {"format_version", "kind", "spec" (what was built), "summary"}
    DIR/items/shard-00000.jsonl        one item per line (data_tools.store.Item): id, family, seed, code,
                                       caption, image ("images/<id>.png"), params, subject, source, trace
    DIR/items/shard-00000.stats.json   per-shard counts: planned, rendered, failed by status, seconds
    DIR/images/<id>.png                the rendered image (the sandbox's PNG, dpi from the spec)
    DIR/dedup.json                     {"removed": {id: id of the kept near-duplicate}} (skipped by readers)
    DIR/contact_sheet.png              from `data show`
    DIR/exports/splits.json            id -> train | validation | test
    DIR/exports/r1/<split>.parquet     verl RL format
    DIR/exports/s1/<split>.jsonl       chat-messages SFT records, image paths relative to that folder
    DIR/exports/hf/                    datasets.DatasetDict.save_to_disk (Image feature)
    DIR/teacher_cache/                 teacher responses by request hash (teacher builds only)

A shard's JSONL is written last and atomically; a shard without it is unfinished, and rerunning the same
command redoes exactly those shards.
"""

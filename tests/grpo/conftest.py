"""A tiny R1 set in verl's parquet format: shapes programs from data_tools, rendered in the sandbox."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_tools.generators import generate
from reward_servers.sandbox import Sandbox, SandboxConfig

PROMPT = "<image>Write Python matplotlib code that draws exactly this picture."


def write_r1_parquet(path, seeds, sandbox):
    rows = []
    for index, seed in enumerate(seeds):
        program = generate("shapes", seed)
        render = sandbox.run(program.code)
        assert render.status == "ok", render.error
        rows.append(
            {
                "data_source": "codepercept/shapes",
                "prompt": [{"role": "user", "content": PROMPT}],
                "images": [{"bytes": render.png}],
                "ability": "perception",
                "reward_model": {"style": "rule", "ground_truth": program.code},
                "extra_info": {"index": index, "item_id": f"shapes-{seed}", "target_id": f"shapes-{seed}"},
            }
        )
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


@pytest.fixture(scope="session")
def r1_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("r1")
    with Sandbox(SandboxConfig(timeout_s=20)) as sb:
        train = write_r1_parquet(root / "train.parquet", range(0, 4), sb)
        val = write_r1_parquet(root / "validation.parquet", range(100, 102), sb)
    return str(train), str(val)

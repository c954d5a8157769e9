"""``Learner.export_hf`` writes a folder vLLM can serve: the hub processor layout, video processor included.

vLLM builds the stock ``Qwen2_5_VLProcessor`` / ``Qwen3VLProcessor`` from the folder, and transformers raises
"Can't load video processor" when it finds no video processor config. The stock video processors need
torchvision (transformers 5.x), which this environment lacks, so here the check stops where transformers
resolves the video processor config; tests/rollout/test_vllm_multiproc.py loads the stock processor and serves
the folder with vLLM (in .venv-vllm).
"""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image
from transformers.video_processing_utils import BaseVideoProcessor

from codepercept_rl.config.schema import ModelConfig
from codepercept_rl.learner import Learner, LearnerConfig
from codepercept_rl.models import build_tiny_model
from codepercept_rl.models.processor import STOCK_PROCESSOR, STOCK_VIDEO_PROCESSOR, load_processor


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.mark.parametrize("arch", ["qwen2_5_vl", "qwen3_vl"])
def test_export_has_the_processor_files_vllm_loads(arch, tmp_path):
    learner = Learner(LearnerConfig(model=ModelConfig(tiny_preset="nano", tiny_arch=arch)))
    out = learner.export_hf(tmp_path / "hf")
    # What the stock processor's from_pretrained resolves first (vLLM's "Can't load video processor").
    video, _ = BaseVideoProcessor.get_video_processor_dict(out)
    assert video["video_processor_type"] == STOCK_VIDEO_PROCESSOR[arch]
    assert json.loads((out / "processor_config.json").read_text())["processor_class"] == STOCK_PROCESSOR[arch]
    # The folder still reads without torchvision, and processes a prompt as the learner's processor does.
    reloaded = load_processor(out, arch)
    text = f"<|vision_start|>{reloaded.image_token}<|vision_end|>Write matplotlib code."
    image = Image.new("RGB", (96, 64), "red")
    ours, theirs = (
        p(text=[text], images=[image], return_tensors="pt") for p in (learner.processor, reloaded)
    )
    assert ours["input_ids"].tolist() == theirs["input_ids"].tolist()
    torch.testing.assert_close(ours["pixel_values"], theirs["pixel_values"])


def test_export_keeps_the_source_folders_video_processor(tmp_path):
    # A fine-tuned hub model keeps the hub's video settings (here: a folder with its own max_frames).
    source = tmp_path / "base"
    build_tiny_model("qwen3_vl", "nano", out_dir=source, save_for_vllm=True)
    video_file = source / "video_preprocessor_config.json"
    hub_video = {**json.loads(video_file.read_text()), "max_frames": 123}
    video_file.write_text(json.dumps(hub_video))
    learner = Learner(LearnerConfig(model=ModelConfig(path=str(source))))
    out = learner.export_hf(tmp_path / "hf")
    assert json.loads((out / "video_preprocessor_config.json").read_text()) == hub_video

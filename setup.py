"""CodePercept-RL: code-grounded perception training for multimodal LLMs.

Install (CPU machines: pin torch first, a plain ``pip install torch`` pulls GBs of CUDA wheels)::

    pip install torch==2.13.0
    pip install -e ".[dev]"
"""

from setuptools import find_packages, setup

CORE = [
    "torch>=2.6",  # pin the CPU build yourself first: pip install torch==2.13.0
    "transformers>=4.57",
    "tokenizers>=0.21",
    "safetensors>=0.4",
    "accelerate>=1.0",
    "ray[default]>=2.40",
    "numpy>=1.26",
    "scipy>=1.11",
    "pillow>=10.0",
    "matplotlib>=3.8",
    "scikit-image>=0.22",
    "wandb>=0.18",
    "pyyaml>=6.0",
    "omegaconf>=2.3",
    "rich>=13.0",
    "tqdm>=4.66",
    "fastapi>=0.110",
    "uvicorn>=0.29",
    "httpx>=0.27",
    "aiohttp>=3.9",
    "pyarrow>=15.0",
    "datasets>=2.19",
    "gguf>=0.10",
]

EXTRAS = {
    "gpu": ["vllm>=0.32", "flash-attn>=2.6"],  # MIN_VLLM_VERSION in codepercept_rl/rollout/vllm_engine.py
    # A local ONNX image encoder for reward_servers.metrics.perceptual_similarity (no torch, no download).
    "perceptual": ["onnxruntime>=1.17", "onnx>=1.15"],
    "verl": ["verl>=0.9.1,<0.10", "hydra-core>=1.3"],  # recipes/verl use 0.9.1 key names
    "trl": ["trl>=1.0"],
    "dev": [
        "pytest>=8.0",
        "pytest-timeout>=2.3",
        "ruff>=0.6",
        "trl>=1.0",
        "onnxruntime>=1.17",
        "onnx>=1.15",
        "prometheus_client>=0.19",
        "hydra-core>=1.3",  # composes verl's config in tests/recipes (verl itself is installed --no-deps)
    ],
}

setup(
    name="codepercept-rl",
    version="0.1.0",
    description="Train multimodal LLMs to perceive STEM images through code: data, SFT, GRPO, evaluation.",
    python_requires=">=3.10",
    packages=find_packages(include=["codepercept_rl*", "reward_servers*", "data_tools*"]),
    install_requires=CORE,
    extras_require=EXTRAS,
    entry_points={"console_scripts": ["codepercept-rl=codepercept_rl.cli:main"]},
    include_package_data=True,
    package_data={"codepercept_rl.models": ["assets/*.txt", "assets/configs/*.json"]},
)

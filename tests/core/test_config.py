"""Config loading: YAML + dotted overrides, typed, and every mistake named in one message."""

from __future__ import annotations

import pytest

from codepercept_rl.config import JobConfig, dump_yaml, load_config, to_dict
from codepercept_rl.errors import ConfigError


@pytest.fixture
def recipe(tmp_path):
    path = tmp_path / "r1.yaml"
    path.write_text(
        "trainer:\n  experiment_name: r1-test\n"
        "actor:\n  optim:\n    lr: 1e-6\n  clip_ratio_high: 0.28\n"
        "rollout:\n  n: 8\n"
        "reward:\n  name: render_similarity\n  weights: {ssim: 0.5}\n"
    )
    return path


def test_file_values_and_defaults(recipe):
    cfg = load_config(recipe, schema=JobConfig)
    assert cfg.trainer.experiment_name == "r1-test"
    assert cfg.actor.optim.lr == pytest.approx(1e-6)  # "1e-6" is a string to PyYAML; the float field takes it
    assert isinstance(cfg.actor.optim.lr, float)
    assert cfg.actor.clip_ratio_high == pytest.approx(0.28)
    assert cfg.actor.clip_ratio_low == pytest.approx(0.2)  # default kept
    assert cfg.rollout.n == 8
    assert cfg.reward.weights == {"ssim": 0.5}


def test_overrides_apply_in_order_and_parse_yaml(recipe):
    cfg = load_config(
        recipe,
        [
            "actor.optim.lr=2e-5",
            "rollout.n=4",
            "rollout.n=16",
            "reward.weights.edge=0.25",
            "tracking.backends=[console,wandb]",
            "model.path=null",
            "trainer.total_training_steps=300",
        ],
        schema=JobConfig,
    )
    assert cfg.actor.optim.lr == pytest.approx(2e-5)
    assert cfg.rollout.n == 16
    assert cfg.reward.weights == {"ssim": 0.5, "edge": 0.25}
    assert cfg.tracking.backends == ["console", "wandb"]
    assert cfg.model.path is None
    assert cfg.trainer.total_training_steps == 300


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        ("trainer.lrr=1", "unknown key 'trainer.lrr'"),
        ("trainer.lr=1e-6", "did you mean 'actor.optim.lr'"),
        ("rollout.n=eight", "wrong type for 'rollout.n' in override 'rollout.n=eight': expected int"),
        ("rollout.n=1.5", "expected int"),
        ("actor.use_kl_loss=maybe", "expected bool"),
        ("tracking.backends=[console,tensorboard]", "'tensorboard' is not one of"),
        ("rollout", "expected key=value"),
        ("=3", "empty key"),
        ("rollout..n=3", "empty segment"),
        ("rollout.n.deep=1", "'rollout.n' is a int, it has no key 'deep'"),
        ("reward.weights.ssim=high", "wrong type for 'reward.weights.ssim'"),
        ("actor.optim.lr=[1", "not valid YAML"),
    ],
)
def test_bad_overrides_are_named(recipe, override, fragment):
    with pytest.raises(ConfigError) as info:
        load_config(recipe, [override], schema=JobConfig)
    assert fragment in str(info.value)
    assert "\n" not in str(info.value)


def test_unknown_key_in_file_names_file_and_suggests(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("rollout:\n  temprature: 0.7\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, schema=JobConfig)
    msg = str(info.value)
    assert "rollout.temprature" in msg and str(path) in msg and "did you mean 'temperature'" in msg


def test_wrong_type_in_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("data:\n  train_batch_size: lots\n")
    with pytest.raises(ConfigError, match=r"wrong type for 'data.train_batch_size' in .*bad.yaml"):
        load_config(path, schema=JobConfig)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml", schema=JobConfig)
    bad = tmp_path / "broken.yaml"
    bad.write_text("trainer: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad, schema=JobConfig)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("42\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(scalar, schema=JobConfig)


def test_dump_roundtrip(recipe, tmp_path):
    cfg = load_config(recipe, ["rollout.n=3"], schema=JobConfig)
    out = tmp_path / "resolved.yaml"
    out.write_text(dump_yaml(cfg))
    again = load_config(out, schema=JobConfig)
    assert to_dict(again) == to_dict(cfg)

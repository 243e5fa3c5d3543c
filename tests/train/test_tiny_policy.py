"""The shipped tiny policy: a standard HF folder that loads without this package, and sits in the
paper's regime on the held-out split (right on roughly half, wrong mostly at intermediate steps)."""

from __future__ import annotations

import json

import pytest

from glore_ray.config import load_config
from glore_ray.data import worlds
from glore_ray.train.tiny_policy import ASSETS, evaluate_policy, recipe_hash
from tests.conftest import REPO


def test_checkpoint_is_a_plain_hf_folder(tiny_policy):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_policy)
    tok = AutoTokenizer.from_pretrained(tiny_policy)
    assert model.config.model_type == "llama"
    n = sum(p.numel() for p in model.parameters())
    assert 0.5e6 < n < 5e6
    text = ("Question: B = A + 3 . A = 4 . what is B ?\nAnswer:\n"
            "A = 4\nB = A + 3 = 4 + 3 = 7\n#### 7")  # the symbolic world's format
    assert tok.decode(tok(text)["input_ids"], skip_special_tokens=True) == text


@pytest.mark.parametrize("config, run_seed",
                         [("arithmetic", 0), ("arithmetic", 1), ("dependency", 0)])
def test_shipped_policy_is_in_the_regime(config, run_seed):
    """Runs with different seeds share the base policy (policy.seed and the world's seed).
    Greedy accuracy is re-measured on the test split; pass@8 is the shipped record's."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg = load_config(REPO / f"configs/{config}.yaml", [f"seed={run_seed}"])
    folder = ASSETS / recipe_hash(cfg)
    assert folder.exists(), f"no shipped policy: run scripts/ship_policy.py configs/{config}.yaml"
    recorded = json.loads((folder / "glore_policy.json").read_text())["metrics"]
    _, test = worlds.generate(cfg.data)
    m = evaluate_policy(AutoModelForCausalLM.from_pretrained(folder).eval(),
                        AutoTokenizer.from_pretrained(folder), test[: cfg.policy.eval_questions])
    assert m["greedy_accuracy"] == pytest.approx(recorded["greedy_accuracy"], abs=0.02)
    assert m["error_kinds"].get("format", 0) <= 0.05 * m["n"], m
    if config == "arithmetic":
        assert 0.35 <= m["greedy_accuracy"] <= 0.65, m
        assert m["intermediate_error_share"] >= 0.6, m  # wrong mostly before the answer line
    else:  # chosen in the paper's regime on validation questions; errors not of arithmetic
        val = recorded["validation"]
        assert (0.40 <= val["greedy_accuracy"] <= 0.60
                and val["pass@8"] >= val["greedy_accuracy"] + 0.15)
        assert 0.33 <= m["greedy_accuracy"] <= 0.60, m  # test split: 37.0% when shipped
        assert recorded["pass@8"] >= m["greedy_accuracy"] + 0.15, recorded
        wrong = m["n"] - round(m["greedy_accuracy"] * m["n"])
        assert m["error_kinds"].get("arithmetic", 0) <= 0.2 * wrong, m


def test_recipe_hash_ignores_bookkeeping_but_not_the_recipe():
    a = load_config(None)
    assert recipe_hash(a) == recipe_hash(load_config(None, ["policy.shipped=false"]))
    assert recipe_hash(a) != recipe_hash(load_config(None, ["policy.steps=10"]))
    assert recipe_hash(a) == recipe_hash(load_config(None, ["seed=1"]))  # the run's seed
    assert recipe_hash(a) != recipe_hash(load_config(None, ["policy.seed=1"]))
    assert recipe_hash(a) != recipe_hash(load_config(None, ["data.synthetic.seed=1"]))
    assert recipe_hash(a) != recipe_hash(load_config(None, ["policy.stop_at=100"]))
    assert recipe_hash(a) == recipe_hash(load_config(None, ["policy.snapshot_every=7"]))
    dep = load_config(None, ["data.source=dependency"])
    assert recipe_hash(dep) != recipe_hash(a)
    assert recipe_hash(dep) != recipe_hash(load_config(None, ["data.source=dependency",
                                                              "data.dependency.seed=1"]))
    # the arithmetic world's hash ignores the dependency section, and stop_at=None hashes as
    # before stop_at existed (the shipped arithmetic checkpoint keeps its folder)
    assert recipe_hash(a) == recipe_hash(load_config(None, ["data.dependency.seed=1"]))
    assert recipe_hash(load_config(REPO / "configs/arithmetic.yaml")) == "0b4cbee13a1c528a"
    assert recipe_hash(a) == recipe_hash(load_config(None, ["policy.init_from=null"]))
    assert recipe_hash(a) != recipe_hash(load_config(None, ["policy.init_from=0b4cbee13a1c528a"]))


def test_init_from_continues_a_shipped_policy_and_refuses_a_mismatch():
    """A curriculum stage starts from the shipped weights (one tiny-lr step barely moves them);
    an unknown hash or another world's vocabulary is a clear error, not a silent fresh start."""
    import torch
    from transformers import AutoModelForCausalLM

    from glore_ray.train.tiny_policy import train_policy

    cfg = load_config(REPO / "configs/embedded.yaml",
                      ["policy.model=null", "policy.init_from=5d0b919c0d5a1f60", "policy.steps=1",
                       "policy.lr=1e-9", "policy.min_lr=0", "policy.warmup_steps=0",
                       "policy.batch_size=2",
                       "data.dependency.n_train=20"])
    train, _ = worlds.generate(cfg.data)
    model, _ = train_policy(cfg, train[:20], log=lambda m: None)
    shipped = AutoModelForCausalLM.from_pretrained(ASSETS / "5d0b919c0d5a1f60")
    for (name, a), b in zip(model.named_parameters(), shipped.parameters()):
        assert torch.allclose(a, b, atol=1e-5), name
    with pytest.raises(FileNotFoundError, match="no shipped policy with that hash"):
        train_policy(load_config(REPO / "configs/embedded.yaml", ["policy.model=null",
                                                                "policy.init_from=abcdef0123456789"]),
                     train[:20], log=lambda m: None)
    with pytest.raises(ValueError, match="vocabulary is not this world's"):
        other = load_config(REPO / "configs/dependency.yaml", ["policy.init_from=5d0b919c0d5a1f60"])
        train_policy(other, worlds.generate(other.data)[0][:20], log=lambda m: None)

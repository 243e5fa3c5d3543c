"""Reward models that keep the language model (``train.<model>.lm_weight``): the next-token head
is the policy's own (tied embedding or its untied LM head), the LM loss covers the solution tokens
only, and the exported folder is the plain token-classification model."""

from __future__ import annotations

import pytest
import torch

from glore_ray.config import DataConfig, DependencyConfig
from glore_ray.data import worlds
from glore_ray.prompts import policy_prompt
from glore_ray.train import reward
from glore_ray.train.loop import LoopSpec, build_model, export_hf

Q = "B = A + 2 . A = 3 . C = 2 * B . what is B ?"
STEPS = ["A = 3", "B = A + 2 = 3 + 2 = 5", "#### 5"]


def _policy(folder, tied: bool) -> str:
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = worlds.build_world_tokenizer(DataConfig(
        source="dependency", dependency=DependencyConfig(style="symbolic", max_value=20)))
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=2, tie_word_embeddings=tied,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id))
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


@pytest.mark.parametrize("tied", [True, False])
def test_lm_head_is_the_policys_and_its_loss_covers_the_solution(tmp_path, tied):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = _policy(tmp_path / "policy", tied)
    tok = AutoTokenizer.from_pretrained(path)
    model = build_model(LoopSpec(name="orm", kind="reward", policy=path, lm_weight=0.5))
    assert isinstance(model, reward.RewardWithLM)
    ex = reward.encode_rows(tok, [{"qid": "q", "question": Q, "steps": STEPS,
                                   "labels": [1.0, 1.0, 1.0]}], 512)
    batch = reward.collate(ex, tok.pad_token_id)
    # the LM labels are exactly the solution's tokens
    n_prompt = len(tok(policy_prompt(Q))["input_ids"])
    labels = batch["lm_labels"][0]
    assert (labels[:n_prompt] == -100).all() and (labels[n_prompt:] >= 0).all()
    assert tok.decode(labels[n_prompt:].tolist()) == "\n".join(STEPS) + "\n"
    step, lm = reward.forward(model, batch)
    policy = AutoModelForCausalLM.from_pretrained(path).eval()
    with torch.no_grad():
        ref = policy(input_ids=batch["input_ids"], labels=batch["lm_labels"])
    assert torch.allclose(lm, ref.logits, atol=1e-5)
    assert torch.isclose(reward.lm_loss(lm, batch), ref.loss, atol=1e-5)
    assert step.shape == batch["input_ids"].shape


def test_export_drops_the_lm_head(tmp_path):
    from transformers import AutoModelForTokenClassification

    path = _policy(tmp_path / "policy", tied=False)
    spec = LoopSpec(name="orm", kind="reward", policy=path, lm_weight=0.5, engine="ddp")
    model = build_model(spec)
    with torch.no_grad():
        model.reward.score.weight.normal_()  # a head that is not the fresh one
    (tmp_path / "ckpt").mkdir()
    torch.save({"module": model.state_dict()}, tmp_path / "ckpt" / "ddp_state.pt")
    out = export_hf(tmp_path / "ckpt", spec, tmp_path / "out")
    loaded = AutoModelForTokenClassification.from_pretrained(out).eval()
    assert not any("lm_head" in k for k in loaded.state_dict())
    scorer = reward.RewardScorer(out)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    batch = reward.collate(reward.encode_rows(tok, [{"qid": "q", "question": Q, "steps": STEPS,
                                                     "labels": [1.0] * 3}], 512), tok.pad_token_id)
    with torch.no_grad():
        want = torch.sigmoid(reward.forward(model.eval(), batch)[0])[0, batch["weights"][0] > 0]
    assert scorer.score([Q], [STEPS])[0] == pytest.approx(want.tolist(), abs=1e-5)


def test_lm_weight_is_refused_where_it_cannot_apply():
    from glore_ray.config import TrainConfig

    with pytest.raises(ValueError, match="lora_rank"):
        TrainConfig(lora_rank=8, orm={"lm_weight": 0.5})
    with pytest.raises(ValueError, match="reward models"):
        TrainConfig(global_refiner={"lm_weight": 0.5})

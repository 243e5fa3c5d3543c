"""Fast, Ray-free checks of the training pieces: step-end positions, masks, metrics, scorer."""

from __future__ import annotations

import dataclasses
import math
import random

import pytest
import torch

from glore_ray.prompts import global_prompt, policy_prompt
from glore_ray.train import reward, sft

Q = "Mia has 23 shells. She finds 45 more shells. How many shells does Mia have now?"
STEPS = ["23 + 45 = 68", "68 * 2 = 136", "#### 136"]


@pytest.fixture(scope="module")
def word_tok():
    from glore_ray.data import synthetic
    from glore_ray.tokenizer import build_tokenizer

    return build_tokenizer(synthetic.vocabulary())


@pytest.fixture(scope="module")
def bpe_tok():
    """A byte-level BPE tokenizer trained here (no hub), whose merges can span the newline."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = [policy_prompt(Q) + "\n".join(STEPS) + "\n"] * 20 + ["= 68\n68 *", "136\n####"] * 20
    tok.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<pad>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>")


@pytest.mark.parametrize("which", ["word_tok", "bpe_tok"])
def test_step_ends_are_the_newline_tokens(which, request):
    tok = request.getfixturevalue(which)
    ids, pos = reward.encode_reward(tok, Q, STEPS, 512)
    assert len(pos) == len(STEPS) and pos == sorted(pos)
    enc = tok(reward.reward_text(Q, STEPS)[0], return_offsets_mapping=True)
    _, ends = reward.reward_text(Q, STEPS)
    for p, end in zip(pos, ends):
        s, e = enc["offset_mapping"][p]
        assert s <= end - 1 < e  # the token holds the step's "\n"
    # the prefix up to each scored token decodes to the prompt + the steps so far
    text = tok.decode(ids[: pos[1] + 1], skip_special_tokens=True)
    assert text.startswith(policy_prompt(Q)) and "68 * 2 = 136" in text


def test_left_truncation_keeps_the_steps(word_tok):
    full, pos = reward.encode_reward(word_tok, Q, STEPS, 512)
    ids, cut = reward.encode_reward(word_tok, Q, STEPS, 24)
    assert len(ids) == 24 and ids[0] == word_tok.bos_token_id
    assert [ids[p] for p in cut if p >= 0] == [full[p] for p, c in zip(pos, cut) if c >= 0]
    assert cut[-1] == 23


def test_reward_batch_masks_everything_but_step_ends(word_tok):
    rows = [{"question": Q, "steps": STEPS, "labels": [1.0, 0.0, 0.0], "mask": [1.0, 0.0, 1.0]},
            {"question": Q, "steps": STEPS[:1] + ["#### 68"], "labels": [1.0, 1.0]}]  # no mask
    ex = reward.encode_rows(word_tok, rows, 512)
    batch = reward.collate(ex, word_tok.pad_token_id)
    assert batch["weights"].sum() == 4  # 2 of 3 + all 2
    assert set(batch["targets"][batch["weights"] > 0].tolist()) == {0.0, 1.0}
    import torch

    logits = torch.zeros_like(batch["targets"], requires_grad=True)
    loss, w = reward.reward_loss(logits, batch)
    assert w == 4 and math.isclose(float(loss.detach()), math.log(2), rel_tol=1e-5)
    loss.backward()
    assert (logits.grad[batch["weights"] == 0] == 0).all()


def test_bad_rows_give_clear_errors(word_tok):
    with pytest.raises(ValueError, match="3 steps but 2 labels"):
        reward.encode_rows(word_tok, [{"question": Q, "steps": STEPS, "labels": [1.0, 0.0]}], 512)
    with pytest.raises(ValueError, match="prompt"):
        sft.encode_rows(word_tok, [{"question": Q}], 512)


def test_sft_labels_cover_target_and_eos_only(word_tok):
    prompt, target = global_prompt(Q, "23 + 45 = 67\n#### 67"), "\n".join(STEPS)
    ids, n_prompt = sft.encode_pair(word_tok, prompt, target, 512)
    batch = sft.collate([{"ids": ids, "n_prompt": n_prompt}], word_tok.pad_token_id)
    learned = [t for t in batch["labels"][0].tolist() if t != -100]
    assert learned[-1] == word_tok.eos_token_id
    assert word_tok.decode(learned[:-1]) == target


def _sft_case(word_tok, scale: float = 1.0):
    """Two refiner rows, a small random Llama, and the reference: cross-entropy over every
    position's logits (times ``scale``, a logit scale the model applies after its head)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    rows = [{"prompt": global_prompt(Q, "23 + 45 = 67\n#### 67"), "target": "\n".join(STEPS)},
            {"prompt": policy_prompt(Q), "target": "\n".join(STEPS[1:])}]
    batch = sft.collate(sft.encode_rows(word_tok, rows, 512), word_tok.pad_token_id)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(word_tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512))
    if scale != 1.0:
        def scaled(m, args, out):
            out.logits = out.logits * scale
            return out
        model.register_forward_hook(scaled)
    full = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    labels = batch["labels"][:, 1:]
    want = torch.nn.functional.cross_entropy(full[:, :-1].reshape(-1, full.size(-1)),
                                             labels.reshape(-1), ignore_index=-100)
    valid = labels != -100
    want_correct = float(((full[:, :-1].argmax(-1) == labels) & valid).sum())
    want.backward()
    want_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    asked = []
    model.register_forward_pre_hook(lambda m, a, kw: asked.append(kw.get("logits_to_keep")),
                                    with_kwargs=True)
    return model, batch, (want, float(valid.sum()), want_correct, want_grads), asked


def _same(model, got, want):
    loss, n, correct = got
    loss.backward()
    assert n == want[1] and correct == want[2]
    assert torch.allclose(loss, want[0], atol=1e-6)
    for g, w in zip((p.grad for p in model.parameters()), want[3]):
        assert torch.allclose(g, w, atol=1e-6)


def test_sft_loss_applies_the_head_to_target_positions_in_chunks(word_tok, monkeypatch):
    """Same loss, token count, correct count and gradients as cross-entropy over every position's
    logits, while the model computes logits for one position only and the head runs over the
    target positions a few at a time."""
    model, batch, want, asked = _sft_case(word_tok)
    vocab = model.get_output_embeddings().weight.shape[0]
    monkeypatch.setattr(sft, "CHUNK_ABOVE", 0)
    monkeypatch.setattr(sft, "CHUNK_LOGITS", 5 * vocab)  # chunks of 5 positions, one partial
    calls = []
    model.get_output_embeddings().register_forward_hook(lambda m, a, o: calls.append(len(a[0])))
    _same(model, sft.sft_loss(model, batch), want)
    assert asked == [1]
    n = int(want[1])
    # the model's own head on the last position and the check there (a row each), the chunks in
    # forward, and again in backward (recomputed, last chunk first)
    chunks = [5] * (n // 5) + ([n % 5] if n % 5 else [])
    assert calls == [2, 2] + chunks + chunks[::-1]


@pytest.mark.parametrize("case", ["small logits", "logit scale"])
def test_sft_loss_takes_full_logits_from_the_first_target_position(word_tok, monkeypatch, case):
    """Logits small enough to hold whole are computed in one forward, from the first position
    that predicts a target token on; so are those of a model that scales its logits after the
    head (a logit scale, soft-capping), where the chunked path would be wrong."""
    model, batch, want, asked = _sft_case(word_tok, scale=2.0 if case == "logit scale" else 1.0)
    if case == "logit scale":
        monkeypatch.setattr(sft, "CHUNK_ABOVE", 0)
    _same(model, sft.sft_loss(model, batch), want)
    first_target = int((batch["labels"] != -100).any(0).nonzero()[0])
    full = batch["labels"].size(1) - (first_target - 1)
    assert asked == ([1, full] if case == "logit scale" else [full])
    assert full < batch["labels"].size(1)


def test_step_metrics():
    m = reward.step_metrics([[0.9, 0.2], [0.7]], [[1.0, 0.0], [0.0]])
    assert m["n_steps"] == 3 and math.isclose(m["step_accuracy"], 2 / 3)
    assert math.isclose(m["step_auc"], 1.0)
    assert math.isnan(reward.step_metrics([0.9], [1.0])["step_auc"])  # one class: no AUC
    with pytest.raises(ValueError):
        reward.step_metrics([0.1, 0.2], [1.0])


def test_lr_schedule_warms_up_then_decays():
    from glore_ray.train.loop import LoopSpec, lr_lambda

    f = lr_lambda(100, LoopSpec(name="orm", kind="reward", policy="-", warmup_ratio=0.1))
    assert f(0) < f(9) == 1.0 and f(50) < 1.0 and math.isclose(f(100), 0.1)


def test_deepspeed_block_from_yaml(tmp_path):
    from glore_ray.train.loop import LoopSpec, deepspeed_config
    from glore_ray.train.ray_trainer import load_deepspeed_block

    f = tmp_path / "ds.yaml"
    f.write_text("zero_optimization:\n  stage: 3\n  overlap_comm: true\n")
    spec = LoopSpec(name="orm", kind="reward", policy="-", zero_stage=2, offload_optimizer=True,
                    deepspeed=load_deepspeed_block(str(f)))
    cfg = deepspeed_config(spec)
    assert cfg["zero_optimization"] == {"stage": 3, "overlap_comm": True,
                                        "offload_optimizer": {"device": "cpu"}}
    with pytest.raises(FileNotFoundError):
        load_deepspeed_block(str(tmp_path / "missing.json"))


def test_bf16_on_cpu_is_deepspeeds_torch_autocast_over_fp32_weights(monkeypatch):
    from glore_ray.train import loop
    from glore_ray.train.loop import LoopSpec, autocast, deepspeed_config

    monkeypatch.setattr(loop, "cpu_bf16", lambda: True)  # as on an AMX / AVX512-BF16 CPU
    off = deepspeed_config(LoopSpec(name="policy", kind="sft", policy="-"))
    assert not off["bf16"]["enabled"] and not off["torch_autocast"]["enabled"]
    on = deepspeed_config(LoopSpec(name="policy", kind="sft", policy="-", bf16=True))
    # no GPU here: DeepSpeed's bf16 mode (bf16 weights + fp32 masters) is for GPUs
    assert not on["bf16"]["enabled"]
    assert on["torch_autocast"] == {"enabled": True, "dtype": "bfloat16"}
    # the DDP engine casts in the loop; under DeepSpeed the loop leaves it to the engine
    with autocast(LoopSpec(name="p", kind="sft", policy="-", bf16=True, engine="ddp")):
        assert torch.is_autocast_enabled("cpu")
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    with autocast(LoopSpec(name="p", kind="sft", policy="-", bf16=True)):
        assert not torch.is_autocast_enabled("cpu")


def test_bf16_on_a_cpu_without_bf16_trains_in_fp32_and_says_so(monkeypatch):
    from glore_ray.train import loop
    from glore_ray.train.loop import LoopSpec, autocast, bf16_fallback_note, deepspeed_config

    monkeypatch.setattr(loop, "cpu_bf16", lambda: False)  # AVX2 only: torch would emulate bf16
    spec = LoopSpec(name="orm", kind="reward", policy="-", bf16=True)
    assert not deepspeed_config(spec)["torch_autocast"]["enabled"]
    with autocast(dataclasses.replace(spec, engine="ddp")):
        assert not torch.is_autocast_enabled("cpu")
    assert "fp32" in bf16_fallback_note(spec) and "[orm]" in bf16_fallback_note(spec)
    assert bf16_fallback_note(dataclasses.replace(spec, bf16=False)) is None


def test_zero_on_one_worker_says_zero0_would_do():
    from glore_ray.train.loop import LoopSpec, one_worker_zero_note

    spec = LoopSpec(name="policy", kind="sft", policy="-", zero_stage=2)
    assert "train.zero_stage=0" in one_worker_zero_note(spec, world=1)
    assert one_worker_zero_note(spec, world=2) is None  # two ranks: ZeRO-2 halves the states
    for quiet in (dataclasses.replace(spec, zero_stage=0), dataclasses.replace(spec, engine="ddp"),
                  dataclasses.replace(spec, offload_optimizer=True)):  # offload is a reason
        assert one_worker_zero_note(quiet, world=1) is None


def test_synthetic_sets_match_the_label_stage_format(tmp_path):
    import pandas as pd

    from benchmarks._helpers import write_synthetic_sets

    sets = write_synthetic_sets(tmp_path, 8)
    sorm = pd.read_parquet(sets["sorm"] / "train.parquet")
    assert {"qid", "sample_id", "question", "steps", "labels", "soft_labels", "mask"} <= set(sorm)
    assert all(len(s) == len(lab) for s, lab in zip(sorm.steps, sorm.labels))
    assert all(s[-1].startswith("####") for s in sorm.steps)
    loc = pd.read_parquet(sets["local"] / "eval.parquet")
    assert (set(loc.columns) == {"qid", "prompt", "target"}
            and loc.prompt.str.contains(r"\[BAD\]").all())


def test_ranking_loss_pairs_only_one_questions_right_and_wrong_solutions():
    import torch

    # rows: q1 right, q1 wrong, q2 right, q2 right (no pair in q2), last step at position 1
    batch = {"last": torch.tensor([1, 1, 1, 1]), "group": torch.tensor([7, 7, 9, 9]),
             "outcome": torch.tensor([1.0, 0.0, 1.0, 1.0])}
    logits = torch.zeros(4, 3)
    logits[:, 1] = torch.tensor([2.0, -1.0, -5.0, 5.0])
    loss, pairs = reward.ranking_loss(logits, batch)
    assert pairs == 1  # only (q1 right, q1 wrong); q2 has no wrong one
    assert float(loss) == pytest.approx(math.log1p(math.exp(-3.0)))
    flipped = logits.clone()
    flipped[:, 1] = torch.tensor([-1.0, 2.0, -5.0, 5.0])
    assert float(reward.ranking_loss(flipped, batch)[0]) > float(loss)  # wrong above right costs
    assert reward.ranking_loss(logits, {**batch, "group": torch.tensor([1, 2, 3, 4])})[1] == 0


def test_grouped_batches_keep_a_questions_rows_together():
    from glore_ray.train.loop import _batches

    groups = [i // 4 for i in range(32)]  # 8 questions x 4 samples
    batches = _batches(32, 8, 4, seed=3, groups=groups)
    assert sorted(i for b in batches for i in b) == list(range(32))
    for b in batches:  # batch size 8 = exactly two whole questions
        assert len({groups[i] for i in b}) == 2
    assert _batches(32, 8, 4, seed=3, groups=groups) == batches  # a function of the seed (resume)
    plain = _batches(32, 8, 4, seed=3)
    assert any(len({groups[i] for i in b}) > 2 for b in plain)


def test_length_grouped_batches_cut_padding_and_keep_ranks_in_step():
    """Same rows as plain batches, far less padding, and two ranks (own rows and seeds, one
    order seed) hold batches of the same length rank at every step."""
    from glore_ray.train.loop import LENGTH_WINDOW, _batches

    rng = random.Random(0)
    lengths = [rng.randint(40, 300) for _ in range(1000)]
    plain = _batches(1000, 16, 60, seed=1)
    grouped = _batches(1000, 16, 60, seed=1, lengths=lengths, order_seed=9)
    assert sorted(i for b in grouped for i in b) == sorted(i for b in plain for i in b)
    assert all(len(b) == 16 for b in grouped) and len(grouped) == 60

    def padded(bs):
        return sum(max(lengths[i] for i in b) * len(b) for b in bs) / sum(
            lengths[i] for b in bs for i in b)

    assert padded(grouped) < 1.1 < 1.4 < padded(plain)
    assert _batches(1000, 16, 60, seed=1, lengths=lengths, order_seed=9) == grouped  # resume
    other = _batches(1000, 16, 60, seed=2, lengths=lengths, order_seed=9)  # rank 1: own rows
    assert other != grouped
    rank_of = lambda bs: [sorted(range(len(w)), key=lambda j: max(lengths[i] for i in w[j]))  # noqa: E731
                          for w in (bs[k : k + LENGTH_WINDOW] for k in range(0, 60, LENGTH_WINDOW))]
    assert rank_of(grouped) == rank_of(other)
    # ranking batches keep whole questions (groups win over lengths)
    groups = [i // 4 for i in range(32)]
    assert _batches(32, 8, 4, seed=3, groups=groups, lengths=[1] * 32) == _batches(
        32, 8, 4, seed=3, groups=groups)


def test_reward_rows_carry_question_and_outcome(word_tok):
    rows = [{"qid": "q1", "question": Q, "steps": STEPS, "labels": [0.0, 0.0, 0.0]},
            {"qid": "q1", "question": Q, "steps": STEPS, "labels": [1.0, 1.0, 1.0]}]
    enc = reward.encode_rows(word_tok, rows, 512)
    b = reward.collate(enc, word_tok.pad_token_id)
    assert b["group"][0] == b["group"][1] and b["outcome"].tolist() == [0.0, 1.0]
    assert b["last"].tolist() == [e["positions"][-1] for e in enc]


@pytest.mark.parametrize("which", ["global", "orm"])
def test_gradient_checkpointing_knob_reaches_the_model(tmp_path, word_tok, which):
    """``train.gradient_checkpointing`` (a knob: the model is the same) turns it on in the model
    every fine-tune builds, refiner or reward model."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from glore_ray.config import load_config
    from glore_ray.train.loop import build_model
    from glore_ray.train.spec import model_spec

    LlamaForCausalLM(LlamaConfig(
        vocab_size=len(word_tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=2)).save_pretrained(tmp_path)
    word_tok.save_pretrained(tmp_path)
    for on in (False, True):
        cfg = load_config(None, [f"train.gradient_checkpointing={str(on).lower()}"])
        model = build_model(model_spec(cfg, which, str(tmp_path)))
        assert model.is_gradient_checkpointing is on

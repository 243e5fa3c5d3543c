"""A fit with an absurd learning rate stops at the first non-finite loss or gradient norm, on every
rank, with one line naming the model, step and learning rate; it saves no checkpoint after the
last good one, and a checkpoint with non-finite weights is never exported."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from glore_ray.train import loop


@pytest.fixture(scope="module")
def one_rank(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    for k, v in {"LOCAL_RANK": "0", "RANK": "0", "WORLD_SIZE": "1"}.items():
        mp.setenv(k, v)  # what a launcher sets (DeepSpeed asks for it)
    if not dist.is_initialized():
        store = tmp_path_factory.mktemp("pg") / "store"
        dist.init_process_group("gloo", init_method=f"file://{store}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()
    mp.undo()


def _policy(folder) -> str:
    from glore_ray.config import load_config
    from glore_ray.data import synthetic
    from glore_ray.tokenizer import build_tokenizer
    from glore_ray.train.tiny_policy import build_model

    tok = build_tokenizer(synthetic.vocabulary())
    build_model(load_config(None, ["policy.hidden_size=32", "policy.intermediate_size=64",
                                   "policy.num_layers=1", "policy.num_heads=2"]),
                tok).save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


ROWS = [{"qid": f"q{i}", "sample_id": 0, "question": f"Mia has {i} shells. How many?",
         "steps": [f"{i} + 2 = {i + 2}", f"#### {i + 2}"], "labels": [float(i % 2)] * 2}
        for i in range(32)]


@pytest.mark.parametrize("engine", ["ddp", "deepspeed"])
def test_absurd_lr_stops_with_one_line_and_saves_nothing_after(one_rank, tmp_path, engine):
    spec = loop.LoopSpec(name="orm", kind="reward", policy=_policy(tmp_path / "p"), lr=1e30,
                         batch_size=4, max_steps=8, engine=engine, checkpoint_every=1,
                         warmup_ratio=0.0)
    saved, reported, notes = [], [], []
    hooks = loop.Hooks(report=reported.append, log=notes.append, progress=None,
                       save=lambda eng, state, m: saved.append(state["step"]))
    out = loop.train(spec, ROWS, [], hooks)
    msg = out["nonfinite"]
    assert msg.startswith("[orm] non-finite") and "\n" not in msg
    assert float(msg.split(", lr ")[1].split(":")[0]) > 1e29  # the learning rate it was at
    stopped_at = int(msg.split(" at step ")[1].split(",")[0])
    assert 1 <= stopped_at <= 8
    assert saved == list(range(1, stopped_at))  # no checkpoint from the bad step on
    # the stop is one line; before it, on DeepSpeed, only the note that one rank needs no ZeRO-2
    assert notes == [n for n in (loop.one_worker_zero_note(spec, 1), msg) if n]
    assert reported[-1]["nonfinite"] == msg


def test_non_finite_weights_are_never_exported(tmp_path):
    spec = loop.LoopSpec(name="orm", kind="reward", policy=_policy(tmp_path / "p"), engine="ddp")
    model = loop.build_model(spec)
    state = model.state_dict()
    state["score.weight"] = torch.full_like(state["score.weight"], float("nan"))
    (tmp_path / "ckpt").mkdir()
    torch.save({"module": state}, tmp_path / "ckpt" / "ddp_state.pt")
    with pytest.raises(loop.NonFiniteLoss, match="non-finite weights"):
        loop.export_hf(tmp_path / "ckpt", spec, tmp_path / "out")
    assert not (tmp_path / "out").exists()

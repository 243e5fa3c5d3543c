"""The inner loop runs without Ray, directly under torch.distributed (torchrun, gloo): DeepSpeed
ZeRO-3 + LoRA on 2 processes, consolidated with DeepSpeed's zero_to_fp32 and merged into a plain
HF folder; on one process ZeRO-0 trains the same model as ZeRO-2 (one rank has nothing to
partition, and ZeRO-0 keeps no second fp32 copy: configs/gsm8k-smoke.yaml uses it)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.deepspeed
REPO = Path(__file__).resolve().parents[2]


def _policy_and_sets(tmp_path: Path) -> tuple[Path, dict]:
    from benchmarks._helpers import write_synthetic_sets
    from glore_ray.config import load_config
    from glore_ray.data import synthetic
    from glore_ray.tokenizer import build_tokenizer
    from glore_ray.train.tiny_policy import build_model

    policy = tmp_path / "policy"  # random weights suffice: this checks the mechanics
    tok = build_tokenizer(synthetic.vocabulary())
    build_model(load_config(None), tok).save_pretrained(policy)
    tok.save_pretrained(policy)
    return policy, write_synthetic_sets(tmp_path / "sets", 16)


def _torchrun(work: Path, spec: dict, sets: Path, nproc: int) -> tuple[str, Path]:
    """Run the loop under torchrun; (stdout, its OUT folder)."""
    work.mkdir(parents=True, exist_ok=True)
    (work / "spec.json").write_text(json.dumps(spec))
    out = work / "out"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
           str(nproc), "-m", "glore_ray.train.loop", str(work / "spec.json"),
           str(sets / "train.parquet"), str(sets / "eval.parquet"), str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # own session: on a timeout the launcher *and* its workers are killed, nothing is left behind
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=480)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    assert proc.returncode == 0, stderr[-3000:]
    return stdout, out


def test_loop_under_torchrun_zero3_lora(tmp_path):
    import torch
    from safetensors.torch import load_file

    policy, sets = _policy_and_sets(tmp_path)
    spec = {"name": "local", "kind": "sft", "policy": str(policy), "max_steps": 2,
            "batch_size": 4, "zero_stage": 3, "lora_rank": 4, "checkpoint_every": 1}
    stdout, out = _torchrun(tmp_path / "run", spec, sets["local"], nproc=2)
    assert "[train local] step 2/2" in stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["step"] == 2 and metrics["world_size"] == 2 and "eval_loss" in metrics
    history = [json.loads(x) for x in (out / "history.jsonl").read_text().splitlines()]
    assert [h["step"] for h in history] == [1, 2]  # a report per checkpoint, as under Ray Train
    # where the time went, summed over both ranks, growing step to step
    assert 0 < history[0]["cpu_user_s"] <= history[1]["cpu_user_s"]
    assert 0 < history[0]["minor_faults"] <= history[1]["minor_faults"]

    weights = load_file(out / "model" / "model.safetensors")
    assert not any("lora" in k for k in weights)  # merged: no peft needed to load it
    base = load_file(policy / "model.safetensors")
    changed = [k for k in base if k.endswith("q_proj.weight")
               and not torch.equal(base[k], weights[k])]
    assert changed  # the LoRA update reached the merged weights
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(out / "model")


def test_one_worker_zero0_trains_what_zero2_trains(tmp_path):
    import torch
    from safetensors.torch import load_file

    policy, sets = _policy_and_sets(tmp_path)
    runs = {}
    for stage in (0, 2):
        spec = {"name": "local", "kind": "sft", "policy": str(policy), "max_steps": 3,
                "batch_size": 4, "zero_stage": stage, "checkpoint_every": 1, "warmup_ratio": 0.0}
        _, out = _torchrun(tmp_path / f"zero{stage}", spec, sets["local"], nproc=1)
        history = [json.loads(x) for x in (out / "history.jsonl").read_text().splitlines()]
        runs[stage] = ([h["loss"] for h in history], load_file(out / "model" / "model.safetensors"))
    (loss0, w0), (loss2, w2) = runs[0], runs[2]
    assert len(loss0) == 3 and loss0 == pytest.approx(loss2, rel=1e-5)
    base = load_file(policy / "model.safetensors")
    assert w0.keys() == w2.keys()
    for k in w0:
        assert torch.allclose(w0[k], w2[k], atol=1e-6), k
    assert any(not torch.equal(base[k], w0[k]) for k in base)  # it did train

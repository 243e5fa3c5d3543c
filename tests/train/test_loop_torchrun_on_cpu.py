"""The inner loop runs without Ray, directly under torch.distributed (torchrun, 2 processes, gloo):
DeepSpeed ZeRO-3 + LoRA, consolidated with DeepSpeed's zero_to_fp32 and merged into a plain HF
folder."""

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


def test_loop_under_torchrun_zero3_lora(tmp_path):
    import torch
    from safetensors.torch import load_file

    from benchmarks._helpers import write_synthetic_sets
    from glore_ray.config import load_config
    from glore_ray.data import synthetic
    from glore_ray.tokenizer import build_tokenizer
    from glore_ray.train.tiny_policy import build_model

    policy = tmp_path / "policy"  # random weights suffice: this checks the mechanics
    tok = build_tokenizer(synthetic.vocabulary())
    build_model(load_config(None), tok).save_pretrained(policy)
    tok.save_pretrained(policy)
    sets = write_synthetic_sets(tmp_path / "sets", 16)
    spec = {"name": "local", "kind": "sft", "policy": str(policy), "max_steps": 2,
            "batch_size": 4, "zero_stage": 3, "lora_rank": 4, "checkpoint_every": 1}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "glore_ray.train.loop", str(tmp_path / "spec.json"),
           str(sets["local"] / "train.parquet"), str(sets["local"] / "eval.parquet"), str(out)]
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

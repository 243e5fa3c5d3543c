"""The inner training loop, free of Ray: build the model, ``deepspeed.initialize`` (or torch DDP),
train/eval epochs, and hand checkpoints and metrics to callables passed in by the caller.

Ray Train (``ray_trainer.py``) passes hooks around ``ray.train.report`` / ``get_checkpoint``; the
``__main__`` entry below passes plain-file hooks, so the same loop runs under ``torchrun``::

    torchrun --nproc_per_node 2 -m glore_ray.train.loop spec.json train.parquet eval.parquet OUT

The loop expects ``torch.distributed`` to be initialised (Ray Train's TorchConfig does it; under
torchrun ``deepspeed.init_distributed`` does it from the environment).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import random
import resource
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

import torch
import torch.distributed as dist

from glore_ray.train import reward, sft

Kind = Literal["reward", "sft"]


class NonFiniteLoss(ValueError):
    """A fit stopped on a NaN/inf loss or gradient norm (the message names model, step, lr)."""


@dataclass
class LoopSpec:
    """Everything one fine-tune needs; JSON-serialisable (it travels to every worker)."""

    name: str  # orm, sorm, global, local
    kind: Kind
    policy: str  # HF folder the model starts from
    epochs: int = 1
    lr: float = 5e-4
    batch_size: int = 16  # per worker, per micro-step
    grad_accum: int = 1
    max_steps: int | None = None  # optimizer steps
    rank_weight: float = 0.0  # reward: within-question ranking term (batches grouped by question)
    lm_weight: float = 0.0  # reward: next-token loss on the solution tokens beside the BCE
    warmup_ratio: float = 0.1
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.0
    engine: Literal["deepspeed", "ddp"] = "deepspeed"
    zero_stage: int = 2
    offload_optimizer: bool = False
    bf16: bool = False  # bf16 compute, fp32 weights: DeepSpeed's bf16 mode on GPU, autocast else
    deepspeed: dict[str, Any] = field(default_factory=dict)  # merged over the generated config
    lora_rank: int = 0
    # recompute each layer's activations in backward instead of keeping them: the peak memory of a
    # full fine-tune is mostly activations (benchmarks/launchers.py), at ~1/3 more compute
    gradient_checkpointing: bool = False
    chat_template: bool = False  # prompts in the tokenizer's chat template (policy.chat_template)
    checkpoint_every: int = 50
    log_every: int = 0  # 0 = about ten progress lines per run
    max_len: int = 512
    seed: int = 0


# ------------------------------------------------------------------ model + engine

def build_model(spec: LoopSpec):
    """The model as it is trained: reward head or causal LM from the policy, LoRA-wrapped if
    asked."""
    dtype = torch.float32  # DeepSpeed's bf16 mode keeps fp32 masters and casts itself
    model = (reward.build_reward_model(spec.policy, dtype) if spec.kind == "reward"
             else sft.build_refiner(spec.policy, dtype))
    if spec.gradient_checkpointing:  # non-reentrant: works with ZeRO and with frozen LoRA bases
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False  # no KV cache in training (and no warning about it)
    if spec.kind == "reward" and spec.lm_weight > 0:
        model = reward.RewardWithLM(model, spec.policy, dtype)
    if spec.lora_rank > 0:
        from peft import LoraConfig, get_peft_model

        lcfg = LoraConfig(r=spec.lora_rank, lora_alpha=2 * spec.lora_rank, lora_dropout=0.0,
                          target_modules="all-linear",
                          task_type="TOKEN_CLS" if spec.kind == "reward" else "CAUSAL_LM")
        model = get_peft_model(model, lcfg)
    return model


def _deep_merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = (_deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict)
                  else v)
    return out


def deepspeed_config(spec: LoopSpec) -> dict:
    zero: dict[str, Any] = {"stage": spec.zero_stage}
    if spec.offload_optimizer and spec.zero_stage >= 1:
        zero["offload_optimizer"] = {"device": "cpu"}
    if spec.zero_stage == 3:
        # The final export goes through DeepSpeed's zero_to_fp32 on the saved shards.
        zero["stage3_gather_16bit_weights_on_model_save"] = False
    cfg = {
        "train_micro_batch_size_per_gpu": spec.batch_size,
        "gradient_accumulation_steps": spec.grad_accum,
        "gradient_clipping": 1.0,
        "zero_optimization": zero,
        # bf16 with fp32 master weights: DeepSpeed's bf16 mode on GPU; on CPU torch autocast
        # through DeepSpeed (its engine turns off an autocast opened outside it), where the CPU
        # has bf16 instructions (see cpu_bf16).
        "bf16": {"enabled": spec.bf16 and torch.cuda.is_available()},
        "torch_autocast": {"enabled": bf16_compute(spec) and not torch.cuda.is_available(),
                           "dtype": "bfloat16"},
        # We pass torch's AdamW; with CPU offload DeepSpeed would otherwise insist on its own
        # CPU-Adam op (another JIT build). Override through `train.deepspeed` for GPU clusters.
        "zero_force_ds_cpu_optimizer": False,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    return _deep_merge(cfg, spec.deepspeed)


@functools.cache
def cpu_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX). Without it torch emulates
    bf16 matmuls: a SmolLM2-135M forward + backward of 4 x 200 tokens took 217 s under autocast
    vs 7.3 s in fp32 on an AVX2 EPYC; on an AMX Xeon 8 x 300 tokens took 5.2 s vs 8.8 s. Probed
    once per process (``autocast`` asks at every micro-step)."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def bf16_compute(spec: LoopSpec) -> bool:
    """Whether ``train.bf16`` computes in bf16 here: on a GPU, or on a CPU with bf16 (else fp32)."""
    return spec.bf16 and (torch.cuda.is_available() or cpu_bf16())


def bf16_fallback_note(spec: LoopSpec) -> str | None:
    """The line a run prints when ``train.bf16`` is asked for on a CPU without bf16 (fp32 then)."""
    if spec.bf16 and not bf16_compute(spec):
        return (f"[{spec.name}] train.bf16: this CPU has no native bf16 (AVX512-BF16 / AMX), "
                f"where autocast runs ~30x slower: training in fp32")
    return None


def one_worker_zero_note(spec: LoopSpec, world: int) -> str | None:
    """The line a fit prints when ZeRO partitions across one worker: nothing to split, and ZeRO-1/2
    keep a second fp32 copy of the weights. SmolLM2-135M SFT under Ray Train, one worker, bf16
    autocast, longest GSM8K rows: peak RSS 6.6 GiB at ZeRO-2 vs 5.5 GiB at ZeRO-0
    (docs/performance.md); the same model (tests/train/test_loop_torchrun_on_cpu.py)."""
    if world == 1 and spec.engine == "deepspeed" and spec.zero_stage in (1, 2) \
            and not spec.offload_optimizer:
        return (f"[{spec.name}] train.zero_stage={spec.zero_stage} on one worker partitions "
                f"nothing and keeps a second fp32 copy of the weights: train.zero_stage=0 trains "
                f"the same model in less memory")
    return None


def autocast(spec: LoopSpec):
    """bf16 compute under the DDP engine (DeepSpeed casts inside its own forward, see
    ``deepspeed_config``); weights, gradients and the optimizer stay fp32."""
    return torch.autocast("cuda" if torch.cuda.is_available() else "cpu", dtype=torch.bfloat16,
                          enabled=bf16_compute(spec) and spec.engine == "ddp")


def lr_lambda(total_steps: int, spec: LoopSpec) -> Callable[[int], float]:
    """Linear warm-up, then cosine down to ``min_lr_ratio`` of the peak."""
    warm = max(1, int(round(spec.warmup_ratio * total_steps))) if spec.warmup_ratio > 0 else 0

    def f(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        frac = min(1.0, (step - warm) / max(1, total_steps - warm))
        return spec.min_lr_ratio + 0.5 * (1 - spec.min_lr_ratio) * (1 + math.cos(math.pi * frac))

    return f


class Engine:
    """The few things the loop needs, over DeepSpeed or torch DDP."""

    module: torch.nn.Module

    def forward_module(self) -> torch.nn.Module: ...
    def backward(self, loss: torch.Tensor) -> None: ...
    def step(self) -> None: ...
    def lr(self) -> float: ...
    def grad_norm(self) -> float | None: ...
    def save(self, folder: str | Path, client_state: dict) -> None: ...
    def load(self, folder: str | Path) -> dict: ...


class DeepSpeedEngine(Engine):
    TAG = "ckpt"

    def __init__(self, spec: LoopSpec, model, optimizer, scheduler):
        import deepspeed

        self.engine, _, _, _ = deepspeed.initialize(
            model=model, optimizer=optimizer, lr_scheduler=scheduler,
            config=deepspeed_config(spec))
        self.module = self.engine.module

    def forward_module(self):
        return self.engine

    def backward(self, loss):
        self.engine.backward(loss)

    def step(self):
        self.engine.step()  # a no-op off accumulation boundaries; steps the LR schedule on them

    def lr(self):
        return float(self.engine.get_lr()[0])

    def grad_norm(self) -> float | None:
        norm = self.engine.get_global_grad_norm()  # the pre-clip norm of the last step
        return None if norm is None else float(norm)

    def save(self, folder, client_state):
        # every rank writes its own shard (ZeRO optimizer partitions; ZeRO-3 parameters too)
        self.engine.save_checkpoint(str(folder), tag=self.TAG, client_state=client_state)

    def load(self, folder):
        path, client = self.engine.load_checkpoint(str(folder), tag=self.TAG)
        if path is None:
            raise RuntimeError(f"DeepSpeed found no checkpoint in {folder}")
        return client or {}


class DDPEngine(Engine):
    """Plain torch DDP + AdamW: the benchmark's baseline, and a fallback without DeepSpeed."""

    FILE = "ddp_state.pt"

    def __init__(self, spec: LoopSpec, model, optimizer, scheduler):
        from torch.nn.parallel import DistributedDataParallel

        self.spec, self.opt, self.sched = spec, optimizer, scheduler
        self.module = model
        self.ddp = DistributedDataParallel(model)
        self.micro = 0
        self.last_norm: float | None = None

    def forward_module(self):
        return self.ddp

    def backward(self, loss):
        (loss / self.spec.grad_accum).backward()

    def step(self):
        self.micro += 1
        if self.micro % self.spec.grad_accum:
            return
        self.last_norm = float(torch.nn.utils.clip_grad_norm_(self.module.parameters(), 1.0))
        self.opt.step()
        self.sched.step()
        self.opt.zero_grad(set_to_none=True)

    def lr(self):
        return float(self.opt.param_groups[0]["lr"])

    def grad_norm(self) -> float | None:
        return self.last_norm

    def save(self, folder, client_state):
        if dist.get_rank() == 0:  # replicas are identical: rank 0 alone writes
            torch.save({"module": self.module.state_dict(), "optimizer": self.opt.state_dict(),
                        "scheduler": self.sched.state_dict(), "client": client_state},
                       Path(folder) / self.FILE)

    def load(self, folder):
        state = torch.load(Path(folder) / self.FILE, map_location="cpu", weights_only=False)
        self.module.load_state_dict(state["module"])
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        return state["client"]


def make_engine(spec: LoopSpec, model, total_steps: int) -> Engine:
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    rest = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    # no empty groups: ZeRO drops them, and the LR scheduler then counts one group too many
    groups = [g for g in ({"params": decay, "weight_decay": spec.weight_decay},
                          {"params": rest, "weight_decay": 0.0}) if g["params"]]
    opt = torch.optim.AdamW(groups, lr=spec.lr, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(total_steps, spec))
    cls = DeepSpeedEngine if spec.engine == "deepspeed" else DDPEngine
    return cls(spec, model, opt, sched)


# ------------------------------------------------------------------ data

class Task:
    """Encoding, collation and loss of one kind of model."""

    def __init__(self, spec: LoopSpec):
        from transformers import AutoTokenizer

        self.spec = spec
        self.tokenizer = AutoTokenizer.from_pretrained(spec.policy)
        tok = self.tokenizer
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        self.mod = reward if spec.kind == "reward" else sft

    def encode(self, rows: Sequence[dict]) -> list[dict]:
        return self.mod.encode_rows(self.tokenizer, rows, self.spec.max_len,
                                    self.spec.chat_template)

    def collate(self, examples: Sequence[dict]) -> dict[str, torch.Tensor]:
        return self.mod.collate(examples, self.pad_id)

    def loss(self, model, batch) -> tuple[torch.Tensor, dict]:
        """(loss, sums to aggregate for metrics)."""
        if self.spec.kind == "reward":
            logits, lm_logits = reward.forward(model, batch)
            loss, w = reward.reward_loss(logits, batch)
            if lm_logits is not None:
                loss = loss + self.spec.lm_weight * reward.lm_loss(lm_logits, batch)
            if self.spec.rank_weight > 0:
                rank, _ = reward.ranking_loss(logits, batch)
                loss = loss + self.spec.rank_weight * rank
            return loss, {"logits": logits, "weight": w}
        loss, n, correct = sft.sft_loss(model, batch)
        return loss, {"weight": n, "correct": correct}


def _all_reduce(values: list[float], op=dist.ReduceOp.SUM) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t, op=op)
    return t.tolist()


@functools.cache
def malloc_name() -> str:
    """``jemalloc`` when this process runs with it preloaded (``train.allocator``), else
    ``system``: reported with the metrics, so a run's memory figures say which malloc they had."""
    with open("/proc/self/maps") as maps:
        return "jemalloc" if any("libjemalloc" in line for line in maps) else "system"


def peak_mem_mib() -> float:
    """This process's peak memory: GPU allocations on GPU, else peak RSS (Linux ru_maxrss, KiB)."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# Rows per length-sorting window (in batches): wide enough that a batch's rows are close in length,
# narrow enough that an epoch still mixes short and long batches.
LENGTH_WINDOW = 32


def _batches(n_rows: int, batch_size: int, n_batches: int, seed: int,
             groups: Sequence[int] | None = None, lengths: Sequence[int] | None = None,
             order_seed: int = 0) -> list[list[int]]:
    """Shuffled micro-batches; with ``groups`` (one id per row), rows of a group stay adjacent
    (groups shuffled, then cut into batches), so a batch holds whole questions to rank within.

    Else, with ``lengths``, batches are length-grouped: the shuffled rows that fill the epoch's
    batches are sorted by length within windows of ``LENGTH_WINDOW`` batches, cut, and each window's
    batches put in an order drawn from ``order_seed`` alone. The ranks share that seed, so at any
    step every rank holds the batch of the same length rank in its window (no rank waits for
    another's longer batch), while each rank's rows stay its own. Measured on the embedded
    default's ORM set (8,640 rows of 153 tokens on average, batches of 16): random batches hold
    1.79x their real tokens once padded, length-grouped ones 1.03x."""
    rng = random.Random(seed)
    idx = list(range(n_rows))
    rng.shuffle(idx)
    if groups is not None:
        by: dict[int, list[int]] = {}
        for i in idx:
            by.setdefault(groups[i], []).append(i)
        order = list(by.values())
        rng.shuffle(order)
        idx = [i for g in order for i in g]
    elif lengths is not None and n_batches * batch_size <= n_rows:
        idx = idx[: n_batches * batch_size]
        window = LENGTH_WINDOW * batch_size
        out: list[list[int]] = []
        order_rng = random.Random(order_seed)
        for w in range(0, len(idx), window):
            rows = sorted(idx[w : w + window], key=lambda i: lengths[i])
            cut = [rows[j : j + batch_size] for j in range(0, len(rows), batch_size)]
            order_rng.shuffle(cut)
            out += cut
        return out
    return [idx[i * batch_size : (i + 1) * batch_size] for i in range(n_batches)]


# ------------------------------------------------------------------ the loop

@dataclass
class Hooks:
    """What the caller does with checkpoints and metrics (Ray Train, torchrun, a test)."""

    report: Callable[[dict], None]  # every rank, same number of calls
    save: Callable[[Engine, dict, dict], None]  # (engine, client_state, metrics), every rank
    load: Callable[[Engine], dict | None] = lambda engine: None  # restored client state or None
    after_step: Callable[[int], None] = lambda step: None
    log: Callable[[str], None] = print  # rank 0's notes
    progress: Callable[[str], None] | None = print  # rank 0's progress lines (None: caller prints)


def train(spec: LoopSpec, train_rows: Sequence[dict], eval_rows: Sequence[dict],
          hooks: Hooks) -> dict:
    """Train one model on this worker's shard; returns the final metrics (same on every rank)."""
    rank, world = dist.get_rank(), dist.get_world_size()
    t_setup = time.time()
    torch.manual_seed(spec.seed)
    task = Task(spec)
    train_ex, eval_ex = task.encode(train_rows), task.encode(eval_rows)
    for note in (bf16_fallback_note(spec), one_worker_zero_note(spec, world)):
        if rank == 0 and note:
            hooks.log(note)

    # Every rank must run the same number of micro-steps (collectives inside each step).
    min_rows = int(_all_reduce([len(train_ex)], dist.ReduceOp.MIN)[0])
    if 0 < min_rows < spec.batch_size * spec.grad_accum:
        # A small set (smoke runs, a strict balancing) still trains: shrink the micro-batch.
        if rank == 0:
            print(f"[{spec.name}] only {min_rows} rows per rank: micro-batch "
                  f"{spec.batch_size} -> {max(1, min_rows // spec.grad_accum)}", flush=True)
        spec = dataclasses.replace(spec, batch_size=max(1, min_rows // spec.grad_accum))
    n_micro = int(_all_reduce([len(train_ex) // spec.batch_size], dist.ReduceOp.MIN)[0])
    steps_per_epoch = n_micro // spec.grad_accum
    if steps_per_epoch == 0:
        raise ValueError(f"[{spec.name}] training set too small: {len(train_ex)} rows on rank "
                         f"{rank} for batch_size {spec.batch_size} x grad_accum {spec.grad_accum}")
    total = spec.epochs * steps_per_epoch
    if spec.max_steps:
        total = min(total, spec.max_steps)
    log_every = spec.log_every or max(1, total // 10)

    base_mem = _all_reduce([peak_mem_mib()], dist.ReduceOp.MAX)[0]  # before the model exists
    model = build_model(spec)
    engine = make_engine(spec, model, total)
    restored = hooks.load(engine)
    step = int(restored["step"]) if restored else 0
    resumed_from = step if restored else -1
    if restored and rank == 0:
        hooks.log(f"[{spec.name}] resumed from the checkpoint at step {step}/{total}")

    fwd = engine.forward_module()
    setup_s = time.time() - t_setup
    acc = {"loss": 0.0, "n": 0, "tokens": 0}
    t_last, t_start, tok_total = time.time(), time.time(), 0.0
    hooks_s = 0.0  # wall time inside report/save: Ray Train's report can wait for its controller
    metrics: dict = {}

    def gathered(extra: dict | None = None) -> dict:
        nonlocal t_last, tok_total
        # CPU seconds in user / kernel mode and minor page faults of this process so far, summed
        # over ranks: where a step's time goes (benchmarks/launchers.py compares launchers)
        use = resource.getrusage(resource.RUSAGE_SELF)
        loss_sum, n, tokens, user_s, sys_s, faults = _all_reduce(
            [acc["loss"], acc["n"], acc["tokens"], use.ru_utime, use.ru_stime, use.ru_minflt])
        now = time.time()
        tok_total += tokens
        m = {"model": spec.name, "step": step, "total_steps": total,
             "epoch": step / steps_per_epoch, "loss": loss_sum / max(n, 1),
             "lr": engine.lr(), "tokens_per_s": tokens / max(now - t_last, 1e-9),
             "elapsed_s": now - t_start, "setup_s": setup_s, "resumed_from": resumed_from,
             "world_size": world,
             "peak_mem_mib": _all_reduce([peak_mem_mib()], dist.ReduceOp.MAX)[0],
             "base_mem_mib": base_mem, "cpu_user_s": user_s, "cpu_sys_s": sys_s,
             "minor_faults": faults, "torch_threads": torch.get_num_threads(),
             "malloc": malloc_name(), "hooks_s": hooks_s}
        acc.update(loss=0.0, n=0, tokens=0)
        t_last = now
        return {**m, **(extra or {})}

    while step < total:
        epoch = step // steps_per_epoch
        batches = _batches(len(train_ex), spec.batch_size, steps_per_epoch * spec.grad_accum,
                           spec.seed * 1009 + epoch * 31 + rank,
                           [e["group"] for e in train_ex] if spec.rank_weight > 0 else None,
                           [len(e["ids"]) for e in train_ex], spec.seed * 1009 + epoch * 31)
        fwd.train()
        # resume lands on the exact micro-batch: the order is a function of (seed, epoch, rank)
        for b in range((step % steps_per_epoch) * spec.grad_accum, len(batches)):
            batch = task.collate([train_ex[i] for i in batches[b]])
            with autocast(spec):
                loss, _ = task.loss(fwd, batch)
            value = float(loss.detach())
            # every rank learns of a non-finite loss on any rank, before it reaches the weights
            if _all_reduce([0.0 if math.isfinite(value) else 1.0])[0]:
                return _stop(spec, hooks, metrics, f"non-finite loss ({value})", step, engine)
            engine.backward(loss)
            engine.step()
            norm = engine.grad_norm() if (b + 1) % spec.grad_accum == 0 else 0.0
            if norm is not None and not math.isfinite(norm):
                return _stop(spec, hooks, metrics, f"non-finite gradient norm ({norm})", step,
                             engine)
            acc["loss"] += value
            acc["n"] += 1
            acc["tokens"] += int(batch["attention_mask"].sum())
            if (b + 1) % spec.grad_accum:
                continue
            step += 1
            end_of_epoch = step % steps_per_epoch == 0
            done = step >= total
            if end_of_epoch or done:
                metrics = gathered(evaluate(task, fwd, eval_ex, spec))
            elif step % log_every == 0 or step % spec.checkpoint_every == 0:
                metrics = gathered()
            if rank == 0 and hooks.progress and metrics.get("step") == step:
                hooks.progress(progress_line(metrics))
            t_hook = time.time()
            if done or step % spec.checkpoint_every == 0:
                hooks.save(engine, {"step": step, "total": total}, metrics)
            elif end_of_epoch or step % log_every == 0:
                hooks.report(metrics)
            hooks_s += time.time() - t_hook
            hooks.after_step(step)
            if done:
                break
    metrics = {**metrics, "train_seconds": time.time() - t_start,
               "train_tokens": tok_total, "n_train_rows": _all_reduce([len(train_ex)])[0]}
    return metrics


def _stop(spec: LoopSpec, hooks: Hooks, metrics: dict, what: str, step: int,
          engine: Engine) -> dict:
    """End a fit that went non-finite: one line naming the model, step and learning rate, reported
    (every rank) as ``nonfinite``; nothing more is saved, so the last checkpoint is the last good
    one and the caller exports nothing."""
    msg = (f"[{spec.name}] {what} at step {step + 1}, lr {engine.lr():.3g}: training stopped, "
           f"nothing exported (lower train.<model>.lr, or check the data)")
    if dist.get_rank() == 0:
        hooks.log(msg)
    out = {**metrics, "nonfinite": msg, "step": step}
    hooks.report(out)
    return out


@torch.no_grad()
def evaluate(task: Task, model, eval_ex: list[dict], spec: LoopSpec) -> dict:
    """Eval loss (+ step accuracy/AUC for reward models, token accuracy for refiners), all ranks.

    Ranks run the same number of forward passes (ZeRO-3 gathers parameters collectively); a rank
    out of data repeats a batch and throws the result away."""
    if not _all_reduce([len(eval_ex)])[0]:
        return {}
    model.eval()
    n_batches = int(_all_reduce([math.ceil(len(eval_ex) / spec.batch_size)], dist.ReduceOp.MAX)[0])
    loss_sum = weight = correct = 0.0
    probs: list[float] = []
    targets: list[float] = []
    for b in range(n_batches):
        chunk = eval_ex[b * spec.batch_size : (b + 1) * spec.batch_size]
        real = bool(chunk)
        batch = task.collate(chunk or eval_ex[: spec.batch_size] or [_dummy(task)])
        with autocast(spec):
            loss, out = task.loss(model, batch)
        if not real:
            continue
        loss_sum += float(loss) * out["weight"]
        weight += out["weight"]
        if task.spec.kind == "reward":
            p, y = reward.gather_steps(out["logits"], batch)
            probs += p
            targets += y
        else:
            correct += out["correct"]
    model.train()
    loss_sum, weight, correct = _all_reduce([loss_sum, weight, correct])
    m = {"eval_loss": loss_sum / max(weight, 1e-9)}
    if task.spec.kind == "reward":
        parts: list = [None] * dist.get_world_size()
        dist.all_gather_object(parts, (probs, targets))
        allp = [x for p, _ in parts for x in p]
        ally = [x for _, y in parts for x in y]
        sm = reward.step_metrics(allp, ally)
        m.update(eval_step_accuracy=sm["step_accuracy"], eval_step_auc=sm["step_auc"],
                 eval_steps=sm["n_steps"])
    else:
        m["eval_token_accuracy"] = correct / max(weight, 1e-9)
    return m


def _dummy(task: Task) -> dict:
    """A one-token example, for a rank with no eval rows at all."""
    ids = [task.pad_id, task.pad_id]
    return ({"ids": ids, "positions": [], "targets": [], "weights": []}
            if task.spec.kind == "reward" else {"ids": ids, "n_prompt": 2})


def progress_line(m: dict) -> str:
    parts = [f"[train {m['model']}] step {m['step']}/{m['total_steps']}",
             f"epoch {m['epoch']:.2f}", f"loss {m['loss']:.4f}", f"lr {m['lr']:.2e}",
             f"{m['tokens_per_s']:,.0f} tok/s"]
    if "eval_loss" in m:
        parts.append(f"eval_loss {m['eval_loss']:.4f}")
    if "eval_step_accuracy" in m:
        parts.append(f"step_acc {m['eval_step_accuracy']:.3f} auc {m['eval_step_auc']:.3f}")
    if "eval_token_accuracy" in m:
        parts.append(f"tok_acc {m['eval_token_accuracy']:.3f}")
    if m.get("resumed_from", -1) >= 0:
        parts.append(f"(resumed at {m['resumed_from']})")
    return " | ".join(parts)


# ------------------------------------------------------------------ export

def consolidated_state_dict(ckpt_dir: str | Path, spec: LoopSpec) -> dict[str, torch.Tensor]:
    """Full fp32 weights from a checkpoint folder written by ``Engine.save`` (all ranks merged)."""
    ckpt_dir = Path(ckpt_dir)
    if (ckpt_dir / DDPEngine.FILE).exists():
        return torch.load(ckpt_dir / DDPEngine.FILE, map_location="cpu",
                          weights_only=False)["module"]
    tag_dir = ckpt_dir / DeepSpeedEngine.TAG
    if not tag_dir.is_dir():
        raise FileNotFoundError(f"no DeepSpeed checkpoint (tag {DeepSpeedEngine.TAG!r}) "
                                f"in {ckpt_dir}")
    if any(tag_dir.glob("*optim_states.pt")) and spec.zero_stage >= 1:
        # DeepSpeed's own consolidation: fp32 partitions (ZeRO-1/2) or parameter shards (ZeRO-3)
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        return get_fp32_state_dict_from_zero_checkpoint(str(ckpt_dir), tag=DeepSpeedEngine.TAG)
    state = torch.load(tag_dir / "mp_rank_00_model_states.pt", map_location="cpu",
                       weights_only=False)
    return {k: v.float() for k, v in state["module"].items()}


def export_hf(ckpt_dir: str | Path, spec: LoopSpec, out_dir: str | Path) -> Path:
    """Write a plain HF folder (+ tokenizer) that transformers/vLLM load without this package."""
    from transformers import AutoTokenizer

    out_dir = Path(out_dir)
    state = consolidated_state_dict(ckpt_dir, spec)
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise NonFiniteLoss(f"[{spec.name}] the checkpoint in {ckpt_dir} holds non-finite "
                            f"weights ({bad[0]}, ...): not exported")
    model = build_model(spec)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if isinstance(model, reward.RewardWithLM):  # the LM head was for training only
        model = model.reward
    tied = {k for k in missing if k.endswith("lm_head.weight")}
    if set(missing) - tied or unexpected:
        raise RuntimeError(f"[{spec.name}] checkpoint does not match the model: missing "
                           f"{sorted(set(missing) - tied)[:5]}, "
                           f"unexpected {sorted(unexpected)[:5]}")
    if spec.lora_rank > 0:
        model = model.merge_and_unload()  # a plain model again: no peft needed to load it
    model.tie_weights()
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    AutoTokenizer.from_pretrained(spec.policy).save_pretrained(out_dir)
    return out_dir


# ------------------------------------------------------------------ torchrun entry

def _main(argv: list[str]) -> int:
    """``torchrun ... -m glore_ray.train.loop SPEC.json TRAIN.parquet EVAL.parquet OUT``: the same
    loop without Ray; checkpoints go to OUT/ckpt (shared disk), the model to OUT/model, the
    reported metrics to OUT/history.jsonl."""
    import deepspeed
    import pandas as pd

    if len(argv) != 4:
        print(_main.__doc__, file=sys.stderr)
        return 2
    spec = LoopSpec(**json.loads(Path(argv[0]).read_text()))
    out = Path(argv[3])
    deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    rows = pd.read_parquet(argv[1]).to_dict("records")
    ev = pd.read_parquet(argv[2]).to_dict("records") if argv[2] != "-" else []
    ckpt = out / "ckpt"

    def save(engine: Engine, state: dict, metrics: dict) -> None:
        ckpt.mkdir(parents=True, exist_ok=True)
        engine.save(ckpt, state)
        dist.barrier()

    def load(engine: Engine) -> dict | None:
        return engine.load(ckpt) if (ckpt / DeepSpeedEngine.TAG).exists() or \
            (ckpt / DDPEngine.FILE).exists() else None

    out.mkdir(parents=True, exist_ok=True)
    history = (out / "history.jsonl").open("w") if rank == 0 else None

    def report(m: dict) -> None:  # what Ray Train's reports hold, as lines (same on every rank)
        if history:
            history.write(json.dumps(m) + "\n")
            history.flush()

    def save_and_report(engine: Engine, state: dict, metrics: dict) -> None:
        save(engine, state, metrics)
        report(metrics)

    metrics = train(spec, rows[rank::world], ev[rank::world],
                    Hooks(report=report, save=save_and_report, load=load))
    if metrics.get("nonfinite"):
        print(metrics["nonfinite"], file=sys.stderr)
        return 1
    if rank == 0:
        export_hf(ckpt, spec, out / "model")
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    dist.barrier()
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))

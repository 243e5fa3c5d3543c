"""A word-level tokenizer built locally for the synthetic world (no hub download).

Words carry their leading space (" apples"), digits are single tokens (" 2", "3") so the model does
arithmetic digit by digit, and the decoder simply concatenates, so decode(encode(t)) == t for any
text the world and the prompt templates can write.
"""

from __future__ import annotations

import string
from pathlib import Path

from glore_ray.prompts import BAD

SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]
PATTERN = r"\[BAD\]| \[BAD\]| ?[A-Za-z]+| ?\d| ?[^\sA-Za-z\d]|\n| "


def build_tokenizer(words: list[str]):
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    pieces: list[str] = list(SPECIALS) + ["\n", " ", BAD, " " + BAD]
    atoms = sorted(set(words)) + list(string.digits) + [c for c in string.punctuation]
    for a in atoms:
        for p in (a, " " + a):
            if p not in pieces:
                pieces.append(p)
    vocab = {p: i for i, p in enumerate(pieces)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(PATTERN), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", vocab["<s>"])])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
        unk_token="<unk>", clean_up_tokenization_spaces=False, model_max_length=512)


def save_tokenizer(tokenizer, folder: str | Path) -> None:
    tokenizer.save_pretrained(str(folder))

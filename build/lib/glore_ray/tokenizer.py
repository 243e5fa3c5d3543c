"""A word-level tokenizer built locally for the synthetic world (no hub download).

Words carry their leading space (" apples"), digits are single tokens (" 2", "3") so the model does
arithmetic digit by digit (or whole numbers are, for the dependency world), and the decoder simply
concatenates, so decode(encode(t)) == t for any text the world and the prompt templates can write.
"""

from __future__ import annotations

import string
from pathlib import Path

from glore_ray.prompts import BAD

SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]
PATTERN = r"\[BAD\]| \[BAD\]| ?[A-Za-z]+| ?\d| ?[^\sA-Za-z\d]|\n| "


def build_tokenizer(words: list[str], whole_numbers: int = 0):
    """``whole_numbers`` > 0: the numbers 0..whole_numbers are one token each (the dependency
    world, where arithmetic is not the point); 0: one token per digit (the arithmetic world)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    pieces: list[str] = list(SPECIALS) + ["\n", " ", BAD, " " + BAD]
    numbers = [str(i) for i in range(whole_numbers + 1)] if whole_numbers else list(string.digits)
    atoms = sorted(set(words)) + numbers + [c for c in string.punctuation]
    for a in atoms:
        for p in (a, " " + a):
            if p not in pieces:
                pieces.append(p)
    vocab = {p: i for i, p in enumerate(pieces)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    pattern = PATTERN.replace(r" ?\d|", r" ?\d+|") if whole_numbers else PATTERN
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(pattern), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", vocab["<s>"])])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
        unk_token="<unk>", clean_up_tokenization_spaces=False, model_max_length=512)


def save_tokenizer(tokenizer, folder: str | Path) -> None:
    tokenizer.save_pretrained(str(folder))


def build_space_tokenizer(tokens: list[str]):
    """A whitespace tokenizer: the text split on spaces, each newline its own token, so no token
    carries a space and a name is one id wherever it stands (the format a 0.9M policy learns
    binding in: docs/worlds.md). Decoding puts one space between tokens and none around a newline,
    so ``decode(encode(t)) == t`` for text whose words are single-spaced and whose lines carry no
    leading or trailing spaces (everything the symbolic world and the prompt templates write)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    pieces = list(SPECIALS) + ["\n"] + [t for t in dict.fromkeys(tokens) if t not in SPECIALS]
    vocab = {p: i for i, p in enumerate(pieces)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(" ", behavior="removed"),
        pre_tokenizers.Split("\n", behavior="isolated")])
    # WordPiece (its continuation prefix set to a string no token has) joins tokens with one space;
    # the joined text then loses the spaces next to newlines. Each step keeps the decoding of a
    # prefix a prefix of the whole's, which incremental detokenizers (vLLM) rely on.
    tok.decoder = decoders.Sequence([
        decoders.WordPiece(prefix="\u2581\u2581", cleanup=False), decoders.Fuse(),
        decoders.Replace(" \n", "\n"), decoders.Replace("\n ", "\n")])
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", vocab["<s>"])])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
        unk_token="<unk>", clean_up_tokenization_spaces=False, model_max_length=512)

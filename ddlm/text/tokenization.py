"""Byte-level BPE tokenizers trained with ``tokenizers`` (for offline corpora and tests), and decoding that
never cuts a UTF-8 character in two."""

from __future__ import annotations

import codecs
import functools
from typing import Iterable, Sequence

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

EOS_TOKEN = "<|endoftext|>"


def train_byte_bpe(texts: Iterable[str], vocab_size: int, *, eos_token: str = EOS_TOKEN, min_frequency: int = 2) -> PreTrainedTokenizerFast:
    """A GPT-2-style byte-level BPE with ``vocab_size`` tokens (256 bytes, merges, and ``eos_token``).

    Every string round-trips exactly (``decode(encode(text)) == text``): no normaliser, no
    prefix space. Save it with ``save_pretrained`` next to a model.
    """
    if vocab_size < 257:
        raise ValueError(f"a byte-level BPE needs vocab_size >= 257 (256 bytes + EOS), got {vocab_size}")
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[eos_token],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token=eos_token, clean_up_tokenization_spaces=False)


@functools.cache
def _byte_of_char() -> dict[str, int]:
    """GPT-2's byte-level alphabet, char -> byte: printable Latin-1 bytes stand for themselves, the other 68
    bytes for chr(256), chr(257), ... in byte order."""
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    others = [b for b in range(256) if b not in printable]
    return {**{chr(b): b for b in printable}, **{chr(256 + k): b for k, b in enumerate(others)}}


def is_byte_level(tokenizer) -> bool:
    """Whether a (fast) tokenizer decodes with ``tokenizers``' ByteLevel decoder: every token a byte string."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    return backend is not None and isinstance(backend.decoder, decoders.ByteLevel)


def decode_text(tokenizer, ids: Sequence[int]) -> str:
    """Text of token ids, special tokens as their text. A byte-level tokenizer's ids that end inside a UTF-8
    character (a sample or a slice cut mid-character) lose that incomplete character instead of showing
    U+FFFD; bytes invalid anywhere else (a model that generated them) still read as U+FFFD."""
    ids = list(ids)
    if not is_byte_level(tokenizer):
        return tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
    byte_of = _byte_of_char()
    data = bytearray()
    for token in tokenizer.convert_ids_to_tokens(ids):
        if all(c in byte_of for c in token):
            data += bytes(byte_of[c] for c in token)
        else:  # an added token written as plain text, as the ByteLevel decoder reads it
            data += token.encode("utf-8")
    # not final: an incomplete character at the end is held back (dropped), invalid bytes before it are replaced
    return codecs.getincrementaldecoder("utf-8")("replace").decode(bytes(data), final=False)

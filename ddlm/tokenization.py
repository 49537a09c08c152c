"""Byte-level BPE tokenizers trained with ``tokenizers`` (for offline corpora and tests)."""

from __future__ import annotations

from typing import Iterable

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

"""Decoding: a byte-level tokenizer's ids cut inside a UTF-8 character never show U+FFFD for the cut."""

import torch

from ddlm import DDLMConfig, DDLMForDiffusion
from ddlm.pipeline import MASK_TEXT, DiffusionPipeline
from ddlm.tokenization import decode_text

TEXT = "Naïve café — 日本語 costs €5.<|endoftext|>Then\ttabs, \x00 and every byte: " + "".join(map(chr, range(256)))


def ids_of(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def test_whole_text_decodes_as_the_tokenizer_does(byte_tokenizer):
    ids = ids_of(byte_tokenizer, TEXT)
    assert decode_text(byte_tokenizer, ids) == byte_tokenizer.decode(ids, skip_special_tokens=False) == TEXT


def test_ids_ending_inside_a_character_drop_it_instead_of_showing_a_replacement(byte_tokenizer):
    prefix = "café €"
    ids = ids_of(byte_tokenizer, prefix)
    assert "\ufffd" in byte_tokenizer.decode(ids[:-1])  # the euro sign's 3 bytes are single-byte tokens here
    for cut in (1, 2):
        assert decode_text(byte_tokenizer, ids[:-cut]) == "café "


def test_bytes_invalid_inside_a_sample_still_read_as_replacement_characters(byte_tokenizer):
    euro = ids_of(byte_tokenizer, "€")
    ids = ids_of(byte_tokenizer, "a") + euro[1:] + ids_of(byte_tokenizer, "b")  # continuation bytes without their lead byte
    assert decode_text(byte_tokenizer, ids) == "a\ufffd\ufffdb"


def test_pipeline_decode_drops_a_character_cut_by_the_end_or_by_a_mask(byte_tokenizer):
    config = DDLMConfig.from_preset("tiny", vocab_size=len(byte_tokenizer), max_position_embeddings=16)
    pipe = DiffusionPipeline(DDLMForDiffusion(config), byte_tokenizer)
    ids = torch.tensor(ids_of(byte_tokenizer, "a €"))
    mask = torch.tensor([pipe.graph.mask_id])
    assert pipe.decode(ids[:-1]) == "a "
    assert pipe.decode(torch.cat([ids[:-1], mask, ids])) == f"a {MASK_TEXT}a €"

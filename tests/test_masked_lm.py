"""Transformers masked LMs (BERT, RoBERTa, DistilBERT, ModernBERT) as absorbing diffusion models, loaded through
``DiffusionPipeline.from_pretrained`` from tiny random configurations saved with ``save_pretrained``."""

import json
import math
import os
import pickle
import subprocess
import sys

import pytest
import torch

import ddlm
from ddlm.models.masked_diffusion import MaskedDiffusionModel
from ddlm.models.masked_lm import wrap_masked_lm
from ddlm.text.loading import load_model

WORDS = ["the", "a", "cat", "dog", "sat", "on", "mat", "ran", "to", "and", "is", "big", "small", "house", "red", "blue",
         "he", "she", "it", "was", ".", ","]
BERT_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def bert_tokenizer(words=WORDS, specials=BERT_SPECIALS, mask_last=False):
    """A word-piece tokenizer over ``words``; the mask token sits among the specials (id 4), or last with mask_last."""
    from transformers import BertTokenizer

    names = [s for s in specials if s != "[MASK]"] + words + ["[MASK]"] if mask_last else specials + words
    return BertTokenizer(vocab={w: i for i, w in enumerate(names)}, mask_token="[MASK]" if "[MASK]" in names else None)


def save_bert(directory, tokenizer=None, seed=0, extra_rows=3, **config):
    """A tiny random BertForMaskedLM (vocabulary padded by ``extra_rows`` rows past the tokenizer) with its tokenizer."""
    from transformers import BertConfig, BertForMaskedLM

    tokenizer = tokenizer or bert_tokenizer()
    torch.manual_seed(seed)
    settings = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, max_position_embeddings=24)
    model = BertForMaskedLM(BertConfig(vocab_size=len(tokenizer) + extra_rows, **{**settings, **config})).eval()
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return model, tokenizer


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("bert")
    save_bert(directory)
    return directory


def test_log_scores_are_the_masked_lm_conditionals_over_expm1_sigma_bar(bert_dir):
    model, tokenizer = load_model(bert_dir, progress=False)
    assert isinstance(model, MaskedDiffusionModel)
    from transformers import BertForMaskedLM

    bert = BertForMaskedLM.from_pretrained(bert_dir).eval()
    V, mask = model.vocab_size, model.vocab_size  # ddlm's mask state is one past the vocabulary
    assert model.graph.num_states == V + 1 and tokenizer.mask_token_id == 4
    gen = torch.Generator().manual_seed(0)
    x_t = torch.randint(5, len(tokenizer), (3, 7), generator=gen)
    x_t[torch.rand(3, 7, generator=gen) < 0.5] = mask
    sigma_bar = torch.tensor([0.3, 1.0, 2.5])
    out = model(x_t, sigma_bar)
    # Re-stated: BERT reads [CLS] x [SEP] with its own mask id; p(x0_i | x_t) is the softmax over the tokens it may produce.
    ids = torch.cat([torch.full((3, 1), 2), torch.where(x_t == mask, 4, x_t), torch.full((3, 1), 3)], dim=1)
    logits = bert(input_ids=ids).logits[:, 1:-1].double()
    allowed = torch.zeros(V, dtype=torch.bool)
    allowed[5:len(tokenizer)] = True
    log_p = torch.log_softmax(logits.masked_fill(~allowed, float("-inf")), dim=-1)
    expected = log_p - torch.log(torch.expm1(sigma_bar.double()))[:, None, None]
    masked = x_t == mask
    torch.testing.assert_close(out[masked][:, :V][:, allowed].double(), expected[masked][:, allowed], atol=1e-5, rtol=1e-5)
    assert torch.all(out[masked][:, :V][:, ~allowed] == float("-inf")) and torch.all(out[masked][:, V] == 0)
    real = out[~masked]
    assert torch.all(real.gather(1, x_t[~masked][:, None]) == 0) and torch.all(torch.isneginf(real).sum(1) == V)
    rows = model(x_t, sigma_bar, positions=masked)
    torch.testing.assert_close(rows, out[masked])


def test_sampling_infill_and_bounds_through_the_pipeline(bert_dir):
    pipe = ddlm.DiffusionPipeline.from_pretrained(bert_dir, progress=False)
    assert pipe.max_length == 22  # 24 positions less [CLS] and [SEP]
    special = set(pipe.tokenizer.all_special_ids) | set(range(len(pipe.tokenizer), pipe.graph.num_tokens))
    for predictor in ("analytic", "euler", "tau_leaping", "first_hitting"):
        ids = pipe.sample(16, 12, steps=8, predictor=predictor, seed=0, progress=False)
        assert not set(ids.flatten().tolist()) & special, predictor
    confident = pipe.sample(4, 12, steps=6, predictor="confidence", temperature=0.0, seed=0, progress=False)
    assert not set(confident.flatten().tolist()) & special
    texts = pipe.infill("the cat {{3}} on the mat .", num_samples=3, steps=8, seed=0, progress=False)
    assert all(t.startswith("the cat ") and t.endswith(" on the mat .") for t in texts)
    blocks = pipe.generate(2, prompt="the dog", max_new_tokens=7, block_size=3, steps=3, seed=0, progress=False)
    assert all(t.startswith("the dog") for t in blocks)
    bound = pipe.nll_bound(["the cat sat on the mat ."], num_t=32, seed=0, progress=False)[0]
    assert bound.num_tokens == 7 and math.isfinite(bound.bound) and bound.stderr > 0
    score = pipe.conditional_nll(["the cat"], ["sat on the mat"], num_t=8)[0]
    assert score.tokens == 4 and math.isfinite(score.nll)
    with pytest.raises(TypeError, match="own directory"):
        pipe.save_pretrained(bert_dir / "copy")


def _save_family(kind: str, directory):
    """Tiny random RoBERTa / DistilBERT / ModernBERT masked LMs with a tokenizer of their special-token scheme."""
    import transformers as tf

    if kind == "roberta":
        from transformers import RobertaTokenizer

        vocab = {w: i for i, w in enumerate(["<s>", "<pad>", "</s>", "<unk>", "<mask>"] + WORDS)}
        merges = []
        tokenizer = RobertaTokenizer(vocab=vocab, merges=merges)
        config = tf.RobertaConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=48, max_position_embeddings=20, pad_token_id=1)
        model = tf.RobertaForMaskedLM(config)
    else:
        tokenizer = bert_tokenizer()
        if kind == "distilbert":
            config = tf.DistilBertConfig(vocab_size=len(tokenizer), dim=32, n_layers=1, n_heads=2, hidden_dim=48,
                                         max_position_embeddings=20)
            model = tf.DistilBertForMaskedLM(config)
        else:
            config = tf.ModernBertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                         intermediate_size=48, max_position_embeddings=20, pad_token_id=0, bos_token_id=2,
                                         eos_token_id=3, cls_token_id=2, sep_token_id=3)
            model = tf.ModernBertForMaskedLM(config)
    model.eval().save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return tokenizer


@pytest.mark.parametrize("kind", ["roberta", "distilbert", "modernbert"])
def test_other_masked_lm_architectures(kind, tmp_path):
    tokenizer = _save_family(kind, tmp_path)
    pipe = ddlm.DiffusionPipeline.from_pretrained(tmp_path, progress=False)
    assert pipe.max_length == (16 if kind == "roberta" else 18)  # 20 positions (RoBERTa: 18 past its padding offset) less 2 fixed
    ids = pipe.sample(4, pipe.max_length, steps=4, seed=0, progress=False)
    assert not set(ids.flatten().tolist()) & set(tokenizer.all_special_ids)
    assert math.isfinite(pipe.nll_bound(["the cat sat on the mat"], num_t=4, progress=False)[0].bound)

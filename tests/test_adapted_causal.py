"""Causal LMs (GPT-2, Llama, Qwen2) turned into absorbing diffusion models (ddlm.models.adapted_causal): tiny random
transformers models saved with save_pretrained, a tiny byte-level tokenizer; the custom attention pattern is honoured by
both attention implementations, a causal pattern reproduces the causal LM's next-token distribution exactly, and the
adapted model saves, loads, samples and bounds."""

import copy
import json

import pytest
import torch

from helpers import byte_tokenizer

from ddlm.models.adapted_causal import AdaptedCausalLM, adapt_causal_lm, check_causal_config, save_adapted
from ddlm.models.families import model_family
from ddlm.models.masked_diffusion import MaskedDiffusionModel
from ddlm.text.loading import load_model

TOKENS = 300  # the byte tokenizer's size
ARCHITECTURES = ("gpt2", "llama", "qwen2")


def causal_config(kind: str, rows: int = TOKENS, **extra):
    """A tiny transformers config of a causal LM family (``rows`` embedding rows)."""
    import transformers as tf

    if kind == "gpt2":
        return tf.GPT2Config(vocab_size=rows, n_positions=32, n_embd=32, n_layer=2, n_head=2, **extra)
    if kind == "llama":
        return tf.LlamaConfig(vocab_size=rows, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                              num_key_value_heads=2, max_position_embeddings=32, tie_word_embeddings=False, **extra)
    if kind == "qwen2":
        return tf.Qwen2Config(vocab_size=rows, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                              num_key_value_heads=2, max_position_embeddings=32, tie_word_embeddings=False, **extra)
    if kind == "gpt_neox":
        return tf.GPTNeoXConfig(vocab_size=rows, hidden_size=32, intermediate_size=48, num_hidden_layers=1, num_attention_heads=2,
                                max_position_embeddings=32)
    raise AssertionError(kind)


def save_causal(directory, kind: str, rows: int = TOKENS, seed: int = 0):
    """A tiny random causal LM of ``kind`` with the byte tokenizer in ``directory``; returns the model (eval mode)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(causal_config(kind, rows)).eval()
    with torch.no_grad():  # larger random weights than the initialiser's, so every position matters
        for name, p in model.named_parameters():
            if "norm" not in name and "ln_" not in name:
                p.normal_(0, 0.3)
    model.save_pretrained(directory)
    byte_tokenizer().save_pretrained(directory)
    return model


@pytest.fixture(scope="module")
def causal_dirs(tmp_path_factory):
    """One saved tiny causal LM per architecture (GPT-2 with 6 embedding rows past its tokenizer)."""
    dirs = {}
    for kind in ARCHITECTURES:
        path = tmp_path_factory.mktemp(kind)
        save_causal(path, kind, rows=TOKENS + 6 if kind == "gpt2" else TOKENS)
        dirs[kind] = path
    return dirs


def original(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, use_safetensors=True).eval()


def test_adaptation_adds_one_mask_row_at_the_end(causal_dirs):
    for kind in ARCHITECTURES:
        rows = TOKENS + 6 if kind == "gpt2" else TOKENS
        model, tokenizer = adapt_causal_lm(causal_dirs[kind])
        lm = original(causal_dirs[kind])
        assert isinstance(model, MaskedDiffusionModel) and model.shift_logits and model.family == f"adapted-causal ({kind})"
        assert model.vocab_size == rows + 1 and model.mask_token_id == rows and model.graph.num_states == rows + 2
        assert model.max_length == 32 and tokenizer.mask_token == "<|mdm_mask|>" and len(tokenizer) == TOKENS + 1
        embeddings = model.network.model.get_input_embeddings().weight
        assert torch.equal(embeddings[:rows], lm.get_input_embeddings().weight)
        assert torch.allclose(embeddings[rows], lm.get_input_embeddings().weight.mean(0), atol=1e-6)
        assert torch.equal(model.network.model.get_output_embeddings().weight[:rows], lm.get_output_embeddings().weight)
        banned = set(model.banned.nonzero().flatten().tolist())
        assert banned == set(range(TOKENS, rows + 1))  # the mask, and GPT-2's rows past the tokenizer (its mask token's too)
        assert tokenizer.mask_token_id == (rows if kind != "gpt2" else TOKENS) and tokenizer.mask_token_id in banned


def causal_mask(length):
    return torch.ones(length, length, dtype=torch.bool).tril()


@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
@pytest.mark.parametrize("kind", ARCHITECTURES)
def test_the_attention_pattern_is_honoured(causal_dirs, kind, implementation):
    """transformers applies the given 4D mask: all-True lets a later token change earlier logits, causal does not."""
    model, _ = adapt_causal_lm(causal_dirs[kind])
    model.network.model.config._attn_implementation = implementation
    lm = original(causal_dirs[kind])
    lm.config._attn_implementation = implementation
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, TOKENS, (2, 8), generator=gen)
    changed = ids.clone()
    changed[:, 6] = (ids[:, 6] + 1) % TOKENS
    with torch.no_grad():
        both = model.network(torch.cat([ids, changed]), None)
        causal = model.network(torch.cat([ids, changed]), None, attention_mask=causal_mask(8))
        reference = lm(torch.cat([ids, changed])).logits
    assert (both[:2, :6] - both[2:, :6]).abs().amax() > 1e-3  # bidirectional: positions before 6 see the change
    assert torch.equal(causal[:2, :6], causal[2:, :6]) or (causal[:2, :6] - causal[2:, :6]).abs().amax() < 1e-6
    assert (causal[:2, 6:] - causal[2:, 6:]).abs().amax() > 1e-3
    assert torch.allclose(causal[..., :-1], reference[..., :causal.shape[-1] - 1], atol=1e-5)  # the causal LM's own logits
    with torch.no_grad():  # the default (is_causal=False, no mask) is the explicit all-True pattern
        explicit = model.network(torch.cat([ids, changed]), None, attention_mask=torch.ones(8, 8, dtype=torch.bool))
        raw_bool = lm(ids, attention_mask=causal_mask(8)[None, None].expand(2, 1, 8, 8)).logits
    assert torch.allclose(both, explicit, atol=1e-5)
    # why the network converts the mask per implementation: sdpa applies a Bool 4D mask, eager adds it to the logits
    assert torch.allclose(raw_bool, reference[:2], atol=1e-5) == (implementation == "sdpa")
    # a per-sequence pattern: the first sequence causal, the second bidirectional
    with torch.no_grad():
        patterns = torch.stack([causal_mask(8), torch.ones(8, 8, dtype=torch.bool)])
        mixed = model.network(torch.cat([ids[:1], ids[:1]]), None, attention_mask=patterns)
    assert torch.allclose(mixed[0], causal[0], atol=1e-5) and torch.allclose(mixed[1], both[0], atol=1e-5)


@pytest.mark.parametrize("kind", ARCHITECTURES)
def test_causal_pattern_gives_the_causal_lms_next_token_distribution(causal_dirs, kind):
    """THE KEY CHECK: prompt x_0..x_{k-1}, masked suffix, causal attention, shifted logits: log p(x0_k = y | x_t) read off the
    log-scores equals the causal LM's log-softmax at position k - 1 (banned rows -inf)."""
    model, _ = adapt_causal_lm(causal_dirs[kind])
    lm = original(causal_dirs[kind])
    rows, length, k = model.mask_token_id, 10, 4
    prompt = torch.randint(0, TOKENS, (3, k), generator=torch.Generator().manual_seed(1))
    x_t = torch.cat([prompt, torch.full((3, length - k), model.vocab_size)], dim=1)  # the masked suffix: ddlm's mask state
    sigma_bar = torch.tensor([0.3, 1.0, 2.5])
    with torch.no_grad():
        log_scores = model(x_t, sigma_bar, attention_mask=causal_mask(length))
        expected = torch.log_softmax(lm(prompt).logits[:, -1].float(), dim=-1)  # [3, rows]
        picked = model(x_t, sigma_bar, positions=torch.tensor([k, length + k]), attention_mask=causal_mask(length))
    log_p = log_scores[:, k, :model.vocab_size] + torch.log(torch.expm1(sigma_bar.double())).float()[:, None]
    drawable = torch.zeros(model.vocab_size, dtype=torch.bool)
    drawable[:TOKENS] = True
    assert torch.isneginf(log_p[:, ~drawable]).all()
    if rows == TOKENS:  # the tokenizer covers every row: only the mask row (new) is banned
        assert torch.allclose(log_p[:, :rows], expected, atol=1e-5)
    else:  # rows past the tokenizer are banned: the causal LM's distribution renormalised over the tokenizer's rows
        assert torch.allclose(log_p[:, :TOKENS], torch.log_softmax(expected[:, :TOKENS], dim=-1), atol=1e-5)
    assert torch.allclose(picked, log_scores.flatten(0, 1)[[k, length + k]], atol=1e-5, equal_nan=True)
    # the rows path of the network is its full forward's rows
    ids = model.network_ids(x_t)
    with torch.no_grad():
        full = model.network(ids, None)
        some = model.network(ids, None, rows=torch.tensor([0, 5, 17, 29]))
    assert torch.allclose(some, full.flatten(0, 1)[[0, 5, 17, 29]], atol=1e-5)


def test_default_is_bidirectional_and_masks_are_checked(causal_dirs):
    model, _ = adapt_causal_lm(causal_dirs["llama"])
    x_t = torch.randint(0, TOKENS, (1, 6), generator=torch.Generator().manual_seed(2))
    x_t[0, 2] = model.vocab_size
    other = x_t.clone()
    other[0, 5] = (x_t[0, 5] + 1) % TOKENS
    with torch.no_grad():
        a, b = model(x_t, 1.0), model(other, 1.0)
        c, d = (model(x, 1.0, attention_mask=causal_mask(6)) for x in (x_t, other))
    assert (a[0, 2, :TOKENS] - b[0, 2, :TOKENS]).abs().amax() > 1e-3 and torch.equal(c[0, 2], d[0, 2])
    with pytest.raises(ValueError, match=r"attention_mask must be Bool\[6, 6\]"):
        model(x_t, 1.0, attention_mask=torch.ones(5, 5, dtype=torch.bool))
    plain = MaskedDiffusionModel(lambda ids, sigma: torch.zeros(*ids.shape, 7), vocab_size=7, mask_token_id=6, max_length=8,
                                 family="toy")
    with pytest.raises(ValueError, match="toy model's network does not take an attention_mask"):
        plain(torch.zeros(1, 3, dtype=torch.long), 1.0, attention_mask=causal_mask(3))
    with pytest.raises(ValueError, match="saving a toy model is not supported"):
        plain.save_pretrained("unused")

    class Patterned(torch.nn.Module):
        accepts_attention_mask = True

        def forward(self, ids, sigma_bar, attention_mask=None):
            return torch.zeros(*ids.shape, 7)

    framed = MaskedDiffusionModel(Patterned(), vocab_size=7, mask_token_id=6, max_length=8, prefix_ids=[0], suffix_ids=[1],
                                  family="framed")
    with pytest.raises(ValueError, match="attention_mask is not supported for the framed model"):
        framed(torch.zeros(1, 3, dtype=torch.long), 1.0, attention_mask=causal_mask(3))


def test_unsupported_architectures_are_refused_by_name(tmp_path):
    save_causal(tmp_path, "gpt_neox")
    refusal = r"cannot adapt gpt_neox/GPTNeoXForCausalLM : supported causal LMs are gpt2, llama, qwen2"
    with pytest.raises(ValueError, match=refusal):
        adapt_causal_lm(tmp_path)
    with pytest.raises(ValueError, match=r"cannot adapt llama/LlamaForSequenceClassification"):
        check_causal_config({"model_type": "llama", "architectures": ["LlamaForSequenceClassification"]})
    with pytest.raises(ValueError, match="causal .autoregressive. LM.*finetune.adapt: true"):
        load_model(tmp_path, progress=False)


def test_save_and_load_round_trip(causal_dirs, tmp_path):
    from ddlm.text.pipeline import DiffusionPipeline

    with pytest.raises(ValueError, match="causal .autoregressive. LM.*start a diffusion model from it with a fine-tuning recipe"):
        load_model(causal_dirs["gpt2"], progress=False)
    model, tokenizer = adapt_causal_lm(causal_dirs["gpt2"])
    save_adapted(model, tokenizer, tmp_path / "adapted")
    config = json.loads((tmp_path / "adapted" / "config.json").read_text())
    assert config["ddlm_diffusion"] == {"mask_token_id": TOKENS + 6, "shift_logits": True, "adapted_from": "gpt2",
                                        "tokenizer_tokens": TOKENS}
    assert (tmp_path / "adapted" / "model.safetensors").is_file() and not list((tmp_path / "adapted").glob("*.bin"))
    assert model_family(tmp_path / "adapted") == "adapted-causal"
    loaded, loaded_tokenizer = load_model(tmp_path / "adapted", progress=False)
    assert loaded.vocab_size == model.vocab_size and loaded.mask_token_id == model.mask_token_id and loaded.shift_logits
    assert torch.equal(loaded.banned, model.banned)
    assert loaded_tokenizer.mask_token == "<|mdm_mask|>" and len(loaded_tokenizer) == TOKENS + 1
    x_t = torch.randint(0, TOKENS, (2, 9), generator=torch.Generator().manual_seed(3))
    x_t[:, ::2] = model.vocab_size
    with torch.no_grad():
        assert torch.allclose(loaded(x_t, 0.8), model(x_t, 0.8), atol=1e-6, equal_nan=True)
        mask = causal_mask(9)
        assert torch.allclose(loaded(x_t, 0.8, attention_mask=mask), model(x_t, 0.8, attention_mask=mask), atol=1e-6)
    with pytest.raises(ValueError, match="already an adapted diffusion model"):
        adapt_causal_lm(tmp_path / "adapted")
    # the training loop's export: the wrapper's state dict (network.model.* keys) through MaskedDiffusionModel.save_pretrained
    state = {key: value + 1 if key.endswith("ln_f.bias") else value for key, value in model.state_dict().items()}
    model.save_pretrained(tmp_path / "exported", state_dict=state)
    tokenizer.save_pretrained(tmp_path / "exported")
    exported, _ = load_model(tmp_path / "exported", progress=False)
    assert torch.equal(exported.network.model.transformer.ln_f.bias, model.network.model.transformer.ln_f.bias + 1)
    pipe = DiffusionPipeline(loaded, loaded_tokenizer)
    texts = pipe.generate(2, length=6, steps=3, seed=0, progress=False)
    assert len(texts) == 2 and all(isinstance(text, str) for text in texts)
    (bound,) = pipe.nll_bound(["To be, or not"], num_t=2, seed=0, progress=False)
    assert 0 < bound.bound < float("inf")


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_samples_and_bounds(causal_dirs, kind):
    from helpers import check_samples_and_bounds

    model, _ = adapt_causal_lm(causal_dirs[kind], dtype=torch.float32)
    check_samples_and_bounds(model)


def test_other_attention_implementations_are_refused(causal_dirs):
    lm = original(causal_dirs["llama"])
    lm.config._attn_implementation = "flash_attention_2"
    with pytest.raises(ValueError, match="does not apply ddlm's attention masks"):
        AdaptedCausalLM(lm)


def test_a_given_tokenizer_is_not_changed(causal_dirs):
    tokenizer = copy.deepcopy(byte_tokenizer())
    _, adapted = adapt_causal_lm(causal_dirs["qwen2"], tokenizer=tokenizer)
    assert len(tokenizer) == TOKENS and tokenizer.mask_token is None and len(adapted) == TOKENS + 1


def test_llama_exports_from_either_state_dict(causal_dirs, tmp_path):
    """MaskedDiffusionModel.save_pretrained takes the wrapper's state dict (network.model.model.* keys) or the causal LM's."""
    model, tokenizer = adapt_causal_lm(causal_dirs["llama"])
    x_t = torch.randint(0, TOKENS, (1, 7), generator=torch.Generator().manual_seed(4))
    x_t[0, 1::2] = model.vocab_size
    for name, state in (("wrapper", model.state_dict()), ("causal", model.network.model.state_dict())):
        model.save_pretrained(tmp_path / name, state_dict=state)
        tokenizer.save_pretrained(tmp_path / name)
        loaded, loaded_tokenizer = load_model(tmp_path / name, progress=False)
        assert loaded_tokenizer.mask_token_id == model.mask_token_id == TOKENS  # the tokenizer covers every row
        with torch.no_grad():
            assert torch.equal(loaded(x_t, 1.2), model(x_t, 1.2))

"""Open-weight models saved in their own published layout: a tiny random BERT / RoBERTa / DistilBERT, LLaDA (tied and
untied head) and Dream model is loaded, its weights perturbed, saved with ``model.save_pretrained`` next to its
tokenizer, and ``load_model`` reads back the same state dict and bit-identical log-scores; the directory holds the
published config.json fields and tensor names, no code; a fine-tuning run from a LLaDA directory exports a LLaDA one."""

import json

import pytest
import torch
from safetensors import safe_open

from helpers import byte_tokenizer
from test_dream import CONFIG as DREAM_CONFIG
from test_dream import dream_weights, write_dream
from test_llada import CONFIG as LLADA_CONFIG
from test_llada import llada_weights, write_llada
from test_masked_lm import _save_family, save_bert
from test_sft import sft_recipe

from ddlm.models.masked_diffusion import MaskedDiffusionModel
from ddlm.text.loading import load_model
from ddlm.training.loop import train
from ddlm.training.recipes import recipe_from_dict

LLADA_TIED = {**LLADA_CONFIG, "weight_tying": True}
DREAM_TIED = {**DREAM_CONFIG, "tie_word_embeddings": True}


def published(kind: str, directory, config=None):
    """A published-layout directory of ``kind`` ("llada" / "dream": config.json + model.safetensors + the byte tokenizer;
    a masked LM: transformers' layout with its tokenizer)."""
    if kind == "bert":
        save_bert(directory)
    elif kind in ("roberta", "distilbert"):
        _save_family(kind, directory)
    else:
        (write_llada if kind == "llada" else write_dream)(directory, config or (LLADA_CONFIG if kind == "llada" else DREAM_CONFIG))
        byte_tokenizer().save_pretrained(directory)
    return directory


def perturbed(model, seed: int = 5):
    """The model with every floating parameter moved by noise (a tied matrix once), in place."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_((0.05 * torch.randn(p.shape, generator=gen)).to(p.dtype))
    return model


def log_scores(model: MaskedDiffusionModel, seed: int = 2) -> torch.Tensor:
    """The model's log-scores at a fixed half-masked batch (ddlm's mask state is vocab_size)."""
    gen = torch.Generator().manual_seed(seed)
    length = min(model.max_length, 12)
    x = torch.randint(0, min(model.vocab_size, 250), (2, length), generator=gen)
    x_t = x.masked_fill(torch.rand(x.shape, generator=gen) < 0.5, model.vocab_size)
    with torch.no_grad():
        return model(x_t, torch.tensor([0.7, 2.0]))


def assert_same_model(saved: MaskedDiffusionModel, loaded: MaskedDiffusionModel) -> None:
    ours, theirs = saved.state_dict(), loaded.state_dict()
    assert ours.keys() == theirs.keys()
    assert all(ours[k].dtype == theirs[k].dtype and torch.equal(ours[k], theirs[k]) for k in ours)
    assert loaded.family == saved.family and loaded.vocab_size == saved.vocab_size
    assert torch.equal(loaded.banned, saved.banned) and loaded.max_length == saved.max_length
    assert torch.equal(log_scores(saved), log_scores(loaded))


def round_trip(source, out, **load):
    """load -> perturb -> save (model and tokenizer) -> load: (saved model, reloaded model)."""
    model, tokenizer = load_model(source, progress=False, **load)
    perturbed(model).save_pretrained(out)
    tokenizer.save_pretrained(out)
    loaded, _ = load_model(out, progress=False)
    assert_same_model(model, loaded)
    return model, loaded


def tensors(directory) -> dict[str, torch.Tensor]:
    with safe_open(str(directory / "model.safetensors"), framework="pt") as f:
        return {name: f.get_tensor(name) for name in f.keys()}


@pytest.mark.parametrize("kind", ["bert", "roberta", "distilbert"])
def test_masked_lms_save_as_masked_lms(kind, tmp_path):
    source = published(kind, tmp_path / "source")
    model, _ = round_trip(source, tmp_path / "out")
    saved = json.loads((tmp_path / "out" / "config.json").read_text())
    original = json.loads((source / "config.json").read_text())
    assert saved["architectures"] == original["architectures"] and saved["architectures"][0].endswith("ForMaskedLM")
    assert (tmp_path / "out" / "model.safetensors").is_file() and not list((tmp_path / "out").glob("*.bin"))
    # the training loop's state dict (the wrapper's "network.model." keys) writes the same files
    model.save_pretrained(tmp_path / "again", state_dict=model.state_dict())
    first, again = tensors(tmp_path / "out"), tensors(tmp_path / "again")
    assert first.keys() == again.keys() and all(torch.equal(first[k], again[k]) for k in first)


@pytest.mark.parametrize("kind, config", [("llada", LLADA_CONFIG), ("llada", LLADA_TIED), ("dream", DREAM_CONFIG),
                                          ("dream", DREAM_TIED)], ids=["llada", "llada-tied", "dream", "dream-tied"])
def test_llada_and_dream_save_their_published_layout(kind, config, tmp_path):
    source = published(kind, tmp_path / "source", config)
    model, loaded = round_trip(source, tmp_path / "out", dtype=torch.float32)
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith("tokenizer") and p.name != "special_tokens_map.json") == \
        ["config.json", "model.safetensors"]  # no code, no pickles
    saved = json.loads((out / "config.json").read_text())
    assert saved == {**config, "torch_dtype": "float32"}  # every published field, auto_map included, the dtype as saved
    weights = tensors(out)
    names = (llada_weights if kind == "llada" else dream_weights)(config).keys()
    assert weights.keys() == names  # the published tensor names; a tied head not written
    embedding = weights["model.transformer.wte.weight" if kind == "llada" else "model.embed_tokens.weight"]
    assert embedding.shape[0] == model.vocab_size and torch.equal(embedding, model.network.model.embed_tokens.weight)
    tied = config.get("weight_tying", config.get("tie_word_embeddings"))
    assert (loaded.network.lm_head.weight is loaded.network.model.embed_tokens.weight) == bool(tied)


def test_bfloat16_round_trip_and_the_dtype_in_config(tmp_path):
    source = published("dream", tmp_path / "dream")  # published in bfloat16 (torch_dtype "bfloat16")
    model, loaded = round_trip(source, tmp_path / "dream-out")
    assert {p.dtype for p in loaded.parameters()} == {torch.bfloat16}
    assert {t.dtype for t in tensors(tmp_path / "dream-out").values()} == {torch.bfloat16}
    assert json.loads((tmp_path / "dream-out" / "config.json").read_text())["torch_dtype"] == "bfloat16"
    source = published("llada", tmp_path / "llada")  # config.json names no dtype: saving in bfloat16 records it
    round_trip(source, tmp_path / "llada-out", dtype=torch.bfloat16)
    assert json.loads((tmp_path / "llada-out" / "config.json").read_text()) == {**LLADA_CONFIG, "torch_dtype": "bfloat16"}


def test_shards_state_dicts_and_saving_over_the_source(tmp_path):
    source = published("llada", tmp_path / "source")
    model, tokenizer = load_model(source, progress=False)
    perturbed(model)
    out = tmp_path / "out"
    model.network.save_pretrained(out, max_shard_size=40_000)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(llada_weights(LLADA_CONFIG)) and len(set(index["weight_map"].values())) > 1
    tokenizer.save_pretrained(out)
    assert_same_model(model, load_model(out, progress=False)[0])
    # a single file over the shards: the stale index and shards go; the wrapper's "network." keys are accepted
    model.save_pretrained(out, state_dict=model.state_dict())
    assert sorted(p.name for p in out.glob("model*")) == ["model.safetensors"]
    assert_same_model(model, load_model(out, progress=False)[0])
    # over the directory it was loaded from (its untouched tensors memory-mapped from the file being replaced)
    model, _ = load_model(source, progress=False)
    expected = log_scores(model)
    model.save_pretrained(source)
    assert torch.equal(log_scores(load_model(source, progress=False)[0]), expected)
    with pytest.raises(ValueError, match="unexpected: \\['extra'\\]"):
        model.network.save_pretrained(tmp_path / "bad", state_dict={**model.network.state_dict(), "extra": torch.zeros(1)})


def test_fine_tuning_a_llada_model_exports_a_llada_directory(tmp_path):
    config = {**LLADA_CONFIG, "mask_token_id": 310}  # the mask among the padded rows: no byte token is the mask
    base = published("llada", tmp_path / "base", config)
    recipe = sft_recipe(tmp_path, base, steps=2, eval_every=2, sample_every=2, save_every=2)
    final = train(recipe_from_dict(recipe), progress=False)
    model, tokenizer = load_model(final, progress=False)
    assert model.family == "llada" and len(tokenizer) == 300
    assert json.loads((final / "config.json").read_text()) == {**config, "torch_dtype": "float32"}
    before, after = tensors(base), tensors(final)
    assert before.keys() == after.keys() and any(not torch.equal(before[k], after[k]) for k in before)
    assert torch.isfinite(log_scores(model)[..., :300]).any()

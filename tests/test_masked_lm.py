"""Transformers masked LMs (BERT, RoBERTa, DistilBERT, ModernBERT) as absorbing diffusion models, loaded through
``DiffusionPipeline.from_pretrained`` from tiny random configurations saved with ``save_pretrained``."""

import json
import math
import os
import pickle

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



@pytest.mark.parametrize("kind", ["bert", "roberta", "distilbert", "modernbert"])
def test_rows_run_the_output_head_on_asked_positions_only(kind, tmp_path):
    """A masked LM of a known class computes the logits of asked rows only (its base model, then its output head on
    those rows): equal to the full forward's rows, and ``model(x_t, sigma_bar, positions=P)`` equals the full output's
    rows (masked and unmasked, past the prefix, batch > 1)."""
    if kind == "bert":
        _, tokenizer = save_bert(tmp_path)
    else:
        tokenizer = _save_family(kind, tmp_path)
    model, _ = load_model(tmp_path, progress=False)
    network, V = model.network, model.vocab_size
    assert network.accepts_rows is True and model.prefix_ids.numel() == 1 and model.suffix_ids.numel() == 1
    gen = torch.Generator().manual_seed(1)
    length = 9
    x_t = torch.randint(5, len(tokenizer), (3, length), generator=gen)
    x_t[torch.rand(3, length, generator=gen) < 0.5] = V
    x_t[:, 0], x_t[:, -1] = V, V
    sigma_bar = torch.tensor([0.3, 1.0, 2.5])
    with torch.no_grad():
        ids = model.network_ids(x_t)
        logits = network(ids, sigma_bar).reshape(-1, V)
        every = torch.arange(ids.numel())
        assert (network(ids, sigma_bar, rows=every) - logits).abs().max() <= 1e-6
        some = torch.tensor([0, 1, 10, 11, 12, 21, 32])  # [CLS], tokens and [SEP] rows of the three sequences
        assert network(ids, sigma_bar, rows=some).shape == (7, V)
        assert (network(ids, sigma_bar, rows=some) - logits[some]).abs().max() <= 1e-6
        full = model(x_t, sigma_bar)
        flat = torch.tensor([0, 4, 8, 9, 17, 18, 26, 26])
        for positions in (x_t == V, torch.ones_like(x_t, dtype=torch.bool), flat):
            rows = model(x_t, sigma_bar, positions=positions)
            expected = full[positions] if positions.dtype == torch.bool else full.reshape(-1, V + 1)[positions]
            torch.testing.assert_close(rows, expected, rtol=1e-6, atol=1e-5)


def test_unknown_masked_lm_classes_run_whole(bert_dir):
    """A class whose head ddlm does not know (a subclass of a known one, or any other module) runs its whole forward;
    the rows are picked from its logits."""
    from transformers import BertForMaskedLM

    class Custom(BertForMaskedLM):
        pass

    tokenizer = bert_tokenizer()
    model = wrap_masked_lm(Custom.from_pretrained(bert_dir).eval(), tokenizer)
    assert model.network.accepts_rows is False
    with pytest.raises(TypeError, match="does not compute single rows"):
        model.network(torch.zeros(1, 3, dtype=torch.long), None, rows=torch.tensor([0]))
    x_t = torch.tensor([[5, model.vocab_size, 7, model.vocab_size]])
    with torch.no_grad():
        torch.testing.assert_close(model(x_t, torch.ones(1), positions=x_t == model.vocab_size),
                                   model(x_t, torch.ones(1))[x_t == model.vocab_size])
    assert oracle_model()[0].network.accepts_rows is False

class OracleMaskedLM(torch.nn.Module):
    """A BERT-shaped masked LM whose predictions are the exact conditionals p0(x0_i | unmasked tokens) of a known
    distribution over 3 words: input_ids [B, 1 + L + 1] ([CLS] x [SEP]) -> .logits [B, L + 2, V]."""

    def __init__(self, oracle: ddlm.SequenceOracle, tokenizer, words: list[int]):
        super().__init__()
        from transformers import BertConfig

        self.config = BertConfig(vocab_size=len(tokenizer), max_position_embeddings=oracle.length + 2)
        self.words, self.mask_token_id, self.vocab_size = torch.tensor(words), tokenizer.mask_token_id, len(tokenizer)
        n, length = oracle.graph.num_tokens, oracle.length
        states = torch.cartesian_prod(*[torch.arange(n + 1)] * length).reshape(-1, length)  # every noised oracle sequence
        sigma_bar = torch.ones(len(states), dtype=torch.float64)
        self.table = oracle.score_fn(states, sigma_bar)[..., :n] + math.log(math.expm1(1.0))  # log p(x0_i = y | x_t)
        self.n = n

    def get_output_embeddings(self):
        return None

    def forward(self, input_ids, attention_mask=None):
        inner = input_ids[:, 1:-1]
        codes = torch.full_like(inner, self.n)  # the oracle's mask state
        for index, word in enumerate(self.words.tolist()):
            codes[inner == word] = index
        powers = (self.n + 1) ** torch.arange(inner.shape[1] - 1, -1, -1)
        log_p = self.table[(codes * powers).sum(1)]  # [B, L, n]
        logits = torch.full((*input_ids.shape, self.vocab_size), -1e4, dtype=torch.float64)
        logits[:, 1:-1, self.words] = log_p
        return type("Output", (), {"logits": logits})()


def oracle_model(seed=3):
    """(wrapped oracle, oracle, word ids): the vocabulary puts the mask token between the words."""
    tokenizer = bert_tokenizer(words=[], specials=["[PAD]", "[UNK]", "[CLS]", "w0", "[MASK]", "w1", "[SEP]", "w2"])
    words = [3, 5, 7]
    oracle = ddlm.SequenceOracle.random(ddlm.Absorbing(3), 3, torch.Generator().manual_seed(seed))
    model = wrap_masked_lm(OracleMaskedLM(oracle, tokenizer, words), tokenizer)
    assert model.vocab_size == 8 and model.mask_token_id == 4 and model.drawable.nonzero().flatten().tolist() == words
    return model, oracle, torch.tensor(words)


def to_oracle(x: torch.Tensor, words: torch.Tensor) -> torch.Tensor:
    """ddlm states of the wrapped oracle -> the oracle's states (words 0..2, mask 3)."""
    out = torch.full_like(x, 3)
    for index, word in enumerate(words.tolist()):
        out[x == word] = index
    return out


@pytest.mark.parametrize("predictor", ["analytic", "first_hitting"])
def test_an_exact_masked_lm_samples_its_distribution(predictor):
    model, oracle, words = oracle_model()
    gen = torch.Generator().manual_seed(0)
    exact_tv = oracle.total_variation(oracle.sample(20_000, gen))
    x = ddlm.sampling.sample(model, model.graph, model.noise, (20_000, 3), 32, predictor, generator=gen, progress=False)
    assert set(x.unique().tolist()) <= set(words.tolist())
    assert oracle.total_variation(to_oracle(x, words)) <= exact_tv + 0.01


def test_an_exact_masked_lm_bound_equals_the_nll():
    model, oracle, words = oracle_model()
    x0_oracle = oracle.sample(4, torch.Generator().manual_seed(1))
    x0 = words[x0_oracle]
    terminal = float(model.noise.total(torch.tensor(1.0)))
    bound = ddlm.likelihood.nll_bound(model, model.graph, model.noise, x0, num_t=512, generator=torch.Generator().manual_seed(2),
                                      base=lambda x_T: oracle.log_marginal(to_oracle(x_T, words), terminal))
    nll = -oracle.log_prob(x0_oracle)
    assert torch.all((bound.bound - nll).abs() <= 4 * bound.stderr + 1e-6), (bound.bound, nll, bound.stderr)


def _write_config(directory, **changes):
    path = os.path.join(directory, "config.json")
    with open(path) as f:
        config = json.load(f)
    config.update(changes)
    with open(path, "w") as f:
        json.dump(config, f)


def _one_line_cli_error(directory, match, capsys):
    from ddlm.cli import main

    capsys.readouterr()
    with pytest.raises(SystemExit) as exit:
        main(["sample", str(directory), "--num-samples", "1", "--length", "4", "--steps", "2", "--quiet"])
    err = capsys.readouterr().err
    assert exit.value.code == 2 and len(err.strip().splitlines()) == 1 and match in err, err


def test_bad_masked_lm_directories(tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    no_tokenizer = tmp_path / "no_tokenizer"
    save_bert(no_tokenizer)
    for name in os.listdir(no_tokenizer):
        if name.startswith("tokenizer"):
            os.remove(no_tokenizer / name)
    with pytest.raises(ValueError, match="holds no tokenizer"):
        load_model(no_tokenizer, progress=False)

    no_mask = tmp_path / "no_mask"
    save_bert(no_mask, tokenizer=bert_tokenizer(specials=["[PAD]", "[UNK]", "[CLS]", "[SEP]"]))
    with pytest.raises(ValueError, match="has no mask token"):
        load_model(no_mask, progress=False)

    missing, wrong_shape, extra = tmp_path / "missing", tmp_path / "wrong_shape", tmp_path / "extra"
    for directory in (missing, wrong_shape, extra):
        save_bert(directory)
        weights = load_file(directory / "model.safetensors")
        if directory is missing:
            del weights["bert.encoder.layer.1.attention.self.query.weight"]
        elif directory is wrong_shape:
            weights["bert.encoder.layer.0.output.dense.weight"] = torch.zeros(32, 60)
        else:
            weights["bert.encoder.layer.7.output.dense.weight"] = torch.zeros(32, 64)
        save_file(weights, directory / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"missing tensors: \['bert.encoder.layer.1.attention.self.query.weight'\]"):
        load_model(missing, progress=False)
    with pytest.raises(ValueError, match=r"bert.encoder.layer.0.output.dense.weight \(checkpoint \[32, 60\]"):
        load_model(wrong_shape, progress=False)
    with pytest.raises(ValueError, match=r"unexpected tensors: \['bert.encoder.layer.7.output.dense.weight'\]"):
        load_model(extra, progress=False)
    _one_line_cli_error(missing, "missing tensors", capsys)


def test_causal_remote_code_and_pickled_code_are_refused(tmp_path, capsys):
    from transformers import GPT2Config, GPT2LMHeadModel

    causal = tmp_path / "causal"
    GPT2LMHeadModel(GPT2Config(vocab_size=40, n_embd=16, n_layer=1, n_head=2, n_positions=16)).save_pretrained(causal)
    with pytest.raises(ValueError, match="causal .autoregressive. LM"):
        load_model(causal, progress=False)
    _one_line_cli_error(causal, "causal", capsys)

    remote = tmp_path / "remote"
    save_bert(remote)
    _write_config(remote, model_type="fancybert", architectures=["FancyBertForMaskedLM"], auto_map={"AutoModelForMaskedLM": "x.Y"})
    with pytest.raises(ValueError, match="fancybert.*never runs code"):
        load_model(remote, progress=False)
    _write_config(remote, model_type="fancy", architectures=["FancyModel"])
    with pytest.raises(ValueError, match="needs code from its own directory"):
        load_model(remote, progress=False)

    pickled = tmp_path / "pickled"
    save_bert(pickled)
    os.remove(pickled / "model.safetensors")

    class Code:
        def __reduce__(self):
            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))

    with open(pickled / "pytorch_model.bin", "wb") as f:
        pickle.dump({"bert.embeddings.word_embeddings.weight": Code()}, f, protocol=2)
    with pytest.raises(ValueError, match="never unpickles"):
        load_model(pickled, progress=False)
    assert not (tmp_path / "pwned").exists()
    _one_line_cli_error(pickled, "never unpickles", capsys)


def test_eval_commands_and_lm_eval_run_on_a_masked_lm(bert_dir, tmp_path, capsys):
    from ddlm.cli import main

    text = tmp_path / "held_out.txt"
    text.write_text("the cat sat on the mat .\nthe dog ran to the big house .\n", encoding="utf-8")
    main(["eval", str(bert_dir), str(text), "--num-t", "4", "--quiet"])
    assert "absorbing diffusion, bound" in capsys.readouterr().out
    main(["eval", str(bert_dir), "--context", "the cat", "--continuation", " sat on the mat", "--num-t", "4", "--quiet"])
    assert "nats" in capsys.readouterr().out
    pipe = ddlm.DiffusionPipeline.from_pretrained(bert_dir, progress=False)
    with pytest.raises(ValueError, match=r"token id 3, which the masked-lm \(bert\) model never produces"):
        pipe.nll_bound(["the cat [SEP] sat"], num_t=2, progress=False)
    with pytest.raises(ValueError, match="continuation 0 holds token id 4"):
        pipe.conditional_nll(["the cat"], ["[MASK]"], num_t=2)

    pytest.importorskip("lm_eval")
    from lm_eval.api.instance import Instance

    from ddlm.lm_eval_model import DDLMEvalModel

    lm = DDLMEvalModel(str(bert_dir), num_t=4, steps=4, seed=0)
    (value, greedy), = lm.loglikelihood([Instance("loglikelihood", {}, ("the cat", " sat on the mat"), 0)], disable_tqdm=True)
    assert math.isfinite(value) and value < 0 and isinstance(greedy, bool)
    generation, = lm.generate_until([Instance("generate_until", {}, ("the cat", {"until": ["."], "max_gen_toks": 4}), 0)],
                                    disable_tqdm=True)
    assert "." not in generation  # no EOS in a BERT vocabulary: the stop string alone ends it


@pytest.mark.parametrize("options", [dict(corrector_steps=1), dict(remask=0.5), dict(predictor="tau_leaping", corrector_steps=2),
                                     dict(predictor="confidence", threshold=0.5), dict(predictor="confidence", entropy_bound=1.0),
                                     dict(top_k=5, temperature=0.7), dict(top_p=0.9), dict(cache=False)], ids=str)
def test_correctors_remasking_and_decoding_options_never_draw_a_special_token(bert_dir, options):
    pipe = ddlm.DiffusionPipeline.from_pretrained(bert_dir, progress=False)
    ids = pipe.sample(8, 10, steps=6, seed=0, progress=False, **{"predictor": "analytic", **options})
    assert ids.shape == (8, 10) and not bool(pipe.model.banned[ids].any())

"""Bad input gets a clear error naming the argument, key, value or file, never a silent wrong answer.

Every case is one distinct bad input (a value, an argument or a file corruption) and asserts the error
names what is wrong. The Python API raises ValueError (TypeError for a value of the wrong container
kind); the command line exits with status 2 and one error line (argparse's own errors: its usage, then
one line), never a traceback. Boundary values that are valid are checked to give the exact result.
"""

import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from ddlm import Absorbing, DDLMConfig, DDLMForDiffusion, Geometric, LogLinear, Uniform
from ddlm.cli import main
from ddlm.evaluation import ar_text_nll, encode_pair, load_model, score_texts
from ddlm.likelihood import conditional_nll_bound, nll_bound
from ddlm.losses import concrete_score_matching, dse, dwdse, dwdse_loss, score_entropy
from ddlm.pipeline import DiffusionPipeline
from ddlm.recipes import load_recipe, recipe_from_dict
from ddlm.sampling import sample
from ddlm.tokenization import train_byte_bpe

MAX_LEN = 16  # the saved model's maximum length
VOCAB = 257  # a byte-level BPE without merges: 256 bytes and EOS
TEXT = "To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer. " * 4
NAN, INF = float("nan"), float("inf")
CUDA = torch.cuda.is_available()


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def tokenizer():
    return train_byte_bpe([TEXT], VOCAB)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tokenizer) -> Path:
    """A saved untrained absorbing pipeline: its likelihood bound is exactly log(VOCAB) nats per token."""
    path = tmp_path_factory.mktemp("model")
    config = DDLMConfig.from_preset("tiny", vocab_size=VOCAB, max_position_embeddings=MAX_LEN, num_hidden_layers=1)
    DiffusionPipeline(DDLMForDiffusion(config), tokenizer).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def pipe(model_dir) -> DiffusionPipeline:
    return DiffusionPipeline.from_pretrained(model_dir)


@pytest.fixture(scope="module")
def text_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("text") / "text.txt"
    path.write_text(TEXT[:60], encoding="utf-8")
    return path


def score_fn(x, sigma_bar):
    """Uniform log-scores for a 4-token absorbing graph (any valid score function will do)."""
    return torch.zeros(*x.shape, 5)


GRAPH, NOISE = Absorbing(4), LogLinear()
X0 = torch.tensor([[0, 1, 2], [3, 2, 1]])


# ----------------------------------------------------------------------------- Python API

COUNTS = [0, -1, -7, 1.5, 2.0, "4", True, False, None, NAN]


@pytest.mark.parametrize("value", COUNTS, ids=repr)
def test_sample_steps(value):
    with pytest.raises(ValueError, match=r"steps must be an int >= 1, got "):
        sample(score_fn, GRAPH, NOISE, (2, 3), value, progress=False)


@pytest.mark.parametrize("shape", [(0, 3), (2, 0), (-1, 3), (2, -4), (2,), (2, 3, 4), (), (2.0, 3), (2, 3.5), (True, 3),
                                   (2, "3"), (2, None), "ab", 5, None], ids=repr)
def test_sample_shape(shape):
    with pytest.raises(ValueError, match=r"shape must be \(batch, length\) of positive ints"):
        sample(score_fn, GRAPH, NOISE, shape, 2, progress=False)


@pytest.mark.parametrize("predictor", ["Euler", "", None, "ddpm", 3], ids=repr)
def test_sample_predictor(predictor):
    with pytest.raises(ValueError, match="predictor must be one of"):
        sample(score_fn, GRAPH, NOISE, (2, 3), 2, predictor, progress=False)


@pytest.mark.parametrize("t_min", [0.0, 1.0, -0.1, 1.5, NAN], ids=repr)
def test_sample_t_min(t_min):
    with pytest.raises(ValueError, match="t_min must lie in"):
        sample(score_fn, GRAPH, NOISE, (2, 3), 2, t_min=t_min, progress=False)


def test_sample_at_the_boundary_gives_one_clean_token():
    x = sample(score_fn, GRAPH, NOISE, (1, 1), 1, generator=torch.Generator().manual_seed(0), progress=False)
    assert x.shape == (1, 1) and 0 <= int(x) < 4


@pytest.mark.parametrize("value", [0, -2, 3, 1, 1.5, 4.0, "8", True, None], ids=repr)
def test_nll_bound_num_t(value):
    with pytest.raises(ValueError, match="num_t must be"):
        nll_bound(score_fn, GRAPH, NOISE, X0, value)


@pytest.mark.parametrize("value", [0, -1, 1.5, "2", True, NAN], ids=repr)
def test_nll_bound_batch_size(value):
    with pytest.raises(ValueError, match=r"batch_size must be an int >= 1 or None, got "):
        nll_bound(score_fn, GRAPH, NOISE, X0, 4, batch_size=value)


@pytest.mark.parametrize("value", [0.5, 0, -1, INF, NAN, "2"], ids=repr)
def test_nll_bound_t_power(value):
    with pytest.raises(ValueError, match="t_power must be a finite number >= 1"):
        nll_bound(score_fn, GRAPH, NOISE, X0, 4, t_power=value)


def test_nll_bound_t_sampling():
    with pytest.raises(ValueError, match="t_sampling must be one of"):
        nll_bound(score_fn, GRAPH, NOISE, X0, 4, t_sampling="sobol")


def test_nll_bound_is_the_same_for_every_batch_size():
    """batch_size splits the model calls only: batch 1 (the boundary) and the whole batch agree exactly."""
    whole = nll_bound(score_fn, GRAPH, NOISE, X0, 4, torch.Generator().manual_seed(1))
    ones = nll_bound(score_fn, GRAPH, NOISE, X0, 4, torch.Generator().manual_seed(1), batch_size=1)
    assert torch.equal(whole.integral, ones.integral) and torch.equal(whole.prior, ones.prior)


# ----------------------------------------------------------------------------- processes, schedules, losses

@pytest.mark.parametrize("cls, value", [(Absorbing, True), (Absorbing, False), (Uniform, True), (Absorbing, 4.0), (Uniform, "4"),
                                        (Absorbing, None), (Uniform, 1)], ids=repr)
def test_graph_size(cls, value):
    """Absorbing(True) used to be a one-token graph."""
    with pytest.raises(ValueError, match=r"num_tokens must be an int >= \d, got "):
        cls(value)


@pytest.mark.parametrize("make", [lambda: LogLinear("0.1"), lambda: LogLinear(None), lambda: LogLinear(True), lambda: LogLinear(INF)],
                         ids=["eps-string", "eps-none", "eps-bool", "eps-inf"])
def test_loglinear_eps(make):
    with pytest.raises(ValueError, match=r"eps must lie in \(0, 1\), got "):
        make()


@pytest.mark.parametrize("low, high", [(True, 20.0), (1e-4, True), (1e-4, INF), ("1e-4", 20.0), (1e-4, NAN), (None, 20.0)], ids=repr)
def test_geometric_range(low, high):
    """Geometric(1e-4, inf) used to give sigma_bar = inf at every t > 0."""
    with pytest.raises(ValueError, match=r"need finite numbers 0 < sigma_min < sigma_max, got sigma_min="):
        Geometric(low, high)


@pytest.mark.parametrize("t", [True, "0.5", None, [0.5]], ids=repr)
@pytest.mark.parametrize("method", ["total", "rate"])
def test_schedule_time_kind(t, method):
    """LogLinear().total(True) used to be sigma_bar(1)."""
    with pytest.raises(TypeError, match="t must be a float or a floating tensor"):
        getattr(NOISE, method)(t)


SIGMA_CALLS = {
    "transition": lambda g, x, s: g.transition(x, s),
    "transition_into": lambda g, x, s: g.transition_into(x, s),
    "transition_prob": lambda g, x, s: g.transition_prob(x, x, s),
    "sample_transition": lambda g, x, s: g.sample_transition(x, s),
    "ratio": lambda g, x, s: g.ratio(x, x, s),
    "prior": lambda g, x, s: g.prior(s),
    "prior_kl": lambda g, x, s: g.prior_kl(s),
    "dse": lambda g, x, s: dse(torch.zeros(*x.shape, g.num_states), x, x, s, g),
}
BAD_SIGMAS = [(-1.0, ValueError), (INF, ValueError), (NAN, ValueError), (-INF, ValueError), (torch.tensor([[1.0, INF, 2.0]]), ValueError),
              (torch.tensor([[0.5, -0.5, 1.0]]), ValueError), (True, TypeError), ("1.0", TypeError), (None, TypeError),
              (torch.tensor([[1, 2, 3]]), TypeError), (torch.tensor([[True, False, True]]), TypeError)]


@pytest.mark.parametrize("value, error", BAD_SIGMAS, ids=[repr(v) for v, _ in BAD_SIGMAS])
@pytest.mark.parametrize("call", SIGMA_CALLS.values(), ids=SIGMA_CALLS.keys())
@pytest.mark.parametrize("graph", [GRAPH, Uniform(4)], ids=repr)
def test_noise_level(graph, call, value, error):
    """Infinite sigma_bar, bools and (for prior / prior_kl) negative values used to give numbers; strings a torch error."""
    with pytest.raises(error, match="sigma_bar must be"):
        call(graph, torch.tensor([[0, 1, 2]]), value)


LOG_S, X_S = torch.zeros(2, 5), torch.tensor([0, 4])
BAD_RATIOS = [(torch.full((2, 5), -1.0), ValueError, "ratio must be >= 0 and not NaN, got -1.0"),
              (torch.full((2, 5), NAN), ValueError, "ratio must be >= 0 and not NaN, got nan"),
              (torch.ones(2, 5, dtype=torch.bool), TypeError, "ratio must be a real tensor"),
              ([[1.0] * 5] * 2, TypeError, "ratio must be a real tensor"), (None, TypeError, "ratio must be a real tensor")]


@pytest.mark.parametrize("ratio, error, message", BAD_RATIOS, ids=["negative", "nan", "bool", "list", "none"])
@pytest.mark.parametrize("loss", [score_entropy, concrete_score_matching])
def test_loss_ratio(loss, ratio, error, message):
    """A negative or NaN ratio used to give the finite loss 4.0; a list an AttributeError."""
    with pytest.raises(error, match=re.escape(message)):
        loss(LOG_S, X_S, ratio)


@pytest.mark.parametrize("weight, error, message", [(torch.full((2, 5), -1.0), ValueError, "weight must be >= 0 and finite, got -1.0"),
                                                    (torch.full((2, 5), NAN), ValueError, "weight must be >= 0 and finite, got nan"),
                                                    (torch.full((2, 5), INF), ValueError, "weight must be >= 0 and finite, got inf"),
                                                    ("w", TypeError, "weight must be a real tensor")], ids=["negative", "nan", "inf", "str"])
def test_score_entropy_weight(weight, error, message):
    """Negative or NaN weights used to drop their terms silently (a loss of 0)."""
    with pytest.raises(error, match=re.escape(message)):
        score_entropy(LOG_S, X_S, torch.ones(2, 5), weight)


def test_score_entropy_boundaries_give_exact_results():
    """A zero ratio, an infinite ratio and an empty batch are valid: s, inf and an empty loss."""
    ratio = torch.ones(2, 5)
    ratio[:, 1] = 0.0
    assert torch.allclose(score_entropy(LOG_S, X_S, ratio), torch.tensor([1.0, 1.0]))
    assert math.isinf(score_entropy(LOG_S, X_S, torch.full((2, 5), INF))[0])
    assert score_entropy(torch.zeros(0, 5), torch.zeros(0, dtype=torch.long), torch.ones(0, 5)).shape == (0,)


EMPTY_BATCHES = [torch.zeros(0, 3, dtype=torch.long), torch.zeros(2, 0, dtype=torch.long), torch.zeros(0, 0, dtype=torch.long),
                 torch.zeros(3, dtype=torch.long)]
BATCH_CALLS = {
    "nll_bound": lambda x0: nll_bound(score_fn, GRAPH, NOISE, x0, 4),
    "conditional_nll_bound": lambda x0: conditional_nll_bound(score_fn, GRAPH, NOISE, x0, torch.zeros(x0.shape, dtype=torch.bool), 4),
    "dwdse_loss": lambda x0: dwdse_loss(score_fn, GRAPH, NOISE, x0),
    "dwdse": lambda x0: dwdse(score_fn, GRAPH, NOISE, x0, torch.full(x0.shape[:1], 0.5, dtype=torch.float64)),
}


@pytest.mark.parametrize("x0", EMPTY_BATCHES, ids=lambda x0: str(list(x0.shape)))
@pytest.mark.parametrize("call", BATCH_CALLS.values(), ids=BATCH_CALLS.keys())
def test_empty_batch(call, x0):
    """nll_bound of B = 0 used to fail in range(), of L = 0 to give a perplexity of NaN; dwdse_loss of L = 0 NaN (0 / 0)."""
    with pytest.raises(ValueError, match=r"x0 must be Long\[B, L\] with B >= 1 sequences of L >= 1 tokens, got shape "):
        call(x0)


@pytest.mark.parametrize("name, value", [("t_min", "0.1"), ("t_min", True), ("t", [0.5, 0.5]), ("weights", [1.0, 1.0]),
                                         ("weights", torch.tensor([1.0, -1.0])), ("weights", torch.tensor([1.0, NAN])),
                                         ("weights", torch.tensor([INF, 1.0]))], ids=repr)
def test_dwdse_loss_arguments(name, value):
    """Negative importance weights used to give a loss of -0; lists an AttributeError."""
    with pytest.raises(ValueError, match=rf"{name} must "):
        dwdse_loss(score_fn, GRAPH, NOISE, X0, **{name: value})


@pytest.mark.parametrize("graph, noise", [(None, NOISE), ("absorbing", NOISE), (4, NOISE), (GRAPH, None), (GRAPH, "loglinear"),
                                          (GRAPH, LogLinear), (GRAPH, 0.5)], ids=repr)
@pytest.mark.parametrize("call", [lambda g, n: sample(score_fn, g, n, (2, 3), 2, progress=False),
                                  lambda g, n: nll_bound(score_fn, g, n, X0, 4), lambda g, n: dwdse_loss(score_fn, g, n, X0)],
                         ids=["sample", "nll_bound", "dwdse_loss"])
def test_graph_and_noise_kinds(call, graph, noise):
    """These used to end in an AttributeError from inside the sampler or the loss."""
    with pytest.raises(TypeError, match="graph must be a forward process" if noise is NOISE else "noise must be a schedule"):
        call(graph, noise)


@pytest.mark.parametrize("name, value", [("dtype", torch.int64), ("dtype", torch.float16), ("dtype", torch.bfloat16), ("dtype", "float64"),
                                         ("dtype", None), ("dtype", torch.complex64), ("generator", 3), ("denoise", "no"), ("denoise", None),
                                         ("t_min", "0.1"), ("fixed", [[True] * 3] * 2)], ids=repr)
def test_sample_options(name, value):
    """dtype int64 / str used to fail inside torch, float16 to sample silently in half precision; denoise='no' to denoise."""
    extra = {"x_init": torch.zeros(2, 3, dtype=torch.long)} if name == "fixed" else {}
    with pytest.raises(ValueError, match=rf"{name} must "):
        sample(score_fn, GRAPH, NOISE, (2, 3), 2, progress=False, **extra, **{name: value})


def test_sample_x_init_of_another_integer_dtype_gives_long_tokens():
    x_init = torch.tensor([[0, 1, 2], [3, 2, 1]], dtype=torch.int32)
    out = sample(score_fn, GRAPH, NOISE, (2, 3), 2, x_init=x_init, dtype=torch.float32, progress=False)
    assert out.dtype == torch.long and torch.equal(out, x_init.long())  # no masked position: nothing moves


MODEL_SIGMAS = [(True, TypeError), ("1.0", TypeError), (torch.tensor([1, 2]), TypeError), (-1.0, ValueError), (INF, ValueError),
                (NAN, ValueError), (torch.tensor([1.0, -1.0]), ValueError), (torch.tensor([1.0, INF]), ValueError),
                (torch.tensor([1.0, 2.0, 3.0]), ValueError), (torch.zeros(2, 4), ValueError)]


@pytest.mark.parametrize("value, error", MODEL_SIGMAS, ids=[repr(v) for v, _ in MODEL_SIGMAS])
def test_model_sigma_bar(pipe, value, error):
    """The model used to run on sigma_bar True, -1, inf or NaN (the log-scores of a wrong or NaN noise level)."""
    with pytest.raises(error, match="sigma_bar must be"), torch.no_grad():
        pipe.model(torch.zeros(2, 4, dtype=torch.long), value)


def test_model_input_ids_kind_and_empty_batches(pipe):
    """A list used to raise an AttributeError; B = 0 or L = 0 a reshape error. Empty in, empty out."""
    with pytest.raises(TypeError, match="input_ids must be a LongTensor"):
        pipe.model([[0, 1]], 1.0)
    with torch.no_grad():
        for shape in [(0, 4), (2, 0)]:
            out = pipe.model(torch.zeros(shape, dtype=torch.long), torch.ones(shape[0]))
            assert out.shape == (*shape, VOCAB + 1)


PIPE_SAMPLE = [("num_samples", v) for v in [0, -1, 1.5, "2", True, None]] + \
              [("length", v) for v in [0, -1, 1.5, "4", True, None]] + \
              [("steps", v) for v in [0, -3, 2.5, "3", True, None]] + \
              [("batch_size", v) for v in [0, -1, 1.5, "1", True]]


@pytest.mark.parametrize("name, value", PIPE_SAMPLE, ids=repr)
def test_pipeline_sample_counts(pipe, name, value):
    args = {"num_samples": 1, "length": 4, "steps": 2, "batch_size": None, name: value}
    with pytest.raises(ValueError, match=rf"{name} must be an int >= 1"):
        pipe.sample(args.pop("num_samples"), args.pop("length"), progress=False, **args)


@pytest.mark.parametrize("length", [MAX_LEN + 1, 1000, 10**20], ids=repr)
def test_pipeline_length_beyond_the_model(pipe, length):
    with pytest.raises(ValueError, match=rf"length {length} exceeds the model's maximum length {MAX_LEN}"):
        pipe.generate(1, length, steps=2, progress=False)


@pytest.mark.parametrize("name, value", [("num_samples", 0), ("num_samples", -2), ("length", 0), ("length", -5), ("steps", 0),
                                         ("steps", 1.0), ("batch_size", 0), ("batch_size", -1)], ids=repr)
def test_pipeline_generate_counts(pipe, name, value):
    """length=0 used to sample the model's maximum length silently."""
    args = {"num_samples": 1, "length": 4, "steps": 2, name: value}
    with pytest.raises(ValueError, match=rf"{name} must be an int >= 1"):
        pipe.generate(progress=False, **args)


def test_pipeline_boundaries_give_exact_shapes(pipe):
    assert pipe.sample(1, 1, 1, progress=False).shape == (1, 1)
    assert pipe.sample(3, MAX_LEN, 1, batch_size=1, progress=False).shape == (3, MAX_LEN)
    assert len(pipe.generate(2, MAX_LEN, steps=1, batch_size=1, seed=0, progress=False)) == 2
    # the whole template at the model's length is fine; one more token is not
    filled = pipe.infill(["ab", MAX_LEN - 2], steps=1, seed=0, progress=False)[0]
    assert filled.startswith("ab")
    ids = pipe.tokenizer(filled, add_special_tokens=False)["input_ids"]
    assert len(ids) >= 1


TEMPLATES = [
    ("a {{100000000000000000000}} b", "a gap of 100000000000000000000 tokens exceeds the model's maximum length 16"),
    ("a {{" + "9" * 5000 + "}} b", "5000-digit number of tokens exceeds"),
    ("a {{17}} b", "a gap of 17 tokens exceeds the model's maximum length 16"),
    ("{{9}}{{9}}", "the template's gaps need 18 tokens but the model's maximum length is 16"),
    ("x{{8}}y{{8}}z{{1}}", "the template's gaps need 17 tokens"),
    ("{{0}}", "a gap must have at least 1 token, got 0"),
    ("a {{00}} b", "a gap must have at least 1 token, got 0"),
    ("a {{-1}} b", "a gap {{-1}} must hold a positive int"),
    ("a {{+3}} b", "a gap {{+3}} must hold a positive int"),
    ("a {{1.5}} b", "a gap {{1.5}} must hold a positive int"),
    ("a {{ 2.5 }} b", "a gap {{2.5}} must hold a positive int"),
    ("no gap here", "the template has no gap"),
    ("", "the template has no gap"),
    ("{{14}} and then a long given text that tokenises to many tokens", "14 in gaps) but the model's maximum length is 16"),
    (["x", 0], "a gap must have at least 1 token, got 0"),
    (["x", -2], "a gap must have at least 1 token, got -2"),
    (["x", 17], "a gap of 17 tokens exceeds"),
    (["x", 10**30], f"a gap of {10**30} tokens exceeds"),
    (["x", 9, "y", 9], "the template's gaps need 18 tokens"),
    (["only text"], "the template has no gap"),
    ([], "the template has no gap"),
]


@pytest.mark.parametrize("template, message", TEMPLATES, ids=[repr(t)[:40] for t, _ in TEMPLATES])
def test_infill_template(pipe, template, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        pipe.infill(template, steps=2, progress=False)


@pytest.mark.parametrize("template", [["x", 2.5], ["x", True], ["x", None], [b"x", 2], 12345, None], ids=repr)
def test_infill_template_kind(pipe, template):
    with pytest.raises(TypeError, match="template"):
        pipe.infill(template, steps=2, progress=False)


BAD_IDS = [([65, 258], ValueError, "ids holds ids in [65, 258], but Absorbing(257) has states 0..257"),
           ([65, 10**30], ValueError, f"ids holds ids in [65, {10**30}]"), ([65, -1], ValueError, "ids holds ids in [-1, 65]"),
           (torch.tensor([65, 300]), ValueError, "ids holds ids in [65, 300]"), ([True, 66], TypeError, "ids must hold int token ids, got True"),
           ([1.5], TypeError, "ids must hold int token ids, got 1.5"), ([[65, 66]], TypeError, "ids must hold int token ids, got [65, 66]"),
           (torch.tensor([[65, 66]]), ValueError, "ids must be one sequence of token ids (1-D), got shape [1, 2]"),
           (torch.tensor([65.0]), TypeError, "ids must be an integer tensor"), (65, TypeError, "ids must be a 1-D integer tensor or a sequence"),
           ("AB", TypeError, "ids must be a 1-D integer tensor or a sequence"), (None, TypeError, "ids must be a 1-D integer tensor")]


@pytest.mark.parametrize("ids, error, message", BAD_IDS, ids=[repr(i)[:30] for i, _, _ in BAD_IDS])
def test_decode_ids(pipe, ids, error, message):
    """Ids past the mask used to read as [MASK], negative ones to raise an OverflowError inside the tokenizer, True as token 1."""
    with pytest.raises(error, match=re.escape(message)):
        pipe.decode(ids)


def test_decode_boundaries_give_exact_text(pipe):
    assert pipe.decode([]) == ""
    assert pipe.decode(torch.tensor([VOCAB, 0, VOCAB])) == "[MASK]" + pipe.tokenizer.decode([0]) + "[MASK]"
    assert pipe.decode((65, 66)) == pipe.decode(torch.tensor([65, 66], dtype=torch.int32)) == pipe.tokenizer.decode([65, 66])


LONE = "a\ud800b"  # a lone surrogate: a str with no UTF-8 form
TEXT_CALLS = {
    "nll_bound": (lambda pipe: pipe.nll_bound([LONE], 2, progress=False), "texts[0]"),
    "score_texts": (lambda pipe: score_texts(pipe.model, pipe.tokenizer, ["ok", LONE], 2, progress=False), "texts[1]"),
    "generate-prompt": (lambda pipe: pipe.generate(1, prompt=LONE, max_new_tokens=2, steps=1, progress=False), "prompt"),
    "infill-str": (lambda pipe: pipe.infill(LONE + "{{2}}", steps=1, progress=False), "template"),
    "infill-list": (lambda pipe: pipe.infill(["x", 2, LONE], steps=1, progress=False), "template[2]"),
    "context": (lambda pipe: pipe.conditional_nll([LONE], ["x"], num_t=2), "contexts[0]"),
    "continuation": (lambda pipe: pipe.conditional_nll(["x", "y"], ["z", LONE], num_t=2), "continuations[1]"),
    "encode_pair": (lambda pipe: encode_pair(pipe.tokenizer, "x", "\udfff"), "continuation"),
}


@pytest.mark.parametrize("call, name", TEXT_CALLS.values(), ids=TEXT_CALLS.keys())
def test_text_with_a_lone_surrogate(pipe, call, name):
    """These used to raise the tokenizer's TypeError 'TextEncodeInput must be Union[...]', naming nothing."""
    with pytest.raises(ValueError, match=re.escape(f"{name} holds a lone surrogate")):
        call(pipe)


@pytest.mark.parametrize("texts", [[5], [None], [b"abc"], ["ok", 3.5]], ids=repr)
def test_nll_bound_text_kind(pipe, texts):
    """These used to raise transformers' ValueError about `text` or `text_target`."""
    with pytest.raises(TypeError, match=rf"texts\[{len(texts) - 1}\] must be a str"):
        pipe.nll_bound(texts, 2, progress=False)


@pytest.mark.parametrize("name, value", [("num_samples", 0), ("num_samples", "3"), ("steps", 0), ("steps", -1), ("batch_size", 0)],
                         ids=repr)
def test_infill_counts(pipe, name, value):
    args = {"num_samples": 1, "steps": 2, name: value}
    with pytest.raises(ValueError, match=rf"{name} must be an int >= 1"):
        pipe.infill("a{{2}}b", progress=False, **args)


@pytest.mark.parametrize("name, value", [("num_t", 0), ("num_t", -2), ("num_t", 1.5), ("num_t", "8"), ("num_t", True),
                                         ("batch_size", 0), ("batch_size", -1), ("batch_size", 1.5), ("batch_size", "2")], ids=repr)
def test_pipeline_nll_bound_counts(pipe, name, value):
    args = {"num_t": 4, "batch_size": None, name: value}
    with pytest.raises(ValueError, match=rf"{name} must be an int >= 1"):
        pipe.nll_bound(["some text"], progress=False, **args)


@pytest.mark.parametrize("name, value", [("num_t", 0), ("num_t", -4), ("num_t", 2.5),
                                         ("batch_size", 0), ("batch_size", -1), ("batch_size", "3"), ("batch_size", False)], ids=repr)
def test_score_texts_counts(pipe, name, value):
    args = {"num_t": 4, "batch_size": None, name: value}
    with pytest.raises(ValueError, match=rf"{name} must be an int >= 1"):
        score_texts(pipe.model, pipe.tokenizer, ["some text"], progress=False, **args)


@pytest.mark.parametrize("value", [0, -1, 2.5, "8"], ids=repr)
def test_pipeline_max_length(pipe, value):
    with pytest.raises(ValueError, match=r"max_length must be an int >= 1 or None"):
        DiffusionPipeline(pipe.model, pipe.tokenizer, max_length=value)


@pytest.fixture(scope="module")
def ar_model():
    return DDLMForDiffusion(DDLMConfig.from_preset("tiny", vocab_size=VOCAB, max_position_embeddings=MAX_LEN, num_hidden_layers=1,
                                                   objective="ar")).eval()


@pytest.mark.parametrize("value", [0, -1, 1.5, "4"], ids=repr)
def test_ar_scoring_batch_size(ar_model, tokenizer, value):
    """An AR model's exact -log p used to come out 0 (perplexity 1) for a negative batch size."""
    with pytest.raises(ValueError, match=r"batch_size must be an int >= 1 or None"):
        ar_text_nll(ar_model, tokenizer, ["some text"], batch_size=value, progress=False)
    with pytest.raises(ValueError, match=r"batch_size must be an int >= 1 or None"):
        score_texts(ar_model, tokenizer, ["some text"], batch_size=value, progress=False)


def test_ar_scoring_is_the_same_for_every_batch_size(ar_model, tokenizer):
    texts = [TEXT[:40], TEXT[5:30]]
    whole = ar_text_nll(ar_model, tokenizer, texts, progress=False)
    ones = ar_text_nll(ar_model, tokenizer, texts, batch_size=1, progress=False)
    assert [r.integral for r in whole] == pytest.approx([r.integral for r in ones], rel=1e-5)
    assert all(r.integral > 0 for r in whole)


# ----------------------------------------------------------------------------- DDLMConfig

CONFIG_CASES = [
    ("vocab_size", v) for v in [1, 0, -5, "10", 2.5, True, None]] + [
    ("hidden_size", v) for v in [0, -64, "64", 64.0, None, 66, 12]] + [
    ("num_hidden_layers", v) for v in [0, -1, "2", 1.5]] + [
    ("num_attention_heads", v) for v in [0, -4, "4", 3, 5]] + [
    ("cond_dim", v) for v in [0, "32", 8.0]] + [
    ("time_embed_dim", v) for v in [0, 3, "64"]] + [
    ("mlp_ratio", v) for v in [0, -1, 2.5]] + [
    ("max_position_embeddings", v) for v in [0, -1, "16", 16.0]] + [
    ("dropout", v) for v in [-0.1, 1.0, 2, NAN, "0.1"]] + [
    ("eps", v) for v in [0, 1, -1, NAN, INF, "x"]] + [
    ("sigma_min", v) for v in [0, -1, 30.0]] + [
    ("sigma_max", v) for v in [NAN, INF, 1e-5]] + [
    ("rotary_base", v) for v in [0, 1, -5, INF]] + [
    ("layer_norm_eps", v) for v in [0, -1e-5, NAN]] + [
    ("initializer_range", v) for v in [-0.1, INF]] + [
    ("scale_by_sigma", v) for v in ["yes", 1]] + [
    ("tie_word_embeddings", v) for v in ["no", None]] + [
    ("process", v) for v in ["masked", None, 5]] + [
    ("schedule", v) for v in ["cosine", None]] + [
    ("objective", v) for v in ["causal", None]]


@pytest.mark.parametrize("name, value", CONFIG_CASES, ids=repr)
def test_config_field(name, value):
    field = "num_attention_heads|hidden_size" if name in ("hidden_size", "num_attention_heads") else name
    if name == "sigma_max" and value == 1e-5:
        field = "sigma_min"  # the pair is out of order: named with both values
    with pytest.raises(ValueError, match=field):
        DDLMConfig.from_preset("tiny", **{name: value})


# ----------------------------------------------------------------------------- recipes


def base_recipe(tmp_path: Path) -> dict:
    return {"model": {"preset": "tiny", "dropout": 0.0},
            "tokenizer": {"train_vocab_size": 300},
            "data": {"source": "python-docs", "block_size": 32, "validation_fraction": 0.05},
            "train": {"steps": 10, "global_batch_size": 8, "micro_batch_size": 4, "trackers": ["none"],
                      "output_dir": str(tmp_path / "run")}}


@pytest.fixture(scope="module")
def recipe_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("recipe")
    (path / "recipe.yaml").write_text(yaml.safe_dump(base_recipe(path)))
    return path / "recipe.yaml"


OVERRIDES = [
    ("train.steps=", "train.steps needs a value"),
    ("train.steps=0", "steps=0"),
    ("train.steps=-5", "steps=-5"),
    ("train.steps=1.5", "train.steps must be int"),
    ("train.steps=abc", "train.steps must be int"),
    ("train.steps=true", "train.steps must be int"),
    ("train.steps=[1]", "train.steps must be int"),
    ("train.lr=", "train.lr needs a value"),
    ("train.lr=abc", "train.lr must be float"),
    ("train.lr=0", "lr=0.0"),
    ("train.lr=-1e-4", "lr=-0.0001"),
    ("train.lr=inf", "lr=inf"),
    ("train.lr=.inf", "lr=inf"),
    ("train.lr=nan", "lr=nan"),
    ("train.lr=.nan", "lr=nan"),
    ("train.lr=[", "override 'train.lr=['"),
    ("train.lr={a: 1", "override 'train.lr={a: 1'"),
    ("train.betas=abc", "betas='abc'"),
    ("train.betas=0.9", "betas=0.9"),
    ("train.betas=[0.9]", "betas=(0.9,)"),
    ("train.betas=[0.9, 0.99, 0.999]", "betas="),
    ("train.betas=[0.9, 1.0]", "betas="),
    ("train.betas=[-0.1, 0.9]", "betas="),
    ("train.betas=[0.9, .nan]", "betas="),
    ("train.betas=[a, b]", "betas="),
    ("train.betas={a: 1}", "betas="),
    ("train.betas=", "train.betas needs a value"),
    ("train.weight_decay=-0.1", "weight_decay=-0.1"),
    ("train.weight_decay=inf", "weight_decay=inf"),
    ("train.weight_decay=x", "train.weight_decay must be float"),
    ("train.warmup_steps=-1", "warmup_steps=-1"),
    ("train.min_lr_ratio=1.5", "min_lr_ratio=1.5"),
    ("train.min_lr_ratio=-0.5", "min_lr_ratio=-0.5"),
    ("train.clip_grad_norm=-1", "clip_grad_norm=-1.0"),
    ("train.clip_grad_norm=0", "clip_grad_norm=0.0"),
    ("train.clip_grad_norm=inf", "clip_grad_norm=inf"),
    ("train.clip_grad_norm=abc", "train.clip_grad_norm must be float"),
    ("train.ema=1", "ema=1.0"),
    ("train.ema=-0.1", "ema=-0.1"),
    ("train.t_min=1", "t_min=1.0"),
    ("train.t_min=-0.5", "t_min=-0.5"),
    ("train.seed=-1", "seed=-1"),
    ("train.seed=1.5", "train.seed must be int"),
    ("train.log_every=0", "log_every=0"),
    ("train.eval_every=0", "eval_every=0"),
    ("train.sample_every=-1", "sample_every=-1"),
    ("train.save_every=0", "save_every=0"),
    ("train.eval_blocks=0", "eval_blocks=0"),
    ("train.eval_num_t=0", "eval_num_t=0"),
    ("train.eval_num_t=3", "eval_num_t=3"),
    ("train.num_samples=0", "num_samples=0"),
    ("train.sample_steps=0", "sample_steps=0"),
    ("train.keep_checkpoints=0", "keep_checkpoints=0"),
    ("train.global_batch_size=0", "global_batch_size=0"),
    ("train.micro_batch_size=0", "micro_batch_size=0"),
    ("train.global_batch_size=10", "global_batch_size 10 is not divisible by micro_batch_size 4"),
    ("train.micro_batch_size=16", "global_batch_size 8 is not divisible by micro_batch_size 16"),
    ("train.objective=causal", "objective='causal'"),
    ("train.decay=sometimes", "decay='sometimes'"),
    ("train.mixed_precision=fp8", "mixed_precision='fp8'"),
    ("train.trackers=[tensorbord]", "trackers="),
    ("train.trackers=[none, foo]", "trackers="),
    ("train.trackers=[1]", "trackers="),
    ("train.trackers=foo", "trackers="),
    ("train.output_dir=", "train.output_dir needs a value"),
    ("train.output_dir=''", "output_dir=''"),
    ("train.output_dir='  '", "output_dir="),
    ("train.output_dir=5", "train.output_dir must be st"),
    ("train.learning_rate=1", "unknown train keys ['learning_rate']"),
    ("data.block_size=1", "block_size=1"),
    ("data.block_size=0", "block_size=0"),
    ("data.block_size=abc", "data.block_size must be int"),
    ("data.block_size=", "data.block_size needs a value"),
    ("data.validation_fraction=0", "validation_fraction=0.0"),
    ("data.validation_fraction=1", "validation_fraction=1.0"),
    ("data.validation_fraction=-0.5", "validation_fraction=-0.5"),
    ("data.validation_fraction=nan", "validation_fraction=nan"),
    ("data.source=''", "source=''"),
    ("data.source=", "data.source needs a value"),
    ("data.text_field=''", "text_field=''"),
    ("data.split=''", "split=''"),
    ("data.validation_split=''", "validation_split=''"),
    ("data.streaming=maybe", "data.streaming must be bool"),
    ("data.cache_dir=''", "cache_dir=''"),
    ("data.path=x", "unknown data keys ['path']"),
    ("tokenizer.train_vocab_size=256", "train_vocab_size=256"),
    ("tokenizer.train_vocab_size=0", "train_vocab_size=0"),
    ("tokenizer.train_vocab_size=abc", "tokenizer.train_vocab_size must be int"),
    ("tokenizer.train_vocab_size=", "exactly one of name"),
    ("tokenizer.name=gpt2", "exactly one of name"),
    ("model.preset=huge", "unknown model preset 'huge'"),
    ("model.preset=[tiny]", "unknown model preset"),
    ("model.hidden_size=abc", "model.hidden_size must be int"),
    ("model.hidden_size=", "model.hidden_size needs a value"),
    ("model.hidden_size=0", "hidden_size must be an int >= 1"),
    ("model.hidden_size=100", "hidden_size 100 must split into num_attention_heads=4"),
    ("model.num_attention_heads=0", "num_attention_heads must be an int >= 1"),
    ("model.num_attention_heads=3", "num_attention_heads=3"),
    ("model.num_hidden_layers=0", "num_hidden_layers must be an int >= 1"),
    ("model.dropout=1", "dropout must be in"),
    ("model.dropout=-0.5", "dropout must be in"),
    ("model.eps=0", "eps must be in"),
    ("model.process=masked", "process must be one of"),
    ("model.schedule=cosine", "schedule must be one of"),
    ("model.scale_by_sigma=maybe", "model.scale_by_sigma must be bool"),
    ("model.max_position_embeddings=16", "data.block_size 32 exceeds model.max_position_embeddings 16"),
    ("model.vocab_size=10", "unknown model keys ['vocab_size']"),
    ("model.width=3", "unknown model keys ['width']"),
    ("model.dtype=float16", "unknown model keys ['dtype']"),
    ("optim.lr=1", "unknown recipe sections ['optim']"),
    ("lr=1e-4", "section.key=value"),
    ("train.l", "section.key=value"),
    ("a.b.c=1", "section.key=value"),
]


@pytest.mark.parametrize("override, message", OVERRIDES, ids=[o for o, _ in OVERRIDES])
def test_recipe_override(recipe_file, override, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        load_recipe(str(recipe_file), [override])
    assert not (recipe_file.parent / "run").exists()


def test_recipe_boundaries_are_accepted_exactly(recipe_file):
    recipe = load_recipe(str(recipe_file), ["train.lr=1e-4", "train.clip_grad_norm=null", "train.trackers=tensorboard",
                                            "data.block_size=2", "tokenizer.train_vocab_size=257", "train.eval_num_t=2",
                                            "train.betas=[0, 0.999]", "train.ema=0", "train.global_batch_size=4"])
    assert recipe.train.lr == 1e-4 and recipe.train.clip_grad_norm is None and recipe.train.trackers == ["tensorboard"]
    assert (recipe.data.block_size, recipe.tokenizer.train_vocab_size, recipe.train.eval_num_t) == (2, 257, 2)
    assert recipe.train.betas == (0.0, 0.999) and recipe.train.accumulation_steps(1) == 1
    assert not (recipe_file.parent / "run").exists()


@pytest.mark.parametrize("tracker", ["tensorboard", "wandb", "comet_ml", "aim", "mlflow", "clearml", "dvclive", "swanlab",
                                     "trackio", "none"])
def test_recipe_accepts_accelerate_trackers(recipe_file, tracker):
    assert load_recipe(str(recipe_file), [f"train.trackers=[{tracker}]"]).train.trackers == [tracker]


YAML_FILES = [
    ("train:\n  lr: [1\n", "line 3"),
    ("train:\n  lr: 1\n bad: 2\n", "line 3"),
    ("train: {steps: 1\n", "not valid YAML"),
    ("train:\n\tsteps: 1\n", "line 2"),
    ("train: !!python/object/apply:os.system ['echo hi']\n", "python/object/apply:os.system"),
    ("train: !!python/name:os.system\n", "python/name:os.system"),
    ("model: !!python/tuple [1, 2]\n", "python/tuple"),
    ("data: &a [*a]\n  x: 1\n", "not valid YAML"),
    ("'unterminated\n", "not valid YAML"),
    ("- model\n- train\n", "must be a mapping of sections"),
    ("just a string\n", "must be a mapping of sections"),
    ("train: 5\n", "recipe section 'train' must be a mapping"),
    ("model: [tiny]\n", "recipe section 'model' must be a mapping"),
    ("data: text\n", "recipe section 'data' must be a mapping"),
    ("tokenizer: 300\n", "recipe section 'tokenizer' must be a mapping"),
    ("optimizer: {lr: 1}\n", r"unknown recipe sections \['optimizer'\]"),
    ("1: {lr: 1}\n", r"unknown recipe sections \[1\]"),
    ("tokenizer: {name: gpt2}\ntrain: {1: 2}\n", r"unknown train keys \[1\]"),
]


@pytest.mark.parametrize("text, message", YAML_FILES, ids=[t[:30] for t, _ in YAML_FILES])
def test_recipe_file(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ValueError, match=message) as error:
        load_recipe(str(path))
    if "valid YAML" in str(error.value) or "mapping of sections" in str(error.value):
        assert f"recipe {path} " in str(error.value)


def test_recipe_file_that_is_not_utf8(tmp_path):
    path = tmp_path / "binary.yaml"
    path.write_bytes(b"\xff\xfe\x00train")
    with pytest.raises(ValueError, match=f"recipe {path} is not UTF-8"):
        load_recipe(str(path))


@pytest.mark.parametrize("values, message", [([1, 2], "a recipe must be a mapping of sections"), ("text", "must be a mapping"),
                                             ({"train": [1]}, "recipe section 'train' must be a mapping")], ids=repr)
def test_recipe_from_dict_shape(values, message):
    with pytest.raises(ValueError, match=message):
        recipe_from_dict(values)


# ----------------------------------------------------------------------------- model directories


def corrupt(model_dir: Path, tmp_path: Path, change, keep_manifest: bool = False) -> Path:
    """A damaged copy of ``model_dir``; without ``keep_manifest`` the copy has no manifest (an export of ddlm
    before manifests, or a plain ``save_pretrained``), so the loaders' own checks meet the damage."""
    path = tmp_path / "model"
    shutil.copytree(model_dir, path)
    if not keep_manifest:
        (path / "manifest.json").unlink()
    change(path)
    return path


def write(name: str, data: str | bytes):
    return lambda path: (path / name).write_bytes(data if isinstance(data, bytes) else data.encode())


def truncate(name: str, size: int):
    return lambda path: (path / name).write_bytes((path / name).read_bytes()[:size])


def remove(*names: str):
    return lambda path: [(path / name).unlink() for name in names]


def edit_config(**values):
    def change(path):
        config = json.loads((path / "config.json").read_text())
        config.update(values)
        (path / "config.json").write_text(json.dumps(config))
    return change


MODEL_DIRS = [
    ("config-not-json", write("config.json", "{not json"), "config.json is not valid JSON"),
    ("config-empty", write("config.json", ""), "config.json is not valid JSON"),
    ("config-binary", write("config.json", b"\xff\xfe\x00\x01"), "config.json is not valid JSON"),
    ("config-list", write("config.json", "[1, 2]"), "config.json must hold a JSON object"),
    ("config-string", write("config.json", '"ddlm"'), "config.json must hold a JSON object"),
    ("config-null", write("config.json", "null"), "config.json must hold a JSON object"),
    ("config-truncated", lambda p: (p / "config.json").write_text((p / "config.json").read_text()[:40]), "config.json is not valid JSON"),
    ("config-missing", remove("config.json"), "not a ddlm model directory"),
    ("config-other-model", edit_config(model_type="gpt2"), "not a ddlm model directory"),
    ("hidden-size-string", edit_config(hidden_size="abc"), "config.json: hidden_size must be an int"),
    ("hidden-size-zero", edit_config(hidden_size=0), "config.json: hidden_size must be an int"),
    ("heads-zero", edit_config(num_attention_heads=0), "config.json: num_attention_heads must be an int"),
    ("heads-do-not-divide", edit_config(num_attention_heads=3), "config.json: hidden_size 64 must split"),
    ("vocab-null", edit_config(vocab_size=None), "config.json: vocab_size must be an int"),
    ("process-unknown", edit_config(process="masked"), "config.json: process must be one of"),
    ("dropout-two", edit_config(dropout=2.0), "config.json: dropout must be in"),
    ("eps-string", edit_config(eps="small"), "config.json: eps must be a finite number"),
    ("layers-float", edit_config(num_hidden_layers=1.5), "config.json: num_hidden_layers must be an int"),
    ("dtype-unknown", edit_config(dtype="float17"), "config.json: .*float17"),
    ("vocab-differs-from-weights", edit_config(vocab_size=VOCAB + 5), r"shapes differ from config.json's: embed_tokens.weight"),
    ("layers-differ-from-weights", edit_config(num_hidden_layers=2), r"missing keys: \['layers.1"),
    ("weights-truncated-header", truncate("model.safetensors", 100), "model.safetensors is not a readable safetensors file"),
    ("weights-truncated-data", truncate("model.safetensors", 20_000), "model.safetensors is not a readable safetensors file"),
    ("weights-empty", write("model.safetensors", b""), "model.safetensors is not a readable safetensors file"),
    ("weights-random", write("model.safetensors", bytes(range(256)) * 20), "model.safetensors is not a readable safetensors file"),
    ("weights-text", write("model.safetensors", "not weights at all"), "model.safetensors is not a readable safetensors file"),
    ("weights-missing", remove("model.safetensors"), "model.safetensors"),
    ("tokenizer-missing", remove("tokenizer.json", "tokenizer_config.json"), "holds no tokenizer"),
    ("tokenizer-json-invalid", write("tokenizer.json", "{bad"), "tokenizer"),
    ("tokenizer-json-list", write("tokenizer.json", "[]"), "cannot load the tokenizer saved in .*tokenizer.json"),
    ("tokenizer-json-binary", write("tokenizer.json", b"\xde\xad\xbe\xef"), "tokenizer"),
    ("tokenizer-json-incomplete", write("tokenizer.json", '{"version": "1.0"}'), "cannot load the tokenizer saved in"),
    ("tokenizer-config-list", write("tokenizer_config.json", "[]"), "cannot load the tokenizer saved in"),
    ("tokenizer-eos-not-a-string", write("tokenizer_config.json", '{"eos_token": 5}'), "cannot load the tokenizer saved in"),
]


@pytest.mark.parametrize("change, message", [(c, m) for _, c, m in MODEL_DIRS], ids=[name for name, _, _ in MODEL_DIRS])
def test_model_directory(model_dir, tmp_path, change, message):
    path = corrupt(model_dir, tmp_path, change)
    with pytest.raises((ValueError, OSError), match=message) as error:
        load_model(path)
    assert str(path) in str(error.value)


@pytest.mark.parametrize("change, message", [(c, m) for _, c, m in MODEL_DIRS], ids=[name for name, _, _ in MODEL_DIRS])
def test_model_directory_with_its_manifest(model_dir, tmp_path, change, message):
    """The same damage to a directory that keeps its manifest: the config checks, or the manifest, name the file."""
    path = corrupt(model_dir, tmp_path, change, keep_manifest=True)
    with pytest.raises((ValueError, OSError)) as error:
        load_model(path)
    assert str(path) in str(error.value)
    assert re.search(message, str(error.value)) or re.search(r"(does not match the manifest|is missing \(listed in)", str(error.value))


def test_model_directory_paths(tmp_path, model_dir):
    with pytest.raises(FileNotFoundError, match=f"no model directory at {tmp_path / 'missing'}"):
        load_model(tmp_path / "missing")
    with pytest.raises(ValueError, match="not a ddlm model directory"):
        load_model(model_dir / "config.json")  # a file, not a directory


# ----------------------------------------------------------------------------- command line


def cli_error(capsys, argv: list[str], *needles: str) -> str:
    """Run ``ddlm argv``; it must exit 2 with one error line (after argparse's usage, if any) naming ``needles``."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    assert "Traceback" not in err
    lines = err.rstrip("\n").split("\n")
    if lines[0].startswith("usage: "):  # argparse: the usage (maybe wrapped), then exactly one error line
        lines = [line for line in lines if not line.startswith(("usage: ", " "))]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"ddlm {argv[0]}: error: "), err
    for needle in needles:
        assert needle in lines[0], err
    return lines[0]


BAD_COUNTS = ["0", "-1", "1.5", "abc", "", "1e3", "nan"]
COUNT_ARGS = {
    "sample": ["--batch-size", "--length", "--num-samples", "--steps"],
    "infill": ["--batch-size", "--num-samples", "--steps"],
    "eval": ["--batch-size", "--num-t"],
    "quality": ["--batch-size", "--length", "--num-samples", "--steps"],
    "demo": ["--tokens", "--length", "--samples", "--steps", "--num-t"],
}


def argv_for(command: str, model_dir, text_file, *extra: str) -> list[str]:
    positional = {"sample": [str(model_dir)], "infill": [str(model_dir), "a{{2}}b"], "eval": [str(model_dir), str(text_file)],
                  "quality": [str(model_dir), "--reference", str(model_dir)], "demo": []}[command]
    return [command, *positional, *extra, "--quiet"] if command != "demo" else [command, *extra]


@pytest.mark.parametrize("command, option, value",
                         [(c, o, v) for c, options in COUNT_ARGS.items() for o in options for v in BAD_COUNTS], ids=repr)
def test_cli_counts(capsys, model_dir, text_file, command, option, value):
    line = cli_error(capsys, argv_for(command, model_dir, text_file, f"{option}={value}"), f"argument {option}:", repr(value))
    assert "expected" in line


@pytest.mark.parametrize("values", [["4", "0"], ["-2"], ["8", "x"], ["2.5", "4"]], ids=repr)
def test_cli_quality_steps_list(capsys, model_dir, values):
    cli_error(capsys, ["quality", str(model_dir), "--reference", str(model_dir), "--steps", *values, "--quiet"], "argument --steps:")


@pytest.mark.parametrize("value", ["0", "0.5", "-2", "inf", "nan", "abc", "-inf"])
def test_cli_t_power(capsys, model_dir, text_file, value):
    cli_error(capsys, ["eval", str(model_dir), str(text_file), f"--t-power={value}", "--quiet"], "argument --t-power:", repr(value))


@pytest.mark.parametrize("value", ["-1", "abc", str(2**64), "1.5"])
@pytest.mark.parametrize("command", ["sample", "demo"])
def test_cli_seed(capsys, model_dir, text_file, command, value):
    cli_error(capsys, argv_for(command, model_dir, text_file, f"--seed={value}"), "argument --seed:", repr(value))


DEVICES = ["tpu", "foo", "", "cuda:x", "meta", "gpu0"] + ([] if CUDA else ["cuda", "cuda:0", "cuda:3"])


@pytest.mark.parametrize("value", DEVICES, ids=repr)
@pytest.mark.parametrize("command", ["sample", "eval"])
def test_cli_device(capsys, model_dir, text_file, command, value):
    cli_error(capsys, argv_for(command, model_dir, text_file, f"--device={value}"), "argument --device:", repr(value))


@pytest.mark.parametrize("value", ["8", "9"])
def test_cli_num_t_odd_or_even(capsys, model_dir, text_file, value):
    """An odd --num-t is refused before any model is loaded (stratified t come in pairs); iid takes it."""
    if value == "9":
        cli_error(capsys, ["eval", str(model_dir), str(text_file), "--num-t", "9", "--quiet"], "--num-t must be even", "9")
    main(["eval", str(model_dir), str(text_file), "--num-t", value, "--t-sampling", "iid" if value == "9" else "stratified", "--quiet"])
    assert f" {value} " in capsys.readouterr().out


def test_cli_length_beyond_the_model_names_both_numbers(capsys, model_dir):
    cli_error(capsys, ["sample", str(model_dir), "--length", "17", "--steps", "1", "--quiet"], "length 17", f"maximum length {MAX_LEN}")


@pytest.mark.parametrize("template, needle", [("a {{100000000000000000000}} b", "100000000000000000000 tokens exceeds"),
                                              ("a {{0}} b", "at least 1 token"), ("nothing", "no gap"),
                                              ("a {{-3}} b", "{{-3}}"), ("{{12}}{{12}}", "24 tokens")], ids=repr)
def test_cli_infill_template(capsys, model_dir, template, needle):
    cli_error(capsys, ["infill", str(model_dir), template, "--steps", "1", "--quiet"], needle)


@pytest.mark.parametrize("name, change", [(name, change) for name, change, _ in MODEL_DIRS
                                          if name in ("config-not-json", "config-list", "config-missing", "hidden-size-string", "dtype-unknown",
                                                      "weights-truncated-data", "weights-random", "weights-missing", "tokenizer-missing",
                                                      "tokenizer-json-list", "vocab-differs-from-weights", "layers-differ-from-weights")])
def test_cli_corrupt_model_directory(capsys, model_dir, tmp_path, name, change):
    path = corrupt(model_dir, tmp_path, change)
    cli_error(capsys, ["sample", str(path), "--steps", "1", "--quiet"], str(path))


def test_cli_bad_text_files(capsys, model_dir, tmp_path):
    (tmp_path / "binary.txt").write_bytes(b"\xff\xfe\x00text")
    (tmp_path / "blank.txt").write_text(" \n")
    for path, needle in [(tmp_path / "binary.txt", "is not UTF-8 text"), (tmp_path / "blank.txt", "is empty"),
                         (tmp_path / "missing.txt", "No such file"), (tmp_path, "Is a directory")]:
        cli_error(capsys, ["eval", str(model_dir), str(path), "--num-t", "2", "--quiet"], str(path), needle)


def test_cli_bad_tokenizer_option(capsys, model_dir, tmp_path):
    cli_error(capsys, ["sample", str(model_dir), "--tokenizer", str(tmp_path), "--steps", "1", "--quiet"], str(tmp_path), "no tokenizer")


def test_cli_demo_too_many_sequences(capsys):
    cli_error(capsys, ["demo", "--tokens", "100", "--length", "10"], "100^10")


def test_cli_boundaries_give_exact_results(capsys, model_dir, text_file):
    """--length 1, --num-samples 1, --steps 1, --batch-size 1 work; the bound does not depend on --batch-size (it
    used to print a perplexity of 1.000 for --batch-size -1) and is exactly log(VOCAB) per token for the untrained model."""
    main(["sample", str(model_dir), "--length", "1", "--num-samples", "1", "--steps", "1", "--quiet"])
    assert "=" * 40 not in capsys.readouterr().out
    rows = []
    for extra in [[], ["--batch-size", "1"]]:
        main(["eval", str(model_dir), str(text_file), "--num-t", "8", "--t-power", "1", "--quiet", *extra])
        lines = capsys.readouterr().out.splitlines()  # the model, the file, then a header and a row each: the estimate, per token
        rows.append(lines[3].split() + lines[5].split())
    assert rows[0] == rows[1]
    tokens, bound, stderr, ppl = int(rows[0][1]), float(rows[0][8]), float(rows[0][10]), float(rows[0][15])
    assert tokens == len(TEXT[:60]) and ppl == pytest.approx(math.exp(bound / tokens), rel=1e-3)
    assert abs(bound - tokens * math.log(VOCAB)) < 3 * stderr + 1e-3 * tokens


# ----------------------------------------------------------------------------- true subprocesses


SUBPROCESS_CASES = [  # an argparse error, and one found after the model is loaded
    (["eval", "{model}", "{text}", "--batch-size", "-1"], "ddlm eval: error: argument --batch-size: expected a positive integer"),
    (["infill", "{model}", "a {{100000000000000000000}} b", "--quiet"], "ddlm infill: error: a gap of 100000000000000000000 tokens"),
]


@pytest.fixture(scope="module", autouse=True)
def subprocess_runs(request, model_dir, text_file):
    """Starts the commands with the module's first test, when any subprocess test is selected, so that their
    interpreters' start-up (seconds of imports each) overlaps the in-process tests instead of adding to them."""
    if not any(item.name.startswith("test_subprocess") for item in request.session.items):
        yield None
        return
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    runs = [subprocess.Popen([sys.executable, "-m", "ddlm", *[a.replace("{model}", str(model_dir)).replace("{text}", str(text_file))
                                                              for a in argv]],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
            for argv, _ in SUBPROCESS_CASES]
    yield runs
    for run in runs:
        if run.poll() is None:
            run.kill()
            run.wait()


@pytest.mark.parametrize("index", range(len(SUBPROCESS_CASES)))
def test_subprocess_exits_2_with_one_line(subprocess_runs, index):
    out, err = subprocess_runs[index].communicate(timeout=300)
    code = subprocess_runs[index].returncode
    assert code == 2 and out == "" and "Traceback" not in err
    error_lines = [line for line in err.strip().splitlines() if not line.startswith(("usage: ", " "))]
    assert len(error_lines) == 1 and error_lines[0].startswith(SUBPROCESS_CASES[index][1]), err

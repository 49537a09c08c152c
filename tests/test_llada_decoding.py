"""LLaDA's decoding as a ddlm setting (``ddlm.sampling.decoding.llada_options``): the tokens of LLaDA's generate().

The reference below restates LLaDA's published generate() (github.com/ML-GSAI/LLaDA, generate.py) from its
description, without attention mask (cfg_scale > 0: its unsupervised CFG, further down): prompt and gen_length masks in one sequence, blocks of
block_length left to right, steps / num_blocks steps a block, each unmasking the block's masked positions of
highest confidence (the softmax probability of the argmax token, or uniform for "random") to their argmax tokens,
as many as get_num_transfer_tokens says (the block's masks split evenly, the remainder to the first steps);
temperature > 0 draws by Gumbel-max as its add_gumbel_noise. Networks: ddlm's LLaDA, a transformers BERT and a
random mixer, tiny and random, with the mask token mid-vocabulary.
"""

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from torch import nn
from transformers import BertConfig, BertForMaskedLM, PreTrainedTokenizerFast

from ddlm.models.llada import REQUIRED, llada_network, llama_config
from ddlm.models.masked_diffusion import MaskedDiffusionModel
from ddlm.pipeline import DiffusionPipeline
from ddlm.sampling.decoding import _remaining, llada_options

VOCAB, MASK, LENGTH = 50, 25, 32  # the mask token in the middle of the network's vocabulary


class Mixer(nn.Module):
    """A random bidirectional network that never predicts its mask token: ids Long[B, L] -> logits [B, L, V]."""

    def __init__(self, seed: int = 0, width: int = 16):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.embed = nn.Parameter(torch.randn(VOCAB, width, generator=g))
        self.position = nn.Parameter(torch.randn(LENGTH, width, generator=g))
        self.mix = nn.Parameter(torch.randn(LENGTH, LENGTH, generator=g) / LENGTH ** 0.5)
        self.out = nn.Parameter(torch.randn(width, VOCAB, generator=g))

    def forward(self, ids: torch.Tensor, sigma_bar: torch.Tensor) -> torch.Tensor:
        n = ids.shape[1]
        h = self.embed[ids] + self.position[:n]
        h = h + torch.tanh(self.mix[:n, :n] @ h)
        return (h @ self.out).index_fill(-1, torch.tensor([MASK]), float("-inf"))


class Bert(nn.Module):
    """A tiny random transformers BertForMaskedLM (full attention): ids Long[B, L] -> logits [B, L, V]; it does
    give its mask token (and every other id) some probability."""

    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        config = BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                            max_position_embeddings=LENGTH, initializer_range=0.2)
        self.model = BertForMaskedLM(config).eval()

    def forward(self, ids: torch.Tensor, sigma_bar: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits


def tiny_llada(seed: int = 0) -> nn.Module:
    """ddlm's LLaDA network (``ddlm.models.llada``: rotary positions only) at a tiny size, weights N(0, 0.3^2):
    ids Long[B, L] -> logits [B, L, V]; it gives its mask token some probability."""
    config = {field: supported for field, (_, supported) in REQUIRED.items()}
    config.update(d_model=32, n_heads=4, n_kv_heads=2, n_layers=2, mlp_hidden_size=64, vocab_size=VOCAB, mask_token_id=MASK,
                  max_sequence_length=LENGTH, weight_tying=False)
    torch.manual_seed(seed)
    network = llada_network(llama_config(config))
    with torch.no_grad():
        for parameter in network.parameters():
            parameter.normal_(0, 0.3)
    return network


def transfer_counts(block_masked: torch.Tensor, steps: int) -> torch.Tensor:
    """LLaDA's get_num_transfer_tokens: Bool[B, K] -> Long[B, steps], n // steps each, +1 in the first n % steps."""
    n = block_masked.sum(1, keepdim=True)
    return n // steps + (torch.arange(steps) < n % steps).long()


def gumbel_argmax(logits: torch.Tensor, temperature: float, generator) -> torch.Tensor:
    """LLaDA's add_gumbel_noise then argmax: [B, L, V] -> Long[B, L]; exp(logits) / (-log u)^temperature in float64
    is a draw from softmax(logits / temperature) (temperature 0: the argmax of the logits themselves)."""
    if temperature == 0:
        return logits.argmax(-1)
    u = torch.rand(logits.shape, dtype=torch.float64, generator=generator)
    return (logits.double().exp() / (-torch.log(u)) ** temperature).argmax(-1)


def guided_logits(network, x, prompt_length, cfg_scale):
    """LLaDA's logits of x Long[B, L]: the network's, or with cfg_scale > 0 its unsupervised CFG: the network on x and on
    x with the prompt masked in one doubled batch, combined as un + (cfg_scale + 1) (cond - un)."""
    if cfg_scale == 0:
        return network(x, torch.zeros(x.shape[0]))
    unprompted = x.clone()
    unprompted[:, :prompt_length] = MASK
    cond, un = network(torch.cat([x, unprompted]), torch.zeros(2 * x.shape[0])).chunk(2)
    return un + (cfg_scale + 1) * (cond - un)


@torch.no_grad()
def llada_generate(network, prompt, steps, gen_length, block_length, remasking="low_confidence", banned=(), generator=None,
                   temperature=0.0, cfg_scale=0.0):
    """LLaDA's generate(), restated: prompt Long[B, P] -> Long[B, gen_length], the new tokens.
    banned: ids whose logits are set to -inf before the argmax and the softmax (as its logits_eos_inf does)."""
    batch, start = prompt.shape
    x = torch.cat([prompt, torch.full((batch, gen_length), MASK)], 1)
    assert gen_length % block_length == 0 and steps % (gen_length // block_length) == 0
    per_block = steps // (gen_length // block_length)
    for end in range(start + block_length, start + gen_length + 1, block_length):
        counts = transfer_counts(x[:, end - block_length:end] == MASK, per_block)
        for i in range(per_block):
            masked = x == MASK
            logits = guided_logits(network, x, start, cfg_scale)
            logits[..., list(banned)] = float("-inf")
            x0 = gumbel_argmax(logits, temperature, generator)
            if remasking == "low_confidence":
                p = torch.softmax(logits, -1).gather(-1, x0[..., None]).squeeze(-1)
            else:
                p = torch.rand(x0.shape, generator=generator)
            p[:, end:] = float("-inf")
            confidence = torch.where(masked, p, float("-inf"))
            for row in range(batch):
                chosen = confidence[row].topk(int(counts[row, i])).indices
                x[row, chosen] = x0[row, chosen]
    return x[:, start:]


@pytest.fixture(scope="module")
def tokenizer():
    """One word a token, w0 ... w49 (w25 is the network's mask token, never drawn)."""
    backend = Tokenizer(models.WordLevel({f"w{i}": i for i in range(VOCAB)}, unk_token="w0"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="w49")


# network, its banned ids (besides the mask token), the ids the reference excludes
NETWORKS = {"mixer": (Mixer, (), ()), "bert": (Bert, (0,), (0, MASK)), "llada": (tiny_llada, (), (MASK,))}


def pipeline(tokenizer, name, seed=0, dtype=torch.float32):
    """A ``DiffusionPipeline`` over the wrapped network, the bare network, and the ids the reference excludes."""
    make, banned, excluded = NETWORKS[name]
    network = make(seed).to(dtype).eval()
    model = MaskedDiffusionModel(network, vocab_size=VOCAB, mask_token_id=MASK, max_length=LENGTH, banned_ids=banned)
    return DiffusionPipeline(model, tokenizer, max_length=LENGTH), network, excluded


def prompts(batch, length, seed):
    """Long[batch, length] random prompts without the mask token."""
    ids = torch.randint(0, VOCAB - 1, (batch, length), generator=torch.Generator().manual_seed(seed))
    return ids + (ids >= MASK).long()


CASES = [  # prompt length, gen_length, block_length, steps (LLaDA's: all blocks together)
    (4, 8, 8, 8),  # one block, one token a step
    (0, 12, 4, 6),  # no prompt, 2 steps a block
    (5, 12, 4, 9),  # 3 steps for 4 masks: 2, 1, 1
    (3, 10, 5, 4),  # 2 steps for 5 masks: 3, 2
    (6, 16, 8, 6),  # 3 steps for 8 masks: 3, 3, 2
    (2, 6, 2, 12),  # more steps than masks: 1, 1, 0, 0
    (7, 24, 24, 5),  # one block, 5 steps for 24 masks
]
# LLaDA's network sees positions only through rotary embeddings: without a prompt every position of the all-mask
# sequence gets the same prediction up to rounding, ties that ddlm and torch.topk break differently (documented).
PARAMETERS = [(name, *case) for name in NETWORKS for case in CASES if name != "llada" or case[0]]


@pytest.mark.parametrize("name, start, gen_length, block_length, steps", PARAMETERS)
def test_llada_setting_gives_the_reference_tokens(tokenizer, name, start, gen_length, block_length, steps):
    pipe, network, excluded = pipeline(tokenizer, name, seed=start)
    prompt = prompts(3, start, seed=gen_length)
    expected = llada_generate(network, prompt, steps, gen_length, block_length, banned=excluded)
    rows = pipe.sample_blocks(3, gen_length, block_length, steps=steps * block_length // gen_length, prompt_ids=prompt,
                              progress=False, **llada_options())
    assert torch.equal(torch.stack(rows), expected)
    assert len({tuple(row.tolist()) for row in expected}) > (start > 0)  # different prompts, different rows


@pytest.mark.parametrize("start, gen_length, block_length, steps", [case for case in CASES if case[0]])
def test_bfloat16_network_gives_the_reference_tokens_with_a_float32_softmax(tokenizer, start, gen_length, block_length, steps):
    """A bf16 network: ddlm ranks its logits in float64, i.e. as LLaDA's generate() after ``logits.float()`` (as its
    eval_llada.py does); LLaDA's own softmax in bf16 rounds many confidences into ties (documented)."""
    pipe, network, excluded = pipeline(tokenizer, "llada", seed=start, dtype=torch.bfloat16)
    prompt = prompts(3, start, seed=gen_length)
    expected = llada_generate(lambda ids, sigma: network(ids, sigma).float(), prompt, steps, gen_length, block_length,
                              banned=excluded)
    rows = pipe.sample_blocks(3, gen_length, block_length, steps=steps * block_length // gen_length, prompt_ids=prompt,
                              progress=False, **llada_options())
    assert torch.equal(torch.stack(rows), expected)


def test_without_the_exclusion_the_reference_can_write_its_mask_token(tokenizer):
    """Why the reference excludes ddlm's banned ids for BERT: LLaDA's argmax over the whole vocabulary picks the
    mask token here, which ddlm never draws (the released LLaDA gives it practically no probability)."""
    pipe, network, excluded = pipeline(tokenizer, "bert", seed=6)
    prompt = prompts(3, 6, seed=16)
    plain = llada_generate(network, prompt, 6, 16, 8)
    assert bool((plain == MASK).any())
    rows = torch.stack(pipe.sample_blocks(3, 16, 8, steps=3, prompt_ids=prompt, progress=False, **llada_options()))
    assert torch.equal(rows, llada_generate(network, prompt, 6, 16, 8, banned=excluded))


def test_llada_setting_through_generate_text(tokenizer):
    pipe, network, excluded = pipeline(tokenizer, "bert", seed=3)
    prompt = "w3 w17 w40"
    expected = llada_generate(network, torch.tensor([[3, 17, 40]]), 8, 12, 6, banned=excluded)[0]
    text = pipe.generate(2, prompt=prompt, max_new_tokens=12, block_size=6, steps=4, progress=False, **llada_options())
    assert text == [prompt + pipe.decode(expected)] * 2


def test_linear_schedule_is_not_llada(tokenizer):
    """The "even" schedule matters: the default linear one unmasks 2, 1, 2, 1, 1 of 7 in 5 steps, LLaDA 2, 2, 1, 1, 1."""
    pipe, network, excluded = pipeline(tokenizer, "mixer", seed=3)
    prompt = prompts(4, 3, seed=3)
    expected = llada_generate(network, prompt, 5, 7, 7, banned=excluded)
    options = {**llada_options(), "unmask_schedule": "linear"}
    linear = torch.stack(pipe.sample_blocks(4, 7, 7, steps=5, prompt_ids=prompt, progress=False, **options))
    assert not torch.equal(linear, expected)


def total_variation(a: torch.Tensor, b: torch.Tensor) -> float:
    """The total variation between the empirical laws of the rows of a and b, Long[n, K] each."""
    outcomes = torch.cat([a, b]).unique(dim=0, return_inverse=True)[1]
    counts = torch.stack([torch.bincount(part, minlength=int(outcomes.max()) + 1) for part in outcomes.split(len(a))])
    return 0.5 * float((counts[0] - counts[1]).abs().sum()) / len(a)


@pytest.mark.parametrize("remasking, temperature, block_length, steps, bound", [
    ("random", 0.0, 3, 3, 0.05),  # a uniform order of 3 positions: 2 outcomes here, each about half
    ("random", 0.0, 4, 2, 0.05),  # two uniform pairs: 3 outcomes
    ("low_confidence", 0.7, 3, 3, 0.08),  # ~60 outcomes; two reference runs differ by 0.03, confidence "max_prob" by 0.18
])
def test_random_draws_have_the_reference_law(tokenizer, remasking, temperature, block_length, steps, bound):
    """Random remasking and temperature > 0: the reference's law of outcomes, not its random stream."""
    n = 4000
    pipe, network, excluded = pipeline(tokenizer, "mixer", seed=2)
    prompt = prompts(1, 4, seed=2).expand(n, 4)
    reference = llada_generate(network, prompt, steps, block_length, block_length, remasking, excluded,
                               torch.Generator().manual_seed(0), temperature)
    rows = torch.stack(pipe.sample_blocks(n, block_length, block_length, steps=steps, prompt_ids=prompt[0], seed=1,
                                          progress=False, **llada_options(remasking, temperature)))
    assert len(reference.unique(dim=0)) > 1  # the order matters for this network
    assert total_variation(rows, reference) < bound


@pytest.mark.parametrize("masks, steps", [(7, 5), (2, 4), (8, 3), (6, 6), (0, 3), (13, 1)])
def test_even_schedule_is_get_num_transfer_tokens(masks, steps):
    n0 = torch.tensor([masks])
    counts = [int(_remaining(n0, j, steps, "even") - _remaining(n0, j + 1, steps, "even")) for j in range(steps)]
    assert counts == transfer_counts(torch.ones(1, masks, dtype=torch.bool), steps)[0].tolist()


def test_bad_options(tokenizer):
    with pytest.raises(ValueError, match="remasking must be one of"):
        llada_options("high_confidence")
    pipe = pipeline(tokenizer, "mixer")[0]
    with pytest.raises(ValueError, match="prompt_ids must be one prompt"):
        pipe.sample_blocks(3, 4, 4, steps=2, prompt_ids=prompts(2, 3, 0), progress=False, **llada_options())


# ----------------------------------------------------------------------------- cfg_scale: guidance on the prompt
@pytest.mark.parametrize("cfg_scale", [0.5, 1.0, 2.0])
@pytest.mark.parametrize("name, start, gen_length, block_length, steps", [
    (name, *case) for name in NETWORKS for case in CASES if case[0]])
def test_guidance_on_the_prompt_is_llada_cfg(tokenizer, name, start, gen_length, block_length, steps, cfg_scale):
    """LLaDA's cfg_scale is ddlm's guidance_scale - 1. The reference bans ids after combining (the mixer's -inf mask
    logit would turn into NaN before)."""
    pipe, network, excluded = pipeline(tokenizer, name, seed=start)
    prompt = prompts(3, start, seed=gen_length)
    expected = llada_generate(network, prompt, steps, gen_length, block_length, banned={*excluded, MASK}, cfg_scale=cfg_scale)
    rows = pipe.sample_blocks(3, gen_length, block_length, steps=steps * block_length // gen_length, prompt_ids=prompt,
                              progress=False, guidance_scale=cfg_scale + 1, **llada_options())
    assert torch.equal(torch.stack(rows), expected)
    assert not torch.equal(expected, llada_generate(network, prompt, steps, gen_length, block_length, banned={*excluded, MASK}))


@pytest.mark.parametrize("name", NETWORKS)
def test_guided_scores_normalised_are_llada_cfg_logits(tokenizer, name):
    """Over the real tokens of a masked position, gamma log s_c + (1 - gamma) log s_u normalises to LLaDA's
    softmax(un + (cfg_scale + 1) (cond - un)): the log-normalisers and log(e^sigma_bar - 1) are constant per row."""
    from ddlm.guidance import prompt_guidance

    pipe, network, excluded = pipeline(tokenizer, name, seed=4)
    x = torch.cat([prompts(2, 5, seed=4), torch.full((2, 9), VOCAB)], 1)  # ddlm's mask state is VOCAB
    sigma = torch.tensor([0.3, 2.0], dtype=torch.float64)
    for cfg_scale in (0.5, 1.0, 2.0):
        guided = prompt_guidance(pipe.sampling_score_fn(), torch.arange(14) < 5, VOCAB, cfg_scale + 1)(x, sigma)
        with torch.no_grad():
            logits = guided_logits(network, torch.where(x == VOCAB, MASK, x), 5, cfg_scale)
        logits[..., [*excluded, MASK]] = float("-inf")
        expected = torch.log_softmax(logits[:, 5:].double(), -1)
        got = torch.log_softmax(guided[:, 5:, :VOCAB].double(), -1)
        assert torch.equal(torch.isinf(got), torch.isinf(expected))
        assert torch.allclose(got[~torch.isinf(got)], expected[~torch.isinf(expected)], atol=2e-5)

"""Sample-quality metrics against hand computations, and the AR sampler against its exact distribution."""

import math

import pytest
import torch

from ddlm import DDLMConfig
from ddlm.sample_quality import ar_sample, distinct_n, generative_perplexity, unigram_entropy
from helpers import randomised


def test_unigram_entropy_is_the_mean_entropy_of_each_samples_token_frequencies():
    samples = torch.tensor([[0, 0, 1, 1], [3, 3, 3, 3], [0, 1, 2, 3]])
    assert unigram_entropy(samples) == pytest.approx((math.log(2) + 0 + math.log(4)) / 3)


def test_distinct_n_counts_unique_ngrams_over_all_ngrams():
    samples = torch.tensor([[1, 2, 1, 2], [1, 2, 3, 4]])
    assert distinct_n(samples, 1) == pytest.approx(4 / 8)  # tokens 1, 2, 3, 4
    assert distinct_n(samples, 2) == pytest.approx(4 / 6)  # (1,2) (2,1) (2,3) (3,4) of 6 bigrams
    assert distinct_n(samples, 4) == 1.0
    with pytest.raises(ValueError, match="1 <= n <= L"):
        distinct_n(samples, 5)


def test_generative_perplexity_is_the_exp_cross_entropy_under_the_reference():
    model = randomised(DDLMConfig.from_preset("tiny", vocab_size=20, max_position_embeddings=16, objective="ar"))
    samples, eos = torch.randint(0, 20, (5, 8), generator=torch.Generator().manual_seed(1)), 19
    with torch.no_grad():
        log_probs = model(torch.cat([torch.full((5, 1), eos), samples[:, :-1]], 1)).double()
    direct = math.exp(float(-log_probs.gather(-1, samples[..., None]).mean()))
    assert generative_perplexity(model, samples, eos) == pytest.approx(direct, rel=1e-6)
    assert generative_perplexity(model, samples, eos, batch_size=2) == pytest.approx(direct, rel=1e-6)


def test_ar_sample_draws_from_the_models_chain():
    """A bigram table as the model: pairs of samples follow table[context, a] * table[a, b]."""
    table = torch.softmax(torch.randn(4, 4, generator=torch.Generator().manual_seed(2)) * 1.5, -1)

    def bigram(x):
        return table.log()[x]

    x = ar_sample(bigram, 40_000, 2, context=3, generator=torch.Generator().manual_seed(3))
    assert x.shape == (40_000, 2)
    exact = table[3][:, None] * table
    counts = torch.zeros(4, 4).index_put_((x[:, 0], x[:, 1]), torch.ones(40_000), accumulate=True) / 40_000
    assert 0.5 * float((counts - exact).abs().sum()) < 0.015
    cold = ar_sample(bigram, 2000, 2, context=3, temperature=0.05, generator=torch.Generator().manual_seed(4))
    assert bool((cold[:, 0] == table[3].argmax()).all())

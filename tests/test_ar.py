"""The autoregressive baseline (objective="ar"): causal next-token log-probabilities on the diffusion network."""

import json

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModel

from ddlm import DDLMConfig, DDLMForDiffusion
from ddlm.losses import ar_loss, ar_nll
from helpers import randomised

VOCAB = 37


def tiny(objective="ar", **overrides):
    return DDLMConfig.from_preset("tiny", vocab_size=VOCAB, objective=objective, dropout=0.0, **overrides)


def tokens(batch=3, length=11, seed=1):
    return torch.randint(VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def test_ar_model_has_no_mask_state_and_no_forward_process():
    config = tiny()
    assert config.num_states == VOCAB and config.scale_by_sigma is False and config.is_autoregressive
    model = DDLMForDiffusion(config)
    assert model.graph is None and model.noise is None
    assert model.embed_tokens.num_embeddings == model.lm_head.out_features == VOCAB


def test_outputs_are_normalised_float32_next_token_log_probs():
    model = randomised(tiny())
    x = tokens()
    out = model(x)
    assert out.shape == (3, 11, VOCAB) and out.dtype == torch.float32
    assert torch.all(out <= 0) and torch.isfinite(out).all()
    assert torch.allclose(out.double().exp().sum(-1), torch.ones(3, 11, dtype=torch.float64), atol=1e-5)
    # a fresh model (zero head) predicts the uniform distribution
    fresh = DDLMForDiffusion(tiny()).eval()
    assert torch.allclose(fresh(x), torch.full((3, 11, VOCAB), -torch.log(torch.tensor(float(VOCAB)))), atol=1e-6)


@pytest.mark.parametrize("j", [0, 4, 10])
def test_attention_is_causal(j):
    model = randomised(tiny())
    x = tokens(batch=2)
    changed = x.clone()
    changed[:, j] = (x[:, j] + 1) % VOCAB
    before, after = model(x), model(changed)
    assert torch.allclose(before[:, :j], after[:, :j], atol=1e-6, rtol=0)  # the past never sees the future
    for i in range(j, x.shape[1]):  # position j itself and every later position do see it
        assert not torch.allclose(before[:, i], after[:, i], atol=1e-4)


def test_diffusion_models_stay_bidirectional():
    model = randomised(tiny("diffusion"))
    x, sigma = tokens(batch=1), torch.tensor([0.5])
    changed = x.clone()
    changed[0, -1] = (x[0, -1] + 1) % VOCAB
    assert not torch.allclose(model(changed, sigma)[0, 0], model(x, sigma)[0, 0])


def test_ar_loss_is_the_cross_entropy_of_the_head_logits_and_matches_ar_nll():
    model = randomised(tiny())
    x = tokens(batch=4, length=9)
    captured = {}
    handle = model.lm_head.register_forward_hook(lambda module, args, out: captured.__setitem__("logits", out))
    try:
        loss = ar_loss(model, x)
    finally:
        handle.remove()
    logits = captured["logits"].float()
    direct = F.cross_entropy(logits[:, :-1].reshape(-1, VOCAB), x[:, 1:].reshape(-1))
    assert loss.dim() == 0 and loss.requires_grad
    assert torch.allclose(loss, direct, atol=1e-6)
    nll = ar_nll(model, x)
    assert nll.shape == (4,) and nll.dtype == torch.float64 and not nll.requires_grad
    assert torch.allclose(nll.sum() / (4 * 8), loss.double(), atol=1e-6)
    # ar_nll is the chain rule -sum_i log p(x[i+1] | x[:i+1]), each factor from the prefix alone
    with torch.no_grad():
        by_hand = torch.tensor([-sum(float(model(x[b : b + 1, : i + 1])[0, -1, x[b, i + 1]]) for i in range(8)) for b in range(4)],
                               dtype=torch.float64)
    assert torch.allclose(nll, by_hand, atol=1e-4)


def test_ar_nll_with_a_context_token_scores_every_token_of_the_block():
    model = randomised(tiny())
    x, context = tokens(batch=3, length=7), 5
    nll = ar_nll(model, x, context=context)
    with torch.no_grad():  # -sum_i log p(x[i] | context, x[:i]) over all L tokens, by the cross-entropy of the logits
        inputs = torch.cat([torch.full((3, 1), context), x[:, :-1]], 1)
        by_hand = F.cross_entropy(model(inputs).double().reshape(-1, VOCAB), x.reshape(-1), reduction="none").reshape(3, 7).sum(1)
    assert nll.shape == (3,) and torch.allclose(nll, by_hand, atol=1e-5)
    # the same as scoring [context, x] with the context given
    assert torch.allclose(nll, ar_nll(model, torch.cat([torch.full((3, 1), context), x], 1)), atol=1e-5)
    with torch.no_grad():
        first = -model(torch.tensor([[context]]))[0, 0, x[:, 0]].double()
    assert torch.allclose(ar_nll(model, x[:, :1], context=context), first, atol=1e-5)


@pytest.fixture
def one_thread():
    """Tiny models train fastest on one thread; two OpenMP threads on a shared 2-core machine can be 10x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_a_tiny_ar_model_learns_a_deterministic_pattern(one_thread):
    # about 0.6 s on one core
    torch.manual_seed(0)
    model = DDLMForDiffusion(tiny()).train()
    pattern = torch.tensor([3, 1, 4, 15, 9, 26, 5, 35])
    offsets = torch.arange(8)
    corpus = torch.stack([pattern.roll(-int(k)).repeat(2) for k in offsets])  # [8, 16]: every rotation
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    first = float(ar_nll(model, corpus).sum() / corpus[:, 1:].numel())
    for _ in range(100):
        loss = ar_loss(model, corpus)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    final = float(ar_nll(model, corpus).sum() / corpus[:, 1:].numel())
    assert first == pytest.approx(torch.log(torch.tensor(float(VOCAB))).item(), abs=1e-4)
    assert final < 0.05, f"AR loss after 100 steps: {final:.4f} nats/token"


def test_save_and_auto_load_round_trip(tmp_path):
    model = randomised(tiny())
    x = tokens()
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["objective"] == "ar"
    loaded = AutoModel.from_pretrained(tmp_path)
    assert type(loaded) is DDLMForDiffusion and loaded.config.objective == "ar" and loaded.graph is None
    assert loaded.config.num_states == VOCAB and loaded.config.scale_by_sigma is False
    assert torch.equal(loaded(x), model(x))
    assert torch.equal(ar_nll(loaded, x), ar_nll(model, x))


def test_config_validation():
    with pytest.raises(ValueError, match="objective"):
        DDLMConfig(objective="causal")
    with pytest.raises(ValueError, match="scale_by_sigma"):
        DDLMConfig(vocab_size=10, objective="ar", scale_by_sigma=True)
    assert DDLMConfig(vocab_size=10, objective="ar", scale_by_sigma=False).scale_by_sigma is False
    config = DDLMConfig(vocab_size=10, objective="ar")
    with pytest.raises(ValueError, match="an autoregressive model has no forward process"):
        config.graph()
    with pytest.raises(ValueError, match="an autoregressive model has no forward process"):
        config.noise()
    assert DDLMConfig(vocab_size=10).objective == "diffusion" and DDLMConfig(vocab_size=10).num_states == 11


def test_sigma_bar_is_required_by_diffusion_models_and_refused_by_ar_models():
    x = tokens()
    with pytest.raises(ValueError, match="needs sigma_bar"):
        randomised(tiny("diffusion"))(x)
    with pytest.raises(ValueError, match="takes no sigma_bar"):
        randomised(tiny())(x, torch.ones(3))


def test_bad_inputs_are_refused():
    model = randomised(tiny())
    with pytest.raises(ValueError, match="input_ids"):
        model(torch.full((2, 4), VOCAB))  # VOCAB would be the mask id of an absorbing model: not a token here
    with pytest.raises(ValueError, match=r"Long\[B, L\]"):
        ar_loss(model, torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="L >= 2"):
        ar_loss(model, torch.zeros(2, 1, dtype=torch.long))
    with pytest.raises(ValueError, match="ids in"):
        ar_nll(model, torch.full((2, 4), VOCAB))
    with pytest.raises(ValueError, match="ids in"):
        ar_loss(model, torch.full((2, 4), -1))
    with pytest.raises(TypeError, match="integer"):
        ar_loss(model, torch.zeros(2, 4))
    with pytest.raises(ValueError, match="autoregressive model"):
        ar_loss(randomised(tiny("diffusion")), tokens())


@pytest.mark.parametrize("preset", ["tiny", "small"])
def test_ar_and_diffusion_networks_have_the_same_parameters(preset):
    def count(**kwargs):
        with torch.device("meta"):
            model = DDLMForDiffusion(DDLMConfig.from_preset(preset, vocab_size=50257, **kwargs))
        return {name: p.shape for name, p in model.named_parameters()}

    ar, uniform, absorbing = count(objective="ar"), count(process="uniform"), count(process="absorbing")
    assert ar == uniform  # same modules (sigma conditioning included), same shapes
    hidden = DDLMConfig.from_preset(preset).hidden_size
    # an absorbing model has one more state (the mask): an embedding row, a head row and a head bias
    assert sum(s.numel() for s in absorbing.values()) - sum(s.numel() for s in ar.values()) == 2 * hidden + 1


def test_gradient_checkpointing_gives_the_same_gradients():
    model = randomised(tiny()).train()
    x = tokens()

    def grads():
        model.zero_grad()
        ar_loss(model, x).backward()
        return [p.grad.clone() for p in model.parameters()]

    plain = grads()
    model.activation_checkpointing_enable()
    for a, b in zip(plain, grads()):
        assert torch.allclose(a, b, atol=1e-6)

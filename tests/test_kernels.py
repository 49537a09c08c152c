"""Fused score-entropy backends against a float64 reference (Triton under TRITON_INTERPRET=1 on CPU)."""

import pytest
import torch

import ddlm
from ddlm import dse_backends
from ddlm.losses import dse

triton = pytest.importorskip("triton")
score_entropy_kernels = pytest.importorskip("ddlm.kernels.score_entropy")


def problem(graph, rows, dtype, seed=0, with_shift=False):
    """Random positions at moderate noise with log-scores near the conditional ratios."""
    gen = torch.Generator().manual_seed(seed)
    x0 = torch.randint(graph.num_tokens, (rows,), generator=gen)
    sigma = torch.rand(rows, generator=gen, dtype=torch.float64) * 2 + 1e-3
    x_t = graph.sample_transition(x0, sigma, generator=gen)
    ratio = graph.ratio(x_t, x0, sigma).clamp_min(1e-3)
    log_s = (torch.log(ratio) + 0.5 * torch.randn(ratio.shape, generator=gen, dtype=torch.float64)).to(dtype)
    shift = 0.3 * torch.randn(rows, generator=gen, dtype=torch.float64) if with_shift else None
    return log_s, x_t, x0, sigma, shift


def loss_and_grad(log_s, x_t, x0, sigma, graph, shift, impl):
    log_s = log_s.detach().requires_grad_(True)
    loss = dse(log_s, x_t, x0, sigma, graph, shift=shift, impl=impl)
    weights = torch.linspace(0.5, 1.5, loss.numel(), dtype=loss.dtype)  # a non-uniform upstream gradient
    (loss * weights).sum().backward()
    return loss.detach().double(), log_s.grad.double()


def rms_error(a, b):
    """Root-mean-square error relative to the reference's RMS."""
    a, b = a.detach(), b.detach()
    return float(((a - b) ** 2).mean().sqrt() / (b**2).mean().sqrt().clamp_min(1e-30))


GRAPHS = [ddlm.Absorbing(300), ddlm.Uniform(301), ddlm.Absorbing(37)]


@pytest.mark.parametrize("graph", GRAPHS, ids=repr)
@pytest.mark.parametrize("with_shift", [False, True], ids=["plain", "shift"])
def test_torch_chunks_equal_eager_in_float64(graph, with_shift, monkeypatch):
    monkeypatch.setattr(dse_backends, "CHUNK_ELEMENTS", 5 * graph.num_states)  # several chunks, a ragged last one
    log_s, x_t, x0, sigma, shift = problem(graph, 23, torch.float64, with_shift=with_shift)
    loss, grad = loss_and_grad(log_s, x_t, x0, sigma, graph, shift, "torch")
    ref_loss, ref_grad = loss_and_grad(log_s, x_t, x0, sigma, graph, shift, "eager")
    assert torch.allclose(loss, ref_loss, rtol=1e-12, atol=1e-12)
    assert torch.allclose(grad, ref_grad, rtol=1e-12, atol=1e-12)


@pytest.mark.triton
@pytest.mark.parametrize("graph", GRAPHS, ids=repr)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_triton_matches_float64_reference_and_is_no_worse_than_eager(graph, dtype, monkeypatch):
    monkeypatch.setattr(score_entropy_kernels, "BLOCK", 64)  # several blocks per row, a ragged last one
    log_s, x_t, x0, sigma, shift = problem(graph, 19, dtype, seed=1, with_shift=True)
    ref_loss, ref_grad = loss_and_grad(log_s.double(), x_t, x0, sigma, graph, shift, "eager")
    loss, grad = loss_and_grad(log_s, x_t, x0, sigma, graph, shift, "triton")
    eager_loss, eager_grad = loss_and_grad(log_s, x_t, x0, sigma, graph, shift, "eager")

    loss_tol = 1e-6
    grad_tol = {torch.float32: 1e-6, torch.float16: 1e-3, torch.bfloat16: 8e-3}[dtype]  # one rounding to dtype
    assert rms_error(loss, ref_loss) < max(loss_tol, 1.5 * rms_error(eager_loss, ref_loss))
    assert rms_error(grad, ref_grad) < max(grad_tol, 1.5 * rms_error(eager_grad, ref_grad))
    assert grad.dtype == torch.float64 and bool(torch.isfinite(grad).all())


@pytest.mark.triton
def test_triton_skips_rows_without_loss():
    graph = ddlm.Absorbing(50)
    x0 = torch.arange(10) % 50
    x_t = x0.clone()
    x_t[::2] = graph.mask_id
    log_s = torch.randn(10, 51)
    loss, grad = loss_and_grad(log_s, x_t, x0, 0.5, graph, None, "triton")
    assert bool((loss[1::2] == 0).all()) and bool((grad[1::2] == 0).all())
    assert bool((loss[::2] > 0).all())


def test_impl_selection_and_errors(monkeypatch):
    graph = ddlm.Uniform(5)
    log_s, x_t, x0, sigma, _ = problem(graph, 4, torch.float32)
    with pytest.raises(ValueError, match="impl must be one of"):
        dse(log_s, x_t, x0, sigma, graph, impl="cuda")
    monkeypatch.setenv("DDLM_DSE_IMPL", "eager")
    assert dse_backends.resolve_impl("auto", torch.device("cpu")) == "eager"
    monkeypatch.setenv("DDLM_DSE_IMPL", "fast")
    with pytest.raises(ValueError, match="DDLM_DSE_IMPL"):
        dse(log_s, x_t, x0, sigma, graph)
    monkeypatch.delenv("DDLM_DSE_IMPL")
    assert dse_backends.resolve_impl("auto", torch.device("cpu")) == "torch"
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        dse(log_s, x_t, x0, sigma, graph, impl="triton")
    with pytest.raises(ValueError, match="shift must have the shape"):
        dse(log_s, x_t, x0, sigma, graph, shift=torch.zeros(3))


@pytest.mark.parametrize("impl", ["torch", pytest.param("triton", marks=pytest.mark.triton)])
def test_inplace_gradient_overwrites_the_log_scores_and_matches(impl):
    graph = ddlm.Uniform(41)
    log_s, x_t, x0, sigma, shift = problem(graph, 13, torch.float32, seed=2, with_shift=True)
    ref_loss, ref_grad = loss_and_grad(log_s, x_t, x0, sigma, graph, shift, impl)
    leaf = log_s.clone().requires_grad_(True)
    storage = leaf.detach()
    loss = dse(leaf, x_t, x0, sigma, graph, shift=shift, impl=impl, inplace=True)
    (loss * torch.linspace(0.5, 1.5, loss.numel())).sum().backward()
    assert torch.allclose(loss.detach().double(), ref_loss, rtol=1e-6)
    assert torch.allclose(leaf.grad.double(), ref_grad, rtol=1e-5, atol=1e-7)
    assert torch.equal(storage, leaf.grad)  # the gradient lives where the log-scores were


def test_fused_backward_runs_once():
    graph = ddlm.Absorbing(7)
    log_s, x_t, x0, sigma, _ = problem(graph, 6, torch.float32)
    leaf = log_s.clone().requires_grad_(True)
    loss = dse(leaf, x_t, x0, sigma, graph, impl="torch").sum()
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="backward can run once"):
        loss.backward()


@pytest.mark.parametrize("graph", [ddlm.Absorbing(53), ddlm.Uniform(29)], ids=repr)
@pytest.mark.parametrize("impl", ["torch", pytest.param("triton", marks=pytest.mark.triton)])
@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "no-bias"])
def test_fused_linear_equals_eager_head_and_loss(graph, impl, with_bias):
    gen = torch.Generator().manual_seed(4)
    _, x_t, x0, sigma, shift = problem(graph, 23, torch.float64, seed=4, with_shift=True)
    hidden = torch.randn(23, 16, generator=gen, dtype=torch.float64, requires_grad=True)
    weight = (0.3 * torch.randn(graph.num_states, 16, generator=gen, dtype=torch.float64)).requires_grad_(True)
    bias = (0.1 * torch.randn(graph.num_states, generator=gen, dtype=torch.float64)).requires_grad_(True) if with_bias else None
    upstream = torch.linspace(0.5, 1.5, 23, dtype=torch.float64)
    params = [hidden, weight] + ([bias] if with_bias else [])

    eager = dse(torch.nn.functional.linear(hidden, weight, bias), x_t, x0, sigma, graph, shift=shift, impl="eager")
    eager_grads = torch.autograd.grad((eager * upstream).sum(), params)
    fused = ddlm.losses.linear_dse(hidden, weight, bias, x_t, x0, sigma, graph, shift=shift, impl=impl, chunk_rows=5)
    fused_grads = torch.autograd.grad((fused * upstream).sum(), params)
    tol = 1e-12 if impl == "torch" else 1e-6  # the Triton kernel computes in float32
    assert rms_error(fused, eager) < tol
    for got, want in zip(fused_grads, eager_grads):
        assert rms_error(got, want) < tol


def test_fused_linear_bad_shapes():
    graph = ddlm.Uniform(5)
    x = torch.zeros(3, dtype=torch.long)
    with pytest.raises(ValueError, match=r"weight must have shape \[5, 4\]"):
        ddlm.losses.linear_dse(torch.zeros(3, 4), torch.zeros(6, 4), None, x, x, 0.5, graph)
    with pytest.raises(ValueError, match="does not match tokens"):
        ddlm.losses.linear_dse(torch.zeros(2, 4), torch.zeros(5, 4), None, x, x, 0.5, graph)


class TinyScoreNet(torch.nn.Module):
    """A per-token ratio network: token embedding plus sigma features, an MLP, log-scores [B, L, S]."""

    def __init__(self, num_states, width=32):
        super().__init__()
        self.embed = torch.nn.Embedding(num_states, width)
        self.sigma = torch.nn.Linear(1, width)
        self.mlp = torch.nn.Sequential(torch.nn.GELU(), torch.nn.Linear(width, width), torch.nn.GELU(), torch.nn.Linear(width, num_states))

    def forward(self, x_t, sigma_bar):
        h = self.embed(x_t) + self.sigma(torch.log(sigma_bar.float())[:, None, None])
        return self.mlp(h)


@pytest.mark.parametrize("impl", ["torch", pytest.param("triton", marks=pytest.mark.triton)])
def test_training_with_the_fused_loss_follows_the_eager_loss_curve(impl):
    """30 AdamW steps from the same initialisation and the same draws: losses agree to 1e-4 relative."""
    graph, noise = ddlm.Absorbing(20), ddlm.LogLinear()
    data = torch.randint(20, (30, 16, 8), generator=torch.Generator().manual_seed(0))
    curves = {}
    for name in ["eager", impl]:
        torch.manual_seed(0)
        model = TinyScoreNet(graph.num_states)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
        gen = torch.Generator().manual_seed(1)
        curve = []
        for x0 in data:
            loss = ddlm.losses.dwdse_loss(model, graph, noise, x0, generator=gen, impl=name).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            curve.append(loss.item())
        curves[name] = torch.tensor(curve)
    assert curves["eager"][-5:].mean() < curves["eager"][:5].mean()  # it trains
    assert torch.allclose(curves[impl], curves["eager"], rtol=1e-4)



@pytest.mark.triton
@pytest.mark.parametrize("graph", [ddlm.Uniform(5), ddlm.Uniform(37), ddlm.Uniform(1000), ddlm.Absorbing(37), ddlm.Absorbing(1000)], ids=repr)
@pytest.mark.parametrize("with_shift", [False, True], ids=["plain", "shift"])
def test_triton_is_exact_and_nonnegative_in_float32_near_the_optimum(graph, with_shift, monkeypatch):
    from test_losses import check_near_optimum, near_optimum

    monkeypatch.setattr(score_entropy_kernels, "BLOCK", 256)  # several blocks per row where V = 1000
    log_s, x_t, x0, sigma, shift = near_optimum(graph, 12, with_shift, rows_per_case=4)
    leaf = log_s.clone().requires_grad_(True)
    loss = dse(leaf, x_t, x0, sigma, graph, shift=shift, impl="triton")
    loss.sum().backward()
    check_near_optimum(loss, leaf.grad, log_s, x_t, x0, sigma, graph, shift)


@pytest.mark.triton
@pytest.mark.parametrize("graph", [ddlm.Uniform(37), ddlm.Absorbing(37)], ids=repr)
def test_triton_fused_head_is_exact_in_float32_near_the_optimum(graph):
    from test_losses import check_near_optimum, near_optimum

    log_s, x_t, x0, sigma, shift = near_optimum(graph, 13, True, rows_per_case=4)
    hidden = log_s.clone().requires_grad_(True)
    loss = ddlm.losses.linear_dse(hidden, torch.eye(graph.num_states), None, x_t, x0, sigma, graph, shift=shift, impl="triton", chunk_rows=30)
    loss.sum().backward()
    check_near_optimum(loss, hidden.grad, log_s, x_t, x0, sigma, graph, shift)


@pytest.mark.triton
def test_triton_terms_at_overflow_edges():
    from test_losses import independent_dse

    graph = ddlm.Uniform(7)
    x0, x_t = torch.tensor([0, 1, 2, 3]), torch.tensor([0, 2, 2, 5])
    sigma = torch.tensor([1e-30, 1e-4, 3.0, 1e-30], dtype=torch.float64)  # a ~ 1e-31: a e^u finite where e^u is not
    log_s = torch.tensor([[0.0, 20, -20, 5, 0, 1, 30]] * 4)
    ref, ref_grad, _, _ = independent_dse(log_s, x_t, x0, sigma, graph)
    loss, grad = loss_and_grad(log_s, x_t, x0, sigma, graph, None, "triton")
    assert torch.allclose(loss, ref, rtol=1e-5)
    upstream = torch.linspace(0.5, 1.5, 4, dtype=torch.float64)[:, None]
    assert torch.allclose(grad, upstream * ref_grad, rtol=1e-5)


# --------------------------------------------------------------------------- fused sampling steps
def exact_step_distribution(log_s, x, w, kappa, mode, exclude):
    """The categorical distribution of one reverse step for one row, from the formulas of DESIGN §3."""
    e = log_s.double().exp()
    cand = torch.ones_like(e, dtype=torch.bool)
    cand[x] = False
    if exclude >= 0:
        cand[exclude] = False
    z = e[cand].sum()
    p = torch.zeros_like(e)
    if mode == "euler":
        p[cand] = kappa * w * e[cand]
        p[x] = max(0.0, 1 - kappa * w * z)
    elif mode == "tau_leaping":
        p[cand] = -torch.expm1(-kappa * w * z) * e[cand] / z
        p[x] = torch.exp(-kappa * w * z)
    else:
        p[cand] = e[cand]
    return p / p.sum()


@pytest.mark.triton
@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # log(0) = -inf in the interpreter's numpy
@pytest.mark.parametrize(
    "mode,kappa,w,x,exclude",
    [("euler", 0.05, 1.0, 10, -1), ("euler", 0.3, 1.0, 10, -1), ("tau_leaping", 0.2, 1.0, 10, -1),
     ("tau_leaping", 0.5, 0.1, 3, -1), ("denoise", 1.0, 1.0, 10, 10), ("euler", 0.3, 0.0, 4, -1)],
)
def test_fused_step_draws_from_the_exact_step_distribution(mode, kappa, w, x, exclude):
    from ddlm.kernels.sampling import triton_reverse_step

    num, vocab = 6000, 11
    log_s = torch.randn(vocab, generator=torch.Generator().manual_seed(7)) - 1.5
    rows = log_s.expand(num, vocab).contiguous()
    x_rows = torch.full((num,), x)
    full = lambda value: torch.full((num,), value, dtype=torch.float64)
    out = triton_reverse_step(rows, x_rows, full(w), full(kappa), mode, seed=99, exclude=exclude)
    p = exact_step_distribution(log_s, x, w, kappa, mode, exclude)
    counts = torch.bincount(out, minlength=vocab).double()
    assert counts[p == 0].sum() == 0
    expected = p[p > 0] * num
    chi2 = float(((counts[p > 0] - expected) ** 2 / expected).sum())
    dof = int((p > 0).sum()) - 1
    assert chi2 <= dof + 5 * (2 * max(dof, 1)) ** 0.5  # about p > 0.001
    again = triton_reverse_step(rows, x_rows, full(w), full(kappa), mode, seed=99, exclude=exclude)
    assert torch.equal(out, again)  # same seed, same draws


@pytest.mark.triton
@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("setup", ["absorbing-analytic", "uniform-euler"])
def test_sampling_with_fused_steps_reproduces_a_known_distribution(setup):
    graph, noise, predictor = {
        "absorbing-analytic": (ddlm.Absorbing(3), ddlm.LogLinear(), "analytic"),
        "uniform-euler": (ddlm.Uniform(3), ddlm.Geometric(), "euler"),
    }[setup]
    gen = torch.Generator().manual_seed(8)
    oracle = ddlm.SequenceOracle.random(graph, 3, gen)
    num = 2000
    exact_tv = oracle.total_variation(oracle.sample(num, gen))
    x = ddlm.sampling.sample(oracle.score_fn, graph, noise, (num, 3), 32, predictor, generator=gen, progress=False, impl="triton")
    assert oracle.total_variation(x) <= exact_tv + 0.025


def test_sampling_impl_errors(monkeypatch):
    graph = ddlm.Absorbing(3)
    oracle = ddlm.SequenceOracle.random(graph, 2, torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="impl must be one of"):
        ddlm.sampling.sample(oracle.score_fn, graph, ddlm.LogLinear(), (2, 2), 2, impl="cuda")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        ddlm.sampling.sample(oracle.score_fn, graph, ddlm.LogLinear(), (2, 2), 2, impl="triton")


# --------------------------------------------------------------------------- GPU lowering
COMPILE_FOR_HOPPER = """
import importlib, sys
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

se = {"s_ptr": "*S", "s_stride": "i64", "g_ptr": "*S", "g_stride": "i64", "x_ptr": "*i64", "x0_ptr": "*i64",
      "hi_ptr": "*fp32", "lo_ptr": "*fp32", "a_ptr": "*fp32", "log_a_ptr": "*fp32", "w_ptr": "*fp32", "sum_ptr": "*fp32",
      "V": "i32", "WRITE_GRAD": "constexpr", "BLOCK": "constexpr", "SMALL_U": "constexpr", "BIG_U": "constexpr"}
step = {"s_ptr": "*S", "s_stride": "i64", "x_ptr": "*i64", "w_ptr": "*fp64", "kappa_ptr": "*fp64", "out_ptr": "*i64",
        "N": "i32", "V": "i32", "exclude": "i32", "seed": "i64", "MODE": "constexpr", "BLOCK_ROWS": "constexpr",
        "BLOCK_V": "constexpr"}
cases = [("score_entropy", "_dse_rows_kernel", se, {"WRITE_GRAD": g, "BLOCK": 4096, "SMALL_U": 1.0, "BIG_U": 80.0}) for g in (True, False)]
cases += [("sampling", "_reverse_step_kernel", step, {"MODE": m, "BLOCK_ROWS": r, "BLOCK_V": v})
          for m, r, v in [(0, 1, 4096), (1, 64, 64), (2, 1, 4096)]]
for module, name, signature, constexprs in cases:
    for scores in ("bf16", "fp16", "fp32"):
        fn = getattr(importlib.import_module("ddlm.kernels." + module), name)
        sig = {k: v.replace("S", scores) for k, v in signature.items()}
        compiled = triton.compile(ASTSource(fn=fn, signature=sig, constexprs=constexprs), target=GPUTarget("cuda", 90, 32))
        assert compiled.asm["cubin"], (name, scores, constexprs)
print("compiled", len(cases) * 3)
"""


@pytest.mark.triton
def test_kernels_compile_for_a_hopper_gpu():
    """Lower every kernel variant to an sm_90 cubin (Triton's bundled ptxas): GPU-only type errors show up without a GPU."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # the interpreter replaces jit functions
    result = subprocess.run([sys.executable, "-c", COMPILE_FOR_HOPPER], capture_output=True, text=True, env=env, timeout=600)
    if result.returncode and "ptxas" in result.stderr.lower() and "not found" in result.stderr.lower():
        pytest.skip("Triton's ptxas is not available on this platform")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "compiled 15" in result.stdout

"""Train a small score network on a 2-D Gaussian mixture with denoising score matching, then sample
it with three samplers and check it against the mixture's exact oracle.

    python examples/continuous_2d.py                      # about 20 s on one CPU core
    python examples/continuous_2d.py --train-steps 4000 --out mixture.png

Prints, per sampler, the fraction of samples in each mixture component (true weights in the first
row) and the PF-ODE log-likelihood of held-out data against the exact log-density. Saves a scatter
figure if matplotlib is installed (``pip install matplotlib``); the library itself does not need it.
"""

from __future__ import annotations

import argparse
import math
import time

import torch
from torch import nn

import ddlm.continuous as dc


def make_mixture() -> dc.GaussianMixture:
    """Three anisotropic components with unequal weights."""
    return dc.GaussianMixture(
        weights=[0.2, 0.3, 0.5],
        means=[[-2.0, 1.5], [2.0, 1.5], [0.0, -1.5]],
        covariances=[
            [[0.30, 0.15], [0.15, 0.20]],
            [[0.20, -0.12], [-0.12, 0.25]],
            [[0.60, 0.00], [0.00, 0.08]],
        ],
    )


class EpsNet(nn.Module):
    """Predicts the added noise eps from (x_t [B, 2], t [B]) with a Fourier embedding of t."""

    def __init__(self, dim: int = 2, hidden: int = 128, frequencies: int = 16):
        super().__init__()
        self.register_buffer("freqs", torch.exp(torch.linspace(0.0, math.log(200.0), frequencies)))
        self.net = nn.Sequential(
            nn.Linear(dim + 2 * frequencies, hidden), nn.SiLU(),
            nn.Linear(hidden, hidden), nn.SiLU(),
            nn.Linear(hidden, hidden), nn.SiLU(),
            nn.Linear(hidden, dim),
        )

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        angles = t[:, None] * self.freqs
        return self.net(torch.cat([x, torch.sin(angles), torch.cos(angles)], dim=1))


def component_fractions(mixture: dc.GaussianMixture, x: torch.Tensor) -> list[float]:
    """Fraction of samples whose most likely component is k, for each k."""
    labels = mixture.responsibilities(x.double()).argmax(1)
    return torch.bincount(labels, minlength=mixture.num_components).div(len(x)).tolist()


def save_figure(path: str, data: torch.Tensor, samples: dict[str, torch.Tensor]) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (pip install matplotlib): no figure saved")
        return
    panels = {"data": data, **samples}
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.2), sharex=True, sharey=True)
    for ax, (name, x) in zip(axes, panels.items()):
        ax.scatter(x[:, 0], x[:, 1], s=2, alpha=0.4)
        ax.set_title(name)
        ax.set_xlim(-4, 4)
        ax.set_ylim(-3.5, 3.5)
        ax.set_aspect("equal")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"saved {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-steps", type=int, default=3000)
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="continuous_2d.png")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads (a 2-D toy gains nothing from more)")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    mixture, sde = make_mixture(), dc.VPSDE()
    model = EpsNet()
    score_fn = dc.as_score_fn(model, sde, "eps")  # the samplers and likelihood want a score

    # Denoising score matching with lambda = sigma^2: 1/2 ||sigma score + eps||^2 = 1/2 ||eps_hat - eps||^2.
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, args.train_steps)
    start = time.perf_counter()
    for step in range(1, args.train_steps + 1):
        x0 = mixture.sample(args.batch, generator=gen, dtype=torch.float32)
        loss = dc.dsm_loss(score_fn, sde, x0, weighting="sigma2", t_min=1e-3, generator=gen).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % 500 == 0 or step == args.train_steps:
            print(f"step {step:5d}  DSM loss {loss.item():.4f}  ({time.perf_counter() - start:.1f} s)")

    model.eval()
    shape = (args.samples, 2)
    samplers = {
        "reverse SDE (500 steps)": lambda: dc.sample_sde(score_fn, sde, shape, steps=500, generator=gen),
        "PF-ODE (Heun, 50 steps)": lambda: dc.sample_ode(score_fn, sde, shape, method="heun", steps=50,
                                                         generator=gen),
        "DDPM (200 steps)": lambda: dc.sample_ddpm(score_fn, sde, shape, steps=200, generator=gen),
    }
    print(f"\n{'':26s} component fractions      time")
    print(f"{'true weights':26s} {mixture.weights.tolist()}")
    samples = {}
    with torch.no_grad():
        for name, sampler in samplers.items():
            start = time.perf_counter()
            samples[name] = sampler()
            fractions = ", ".join(f"{f:.3f}" for f in component_fractions(mixture, samples[name]))
            print(f"{name:26s} [{fractions}]  {time.perf_counter() - start:.1f} s")

    held_out = mixture.sample(256, generator=gen, dtype=torch.float32)
    result = dc.log_likelihood(score_fn, sde, held_out, t_min=1e-3, rtol=1e-4, atol=1e-4)
    exact = mixture.log_prob(held_out.double()).mean().item()
    print(f"\nPF-ODE log-likelihood {result.log_prob.mean().item():.3f} nats "
          f"(exact {exact:.3f}; {result.nfe} drift evaluations)")
    save_figure(args.out, mixture.sample(args.samples, generator=gen), samples)


if __name__ == "__main__":
    main()

"""GH (Zhou et al., NeurIPS 2023): SimCLR plus Geometric Harmonization.

Embeddings are scored against K fixed targets forming a simplex equiangular tight frame (ETF);
Sinkhorn-Knopp turns a batch's scores into surrogate labels whose target marginal is an estimated
prior pi over the K targets, and a swapped cross-entropy pulls each view toward the other view's
surrogate label. The prior is the histogram of each training sample's argmax target under an
exponential moving average of its scores (per-sample state), re-estimated periodically. GH is off
during a warm-up (plain SimCLR) and its weight then ramps up linearly to `w_gh`.
Reference: MediaBrain-SJTU/Geometric-Harmonization train_cifar.py, utils.py (`sinkhorn`, `GHLoss`),
target/gen_target.py. Their schedule (1000 epochs: warm-up 500, ramp 10, prior every 20) is written
here as fractions of the run, so a short schedule keeps its shape; the score EMA's momenta, which
apply once per visit of a sample (once an epoch), are raised to a power so that each phase of a
shorter run decays the EMA as much as the same phase of the reference's 1000 epochs (`momenta`).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from duel.config import PretrainConfig
from duel.losses import nt_xent
from duel.method_params import GHParams, target_count
from duel.methods.base import DataInfo, SSLMethod, StepOutput, pair_mean


def simplex_etf(k: int, d: int, generator: torch.Generator) -> torch.Tensor:
    """k unit vectors in R^d with pairwise cosine -1/(k-1) (k <= d): sqrt(k/(k-1)) (I - 11^T/k) U,
    U with orthonormal rows from the polar decomposition of a Gaussian matrix ([GH] gen_target.py)."""
    a = torch.randn(k, d, generator=generator, dtype=torch.float64)
    u, _, vh = torch.linalg.svd(a, full_matrices=False)
    polar = u @ vh  # the orthogonal factor of a's polar decomposition
    etf = math.sqrt(k / (k - 1)) * (torch.eye(k, dtype=torch.float64) - 1 / k) @ polar
    return etf.float()


@torch.no_grad()
def sinkhorn(scores: torch.Tensor, prior: torch.Tensor, epsilon: float, iterations: int) -> torch.Tensor:
    """(N, K) scores -> (N, K) soft assignments, each row summing to 1, the K columns to N * prior."""
    q = torch.exp(scores.float() / epsilon).T  # (K, N)
    k, n = q.shape
    r, c = torch.ones(k, device=q.device) / k, torch.ones(n, device=q.device) / n
    for _ in range(iterations):
        r = prior / (q @ c)
        c = (1.0 / n) / (q.T @ r)
    return (r[:, None] * q * c[None, :]).T * n


def gh_loss(s1: torch.Tensor, s2: torch.Tensor, prior: torch.Tensor, p: GHParams) -> torch.Tensor:
    """Swapped prediction: each view's scores predict the other view's surrogate labels (sum of both)."""
    q1 = sinkhorn(s1, prior, p.sinkhorn_epsilon, p.sinkhorn_iterations)
    q2 = sinkhorn(s2, prior, p.sinkhorn_epsilon, p.sinkhorn_iterations)
    loss_1 = -(q1 * F.log_softmax(s2 / p.temperature, dim=1)).sum(1).mean()
    loss_2 = -(q2 * F.log_softmax(s1 / p.temperature, dim=1)).sum(1).mean()
    return loss_1 + loss_2


class GH(SSLMethod):
    Params = GHParams

    def __init__(self, cfg: PretrainConfig, data: DataInfo, params: Any = None) -> None:
        super().__init__(cfg, data, params)
        p = self.params
        k = target_count(p, cfg)
        self.register_buffer("targets", simplex_etf(k, cfg.proj_dim, torch.Generator().manual_seed(p.seed)))
        self.register_buffer("prior", torch.full((k,), 1.0 / k))
        self.register_sample_state("score_ema", k)  # per sample: moving average of its target scores
        self.weight = 0.0  # GH's weight in this epoch
        self.ema = p.ema_warmup

    def schedule(self, epochs: int) -> tuple[int, int, int]:
        """(warm-up, ramp, prior interval) in epochs."""
        p = self.params
        return round(p.warmup * epochs), max(1, round(p.ramp * epochs)), max(1, round(p.prior_every * epochs))

    def momenta(self, epochs: int) -> tuple[float, float]:
        """(warm-up, after) score-EMA momenta per visit for a run of `epochs`.

        [GH] train_cifar.py updates every sample's EMA once per epoch, `logit_momentum[i] = beta *
        logit_momentum[i] + (1.0 - beta) * logit[i]` (the first epoch fills it in), with `beta = 0.9` and,
        `if epoch >= args.warm_up`, `beta = args.beta` (0.999): 499 updates at 0.9, then 500 at 0.999, so
        0.999^500 = 0.606 of the state at the end of the warm-up survives to the end. A phase with n of
        those visits where the reference's `reference_epochs` schedule has N gets momentum^(N / n) per
        visit: the same surviving weight momentum^N over the phase, the same share of the phase in the
        average's horizon; at the reference's length the momenta are the reference's.
        """
        p = self.params
        if not p.reference_epochs:
            return p.ema_warmup, p.ema

        def power(theirs: int, ours: int) -> float:  # a phase empty on either side: the length ratio
            return theirs / ours if theirs > 0 and ours > 0 else p.reference_epochs / epochs

        ours, theirs = self.schedule(epochs)[0], self.schedule(p.reference_epochs)[0]
        # the visits that update (not start) the average: the warm-up's after its first epoch, then all
        return p.ema_warmup ** power(theirs - 1, ours - 1), p.ema ** power(p.reference_epochs - theirs, epochs - ours)

    @torch.no_grad()
    def on_epoch_start(self, epoch: int, epochs: int) -> None:
        super().on_epoch_start(epoch, epochs)
        warmup, ramp, every = self.schedule(epochs)
        during, after = self.momenta(epochs)
        self.ema = after if epoch >= warmup else during
        self.weight = self.params.w_gh * min(1.0, (epoch + 1 - warmup) / ramp) if epoch >= warmup else 0.0
        if epoch >= warmup and (epoch - warmup) % every == 0:
            self.estimate_prior()

    @torch.no_grad()
    def estimate_prior(self) -> None:
        """pi = the share of the samples seen so far whose averaged scores peak at each target (uniform
        before any sample is seen)."""
        seen = self.score_ema[(self.score_ema != 0).any(1)]
        if len(seen):
            self.prior.copy_(torch.bincount(seen.argmax(1), minlength=len(self.prior)).float() / len(seen))

    def scores(self, z: torch.Tensor) -> torch.Tensor:
        """Cosine-normalised scores of embeddings against the ETF targets ([GH] normalize(z M^T))."""
        return F.normalize(z @ self.targets.T, dim=1)

    def training_loss(self, views, batch):
        z1, z2 = self.embed(views[0]), self.embed(views[1])
        per_view = nt_xent(z1, z2, self.temperature, reduction="none")
        s1, s2 = self.scores(z1), self.scores(z2)
        loss = per_view.mean()
        if self.weight > 0:
            loss = loss + self.weight * gh_loss(s1, s2, self.prior, self.params)
        return StepOutput(loss, pair_mean(per_view), aux={"scores": s1.detach()})

    @torch.no_grad()
    def after_step(self, output, batch, step, total_steps) -> None:
        super().after_step(output, batch, step, total_steps)
        previous, scores = self.score_ema[batch.positions], output.aux["scores"].float()
        fresh = (previous == 0).all(1, keepdim=True)  # first sight of a sample: start from its scores
        self.score_ema[batch.positions] = torch.where(fresh, scores, self.ema * previous + (1 - self.ema) * scores)

    def epoch_metrics(self) -> dict[str, float]:
        used = self.prior[self.prior > 0]
        entropy = float(-(used * used.log()).sum() / math.log(len(self.prior)))
        return {"gh_weight": self.weight, "prior_entropy": entropy}

"""The per-node VQ-VAE: small residual MLPs around an EMA vector quantizer.

Both MLPs start as the identity (last layer zero), so that a codebook initialised with
k-means in feature space starts training exactly at the k-means floor; training then
warps the space where that helps. A node's code depends on that node's features only.

The quantizer is in-house (nearest code, EMA codebook updates with Laplace smoothing,
dead-code replacement) because ``vector-quantize-pytorch`` was the bottleneck of CPU
training, whatever its options, several times the cost of the distances and argmin it
needs (``scripts/bench_tokenizer.py`` measures both; docs/benchmarks.md). Its dead-code threshold is also absolute, which with more codes than
vectors per batch (mean count 0.5) declares most of a k-means codebook dead at once;
here the threshold is a fraction of the mean count per code.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as nnf
from torch import nn


@dataclass
class VQVAEConfig:
    n_features: int = 5
    n_codes: int = 8192
    hidden: int = 64
    n_layers: int = 2
    commitment_weight: float = 0.25
    ema_decay: float = 0.99
    dead_code_fraction: float = 0.003


class ResidualMLP(nn.Module):
    def __init__(self, dim: int, hidden: int, n_layers: int):
        super().__init__()
        layers: list[nn.Module] = [nn.Linear(dim, hidden), nn.SiLU()]
        for _ in range(n_layers - 1):
            layers += [nn.Linear(hidden, hidden), nn.SiLU()]
        out = nn.Linear(hidden, dim)
        nn.init.zeros_(out.weight)
        nn.init.zeros_(out.bias)
        self.net = nn.Sequential(*layers, out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.net(x)


class EMAQuantizer(nn.Module):
    """Nearest-code quantizer with an exponential-moving-average codebook."""

    embed: torch.Tensor  # buffers, declared for the type checker
    cluster_size: torch.Tensor
    embed_avg: torch.Tensor

    def __init__(
        self,
        dim: int,
        n_codes: int,
        decay: float,
        commitment_weight: float,
        dead_code_fraction: float,
    ):
        super().__init__()
        self.decay = decay
        self.commitment_weight = commitment_weight
        self.dead_code_fraction = dead_code_fraction
        self.register_buffer("embed", torch.randn(n_codes, dim))
        self.register_buffer("cluster_size", torch.ones(n_codes))
        self.register_buffer("embed_avg", self.embed.clone())

    @torch.no_grad()
    def set_codebook(self, centroids: torch.Tensor, expected_count: float) -> None:
        self.embed.copy_(centroids)
        self.cluster_size.fill_(expected_count)
        self.embed_avg.copy_(centroids * expected_count)

    def nearest(self, z: torch.Tensor) -> torch.Tensor:
        dist = (
            (z * z).sum(1, keepdim=True) - 2 * z @ self.embed.T + (self.embed * self.embed).sum(1)
        )
        return dist.argmin(1)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        codes = self.nearest(z.detach())
        q = self.embed[codes]
        if self.training:
            self._ema_update(z.detach(), codes)
        commit = self.commitment_weight * nnf.mse_loss(z, q.detach())
        return z + (q - z).detach(), codes, commit

    @torch.no_grad()
    def _ema_update(self, z: torch.Tensor, codes: torch.Tensor) -> None:
        n_codes = self.embed.shape[0]
        counts = torch.bincount(codes, minlength=n_codes).to(z.dtype)
        sums = torch.zeros_like(self.embed).index_add_(0, codes, z)
        self.cluster_size.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        self.embed_avg.mul_(self.decay).add_(sums, alpha=1 - self.decay)
        total = self.cluster_size.sum()
        smoothed = (self.cluster_size + 1e-5) / (total + n_codes * 1e-5) * total
        self.embed.copy_(self.embed_avg / smoothed[:, None])
        # dead codes (rarely used) restart at random vectors of this batch
        dead = self.cluster_size < self.dead_code_fraction * len(z) / n_codes
        n_dead = int(dead.sum())
        if n_dead:
            pick = torch.randint(0, len(z), (n_dead,), device=z.device)
            self.embed[dead] = z[pick]
            self.cluster_size[dead] = len(z) / n_codes
            self.embed_avg[dead] = z[pick] * (len(z) / n_codes)


class NodeVQVAE(nn.Module):
    def __init__(self, cfg: VQVAEConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = ResidualMLP(cfg.n_features, cfg.hidden, cfg.n_layers)
        self.decoder = ResidualMLP(cfg.n_features, cfg.hidden, cfg.n_layers)
        self.vq = EMAQuantizer(
            cfg.n_features,
            cfg.n_codes,
            cfg.ema_decay,
            cfg.commitment_weight,
            cfg.dead_code_fraction,
        )

    @property
    def codebook(self) -> torch.Tensor:
        """(K, d) code vectors in the latent space."""
        return self.vq.embed

    def set_codebook(self, centroids: torch.Tensor, batch_size: int) -> None:
        self.vq.set_codebook(centroids, batch_size / len(centroids))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Reconstruction, code indices and the commitment loss."""
        quantized, codes, commit = self.vq(self.encoder(x))
        return self.decoder(quantized), codes, commit

    def decode_codes(self, codes: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.codebook[codes])

"""The ConvGRU update block that refines PatchMatch candidates (after RAFT's ``update.py``).

Per query pixel it reads the scores and offsets of the K candidates, keeps a hidden state, and
predicts a sub-pixel (dx, dy) for every candidate. The correspondence module adds the deltas to
the candidates' coordinates and samples the exemplar there bilinearly, so these weights learn.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class SepConvGRU(nn.Module):
    """A ConvGRU cell run twice: with 1x5 (horizontal) then 5x1 (vertical) convolutions."""

    def __init__(self, hidden_nc: int = 32, input_nc: int = 64) -> None:
        super().__init__()
        both = hidden_nc + input_nc
        self.convz1 = nn.Conv2d(both, hidden_nc, (1, 5), padding=(0, 2))
        self.convr1 = nn.Conv2d(both, hidden_nc, (1, 5), padding=(0, 2))
        self.convq1 = nn.Conv2d(both, hidden_nc, (1, 5), padding=(0, 2))
        self.convz2 = nn.Conv2d(both, hidden_nc, (5, 1), padding=(2, 0))
        self.convr2 = nn.Conv2d(both, hidden_nc, (5, 1), padding=(2, 0))
        self.convq2 = nn.Conv2d(both, hidden_nc, (5, 1), padding=(2, 0))

    @staticmethod
    def _step(h: Tensor, x: Tensor, convz: nn.Conv2d, convr: nn.Conv2d, convq: nn.Conv2d) -> Tensor:
        hx = torch.cat([h, x], dim=1)
        z = torch.sigmoid(convz(hx))
        r = torch.sigmoid(convr(hx))
        q = torch.tanh(convq(torch.cat([r * h, x], dim=1)))
        return (1 - z) * h + z * q

    def forward(self, h: Tensor, x: Tensor) -> Tensor:
        h = self._step(h, x, self.convz1, self.convr1, self.convq1)
        return self._step(h, x, self.convz2, self.convr2, self.convq2)


class CandidateEncoder(nn.Module):
    """Encodes the K candidates' scores (B, K, H, W) and offsets (B, 2K, H, W) into ``out_nc``
    channels, the offsets themselves passed through as the last 2K; ``mid_nc`` wide inside."""

    def __init__(self, k: int, out_nc: int = 64, mid_nc: int = 64) -> None:
        super().__init__()
        if out_nc <= 2 * k:
            raise ValueError(f"out_nc: expected more than 2k = {2 * k} channels, got {out_nc}")
        self.convc1 = nn.Conv2d(k, mid_nc, 1)
        self.convc2 = nn.Conv2d(mid_nc, mid_nc, 3, padding=1)
        self.convf1 = nn.Conv2d(2 * k, mid_nc, 7, padding=3)
        self.convf2 = nn.Conv2d(mid_nc, mid_nc, 3, padding=1)
        self.conv = nn.Conv2d(2 * mid_nc, out_nc - 2 * k, 3, padding=1)
        self.act = nn.ReLU()

    def forward(self, scores: Tensor, offsets: Tensor) -> Tensor:
        cor = self.act(self.convc2(self.act(self.convc1(scores))))
        flo = self.act(self.convf2(self.act(self.convf1(offsets))))
        out = self.act(self.conv(torch.cat([cor, flo], dim=1)))
        return torch.cat([out, offsets], dim=1)


class DeltaHead(nn.Module):
    """Hidden state -> a (dx, dy) per candidate, bounded to ``max_delta`` pixels by a tanh."""

    def __init__(self, k: int, hidden_nc: int = 32, mid_nc: int = 64, max_delta: float = 1.0) -> None:
        super().__init__()
        self.k = k
        self.max_delta = max_delta
        self.conv1 = nn.Conv2d(hidden_nc, mid_nc, 3, padding=1)
        self.conv2 = nn.Conv2d(mid_nc, 2 * k, 3, padding=1)
        self.act = nn.ReLU()
        # Small initial steps: large random moves would scatter the PatchMatch matches before the
        # network has learned anything (the failure the public implementation's GRU showed).
        with torch.no_grad():
            self.conv2.weight.mul_(0.1)
            self.conv2.bias.zero_()

    def forward(self, h: Tensor) -> Tensor:
        raw = self.conv2(self.act(self.conv1(h)))
        b, _, height, width = raw.shape
        delta = self.max_delta * torch.tanh(raw)
        return delta.view(b, 2, self.k, height, width).permute(0, 2, 3, 4, 1)


class UpdateBlock(nn.Module):
    """Hidden-state initialiser, candidate encoder, SepConvGRU and delta head.

    ``initial_state`` builds the hidden state from the query features and the exemplar features
    matched to them; ``forward`` runs one update and returns ``(hidden, delta)`` with ``delta``
    (B, K, H, W, 2) as (dx, dy) in key-map pixels. ``input_nc`` is the width of the candidate
    encoder (its output and its inner layers) and of the delta head's hidden layer: the block runs
    at full image resolution on the finest level, where these widths set most of its cost.
    """

    def __init__(
        self, k: int, feature_nc: int, hidden_nc: int = 32, input_nc: int = 64, max_delta: float = 1.0
    ):
        super().__init__()
        self.initial = nn.Sequential(
            nn.Conv2d(2 * feature_nc, hidden_nc, 3, padding=1),
            nn.InstanceNorm2d(hidden_nc),
            nn.ReLU(),
            nn.Conv2d(hidden_nc, hidden_nc, 3, padding=1),
            nn.InstanceNorm2d(hidden_nc),
            nn.ReLU(),
        )
        self.encoder = CandidateEncoder(k, input_nc, mid_nc=input_nc)
        self.gru = SepConvGRU(hidden_nc, input_nc)
        self.head = DeltaHead(k, hidden_nc, mid_nc=input_nc, max_delta=max_delta)

    def initial_state(self, query_features: Tensor, matched_features: Tensor) -> Tensor:
        return self.initial(torch.cat([query_features, matched_features], dim=1))

    def forward(self, hidden: Tensor, scores: Tensor, offsets: Tensor) -> tuple[Tensor, Tensor]:
        hidden = self.gru(hidden, self.encoder(scores, offsets))
        return hidden, self.head(hidden)

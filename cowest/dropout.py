"""LoRA dropout that draws only the positions it drops (a CPU speed lever for SFT).

peft puts an ``nn.Dropout(p)`` in front of every LoRA adapter. On a CPU, its mask costs one
random number per element (``aten::bernoulli_``), and with LoRA on every linear layer that
was 16% of a SmolLM2-135M SFT step (p = 0.05; torch.profiler: 755 ms of 4.8 s, batch 8 x 116
tokens, 2 threads). :class:`SparseDropout` has the same distribution, each element dropped
independently with probability ``p`` and the rest scaled by ``1 / (1 - p)``, but draws only
the dropped positions, as the cumulative sums of geometric gaps (inverse CDF of one uniform
number per dropped element): about ``p`` times as many random numbers. Its random numbers are
other than ``nn.Dropout``'s, so a model trained with it differs from one trained with
``nn.Dropout`` the way two seeds do.

A profile picks it per weak model with ``lora.dropout_sampler: sparse``
(:class:`cowest.config.LoraSpec`); :func:`use_sparse_dropout` swaps the modules in an SFT
trainer's model. Off a CPU, or for ``p`` above :data:`SPARSE_MAX_P` (where it saves little),
the module calls ``torch.nn.functional.dropout`` instead.
"""

from __future__ import annotations

import math
from typing import Any

import torch

#: above this drop probability the sparse draw saves little, and nn.Dropout's path is used
SPARSE_MAX_P = 0.25


def dropped_positions(n: int, p: float, generator: torch.Generator | None = None,
                      batch: int | None = None) -> torch.Tensor:
    """The positions (0..n-1, increasing) of the successes in ``n`` independent Bernoulli(p) trials.

    The gaps between successive successes are geometric (``1 + floor(log(U) / log(1 - p))``
    for a uniform ``U``); their running sums are the positions. A batch of ``batch`` draws
    (default: enough to cover ``n`` with a margin of 8 standard deviations) that falls short
    of ``n`` is followed by another one (the gaps are memoryless).
    """
    if not 0 < p < 1:
        raise ValueError(f"dropped_positions: p must be in (0, 1), got {p}")
    mean = n * p
    k = batch or int(mean + 8 * math.sqrt(mean * (1 - p)) + 16)
    log_q = math.log1p(-p)
    parts, start = [], 0.0
    while True:
        u = torch.rand(k, dtype=torch.float64, generator=generator)
        ends = torch.floor(torch.log1p(-u) / log_q).add_(1).cumsum_(0).add_(start)
        parts.append(ends)
        if ends[-1] >= n:
            break
        start = float(ends[-1])
    ends = torch.cat(parts)
    return (ends[ends <= n] - 1).long()


class SparseDropout(torch.nn.Module):
    """``nn.Dropout(p)`` in distribution, drawing only the dropped positions on a CPU."""

    def __init__(self, p: float) -> None:
        super().__init__()
        if not 0 <= p < 1:
            raise ValueError(f"SparseDropout: p must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0 or x.numel() == 0:
            return x
        if x.device.type != "cpu" or self.p > SPARSE_MAX_P:
            return torch.nn.functional.dropout(x, self.p, training=True)
        pos = dropped_positions(x.numel(), self.p)
        return (x * (1.0 / (1.0 - self.p))).reshape(-1).index_fill(0, pos, 0.0).view_as(x)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def use_sparse_dropout(model: Any) -> int:
    """Replace every LoRA ``nn.Dropout`` with p > 0 in a peft model by :class:`SparseDropout`
    (the same p); returns how many were replaced."""
    n = 0
    for module in model.modules():
        drops = getattr(module, "lora_dropout", None)
        if not isinstance(drops, torch.nn.ModuleDict):
            continue
        for name, d in list(drops.items()):
            if type(d) is torch.nn.Dropout and d.p > 0:
                drops[name] = SparseDropout(d.p).train(d.training)
                n += 1
    return n

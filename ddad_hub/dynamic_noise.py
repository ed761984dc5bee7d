"""D3AD's per-image noise level: a cheap anomaly estimate decides how far each image is noised.

Tebbe & Tayyub (arXiv 2401.04463): the nominal training images' kNN scores are binned into a 10-bin histogram; a
test image's bin ``b`` (clamped to 2..10) gives ``T_hat = round_to_10(b / 10 * T_max)`` and ``skip = T_hat / 10``,
so a more suspicious image is noised further and can be repainted, always in about ten steps.
"""

from __future__ import annotations

import torch


def score_bin_edges(nominal_scores: torch.Tensor, bins: int = 10) -> list[float]:
    """``bins + 1`` equal-width edges spanning the nominal images' scores (the histogram of the paper)."""
    s = torch.as_tensor(nominal_scores, dtype=torch.float64)
    if s.numel() < 2:
        raise ValueError("need at least two nominal scores to bin")
    lo, hi = float(s.min()), float(s.max())
    if hi <= lo:
        hi = lo + 1e-6
    return torch.linspace(lo, hi, bins + 1).tolist()


def dynamic_start_steps(
    scores: torch.Tensor, bin_edges: list[float], t_max: int = 80, min_bin: int = 2
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image (start step, skip) from first-estimate ``scores``.

    Bin ``b`` in 1..bins is where a score falls among ``bin_edges`` (scores past the last edge fall in the last bin),
    clamped to ``min_bin``..bins. Monotone in the score and never above ``t_max``.
    """
    if t_max < 10:
        raise ValueError(f"t_max must be at least 10, got {t_max}")
    bins = len(bin_edges) - 1
    inner = torch.tensor(bin_edges[1:-1], dtype=torch.float64)
    b = torch.bucketize(torch.as_tensor(scores, dtype=torch.float64), inner, right=True) + 1
    b = b.clamp(min_bin, bins)
    t_hat = (torch.round(b.double() / bins * t_max / 10) * 10).long().clamp(10, (t_max // 10) * 10)
    skip = (t_hat // 10).clamp(min=1)
    return t_hat, skip

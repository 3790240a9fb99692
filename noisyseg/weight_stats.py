"""The weights a reweighter gave the corrupted and the clean training pixels over one epoch,
scored as noise detection (the AUROC of 1 - weight) for metrics.jsonl."""

from __future__ import annotations

import torch

from noisyseg.metrics import detection_auroc

#: at most this many training pixels per epoch are kept to score the weights (AUROC)
WEIGHT_SAMPLE = 1_000_000


class WeightStats:
    """Accumulates weights on corrupted and clean training pixels during one epoch, with the
    pixels' place inside or outside the region where noise can be (:func:`noise_region`). The
    weights stay on their device until :meth:`summary` (no host synchronisation per step)."""

    def __init__(self, seed: int) -> None:
        self.weights: list[torch.Tensor] = []
        self.wrong: list[torch.Tensor] = []
        self.region: list[torch.Tensor] = []
        self.seed = seed
        #: the sampling generator of each device the labels come from (the sample is drawn where
        #: they are: on the training device when the feed is resident, so nothing waits on it)
        self.generators: dict[torch.device, torch.Generator] = {}

    def add(self, weights: torch.Tensor, wrong: torch.Tensor, region: torch.Tensor | None,
            budget: int) -> None:
        """``weights``, ``wrong`` and ``region`` (same shape) on one device, or ``wrong`` and
        ``region`` on the CPU."""
        w = weights.detach().float().reshape(-1)
        c = wrong.reshape(-1)
        r = torch.ones_like(c) if region is None else region.reshape(-1)
        if w.numel() > budget:
            g = self.generators.get(c.device)
            if g is None:
                g = self.generators[c.device] = torch.Generator(c.device).manual_seed(self.seed)
            keep = torch.randperm(w.numel(), generator=g, device=c.device)[:budget]
            w, c, r = w[keep.to(w.device, non_blocking=True)], c[keep], r[keep]
        self.weights.append(w)
        self.wrong.append(c)
        self.region.append(r)

    def summary(self) -> dict[str, float]:
        if not self.weights:
            return {}
        w = torch.cat(self.weights).cpu().numpy()  # the epoch's one read from the device
        c = torch.cat(self.wrong).bool().cpu().numpy()
        r = torch.cat(self.region).bool().cpu().numpy()
        nan = float("nan")
        total = w.sum()
        return {
            "weight_mean_corrupted": float(w[c].mean()) if c.any() else nan,
            "weight_mean_clean": float(w[~c].mean()) if (~c).any() else nan,
            "weight_auroc": detection_auroc(1.0 - w, c),
            # the same inside the region where noise can be: no easy far-away background
            "weight_auroc_region": detection_auroc(1.0 - w[r], c[r]),
            # share of the weight on truly clean pixels: for a 0/1 selection (co-teaching) the
            # precision of the kept pixels
            "weight_on_clean": float(w[~c].sum() / total) if total > 0 else nan,
            # share of the weight left on corrupted pixels, beside their share of the pixels
            # (equal: the weights ignore the noise; 0: every corrupted pixel dropped)
            "weight_mass_corrupted": float(w[c].sum() / total) if total > 0 else nan,
            "corrupted_share": float(c.mean()),
        }

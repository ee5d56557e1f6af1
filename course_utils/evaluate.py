"""Score CAM methods against SynthPets' ground truth: one table of method x layer.

For each method and layer: the pointing game and the energy in the head box (where the evidence
is, known by construction), the deletion and insertion AUC (faithfulness, no ground truth), and
the time per image of the method's call. Lesson 11 and `benchmarks/trust_table.py` (the README's
table) both call `score_methods`.
"""
from __future__ import annotations

import time
from typing import Callable, Mapping, Optional, Sequence

import torch
from torch import nn

from .cam import Boxes, energy_in_box, pointing_game, upsample
from .cam_variants import CAM_METHODS
from .faithfulness import deletion_auc, insertion_auc
from .inputs import Targets, check_batch

__all__ = ["score_methods", "COLUMNS"]

COLUMNS = ["method", "layer", "pointing game", "energy in box", "deletion AUC", "insertion AUC",
           "ms per image"]


def score_methods(model: nn.Module, x: torch.Tensor, targets: Targets, boxes: Boxes,
                  layers: Mapping[str, nn.Module],
                  methods: Optional[Mapping[str, Callable[..., torch.Tensor]]] = None,
                  tolerance: Optional[float] = None, steps: int = 16) -> list[dict]:
    """One row per method x layer (keys `COLUMNS`): pointing game and energy in box against `boxes`
    (pixels), mean deletion/insertion AUC over the images, and milliseconds per image of the call.

    `tolerance` defaults to the protocol's 15 px at 224 px, scaled to the image size.
    """
    check_batch(model, x)
    if not isinstance(layers, Mapping) or not layers:
        raise TypeError("layers must be a dict name -> layer, e.g. {'body': learn.model[0]}")
    methods = CAM_METHODS if methods is None else methods
    size = tuple(x.shape[-2:])
    tol = 15 * size[-1] / 224 if tolerance is None else tolerance
    rows = []
    for method_name, method in methods.items():
        for layer_name, layer in layers.items():
            start = time.perf_counter()
            maps = method(model, x, layer, targets)
            seconds = time.perf_counter() - start
            up = upsample(maps, size)
            rows.append({
                "method": method_name, "layer": layer_name,
                "pointing game": pointing_game(up, boxes, tol),
                "energy in box": energy_in_box(up, boxes).mean().item(),
                "deletion AUC": deletion_auc(model, x, maps, targets, steps).mean().item(),
                "insertion AUC": insertion_auc(model, x, maps, targets, steps).mean().item(),
                "ms per image": 1000 * seconds / len(x)})
    return rows


def markdown_table(rows: Sequence[dict], digits: int = 3) -> str:
    """The rows of `score_methods` as a Markdown table (for the README)."""
    head = "| " + " | ".join(COLUMNS) + " |\n|" + "---|" * len(COLUMNS) + "\n"
    cell = lambda v: f"{v:.{digits}f}" if isinstance(v, float) else str(v)
    return head + "".join("| " + " | ".join(cell(r[c]) for c in COLUMNS) + " |\n" for r in rows)

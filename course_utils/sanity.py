"""Is the map about the model? Sanity checks by cascading randomisation (Adebayo et al. 2018).

Re-initialise the model's blocks from the head down, one more each step, on a copy; compare each
randomised model's map with the trained model's by Spearman rank correlation. A map that stays
the same while the model is destroyed explains the image (edges, contrast), not the model.
"""
from __future__ import annotations

import copy
from typing import Callable, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from .cam import gradcam
from .inputs import Targets, check_batch
from .tensors import plain

__all__ = ["rank_with_ties", "spearman", "randomized_copy", "cascading_randomization", "edge_map"]

Method = Callable[..., torch.Tensor]   # method(model, x, layer, targets) -> maps [N,h,w]


def rank_with_ties(v: torch.Tensor) -> torch.Tensor:
    """Ranks 0..n-1 of the values of a 1-D tensor, equal values sharing their average rank."""
    if not isinstance(v, torch.Tensor) or v.dim() != 1:
        raise ValueError("v must be a 1-D tensor (flatten a map first)")
    values, order = torch.sort(v.double(), stable=True)
    _, inverse, counts = torch.unique_consecutive(values, return_inverse=True, return_counts=True)
    first = torch.cumsum(counts, 0) - counts                          # rank of each group's first value
    ranks = torch.empty_like(values)
    ranks[order] = (first + (counts - 1) / 2).double()[inverse]
    return ranks


def spearman(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spearman rank correlation of two maps (ties get average ranks), one value per map of a
    batch `[N,h,w]` (or a 0-d tensor for two maps `[h,w]`); NaN where a map is constant."""
    if not isinstance(a, torch.Tensor) or not isinstance(b, torch.Tensor):
        raise TypeError("a and b must be tensors (maps [h,w] or batches of maps [N,h,w])")
    if a.shape != b.shape or a.dim() not in (2, 3):
        raise ValueError(f"a and b must have the same shape [h,w] or [N,h,w], got "
                         f"{tuple(a.shape)} and {tuple(b.shape)}; upsample one to the other's size")
    single = a.dim() == 2
    a2, b2 = (a[None], b[None]) if single else (a, b)
    out = []
    for u, v in zip(a2.detach().flatten(1), b2.detach().flatten(1)):
        ru, rv = rank_with_ties(u.cpu()), rank_with_ties(v.cpu())
        ru, rv = ru - ru.mean(), rv - rv.mean()
        den = (ru.square().sum() * rv.square().sum()).sqrt()
        out.append((ru * rv).sum() / den if den > 0 else torch.tensor(float("nan"), dtype=torch.float64))
    r = torch.stack(out).float()
    return r[0] if single else r


def _reinit(module: nn.Module) -> None:
    for m in module.modules():
        if hasattr(m, "reset_parameters") and callable(m.reset_parameters):
            m.reset_parameters()
        elif any(True for _ in m.parameters(recurse=False)):
            for p in m.parameters(recurse=False):
                nn.init.normal_(p, std=0.02)


def randomized_copy(model: nn.Module, names: Sequence[str], seed: int = 0) -> nn.Module:
    """A deep copy of `model` whose sub-modules `names` (e.g. "1", "0.4") are re-initialised
    (their `reset_parameters`, seeded); the original model and the global RNG are left untouched."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if isinstance(names, str):
        raise TypeError("names must be a list of sub-module names, e.g. ['1', '0.4']")
    for name in names:
        try:
            model.get_submodule(name)
        except AttributeError:
            raise ValueError(f"{name!r} is not a sub-module of the model; see "
                             "[n for n, _ in model.named_modules()]") from None
    twin = copy.deepcopy(model)
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        for name in names:
            _reinit(twin.get_submodule(name))
    return twin


def cascading_randomization(model: nn.Module, x: torch.Tensor, layer: str, targets: Targets,
                            blocks: Sequence[str], method: Method = gradcam, seed: int = 0
                            ) -> torch.Tensor:
    """Spearman correlation `[len(blocks), N]` between the trained model's maps and those after
    randomising `blocks[:i+1]` (list them from the head down); `layer` is a sub-module name."""
    check_batch(model, x)
    if not isinstance(layer, str):
        raise TypeError("layer must be a sub-module name (e.g. '0' for learn.model[0]): each "
                        "randomised copy has its own modules")
    if not blocks:
        raise ValueError("give at least one block to randomise, from the head down")
    reference = method(model, x, model.get_submodule(layer), targets)
    rows = []
    for i in range(len(blocks)):
        twin = randomized_copy(model, blocks[:i + 1], seed)
        rows.append(spearman(reference, method(twin, x, twin.get_submodule(layer), targets)))
    return torch.stack(rows)


def edge_map(model: nn.Module, x: torch.Tensor, layer: nn.Module, targets: Targets) -> torch.Tensor:
    """An image-only baseline with a CAM method's signature: the Sobel edge magnitude of the
    image's channel mean `[N,H,W]`. It ignores the model, so it passes no sanity check."""
    check_batch(model, x)
    g = plain(x.detach()).float().mean(1, keepdim=True)
    k = torch.tensor([[-1., 0., 1.], [-2., 0., 2.], [-1., 0., 1.]], device=g.device)
    kernels = torch.stack([k, k.T])[:, None]                           # [2,1,3,3]: d/dx, d/dy
    d = F.conv2d(F.pad(g, (1, 1, 1, 1), mode="replicate"), kernels)
    return d.square().sum(1).sqrt()

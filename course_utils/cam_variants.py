"""The CAM family on Grad-CAM's core: Grad-CAM++, LayerCAM and Score-CAM.

Each gradient method is only its weights, handed to `cam.gradient_cam` (one recorded forward,
one `autograd.grad`, the checks, the weighted sum). Score-CAM needs no gradient: its weights are
the target scores of the image masked by each upsampled, rescaled activation map, computed in
batches. Every method returns raw `[N,h,w]` maps (a list for a list of layers), like `gradcam`.
"""
from __future__ import annotations

from typing import Union

import torch
from torch import nn

from .cam import (Layers, checked_layers, checked_outputs, gradcam, gradient_cam, recorded_forward,
                  upsample, weighted_sum)
from .inputs import Targets, target_indices
from .modules import eval_mode
from .tensors import plain

__all__ = ["gradcampp", "gradcampp_weights", "layercam", "layercam_weights", "scorecam",
           "scorecam_weights", "CAM_METHODS"]


# ---------------------------------------------------------------- Grad-CAM++
def gradcampp_weights(act: torch.Tensor, grad: torch.Tensor, eps: float = 0.0) -> torch.Tensor:
    """Grad-CAM++'s channel weights (Chattopadhyay et al. 2018, eq. 19 closed form), `[N,K]`.

    w_k = sum_ij alpha_kij ReLU(g_kij) with alpha = g^2 / (2 g^2 + sum_ab A_kab g^3), and
    alpha = 0 where g = 0. Written as 1 / (2 + g sum A), which is the same for g != 0 and does
    not underflow for small gradients. `eps` adds pytorch-grad-cam's 1e-6 to the denominator
    g^2 (2 + g sum A) (a departure from the paper that matters when |g| is below about 1e-3).
    """
    total = act.sum(dim=(2, 3), keepdim=True)                       # sum_ab A_k(a, b)
    if eps:
        g2 = grad * grad
        alpha = g2 / (g2 * (2 + grad * total) + eps)
    else:
        denom = 2 + grad * total
        alpha = 1 / torch.where(denom == 0, torch.ones_like(denom), denom)
    alpha = torch.where(grad != 0, alpha, torch.zeros_like(alpha))
    return (alpha * grad.clamp_min(0)).sum(dim=(2, 3))


def gradcampp(model: nn.Module, x: torch.Tensor, layer: Layers, targets: Targets,
              relu: bool = True, eps: float = 0.0) -> Union[torch.Tensor, list[torch.Tensor]]:
    """Batched Grad-CAM++ (Chattopadhyay et al. 2018): raw `[N,h,w]` maps, weights from
    `gradcampp_weights` (`eps=1e-6` reproduces pytorch-grad-cam); same guarantees as `gradcam`."""
    if not isinstance(eps, (int, float)) or eps < 0:
        raise ValueError(f"eps must be a number >= 0 (0 is the paper, 1e-6 pytorch-grad-cam), got {eps!r}")
    return gradient_cam(model, x, layer, targets, lambda a, g: gradcampp_weights(a, g, eps), relu,
                        "gradcampp")


# ---------------------------------------------------------------- LayerCAM
def layercam_weights(act: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """LayerCAM's element-wise weights (Jiang et al. 2021): the positive part of the gradient,
    `[N,K,h,w]`; unlike a channel mean it keeps where the evidence is, so it works at inner layers."""
    return grad.clamp_min(0)


def layercam(model: nn.Module, x: torch.Tensor, layer: Layers, targets: Targets,
             relu: bool = True) -> Union[torch.Tensor, list[torch.Tensor]]:
    """Batched LayerCAM (Jiang et al. 2021): raw `[N,h,w]` maps ReLU(sum_k ReLU(g_k) * A_k);
    same guarantees as `gradcam`."""
    return gradient_cam(model, x, layer, targets, layercam_weights, relu, "layercam")


# ---------------------------------------------------------------- Score-CAM
def _masks(act: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Each map of `act [M,h,w]` upsampled to the image and rescaled to [0, 1] (Score-CAM's H_k),
    `[M,1,H,W]`. A constant map becomes all zeros (the peers get the same through an epsilon)."""
    up = upsample(act, size)
    flat = up.view(up.shape[0], -1)
    lo, hi = flat.amin(1, keepdim=True), flat.amax(1, keepdim=True)   # 20x faster than aminmax(dim=) here
    span = hi - lo
    scale = torch.where(span > 0, 1 / torch.where(span > 0, span, torch.ones_like(span)),
                        torch.zeros_like(span))
    flat.sub_(lo).mul_(scale)                 # in place: these are the largest tensors of the call
    return up[:, None]


def scorecam_weights(model: nn.Module, x: torch.Tensor, act: torch.Tensor, targets: torch.Tensor,
                     batch_size: int = 32) -> torch.Tensor:
    """Score-CAM's channel weights (Wang et al. 2020), `[N,K]`: softmax over k of the target score
    of `x * H_k`, H_k = the k-th map of `act` upsampled and rescaled to [0, 1].

    The masked images of each image run through `model` in batches of `batch_size` (32 was the
    fastest on the benchmark's CPU; 64 was 1.5x slower), under no_grad, into one reused buffer;
    call it in eval mode. The scores are logits: softmax over channels ignores the baseline score
    torch-cam subtracts, so both peers and this agree.
    """
    n, k = act.shape[:2]
    size = tuple(x.shape[-2:])
    scores = torch.empty(n, k, device=x.device, dtype=torch.float32)
    with torch.no_grad():
        buffer = x.new_empty((min(batch_size, k), *x.shape[1:]))
        for i in range(n):
            for start in range(0, k, batch_size):
                stop = min(start + batch_size, k)
                masked = torch.mul(x[i:i + 1], _masks(act[i, start:stop], size), out=buffer[:stop - start])
                scores[i, start:stop] = plain(model(masked))[:, targets[i]].float()
    return torch.softmax(scores, dim=1)


def scorecam(model: nn.Module, x: torch.Tensor, layer: Layers, targets: Targets,
             relu: bool = True, batch_size: int = 32) -> Union[torch.Tensor, list[torch.Tensor]]:
    """Batched Score-CAM (Wang et al. 2020): raw `[N,h,w]` maps, gradient-free.

    One recorded forward (no graph) gives the activations; the weights are the target scores of
    the input masked by each of them (`scorecam_weights`, `batch_size` masked images a pass).
    Costs N*K forward passes: K is the layer's channel count. Same guarantees as `gradcam`.
    """
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int (masked images a forward pass), got {batch_size!r}")
    many, layers, modules = checked_layers(model, x, layer)
    logits, records = recorded_forward(model, modules, layers, x, gradients=False)
    acts = checked_outputs(records, layers, logits)
    t = target_indices(targets, x.shape[0], logits.shape[1], logits.device)
    xp = plain(x.detach())
    with eval_mode(modules):
        maps = [weighted_sum(scorecam_weights(model, xp, plain(a), t, batch_size), plain(a), relu)
                for a in acts]
    return maps if many else maps[0]


#: The CAM methods by name, all called as `method(model, x, layer, targets)`.
CAM_METHODS = {"Grad-CAM": gradcam, "Grad-CAM++": gradcampp, "LayerCAM": layercam, "Score-CAM": scorecam}

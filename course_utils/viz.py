"""Pictures: a CAM overlaid on its image, as the chapter draws it."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

__all__ = ["show_cam", "image_array"]


def image_array(image: Any) -> np.ndarray:
    """An image as an `[H,W,C]` (or `[H,W]`) numpy array, from PIL, a `[C,H,W]` tensor or an array."""
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu()
        if image.dim() == 4 and image.shape[0] == 1:
            image = image[0]
        if image.dim() == 3 and image.shape[0] in (1, 3):
            image = image.permute(1, 2, 0)
        image = image.numpy()
    arr = np.asarray(image)
    if arr.ndim not in (2, 3):
        raise ValueError(f"image must be one picture [H,W,C] or [C,H,W], got shape {arr.shape}; "
                         "decode the batch first (dls.train.decode((x,))[0][0])")
    return arr[..., 0] if arr.ndim == 3 and arr.shape[-1] == 1 else arr


def show_cam(image: Any, cam: torch.Tensor, ax: Any = None, alpha: float = 0.6,
             cmap: str = "magma") -> Any:
    """Draw `image`, then `cam` stretched over it with bilinear smoothing; returns the axes.

    `cam` is one map `[h,w]` at any resolution: like the chapter, it is drawn with
    `extent=(0, W, H, 0)` so a 7×7 map covers the whole 224×224 image.
    """
    import matplotlib.pyplot as plt

    arr = image_array(image)
    if not isinstance(cam, torch.Tensor) or cam.dim() != 2:
        raise ValueError("cam must be one map [h, w]; for a batch pass maps[i]")
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha must be between 0 and 1, got {alpha}")
    if ax is None:
        _, ax = plt.subplots()
    h, w = arr.shape[:2]
    ax.imshow(arr, cmap=None if arr.ndim == 3 else "gray")
    ax.imshow(cam.detach().float().cpu().numpy(), alpha=alpha, extent=(0, w, h, 0),
              interpolation="bilinear", cmap=cmap)
    ax.axis("off")
    return ax

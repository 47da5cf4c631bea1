"""Image batch helpers shared by the encoders and the colour-texture statistics."""

from __future__ import annotations

from typing import overload

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image


@overload
def resize_batch(batch: np.ndarray, size: int) -> np.ndarray: ...
@overload
def resize_batch(batch: torch.Tensor, size: int) -> torch.Tensor: ...
def resize_batch(batch: np.ndarray | torch.Tensor, size: int) -> np.ndarray | torch.Tensor:
    """Resize a uint8 (B, H, W, 3) batch to (B, size, size, 3), antialiased.

    An integer shrink factor averages boxes (exact, cheapest); other factors use
    antialiased bilinear filtering. NumPy batches go through Pillow (C, releases
    the GIL: cheap in reader threads); tensors through torch on their own device.
    """
    h, w = int(batch.shape[1]), int(batch.shape[2])
    if (h, w) == (size, size):
        return batch
    factor = h // size if h == w and h % size == 0 else 0
    if isinstance(batch, np.ndarray):
        out = np.empty((batch.shape[0], size, size, 3), dtype=np.uint8)
        for i, patch in enumerate(batch):
            img = Image.fromarray(np.ascontiguousarray(patch[..., :3]))
            if factor:
                img = img.reduce(factor)
            else:
                img = img.resize((size, size), Image.Resampling.BILINEAR)
            out[i] = np.asarray(img)
        return out
    y = batch.permute(0, 3, 1, 2).float()
    if factor:
        y = F.avg_pool2d(y, factor)
    else:
        y = F.interpolate(
            y, size=(size, size), mode="bilinear", antialias=True, align_corners=False
        )
    return y.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()

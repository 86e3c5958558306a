"""Image processing as ViLT does it (and as ``transformers.ViltImageProcessor`` does it).

Resize so the shorter side is ``shorter`` while the longer side stays at most ``longer`` (bicubic), round each
side down to a multiple of the patch size, scale to [0, 1] and normalise with mean = std = 0.5. A batch is padded
at the bottom/right to its largest height and width; ``pixel_mask`` is 1 on real pixels, 0 on padding.
Paper size: ``ImageProcessor(384, 640, 32)``; tiny models: ``ImageProcessor(64, 64, 16)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from dde_bench.errors import UserError


def resize_shape(height: int, width: int, shorter: int, longer: int, divisor: int) -> tuple[int, int]:
    """Output (height, width): ViLT's ``get_resize_output_image_size`` (shorter side, cap, round to divisor)."""
    scale = shorter / min(height, width)
    if height < width:
        new_h, new_w = float(shorter), scale * width
    else:
        new_h, new_w = scale * height, float(shorter)
    if max(new_h, new_w) > longer:
        scale = longer / max(new_h, new_w)
        new_h, new_w = scale * new_h, scale * new_w
    new_h, new_w = int(new_h + 0.5), int(new_w + 0.5)
    return max(divisor, new_h // divisor * divisor), max(divisor, new_w // divisor * divisor)


@dataclass(frozen=True)
class ImageProcessor:
    """Resize + normalise + pad, ViLT style. ``longer`` caps the longer side (ViLT: 1333/800 x shorter)."""

    shorter: int = 384
    longer: int = 640
    patch: int = 32

    @classmethod
    def vilt(cls, shorter: int = 384, patch: int = 32) -> ImageProcessor:
        """Exactly ViLT's / ViltImageProcessor's sizes: longer side capped at int(1333 / 800 * shorter) (639)."""
        return cls(shorter, int(1333 / 800 * shorter), patch)

    def load_uint8(self, path: Path | str) -> torch.Tensor:
        """Decode, convert to RGB and resize one image: uint8 tensor (3, H, W), H and W multiples of ``patch``."""
        try:
            with Image.open(path) as im:
                im = im.convert("RGB")
                return self.resize_uint8(im)
        except FileNotFoundError:
            raise UserError(f"{path}: missing image") from None
        except OSError as e:
            raise UserError(f"{path}: unreadable image ({e})") from None

    def resize_uint8(self, im: Image.Image) -> torch.Tensor:
        w, h = im.size
        nh, nw = resize_shape(h, w, self.shorter, self.longer, self.patch)
        if (nh, nw) != (h, w):
            im = im.resize((nw, nh), Image.BICUBIC)
        arr = np.asarray(im, dtype=np.uint8)
        return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()

    @staticmethod
    def normalize(images: torch.Tensor) -> torch.Tensor:
        """uint8 (..., 3, H, W) -> float32 in [-1, 1] (mean = std = 0.5)."""
        return images.to(torch.float32).div_(127.5).sub_(1.0)

    @staticmethod
    def pad(images: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Pad uint8 (3, H, W) images bottom/right to the batch maximum: (B, 3, H, W) uint8, mask (B, H, W) long."""
        if not images:
            raise ValueError("empty image batch")
        hs = [im.shape[-2] for im in images]
        ws = [im.shape[-1] for im in images]
        H, W = max(hs), max(ws)
        if min(hs) == H and min(ws) == W:
            batch = torch.stack(list(images))
            return batch, torch.ones(len(images), H, W, dtype=torch.long)
        batch = torch.zeros(len(images), 3, H, W, dtype=images[0].dtype)
        mask = torch.zeros(len(images), H, W, dtype=torch.long)
        for i, im in enumerate(images):
            batch[i, :, : im.shape[-2], : im.shape[-1]] = im
            mask[i, : im.shape[-2], : im.shape[-1]] = 1
        return batch, mask

    def __call__(self, images: Sequence[Image.Image | Path | str | torch.Tensor]) -> dict[str, torch.Tensor]:
        """Process a batch: ``{"pixel_values": float32 (B,3,H,W), "pixel_mask": long (B,H,W)}``.

        Padding is zero *after* normalisation, as in ViltImageProcessor.
        """
        tensors = []
        for im in images:
            if isinstance(im, torch.Tensor):
                tensors.append(im)
            elif isinstance(im, Image.Image):
                tensors.append(self.resize_uint8(im.convert("RGB")))
            else:
                tensors.append(self.load_uint8(im))
        values = [self.normalize(t) for t in tensors]
        pixel_values, pixel_mask = self.pad(values)
        return {"pixel_values": pixel_values, "pixel_mask": pixel_mask}

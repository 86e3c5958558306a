"""Image decoding and processing as ViLT does it (and as ``transformers.ViltImageProcessor`` does it).

Resize so the shorter side is ``shorter`` while the longer side stays at most ``longer`` (bicubic), round each
side down to a multiple of the patch size, scale to [0, 1] and normalise with mean = std = 0.5. A batch is padded
at the bottom/right to its largest height and width; ``pixel_mask`` is 1 on real pixels, 0 on padding.
Paper size: ``ImageProcessor(384, 640, 32)``; tiny models: ``ImageProcessor(64, 64, 16)``.

Decoding (:func:`decode_rgb`) turns every failure into one :class:`ImageError` naming the file: a missing or
empty file, bytes PIL cannot identify, a truncated or corrupt file, a decompression bomb (over
``PIL.Image.MAX_IMAGE_PIXELS``: PIL's warning is made an error, its ``DecompressionBombError`` caught), a mode that
has no RGB conversion. Modes are converted to RGB the way ViltImageProcessor does (``convert("RGB")``: alpha is
dropped, CMYK and greyscale converted by PIL), except 16-bit greyscale, which PIL would clip at 255 and which is
scaled to 8 bits instead. The default is strict; :class:`BadImages` lets a caller skip bad images and report them.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from dde_bench.errors import UserError

# 16-bit and 32-bit integer greyscale modes: values 0..65535, scaled to 0..255 (PIL's convert would clip them)
_WIDE_GREY_MODES = ("I", "I;16", "I;16L", "I;16B", "I;16N")


class ImageError(UserError):
    """An image that cannot be used: ``path``, and ``reason`` (one line). ``missing``: the file does not exist."""

    def __init__(self, path: Path | str, reason: str, missing: bool = False):
        self.path = Path(path)
        self.reason = " ".join(str(reason).split())  # one line, whatever PIL's message holds
        self.missing = missing
        super().__init__(f"{path}: missing image" if missing else f"{path}: unreadable image ({self.reason})")


@dataclass
class BadImages:
    """Images skipped instead of stopping a run or a training: path -> reason, in the order found.

    Pass one to :meth:`ImageProcessor.try_load_uint8` or to ``load_split(..., skip_bad_images=...)``; then
    ``len(bad)`` and :meth:`summary` give what to record (``run.json``: ``{"count": n, "images": [...]}``).
    """

    reasons: dict[str, str] = field(default_factory=dict)

    def add(self, error: ImageError) -> None:
        self.reasons.setdefault(str(error.path), "missing image" if error.missing else error.reason)

    def __contains__(self, path: Path | str) -> bool:
        return str(path) in self.reasons

    def __len__(self) -> int:
        return len(self.reasons)

    def summary(self) -> dict:
        """``{"count": n, "images": [{"path", "reason"}, ...]}``, JSON-ready."""
        return {"count": len(self), "images": [{"path": p, "reason": r} for p, r in self.reasons.items()]}


def _to_rgb(im: Image.Image, path: Path) -> Image.Image:
    """A new RGB image from a decoded image of any mode (see the module docstring)."""
    if im.mode in _WIDE_GREY_MODES:
        grey = np.asarray(im, dtype=np.float64) / 257.0  # 65535 -> 255
        return Image.fromarray(np.clip(np.rint(grey), 0, 255).astype(np.uint8)).convert("RGB")
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")  # PIL asks for this step; the colours are the palette's either way
    try:
        return im.convert("RGB")  # a copy even for RGB: the opened image is closed after this
    except ValueError as e:
        raise ImageError(path, f"image mode {im.mode!r} has no RGB conversion ({e})") from None


def decode_rgb(path: Path | str) -> Image.Image:
    """Decode one image file fully into an RGB PIL image; any failure is an :class:`ImageError` naming it.

    PIL's decompression-bomb warning is turned into an error with ``warnings.catch_warnings``, which changes the
    process's warning filters for the call: decode in worker processes (a DataLoader), not in threads.
    """
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise ImageError(path, "empty file (0 bytes)")
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                im.load()
                return _to_rgb(im, path)
    except ImageError:
        raise
    except FileNotFoundError:
        raise ImageError(path, "no such file", missing=True) from None
    except IsADirectoryError:
        raise ImageError(path, "a folder, not an image file") from None
    except PermissionError:
        raise ImageError(path, "permission denied") from None
    except UnidentifiedImageError:
        raise ImageError(path, "not an image format PIL can identify") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageError(path, f"refused as a decompression bomb: {e}") from None
    except OSError as e:  # PIL's "image file is truncated", "broken data stream", ...
        raise ImageError(path, f"truncated or corrupt: {e}") from None
    except Exception as e:  # PIL's plugins also raise SyntaxError, ValueError, struct.error, EOFError, ...
        raise ImageError(path, f"cannot decode: {type(e).__name__}: {e}") from None


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
        """Decode, convert to RGB and resize one image: uint8 tensor (3, H, W), H and W multiples of ``patch``.

        Raises :class:`ImageError` (a UserError naming the file) for any image that cannot be decoded.
        """
        return self.resize_uint8(decode_rgb(path))

    def try_load_uint8(self, path: Path | str, bad: BadImages) -> torch.Tensor | None:
        """:meth:`load_uint8`, or ``None`` with the path and reason recorded in ``bad`` when it fails."""
        try:
            return self.load_uint8(path)
        except ImageError as e:
            bad.add(e)
            return None

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

"""One rule for turning any photo (downloaded bytes, a file of an image folder) into what training, the web page
and predictions see: fully decoded, pixel-limited, upright, RGB, saved as a JPEG no larger than asked."""

from __future__ import annotations

import io
import threading
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from fungilib.errors import plain_message
from fungilib.fsutil import atomic_path

ORIENTATION = 0x0112
_OPEN_LOCK = threading.Lock()  # Pillow's pixel limit is a global: set only while a photo is opened


class PhotoError(Exception):
    """A photo that cannot be used; ``reason`` is the one line recorded for it."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def eight_bit(img: Image.Image) -> Image.Image:
    """16- and 32-bit images scaled into 8 bits (Pillow's own conversion clips them: a 16-bit photo turns white):
    16-bit from its full range, 32-bit integer and float from their own minimum and maximum."""
    if img.mode.startswith("I;16"):
        return Image.fromarray((np.asarray(img, dtype=np.uint32) // 257).astype(np.uint8), "L")
    if img.mode in ("I", "F"):
        values = np.asarray(img, dtype=np.float64)
        finite = values[np.isfinite(values)]
        low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        scaled = (np.nan_to_num(values, nan=low) - low) / ((high - low) or 1.0) * 255
        return Image.fromarray(np.clip(np.round(scaled), 0, 255).astype(np.uint8), "L")
    return img


def upright_rgb(img: Image.Image) -> Image.Image:
    """EXIF orientation applied, 16/32-bit scaled into 8 bits, transparency composited on white, RGB (as browsers
    show a photo)."""
    img = eight_bit(ImageOps.exif_transpose(img))
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        flat = Image.new("RGB", rgba.size, (255, 255, 255))
        flat.paste(rgba, mask=rgba.getchannel("A"))
        return flat
    return img if img.mode == "RGB" else img.convert("RGB")


def is_plain_jpeg(img: Image.Image) -> bool:
    """What training decodes as is: an RGB JPEG with no EXIF rotation to apply."""
    return img.format == "JPEG" and img.mode == "RGB" and img.getexif().get(ORIENTATION, 1) == 1


def _open(source: bytes | Path) -> Image.Image:
    """The photo opened (its header read, nothing decoded) with Pillow's own pixel limit lifted: the caller's
    ``max_pixels`` is the limit, above or below Pillow's 89.5 MP."""
    with _OPEN_LOCK:
        previous, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        try:
            return Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
        finally:
            Image.MAX_IMAGE_PIXELS = previous


def photo_pixels(source: bytes | Path) -> int:
    """Width × height from the photo's header alone (nothing decoded); 0 when there is no readable header."""
    try:
        with _open(source) as img:
            return img.width * img.height
    except Exception:  # decoding reports it, with its reason
        return 0


def decode_photo(source: bytes | Path, max_pixels: int, max_side: int | None = None) -> tuple[Image.Image, tuple[int,
                                                                                                                 int]]:
    """Open and fully decode a photo (a JPEG at a reduced DCT scale when ``max_side`` allows: faster, same size
    after resizing) and its original size; PhotoError for a pixel bomb or anything Pillow cannot decode."""
    try:
        img = _open(source)
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            width, height = img.size
            if width * height > max_pixels:
                raise PhotoError(f"too many pixels ({width}x{height})")
            if max_side and img.format == "JPEG":
                img.draft("RGB", (max_side, max_side))
            img.load()
            return img, (width, height)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise PhotoError("too many pixels (decompression bomb)") from None
    except PhotoError:
        raise
    except Exception as exc:  # Pillow raises many types for broken data
        detail = plain_message(str(exc), 80)
        raise PhotoError(f"undecodable ({type(exc).__name__}{': ' + detail if detail else ''})") from None


def save_photo(img: Image.Image, target: Path, quality: int, max_side: int | None = None) -> Image.Image:
    """Upright RGB, shrunk to ``max_side`` (never enlarged), written atomically as a JPEG; returns what was saved."""
    img = upright_rgb(img)
    if max_side and max(img.size) > max_side:
        img.thumbnail((max_side, max_side), Image.Resampling.BICUBIC, reducing_gap=2.0)
    with atomic_path(target) as tmp:
        img.save(tmp, "JPEG", quality=quality)
    return img

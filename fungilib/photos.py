"""One rule for turning any decoded photo into what training, the web page and predictions see."""

from __future__ import annotations

from PIL import Image, ImageOps


def upright_rgb(img: Image.Image) -> Image.Image:
    """EXIF orientation applied, transparency composited on white, RGB (as browsers show a photo)."""
    img = ImageOps.exif_transpose(img)
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        flat = Image.new("RGB", rgba.size, (255, 255, 255))
        flat.paste(rgba, mask=rgba.getchannel("A"))
        return flat
    return img if img.mode == "RGB" else img.convert("RGB")

"""Procedural pictures of synthetic fungi, different every time: twelve distinct species and, in the field flora,
look-alike groups that share shape, texture and underside and differ by less than a photo's own colour and light
variation — the photo alone cannot fully tell them apart; place and month (fungilib.sample) can."""

from __future__ import annotations

import colorsys
import io
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter


@dataclass(frozen=True)
class Look:
    """How one species is drawn: the traits a small CNN can learn to tell apart."""

    shape: str  # dome, flat, cone, funnel, bell, bracket, ball, coral, morel
    hue: float  # cap hue in [0, 1)
    sat: float
    val: float
    texture: str  # spots, scales, bands, warts, pits, smooth, streaks
    underside: str  # gills, pores, ridges, none
    stem: tuple[float, float]  # relative stem length, relative width
    stem_rgb: tuple[int, int, int]
    ring: bool = False
    cluster: int = 1


LOOKS: dict[str, Look] = {
    "Amanita muscaria": Look("dome", 0.0, 0.85, 0.85, "spots", "gills", (1.0, 0.22), (240, 236, 225), ring=True),
    "Boletus edulis": Look("dome", 0.07, 0.55, 0.45, "smooth", "pores", (0.7, 0.42), (225, 210, 180)),
    "Cantharellus cibarius": Look("funnel", 0.11, 0.9, 0.95, "smooth", "ridges", (0.6, 0.3), (240, 180, 60)),
    "Trametes versicolor": Look("bracket", 0.6, 0.35, 0.5, "bands", "pores", (0.0, 0.0), (0, 0, 0), cluster=3),
    "Lycoperdon perlatum": Look("ball", 0.12, 0.12, 0.93, "warts", "none", (0.25, 0.4), (235, 228, 210)),
    "Coprinus comatus": Look("bell", 0.1, 0.08, 0.97, "scales", "gills", (0.9, 0.16), (250, 250, 245), ring=True),
    "Pleurotus ostreatus": Look("bracket", 0.58, 0.12, 0.62, "smooth", "gills", (0.0, 0.0), (0, 0, 0), cluster=2),
    "Laetiporus sulphureus": Look("bracket", 0.1, 0.95, 0.98, "streaks", "pores", (0.0, 0.0), (0, 0, 0), cluster=3),
    "Morchella esculenta": Look("morel", 0.09, 0.45, 0.62, "pits", "none", (0.55, 0.3), (235, 225, 200)),
    "Ramaria formosa": Look("coral", 0.97, 0.45, 0.95, "smooth", "none", (0.0, 0.0), (0, 0, 0)),
    "Hygrocybe conica": Look("cone", 0.03, 0.9, 0.9, "streaks", "gills", (1.1, 0.12), (245, 200, 60)),
    "Mycena galericulata": Look("bell", 0.08, 0.25, 0.55, "streaks", "gills", (1.4, 0.07), (190, 175, 160), cluster=4),
    # look-alikes of the field flora: each within a colour jitter or two of its group's other members
    "Hygrophoropsis aurantiaca": Look("funnel", 0.097, 0.92, 0.93, "smooth", "ridges", (0.56, 0.27), (236, 168, 56)),
    "Omphalotus olearius": Look("funnel", 0.088, 0.95, 0.9, "smooth", "ridges", (0.68, 0.3), (232, 155, 52), cluster=2),
    "Boletus reticulatus": Look("dome", 0.076, 0.5, 0.5, "smooth", "pores", (0.75, 0.42), (218, 202, 172)),
    "Tylopilus felleus": Look("dome", 0.066, 0.5, 0.43, "smooth", "pores", (0.8, 0.4), (208, 188, 160)),
    "Agaricus campestris": Look("dome", 0.09, 0.09, 0.94, "smooth", "gills", (0.68, 0.22), (245, 240, 232), ring=True),
    "Amanita virosa": Look("dome", 0.1, 0.05, 0.97, "smooth", "gills", (0.8, 0.2), (250, 250, 248), ring=True),
    "Amanita pantherina": Look("dome", 0.08, 0.5, 0.46, "spots", "gills", (0.95, 0.2), (240, 236, 225), ring=True),
    "Amanita rubescens": Look("dome", 0.062, 0.44, 0.52, "spots", "gills", (0.95, 0.22), (236, 216, 204), ring=True),
    "Gyromitra esculenta": Look("morel", 0.065, 0.52, 0.54, "pits", "none", (0.5, 0.32), (228, 216, 198)),
    "Pleurotus pulmonarius": Look("bracket", 0.1, 0.1, 0.7, "smooth", "gills", (0.0, 0.0), (0, 0, 0), cluster=2),
    "Armillaria mellea": Look("flat", 0.1, 0.6, 0.7, "scales", "gills", (0.9, 0.12), (225, 200, 150), ring=True,
                              cluster=3),
    "Galerina marginata": Look("flat", 0.085, 0.64, 0.62, "smooth", "gills", (0.85, 0.1), (205, 175, 135), ring=True,
                               cluster=3),
    "Kuehneromyces mutabilis": Look("flat", 0.092, 0.62, 0.66, "smooth", "gills", (0.85, 0.11), (212, 182, 142),
                                    ring=True, cluster=3),
    "Scleroderma citrinum": Look("ball", 0.12, 0.2, 0.88, "warts", "none", (0.12, 0.4), (215, 200, 160)),
    # identifications above species in the sample (genus and family rank) get looks of their own
    "Russula": Look("flat", 0.33, 0.5, 0.6, "smooth", "gills", (0.6, 0.25), (245, 245, 240)),
    "Cortinarius": Look("dome", 0.78, 0.45, 0.55, "streaks", "gills", (0.8, 0.25), (200, 180, 210)),
    "Polyporaceae": Look("bracket", 0.08, 0.6, 0.35, "bands", "pores", (0.0, 0.0), (0, 0, 0), cluster=2),
}

BACKGROUNDS = [(92, 70, 48), (70, 92, 50), (120, 110, 80), (55, 60, 40), (140, 120, 95), (40, 50, 35)]


def _rgb(h: float, s: float, v: float) -> tuple[int, int, int]:
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, min(max(s, 0.0), 1.0), min(max(v, 0.0), 1.0))
    return int(r * 255), int(g * 255), int(b * 255)


def _jitter_colour(look: Look, rng: np.random.Generator) -> tuple[int, int, int]:
    return _rgb(look.hue + rng.normal(0, 0.015), look.sat + rng.normal(0, 0.06), look.val + rng.normal(0, 0.07))


def _shade(rgb: tuple[int, int, int], factor: float) -> tuple[int, int, int]:
    return tuple(int(min(255, max(0, c * factor))) for c in rgb)  # type: ignore[return-value]


def _background(size: int, rng: np.random.Generator) -> Image.Image:
    base = np.array(BACKGROUNDS[rng.integers(len(BACKGROUNDS))], dtype=np.float32)
    base = base * rng.uniform(0.8, 1.2)
    noise = rng.normal(0, 1, (size // 8 + 1, size // 8 + 1, 3)).astype(np.float32) * 14
    coarse = np.asarray(Image.fromarray(np.uint8(np.clip(128 + noise, 0, 255))).resize((size, size), Image.BILINEAR))
    pixels = base + (coarse.astype(np.float32) - 128)
    img = Image.fromarray(np.uint8(np.clip(pixels, 0, 255)))
    draw = ImageDraw.Draw(img)
    for _ in range(rng.integers(6, 18)):  # fallen leaves and twigs
        x, y = rng.uniform(0, size, 2)
        r = rng.uniform(size * 0.02, size * 0.08)
        tone = _shade(tuple(int(c) for c in base), rng.uniform(0.6, 1.4))
        if rng.random() < 0.6:
            draw.ellipse([x - r, y - r / 2, x + r, y + r / 2], fill=tone)
        else:
            draw.line([x, y, x + rng.uniform(-3, 3) * r, y + rng.uniform(-1, 1) * r], fill=tone, width=max(1,
                                                                                                           int(r / 4)))
    return img


def _stem(draw: ImageDraw.ImageDraw, look: Look, cx: float, base_y: float, top_y: float, width: float,
          rng: np.random.Generator) -> None:
    colour = _shade(look.stem_rgb, rng.uniform(0.85, 1.05))
    draw.polygon(
        [(cx - width * 0.42, top_y), (cx + width * 0.42, top_y), (cx + width * 0.55, base_y), (cx - width * 0.55,
                                                                                               base_y)],
        fill=colour,
    )
    if look.shape == "dome" and look.underside == "pores":  # a bulbous bolete foot
        draw.ellipse([cx - width * 0.8, base_y - width * 0.9, cx + width * 0.8, base_y + width * 0.2], fill=colour)
    if look.ring:
        ry = top_y + (base_y - top_y) * 0.25
        draw.ellipse([cx - width * 0.7, ry - width * 0.15, cx + width * 0.7, ry + width * 0.2], fill=_shade(colour,
                                                                                                            0.93))


def _underside(draw: ImageDraw.ImageDraw, kind: str, box: tuple[float, float, float, float], colour: tuple,
               rng: np.random.Generator) -> None:
    x0, y0, x1, y1 = box
    if kind == "none" or x1 - x0 < 4:
        return
    draw.ellipse(box, fill=_shade(colour, 0.8))
    n = int(rng.integers(10, 18))
    for i in range(n + 1):
        x = x0 + (x1 - x0) * i / n
        if kind == "gills":
            draw.line([(x, y0 + (y1 - y0) * 0.3), ((x0 + x1) / 2, y1)], fill=_shade(colour, 0.6), width=1)
        elif kind == "ridges":
            foot = ((x0 + x1) / 2 + (x - (x0 + x1) / 2) * 0.3, y1 + (y1 - y0))
            draw.line([(x, y0), foot], fill=_shade(colour, 0.75), width=2)
        elif kind == "pores":
            yy = y0 + (y1 - y0) * rng.uniform(0.2, 0.8)
            draw.point([(x, yy)], fill=_shade(colour, 0.5))


def _texture(draw: ImageDraw.ImageDraw, look: Look, box: tuple[float, float, float, float], cap: tuple,
             rng: np.random.Generator) -> None:
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    kind = look.texture
    if kind == "spots":
        for _ in range(rng.integers(7, 16)):
            x, y = x0 + w * rng.uniform(0.15, 0.85), y0 + h * rng.uniform(0.1, 0.7)
            r = w * rng.uniform(0.025, 0.05)
            draw.ellipse([x - r, y - r, x + r, y + r], fill=(245, 240, 225))
    elif kind == "scales":
        for _ in range(rng.integers(12, 24)):
            x, y = x0 + w * rng.uniform(0.15, 0.85), y0 + h * rng.uniform(0.05, 0.95)
            draw.polygon([(x, y), (x + w * 0.06, y + h * 0.03), (x - w * 0.04, y + h * 0.06)], fill=(150, 120, 90))
    elif kind == "bands":
        for i in range(int(rng.integers(4, 7))):
            f = 1 - i * 0.14
            tone = _rgb(look.hue + rng.normal(0, 0.05), look.sat, 0.25 + 0.6 * (i % 2))
            draw.pieslice([x0 + w * (1 - f) / 2, y0 + h * (1 - f), x1 - w * (1 - f) / 2, y1 + h * (1 - f) * 0.2],
                          180, 360, fill=tone)
    elif kind == "warts":
        for _ in range(rng.integers(25, 45)):
            x, y = x0 + w * rng.uniform(0.1, 0.9), y0 + h * rng.uniform(0.1, 0.9)
            draw.point([(x, y), (x + 1, y)], fill=_shade(cap, 0.7))
    elif kind == "pits":
        for _ in range(rng.integers(18, 30)):
            x, y = x0 + w * rng.uniform(0.15, 0.85), y0 + h * rng.uniform(0.1, 0.9)
            r = w * rng.uniform(0.04, 0.08)
            draw.ellipse([x - r, y - r * 1.3, x + r, y + r * 1.3], fill=_shade(cap, 0.45))
    elif kind == "streaks":
        for _ in range(rng.integers(5, 10)):
            x = x0 + w * rng.uniform(0.2, 0.8)
            draw.line([(x, y0 + h * 0.1), ((x0 + x1) / 2, y0)], fill=_shade(cap, 0.8), width=1)


def _fruit_body(draw: ImageDraw.ImageDraw, look: Look, cx: float, ground: float, scale: float,
                rng: np.random.Generator) -> None:
    """Draw one fruit body standing on ``ground`` at ``cx``; ``scale`` is the cap width in pixels."""
    cap = _jitter_colour(look, rng)
    w = scale * rng.uniform(0.85, 1.15)
    stem_len = scale * look.stem[0] * rng.uniform(0.8, 1.2)
    stem_w = scale * look.stem[1] * rng.uniform(0.85, 1.15)
    top = ground - stem_len
    shape = look.shape
    if shape in {"dome", "flat", "cone", "bell", "funnel"}:
        _stem(draw, look, cx, ground, top, stem_w, rng)
        if shape in {"dome", "flat"}:
            h = w * rng.uniform(0.45, 0.6) * (0.5 if shape == "flat" else 1.0)
            _underside(draw, look.underside, (cx - w / 2, top - h * 0.12, cx + w / 2, top + h * 0.15), cap, rng)
            box = (cx - w / 2, top - h, cx + w / 2, top + h * 0.1)
            draw.pieslice([box[0], box[1], box[2], top + h], 180, 360, fill=cap)
        elif shape == "cone":
            h = w * rng.uniform(0.8, 1.1)
            box = (cx - w / 2, top - h, cx + w / 2, top)
            draw.polygon([(cx - w / 2, top), (cx + w / 2, top), (cx + w * 0.05, top - h)], fill=cap)
        elif shape == "bell":
            h = w * rng.uniform(1.0, 1.5)
            box = (cx - w / 2, top - h, cx + w / 2, top)
            draw.ellipse([cx - w / 2, top - h, cx + w / 2, top + h * 0.15], fill=cap)
            draw.line([(cx - w / 2, top), (cx + w / 2, top)], fill=_shade(cap, 0.5), width=2)
        else:  # funnel
            h = w * rng.uniform(0.35, 0.5)
            _underside(draw, look.underside, (cx - w * 0.3, top - h * 0.2, cx + w * 0.3, top + h * 0.3), cap, rng)
            box = (cx - w / 2, top - h, cx + w / 2, top)
            draw.polygon([(cx - w / 2, top - h), (cx + w / 2, top - h), (cx + stem_w / 2, top), (cx - stem_w / 2, top)],
                         fill=cap)
            draw.ellipse([cx - w / 2, top - h * 1.25, cx + w / 2, top - h * 0.75], fill=_shade(cap, 0.85))
        _texture(draw, look, box, cap, rng)
    elif shape == "bracket":
        for i in range(look.cluster):
            bw = w * rng.uniform(0.7, 1.1) * (1 - 0.15 * i)
            by = ground - w * 0.35 * i - w * 0.2
            bx = cx + rng.normal(0, w * 0.1)
            box = (bx - bw / 2, by - bw * 0.45, bx + bw / 2, by + bw * 0.1)
            draw.pieslice([box[0], box[1], box[2], by + bw * 0.45], 180, 360, fill=_jitter_colour(look, rng))
            _texture(draw, look, box, cap, rng)
            if look.underside == "gills":
                _underside(draw, "gills", (bx - bw / 2, by - 2, bx + bw / 2, by + bw * 0.12), cap, rng)
    elif shape == "ball":
        _stem(draw, look, cx, ground, ground - stem_len, stem_w, rng)
        r = w * 0.45
        box = (cx - r, ground - stem_len - r * 1.7, cx + r, ground - stem_len + r * 0.2)
        draw.ellipse(box, fill=cap)
        _texture(draw, look, box, cap, rng)
    elif shape == "coral":
        def branch(x: float, y: float, angle: float, length: float, width: float, depth: int) -> None:
            x2, y2 = x + math.cos(angle) * length, y - math.sin(angle) * length
            draw.line([(x, y), (x2, y2)], fill=_jitter_colour(look, rng), width=max(1, int(width)))
            if depth > 0:
                for da in (-0.45, 0.45):
                    branch(x2, y2, angle + da + rng.normal(0, 0.12), length * 0.72, width * 0.7, depth - 1)

        for _ in range(3):
            branch(cx + rng.normal(0, w * 0.1), ground, math.pi / 2 + rng.normal(0, 0.25), w * 0.35, w * 0.12, 4)
    elif shape == "morel":
        _stem(draw, look, cx, ground, top, stem_w, rng)
        h = w * rng.uniform(1.1, 1.4)
        box = (cx - w * 0.38, top - h, cx + w * 0.38, top + h * 0.05)
        draw.ellipse(box, fill=cap)
        draw.polygon([(cx - w * 0.3, top - h * 0.7), (cx + w * 0.3, top - h * 0.7), (cx, top - h * 1.1)], fill=cap)
        _texture(draw, look, box, cap, rng)


SHAPES = ["dome", "flat", "cone", "funnel", "bell", "bracket", "ball", "coral", "morel"]
TEXTURES = ["spots", "scales", "bands", "warts", "pits", "smooth", "streaks"]
UNDERSIDES = ["gills", "pores", "ridges", "none"]


def look_for(index: int) -> Look:
    """A stable look for species number ``index`` of a scale rehearsal: shape, texture, underside, colours and
    proportions spread over the index (neighbouring numbers — one genus — share a shape, as relatives do)."""
    rng = np.random.default_rng([7919, index])
    shape = SHAPES[(index // 5) % len(SHAPES)]
    has_stem = shape not in ("bracket", "coral")
    return Look(shape, float((index * 0.6180339887) % 1.0), float(rng.uniform(0.1, 0.95)),
                float(rng.uniform(0.4, 0.98)), TEXTURES[index % len(TEXTURES)],
                UNDERSIDES[(index // 7) % len(UNDERSIDES)],
                (float(rng.uniform(0.4, 1.4)), float(rng.uniform(0.08, 0.4))) if has_stem else (0.0, 0.0),
                tuple(int(v) for v in rng.integers(150, 250, 3)) if has_stem else (0, 0, 0),
                ring=bool(rng.random() < 0.25), cluster=int(rng.choice([1, 1, 1, 2, 3])))


HARD_KINDS = ("partial", "blurred", "cluttered", "dark")


def _made_hard(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """One of the ways a real upload is hard: only part of the find in frame, out of focus, behind grass and leaves,
    or shot in the shade of a spruce."""
    kind = HARD_KINDS[int(rng.integers(len(HARD_KINDS)))]
    w, h = img.size
    if kind == "partial":
        cw, ch = int(w * rng.uniform(0.4, 0.6)), int(h * rng.uniform(0.4, 0.6))
        x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        return img.crop((x0, y0, x0 + cw, y0 + ch))
    if kind == "blurred":
        return img.filter(ImageFilter.GaussianBlur(w * rng.uniform(0.012, 0.025)))
    if kind == "cluttered":
        draw = ImageDraw.Draw(img)
        for _ in range(int(rng.integers(12, 26))):
            x, y = rng.uniform(0, w), rng.uniform(h * 0.3, h)
            tone = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
            draw.line([x, y, x + rng.normal(0, w * 0.05), y - rng.uniform(h * 0.2, h * 0.6)],
                      fill=_shade(tone, rng.uniform(0.8, 1.6)), width=int(max(1, w * rng.uniform(0.008, 0.02))))
        return img
    pixels = np.asarray(img, dtype=np.float32) * rng.uniform(0.3, 0.5) + rng.normal(0, 6, (h, w, 3))
    return Image.fromarray(np.uint8(np.clip(pixels, 0, 255)))


def draw_mushroom(species: str | Look, rng: np.random.Generator, size: int = 256, hard: float = 0.0) -> Image.Image:
    """A new picture of ``species`` (a name of LOOKS, or a Look): random background, light, pose, scale and crop
    around fixed traits; with probability ``hard`` also partial, blurred, cluttered or dark (drawn after the rest,
    so ``hard=0`` draws the same pictures as before it existed)."""
    look = species if isinstance(species, Look) else LOOKS[species]
    img = _background(size, rng)
    draw = ImageDraw.Draw(img)
    scale = size * rng.uniform(0.28, 0.45)
    ground = size * rng.uniform(0.78, 0.95)
    for i in range(look.cluster):
        offset = (i - (look.cluster - 1) / 2) * scale * 0.55
        _fruit_body(draw, look, size / 2 + offset + rng.normal(0, size * 0.05), ground + rng.normal(0, size * 0.02),
                    scale * (1 - 0.12 * i), rng)
    img = img.rotate(rng.normal(0, 9), resample=Image.BILINEAR, fillcolor=BACKGROUNDS[0])
    # light: a brightness gradient across the frame plus a global exposure change
    gx = np.linspace(rng.uniform(0.75, 1.0), rng.uniform(1.0, 1.25), size, dtype=np.float32)
    light = (gx[None, :, None] if rng.random() < 0.5 else gx[:, None, None]) * rng.uniform(0.8, 1.15)
    pixels = np.asarray(img, dtype=np.float32) * light + rng.normal(0, 4, (size, size, 3))
    img = Image.fromarray(np.uint8(np.clip(pixels, 0, 255)))
    if rng.random() < 0.3:
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.2)))
    # crop: a random window, so the subject is not always centred, at a random aspect ratio
    cw = int(size * rng.uniform(0.75, 1.0))
    ch = int(cw * rng.uniform(0.75, 1.0))
    x0 = int(rng.integers(0, size - cw + 1))
    y0 = int(rng.integers(0, size - ch + 1))
    img = img.crop((x0, y0, x0 + cw, y0 + ch))
    if rng.random() < 0.5:
        img = img.transpose(Image.FLIP_LEFT_RIGHT)
    if hard > 0 and rng.random() < hard:
        img = _made_hard(img, rng)
    return img


def draw_scale_photo(seed: int, species: int, photo_id: int, size: int) -> bytes:
    """Photo ``photo_id`` of rehearsal species ``species``: its species' look, a pose of its own (distinct bytes)."""
    img = draw_mushroom(look_for(species), np.random.default_rng([seed, photo_id]), size)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=85)
    return buf.getvalue()

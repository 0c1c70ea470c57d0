"""Contact sheets: rows of thumbnails a person looks at rather than reads — what each species looks like,
what each licence covers, what cleaning dropped and why, which test photos the model got confidently wrong."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from PIL import Image, ImageDraw, ImageFont, ImageOps

from fungilib.artifacts.downloads import reason_kind
from fungilib.fsutil import atomic_path

THUMB = 112
LABEL_WIDTH = 230
PAD = 6
CAPTION = 28


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without scalable default font
        return ImageFont.load_default()


def _thumb(path: str) -> Image.Image:
    """A square thumbnail, or a grey tile saying why there is none."""
    try:
        with Image.open(path) as img:
            img.draft("RGB", (THUMB * 2, THUMB * 2))
            tile = ImageOps.fit(ImageOps.exif_transpose(img).convert("RGB"), (THUMB, THUMB))
    except Exception as exc:  # a broken file is exactly what some sheets show
        tile = Image.new("RGB", (THUMB, THUMB), (200, 200, 200))
        draw = ImageDraw.Draw(tile)
        draw.text((6, THUMB // 2 - 14), "unreadable", fill=(90, 0, 0), font=_font(13))
        draw.text((6, THUMB // 2 + 2), type(exc).__name__[:16], fill=(60, 60, 60), font=_font(11))
    return tile


def contact_sheet(items: pd.DataFrame, path: Path, title: str, per_row: int = 6, max_rows: int = 40) -> Path:
    """Draw ``items`` (columns ``row``, ``path`` and optional ``caption``) as one row of thumbnails per ``row``.

    Rows keep their first-appearance order; at most ``per_row`` thumbnails per row and ``max_rows`` rows (the
    title says how many were left out).
    """
    rows = list(dict.fromkeys(items["row"].astype(str)))
    shown = rows[:max_rows]
    height = 40 + len(shown) * (THUMB + CAPTION + PAD) + PAD
    width = LABEL_WIDTH + per_row * (THUMB + PAD) + PAD
    sheet = Image.new("RGB", (width, max(height, 80)), (251, 246, 238))
    draw = ImageDraw.Draw(sheet)
    more = f"  (first {max_rows} of {len(rows)} rows)" if len(rows) > max_rows else ""
    draw.text((PAD, 10), title + more, fill=(40, 25, 10), font=_font(18))
    if not shown:
        draw.text((PAD, 44), "nothing to show", fill=(90, 90, 90), font=_font(15))
    for r, name in enumerate(shown):
        y = 40 + r * (THUMB + CAPTION + PAD)
        group = items[items["row"].astype(str) == name]
        draw.text((PAD, y + 4), _wrap(name, 26), fill=(40, 25, 10), font=_font(14))
        draw.text((PAD, y + THUMB - 14), f"{len(group)} image{'s' if len(group) != 1 else ''}", fill=(110, 110, 110),
                  font=_font(12))
        for c, item in enumerate(group.head(per_row).itertuples()):
            x = LABEL_WIDTH + c * (THUMB + PAD)
            sheet.paste(_thumb(str(item.path)), (x, y))
            caption = str(getattr(item, "caption", "") or "")
            if caption:
                draw.text((x, y + THUMB + 2), _wrap(caption, 18, lines=2), fill=(60, 60, 60), font=_font(10))
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        sheet.save(tmp, "PNG")
    return path


def _wrap(text: str, width: int, lines: int = 3) -> str:
    words, out, line = text.split(), [], ""
    for word in words:
        if len(line) + len(word) + 1 > width and line:
            out.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    out.append(line)
    return "\n".join(out[:lines])


MAX_SPECIES_ROWS = 40


def sheet_species(manifest: pd.DataFrame, seed: int = 0, rows: int = MAX_SPECIES_ROWS) -> tuple[list[str], str]:
    """Which species a sheet shows, largest first: all of them, or (thousands of classes) the largest half of
    ``rows`` and a seeded sample of the rest — the long tail is where labels go wrong. And what the title says."""
    sizes = manifest["species"].value_counts()
    if len(sizes) <= rows:
        return list(sizes.index), ""
    head = list(sizes.index[: rows // 2])
    tail = pd.Series(sizes.index[rows // 2:]).sample(rows - len(head), random_state=seed).tolist()
    chosen = head + sorted(tail, key=lambda name: (-sizes[name], name))
    return chosen, f" — the {len(head)} largest and {len(tail)} sampled of the other {len(sizes) - len(head):,}"


def class_sheets(manifest: pd.DataFrame, out: Path, per_row: int = 6, seed: int = 0) -> dict[str, Path]:
    """One row per species (largest classes first; a sample of them beyond 40) and one per licence, from a
    manifest with absolute paths."""
    picked = manifest.sample(frac=1.0, random_state=seed)  # a random few per row, not the first files
    chosen, note = sheet_species(manifest, seed)
    species = picked[picked["species"].isin(chosen)]
    species = species.assign(row=pd.Categorical(species["species"], categories=chosen, ordered=True))
    species = species.sort_values("row", kind="stable").assign(row=lambda f: f["row"].astype(str),
                                                               caption=lambda f: f["license"].astype(str))
    licences = picked.assign(row=picked["license"].astype(str).replace("", "(no licence stated)"),
                             caption=picked["species"].astype(str))
    order = licences["row"].value_counts().index
    licences = licences.assign(row=pd.Categorical(licences["row"], categories=order, ordered=True)).sort_values(
        "row", kind="stable").assign(row=lambda f: f["row"].astype(str))
    return {"species_sheet": contact_sheet(species, out / "contact_sheet_species.png",
                                           "A few images of each species (caption: licence)" + note, per_row),
            "licence_sheet": contact_sheet(licences, out / "contact_sheet_licences.png",
                                           "Images per licence (caption: species)", per_row)}


def dropped_sheet(dropped: pd.DataFrame, out: Path, per_row: int = 6) -> Path:
    """What cleaning left out, one row per kind of reason (corrupt, duplicate, too small, …)."""

    shown = dropped[dropped["path"].fillna("").astype(str) != ""].copy()
    shown["row"] = shown["reason"].astype(str).map(reason_kind)
    shown["caption"] = shown["species"].astype(str)
    return contact_sheet(shown, out / "dropped_sheet.png", "Dropped by cleaning, by reason", per_row)


def confidently_wrong_sheet(predictions: pd.DataFrame, out: Path, count: int = 24) -> Path:
    """The test images the model got wrong with the highest confidence: true species → predicted (p).

    ``predictions`` needs path, true, predicted and confidence columns.
    """
    wrong = predictions[predictions["true"] != predictions["predicted"]].sort_values("confidence", ascending=False)
    wrong = wrong.head(count).assign(row=lambda f: "true: " + f["true"].astype(str),
                                     caption=lambda f: "→ " + f["predicted"].astype(str)
                                     + " " + (100 * f["confidence"]).round(0).astype(int).astype(str) + "%")
    return contact_sheet(wrong, out / "confidently_wrong.png",
                         f"Most confidently wrong test images ({len(wrong)} shown)", per_row=6)

"""``data show``: a contact sheet PNG of a dataset's samples with their captions.

    codepercept-rl data show DIR [--n 12] [--out DIR/contact_sheet.png]

Samples are picked round-robin over families (first items of each, deterministic). Only stored PNGs are
drawn (with Pillow); no program is run.
"""

from __future__ import annotations

import io
import os
import textwrap
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from codepercept_rl.utils.io import atomic_write_bytes
from data_tools.store import Dataset, Item

TILE = 300
CAPTION_LINES = 11
LINE_PX = 14


def pick_samples(items: list[Item], n: int) -> list[Item]:
    """Up to ``n`` items, round-robin over families in order of first appearance."""
    by_family: dict[str, list[Item]] = {}
    for it in items:
        by_family.setdefault(it.family, []).append(it)
    picked: list[Item] = []
    depth = 0
    while len(picked) < n and any(len(v) > depth for v in by_family.values()):
        picked += [v[depth] for v in by_family.values() if len(v) > depth][: n - len(picked)]
        depth += 1
    return picked


def contact_sheet(
    root: str | os.PathLike, n: int = 12, columns: int = 4, out: str | os.PathLike | None = None
) -> Path:
    """Draw ``n`` samples (image, id, wrapped caption) into one PNG; returns its path.

    Raises:
        UserError: no dataset at ``root``.
    """
    ds = Dataset(root)
    samples = pick_samples(ds.load_items(), n)
    columns = max(1, min(columns, len(samples)))
    rows = -(-len(samples) // columns)
    text_h = LINE_PX * (CAPTION_LINES + 1) + 8
    sheet = Image.new("RGB", (columns * TILE, rows * (TILE + text_h)), "white")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default(size=11)
    for i, item in enumerate(samples):
        x, y = (i % columns) * TILE, (i // columns) * (TILE + text_h)
        with Image.open(ds.image_path(item)) as im:
            im = im.convert("RGB")
            im.thumbnail((TILE - 10, TILE - 10))
            sheet.paste(im, (x + (TILE - im.width) // 2, y + (TILE - im.height) // 2))
        draw.text((x + 5, y + TILE), item.id, fill="black", font=font)
        lines = textwrap.wrap(item.caption, width=52)
        if len(lines) > CAPTION_LINES:
            lines = lines[: CAPTION_LINES - 1] + [lines[CAPTION_LINES - 1][:48] + " ..."]
        for j, line in enumerate(lines):
            draw.text((x + 5, y + TILE + LINE_PX * (j + 1)), line, fill=(60, 60, 60), font=font)
        draw.rectangle([x, y, x + TILE - 1, y + TILE + text_h - 1], outline=(200, 200, 200))
    path = Path(out) if out is not None else ds.root / "contact_sheet.png"
    buf = io.BytesIO()
    sheet.save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())
    return path

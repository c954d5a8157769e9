"""Near-duplicate detection: perceptual image hashes, normalised code hashes, and grouping.

    groups = near_duplicate_groups(image_hashes, code_hashes, max_distance=4)   # list of index lists

* ``image_phash(png)``: a 64-bit DCT perceptual hash (pHash): grayscale 32x32, 2-D DCT, the 8x8 lowest
  frequencies (DC dropped from the median), one bit per coefficient above their median. Two renders of
  the same picture at a different dpi, or with a tiny shift, differ in a few bits.
* ``code_hash(code)``: sha256 of the program's AST dump, so comments, blank lines, spacing and quote style do
  not matter (the code is parsed, never run). Code that does not parse falls back to whitespace-normalised text.
* ``find_duplicates`` (what dedup removes): item j duplicates an earlier *kept* item i when their normalised
  code is equal, or when all of these hold: pHash distance <= ``max_distance``, mean absolute difference of
  32x32 RGB thumbnails <= ``max_mad`` levels (pHash is grayscale: this keeps a red and a blue circle apart),
  and the same drawn texts (so "R1 = 5 Ω" and "R1 = 10 Ω" stay two items). Not transitive: each item is
  compared with kept items only, so chains of small changes are not collapsed.
* ``near_duplicate_groups`` (what splits keep together): connected components of pHash distance <=
  ``max_distance`` or equal code. Transitive on purpose: nothing similar may straddle train and test.

Candidates come from LSH bands (``max_distance + 1`` bands of the 64 bits: by the pigeonhole principle two
hashes within the distance share at least one band exactly), so both scale to large datasets.
"""

from __future__ import annotations

import ast
import hashlib
import io
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy.fft import dctn

from reward_servers.scoring import decode_png


def image_phash(png: bytes) -> int:
    """64-bit perceptual hash of a PNG (see module docstring).

    Raises:
        ValueError: not a decodable PNG.
    """
    return _phash_of(Image.fromarray(decode_png(png)))


def _phash_of(rgb: Image.Image) -> int:
    gray = rgb.convert("L").resize((32, 32), Image.Resampling.LANCZOS)
    coeffs = dctn(np.asarray(gray, dtype=np.float64), norm="ortho")[:8, :8].ravel()
    bits = coeffs > np.median(coeffs[1:])
    return int("".join("1" if b else "0" for b in bits), 2)


THUMB_SIDE = 32


@dataclass(frozen=True)
class ImageSignature:
    """What dedup compares: a 64-bit pHash and a 32x32 RGB thumbnail (box-filtered, uint8 bytes)."""

    phash: int
    thumb: bytes


def image_signature(png: bytes) -> ImageSignature:
    """pHash and thumbnail of a PNG.

    Raises:
        ValueError: not a decodable PNG.
    """
    rgb = Image.fromarray(decode_png(png))
    thumb = rgb.resize((THUMB_SIDE, THUMB_SIDE), Image.Resampling.BOX).tobytes()
    return ImageSignature(_phash_of(rgb), thumb)


def thumb_mad(a: bytes, b: bytes) -> float:
    """Mean absolute difference of two thumbnails, in 0-255 levels."""
    return float(np.abs(np.frombuffer(a, np.uint8).astype(np.int16) - np.frombuffer(b, np.uint8)).mean())


def hamming(a: int, b: int) -> int:
    """Number of differing bits."""
    return (a ^ b).bit_count()


def code_hash(code: str) -> str:
    """sha256 (hex) of the normalised program: its AST dump, or collapsed whitespace if it does not parse."""
    try:
        text = ast.dump(ast.parse(code), annotate_fields=False, include_attributes=False)
    except (SyntaxError, ValueError):
        text = " ".join(code.split())
    return hashlib.sha256(text.encode()).hexdigest()


class _UnionFind:
    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, i: int, j: int) -> None:
        ri, rj = self.find(i), self.find(j)
        if ri != rj:  # the smaller index stays root, so a group's root is its first member
            self.parent[max(ri, rj)] = min(ri, rj)


def _bands(max_distance: int) -> list[tuple[int, int]]:
    """(shift, width) of ``max_distance + 1`` bands covering the 64 bits."""
    edges = np.linspace(0, 64, max_distance + 2).astype(int)
    return [(int(edges[b]), int(edges[b + 1] - edges[b])) for b in range(max_distance + 1)]


def find_duplicates(
    signatures: Sequence[ImageSignature | None],
    code_hashes: Sequence[str | None],
    texts: Sequence[tuple[str, ...] | None] | None = None,
    *,
    max_distance: int = 4,
    max_mad: float = 1.0,
) -> dict[int, int]:
    """Which items duplicate an earlier kept one (module docstring); returns ``{duplicate: kept}`` indices.

    Args:
        signatures: one per item (None: no image; matched by code only).
        code_hashes: one normalised code hash per item (None: matched by image only).
        texts: the sorted drawn texts per item (None: unknown, not compared).
        max_distance: largest pHash Hamming distance (0-16).
        max_mad: largest thumbnail mean absolute difference, in levels.
    """
    n = len(signatures)
    texts = texts if texts is not None else [None] * n
    if not len(code_hashes) == len(texts) == n:
        raise ValueError(f"{n} signatures, {len(code_hashes)} code hashes, {len(texts)} texts")
    if not 0 <= max_distance <= 16:
        raise ValueError(f"max_distance must be in [0, 16], got {max_distance}")
    bands = _bands(max_distance)
    buckets: list[dict[int, list[int]]] = [defaultdict(list) for _ in bands]
    by_code: dict[str, int] = {}
    dups: dict[int, int] = {}
    for j in range(n):
        code, sig = code_hashes[j], signatures[j]
        if code is not None and code in by_code:
            dups[j] = by_code[code]
            continue
        match = None
        if sig is not None:
            keys = [(sig.phash >> shift) & ((1 << width) - 1) for shift, width in bands]
            for b, key in enumerate(keys):
                for i in buckets[b].get(key, []):
                    other = signatures[i]
                    assert other is not None
                    if (
                        hamming(sig.phash, other.phash) <= max_distance
                        and thumb_mad(sig.thumb, other.thumb) <= max_mad
                        and (texts[i] is None or texts[j] is None or texts[i] == texts[j])
                    ):
                        match = i
                        break
                if match is not None:
                    break
        if match is not None:
            dups[j] = match
            continue
        if code is not None:
            by_code[code] = j
        if sig is not None:
            for b, key in enumerate(keys):
                buckets[b][key].append(j)
    return dups


def near_duplicate_groups(
    image_hashes: Sequence[int | None], code_hashes: Sequence[str | None], max_distance: int = 4
) -> list[list[int]]:
    """Group indices whose images are within ``max_distance`` bits or whose code hashes are equal.

    Args:
        image_hashes: one pHash per item (None: no image, matched by code only).
        code_hashes: one normalised code hash per item (None: matched by image only).
        max_distance: largest Hamming distance between pHashes still counted as a near-duplicate (0-16).

    Returns:
        Groups of indices, each sorted, ordered by their first index; every index is in exactly one group.
    """
    n = len(image_hashes)
    if len(code_hashes) != n:
        raise ValueError(f"{n} image hashes but {len(code_hashes)} code hashes")
    if not 0 <= max_distance <= 16:
        raise ValueError(f"max_distance must be in [0, 16], got {max_distance}")
    uf = _UnionFind(n)
    by_code: dict[str, int] = {}
    for i, h in enumerate(code_hashes):
        if h is not None:
            if h in by_code:
                uf.union(by_code[h], i)
            else:
                by_code[h] = i
    for lo, width in _bands(max_distance):
        buckets: dict[int, list[int]] = defaultdict(list)
        for i, h in enumerate(image_hashes):
            if h is not None:
                buckets[(h >> lo) & ((1 << width) - 1)].append(i)
        for members in buckets.values():
            for x in range(len(members)):
                for y in range(x + 1, len(members)):
                    i, j = members[x], members[y]
                    if uf.find(i) != uf.find(j) and hamming(image_hashes[i], image_hashes[j]) <= max_distance:
                        uf.union(i, j)
    groups: dict[int, list[int]] = defaultdict(list)
    for i in range(n):
        groups[uf.find(i)].append(i)
    return sorted(groups.values(), key=lambda g: g[0])


def png_size(png: bytes) -> tuple[int, int]:
    """(width, height) of a PNG without decoding its pixels."""
    with Image.open(io.BytesIO(png)) as im:
        return im.size

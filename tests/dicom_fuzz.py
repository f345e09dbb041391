"""A seeded generator of damaged CT DICOMs, from valid ones: what a batch job or the demo meets in the wild.

Five kinds of damage, each applied many times at seeded random places:
- truncation at an offset (inside the preamble, the file meta, the header, at and inside the pixel data);
- byte flips in the header (between the DICM prefix and the pixel data) or in the pixel data;
- a chunk of another file spliced in (overwriting bytes in place, or inserted);
- a tag deleted (Rows, BitsAllocated, RescaleSlope, PixelData, ...), the file otherwise well formed.
"""

import random
from pathlib import Path
from typing import List

import pydicom

DICM_END = 132  # 128-byte preamble + b"DICM"
PIXEL_DATA_TAG = b"\xe0\x7f\x10\x00"  # (7FE0,0010), little endian
# Tags whose absence a reader has to cope with; each file gets one of them deleted.
DELETABLE_TAGS = (
    "Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation", "SamplesPerPixel",
    "PhotometricInterpretation", "RescaleSlope", "RescaleIntercept", "Modality", "PixelData", "PixelSpacing",
    "SOPClassUID",
)
# mutations per valid file, by kind: 5 kinds, 72 files per valid file
COUNTS = {"truncate": 20, "flip_header": 14, "flip_pixels": 14, "splice": 10, "delete_tag": 14}


def pixel_data_offset(data: bytes) -> int:
    """Offset of the (7FE0,0010) element's value: after tag (4), VR (2), reserved (2) and length (4)."""
    return data.rindex(PIXEL_DATA_TAG) + 12


def truncate(data: bytes, rng: random.Random, pixels: int) -> bytes:
    boundaries = [0, 1, 128, DICM_END - 1, DICM_END, DICM_END + 8, pixels - 12, pixels - 1, pixels, len(data) - 1]
    offset = boundaries.pop(rng.randrange(len(boundaries))) if rng.random() < 0.4 else rng.randrange(len(data))
    return data[:offset]


def flip(data: bytes, rng: random.Random, start: int, end: int) -> bytes:
    """1-8 bytes in `[start, end)` XORed with a random non-zero value."""
    damaged = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        damaged[rng.randrange(start, end)] ^= rng.randint(1, 255)
    return bytes(damaged)


def splice(data: bytes, other: bytes, rng: random.Random) -> bytes:
    """A 4-512-byte chunk of `other` written over, or inserted into, `data` after its DICM prefix."""
    size = rng.randint(4, 512)
    source = rng.randrange(0, len(other) - size)
    chunk = other[source : source + size]
    at = rng.randrange(DICM_END, len(data) - 1)
    if rng.random() < 0.5:
        return data[:at] + chunk + data[at + size :]
    return data[:at] + chunk + data[at:]


def delete_tag(path: Path, destination: Path, keyword: str) -> None:
    ds = pydicom.dcmread(path)
    del ds[keyword]
    ds.save_as(destination, enforce_file_format=False)


def damage(kind: str, data: bytes, other: bytes, rng: random.Random) -> bytes:
    """`data` (a valid DICOM's bytes) damaged one way; `other` is another valid file, for splicing."""
    pixels = pixel_data_offset(data)
    if kind == "truncate":
        return truncate(data, rng, pixels)
    if kind == "flip_header":
        return flip(data, rng, DICM_END, pixels)
    if kind == "flip_pixels":
        return flip(data, rng, pixels, len(data))
    return splice(data, other, rng)


def mutate_ct_dicoms(valid: List[Path], out_dir: Path, seed: int = 0) -> List[Path]:
    """Writes `COUNTS` damaged versions of each file in `valid` into `out_dir`; returns their paths, sorted.

    The same `valid` files and `seed` give the same bytes.
    """
    rng = random.Random(seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    originals = [Path(path).read_bytes() for path in valid]
    written = []
    for index, (path, data) in enumerate(zip(valid, originals, strict=True)):
        other = originals[(index + 1) % len(originals)]
        for kind, count in COUNTS.items():
            for number in range(count):
                destination = out_dir / f"{index:02d}_{kind}_{number:02d}.dcm"
                if kind == "delete_tag":
                    delete_tag(path, destination, DELETABLE_TAGS[number % len(DELETABLE_TAGS)])
                else:
                    destination.write_bytes(damage(kind, data, other, rng))
                written.append(destination)
    return sorted(written)

"""Zips of DICOM files, extracted only into a private temporary folder, within limits (a zip bomb stops at them)."""

import os
import tempfile
import zipfile
from contextlib import contextmanager
from pathlib import PurePosixPath
from typing import Iterator, Tuple

ZIP_MAX_MEMBERS = 20_000
ZIP_MAX_BYTES = 8 * 1024**3
CHUNK_BYTES = 1 << 20  # extracted a MiB at a time, counting, so a zip that lies about its sizes stops too


def _member_parts(name: str) -> Tuple[str, ...]:
    """The path of a zip member as parts; one-line `ValueError` if it would leave the extraction folder."""
    normalised = name.replace("\\", "/")
    parts = PurePosixPath(normalised).parts
    if normalised.startswith("/") or ".." in parts or (parts and ":" in parts[0]):
        raise ValueError("the zip holds a path that escapes it (absolute or with '..'); refused")
    return parts


@contextmanager
def extracted_zip(path) -> Iterator[str]:
    """Extract a zip into a private temporary folder, yield the folder, delete it afterwards.

    At most `ZIP_MAX_MEMBERS` files and `ZIP_MAX_BYTES` bytes in all (counted while extracting, so a
    zip that lies about its sizes stops too); member paths may not escape the folder.
    """
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as error:
        raise ValueError(f"not a readable zip file ({type(error).__name__})") from None
    with archive, tempfile.TemporaryDirectory(prefix="ct-zip-") as folder:
        members = [member for member in archive.infolist() if not member.is_dir()]
        if len(members) > ZIP_MAX_MEMBERS:
            raise ValueError(f"the zip holds {len(members)} files, more than the limit of {ZIP_MAX_MEMBERS}")
        total = 0
        for member in members:
            parts = _member_parts(member.filename)
            target = os.path.join(folder, *parts)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            try:
                with archive.open(member) as source, open(target, "wb") as destination:
                    while chunk := source.read(CHUNK_BYTES):
                        total += len(chunk)
                        if total > ZIP_MAX_BYTES:
                            raise ValueError(f"the zip expands to more than {ZIP_MAX_BYTES / 1024**3:.1f} GiB; refused")
                        destination.write(chunk)
            except (zipfile.BadZipFile, RuntimeError, OSError, EOFError) as error:  # damaged, encrypted
                raise ValueError(f"cannot extract the zip ({type(error).__name__})") from None
        yield folder

"""Write a folder all at once: build it beside the target, then rename it into place.

An interrupted or failed stage leaves the target as it was (absent, or the previous stage), never
half-written.
"""

import contextlib
import shutil
import tempfile
from pathlib import Path


@contextlib.contextmanager
def atomic_directory(target, overwrite: bool = False):
    """Yields an empty temporary folder; on success it becomes `target`, on error it is removed.

    An existing non-empty `target` is replaced only with `overwrite`, so a mistyped path never wipes
    a folder the user cares about.
    """
    target = Path(target).resolve()
    if target.exists() and not target.is_dir():
        raise FileExistsError(f"{target} exists and is not a folder")
    if target.is_dir() and any(target.iterdir()) and not overwrite:
        raise FileExistsError(f"{target} exists and is not empty; pass --overwrite to replace it")
    target.parent.mkdir(parents=True, exist_ok=True)
    # Same parent folder, so the final rename stays on one filesystem and is atomic.
    building = Path(tempfile.mkdtemp(prefix=f".{target.name}.building-", dir=target.parent))
    building.chmod(0o755)  # mkdtemp makes it private; the staged repo is meant to be shared
    try:
        yield building
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise
    previous = None
    if target.exists():
        previous = Path(tempfile.mkdtemp(prefix=f".{target.name}.previous-", dir=target.parent))
        target.rename(previous / "old")
    building.rename(target)
    if previous is not None:
        shutil.rmtree(previous, ignore_errors=True)

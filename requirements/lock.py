"""Write the lock of tested versions from an environment the whole suite just passed in.

    python requirements/lock.py .venv-latest/bin/python     # what `make lock` runs after `make test-latest`

Writes `requirements/lock.txt` (pip constraints: every package of that environment, pinned) and the
Space's pins taken from it: `space/requirements.txt` (the packages the Space installs on top of its
Gradio image) and `sdk_version` in `space/README.md` (the Gradio the Space runs). `make test`,
`make demo` and CI install with `-c requirements/lock.txt`, so a fresh machine gets what was tested.
"""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "requirements" / "lock.txt"
SPACE_REQUIREMENTS = ROOT / "space" / "requirements.txt"
SPACE_README = ROOT / "space" / "README.md"
# What app.py and the modeling/ files copied beside it import, beyond the Gradio that the Space's
# image brings; a comment goes before a group of pins.
SPACE_PACKAGES = {
    "torch": None,
    "timm": None,
    "transformers": None,
    "safetensors": None,
    "numpy": None,
    "pillow": None,
    "pydicom": None,
    "pylibjpeg": "decoders for compressed DICOM (JPEG, JPEG-LS, JPEG 2000): the examples are JPEG 2000 lossless",
    "pylibjpeg-openjpeg": None,
    "pylibjpeg-libjpeg": None,
    "nibabel": None,
    "matplotlib": None,
}
LOCK_HEADER = """\
# The versions the whole test suite passed with: pip constraints for `make test`, `make demo` and CI.
# Do not edit by hand. To refresh: `make lock` (runs the suite on the newest releases that
# pyproject.toml allows, in .venv-latest, and only if it passes writes this file and the Space's pins).
"""
SPACE_HEADER = """\
# The Space installs these on top of its Gradio image (sdk_version in README.md pins Gradio itself).
# Generated from requirements/lock.txt by requirements/lock.py: the versions the test suite passed with.
"""


def canonical(name: str) -> str:
    """PEP 503 name: `Pillow` and `pylibjpeg_openjpeg` as pip compares them."""
    return re.sub(r"[-_.]+", "-", name).lower()


def read_lock(path: Path = LOCK) -> dict:
    """`{canonical name: version}` from a file of `name==version` lines (comments and blanks skipped)."""
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = line.split("==")
            pins[canonical(name)] = version.strip()
    return pins


def freeze(python: str) -> list:
    """`name==version` of every package in the environment of `python`, this project left out."""
    output = subprocess.run(
        [python, "-m", "pip", "freeze", "--all", "--exclude-editable"], check=True, capture_output=True, text=True
    ).stdout
    lines = [line.strip() for line in output.splitlines() if "==" in line]
    return sorted((line for line in lines if not canonical(line.split("==")[0]) == "pdac-ln-attention"),
                  key=lambda line: canonical(line.split("==")[0]))


def space_requirements(pins: dict) -> str:
    lines = [SPACE_HEADER]
    for name, comment in SPACE_PACKAGES.items():
        if comment:
            lines.append(f"# {comment}\n")
        lines.append(f"{name}=={pins[canonical(name)]}\n")
    return "".join(lines)


def set_sdk_version(readme: str, gradio_version: str) -> str:
    return re.sub(r"^sdk_version: .*$", f"sdk_version: {gradio_version}", readme, count=1, flags=re.MULTILINE)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    LOCK.write_text(LOCK_HEADER + "\n".join(freeze(argv[0])) + "\n")
    pins = read_lock()
    SPACE_REQUIREMENTS.write_text(space_requirements(pins))
    SPACE_README.write_text(set_sdk_version(SPACE_README.read_text(), pins["gradio"]))
    print(f"wrote {LOCK.relative_to(ROOT)} ({len(pins)} packages), {SPACE_REQUIREMENTS.relative_to(ROOT)} "
          f"and the Space's sdk_version {pins['gradio']}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

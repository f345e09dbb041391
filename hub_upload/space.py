"""Staging the Gradio Space: `space/` plus the `modeling/` files app.py imports, wired to the model.

What ships: app.py, README.md, requirements.txt, `examples/`, the sibling modules app.py imports and
the `modeling/` files it imports (relative imports followed); not helper scripts or local leftovers.
The Space finds its model through the environment app.py reads (MODEL_ID, MODEL_REVISION), which
the push sets as Space variables; the README's `models:` entry links the Space to the model repo.
Example DICOMs ship publicly, so each must carry a phantom pseudonym as its PatientID.
"""

import importlib.metadata
import shutil
from pathlib import Path

from huggingface_hub import SpaceCard

from .atomic import atomic_directory
from .code_files import MODELING_DIR, PACKAGE, absolute_imports, module_closure, script_modules
from .provenance import PHANTOM_PATIENT_PREFIX

SPACE_DIR = MODELING_DIR.parent / "space"
REQUIRED_FILES = ("app.py", "README.md", "requirements.txt")
EXAMPLES = "examples"
IGNORED = shutil.ignore_patterns("__pycache__", "*.pyc", ".*")


def check_examples_are_synthetic(folder: Path) -> None:
    """Refuses (naming the file, never its tags) any example DICOM that is not a phantom slice."""
    import pydicom

    for path in sorted(folder.rglob("*")):
        if not path.is_file():
            continue
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except pydicom.errors.InvalidDicomError:
            continue  # not DICOM: images and text are the Space author's to judge
        if not str(ds.get("PatientID", "")).startswith(PHANTOM_PATIENT_PREFIX):
            raise ValueError(
                f"{path} is a DICOM without a phantom PatientID; only synthetic examples may ship in the Space"
            )


def check_space_source(space_dir=SPACE_DIR) -> None:
    """Raises (one line) unless `space_dir` can become a Space; cheap, so callers check before staging."""
    space_dir = Path(space_dir)
    for name in REQUIRED_FILES:
        if not (space_dir / name).is_file():
            raise FileNotFoundError(f"{space_dir / name} not found; the Space needs {', '.join(REQUIRED_FILES)}")
    if (space_dir / EXAMPLES).is_dir():
        check_examples_are_synthetic(space_dir / EXAMPLES)


def space_files(space_dir: Path) -> list:
    """File names at the top of `space_dir` that ship: the required ones and the sibling modules app.py
    imports, directly or through each other."""
    found, todo = set(), ["app"]
    while todo:
        for name in absolute_imports(space_dir / f"{todo.pop()}.py"):
            name = name.split(".")[0]
            if name not in found and name != "app" and (space_dir / f"{name}.py").is_file():
                found.add(name)
                todo.append(name)
    return list(REQUIRED_FILES) + sorted(f"{name}.py" for name in found)


def space_modeling_files(space_dir: Path) -> list:
    """File names of `modeling/` that app.py and the sibling modules that ship import, relative imports followed."""
    scripts = [space_dir / name for name in space_files(space_dir) if name.endswith(".py")]
    return [f"{name}.py" for name in module_closure(set().union(*(script_modules(path) for path in scripts)))]


def stage_space(stage_dir, *, model_id: str, space_dir=SPACE_DIR, overwrite: bool = False) -> Path:
    """Writes the Space repo to `stage_dir` (all at once) and returns its path."""
    space_dir = Path(space_dir)
    check_space_source(space_dir)
    modeling_files = space_modeling_files(space_dir)

    with atomic_directory(stage_dir, overwrite=overwrite) as building:
        for name in space_files(space_dir):
            shutil.copyfile(space_dir / name, building / name)
        if (space_dir / EXAMPLES).is_dir():
            shutil.copytree(space_dir / EXAMPLES, building / EXAMPLES, ignore=IGNORED)
        (building / PACKAGE).mkdir()
        for name in modeling_files:
            shutil.copyfile(MODELING_DIR / name, building / PACKAGE / name)
        card = SpaceCard.load(building / "README.md")
        card.data.sdk = "gradio"
        card.data.app_file = card.data.app_file or "app.py"
        # The Gradio the tests ran against, unless the Space's README pins one.
        card.data.sdk_version = card.data.sdk_version or importlib.metadata.version("gradio")
        card.data.models = sorted(set(card.data.models or []) | {model_id})
        card.save(building / "README.md")
    return Path(stage_dir).resolve()

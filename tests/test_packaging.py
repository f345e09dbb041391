"""Light installs: `pip install .` is the model, each extra covers the code it is for, the Space's pins cover the Space.

Imports are read statically (every `import` in the files, lazy ones included) and mapped to the
distributions that provide them, so adding `import x` to a package without declaring x fails here.
"""

import ast
import importlib.metadata
import os
import re
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from hub_upload.space import SPACE_DIR, space_files, space_modeling_files

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
# the demo's modules (space/demo_*.py) are imported as top-level modules, as the Space imports them
FIRST_PARTY = {"modeling", "training", "hub_upload", "space", "benchmarks", "conftest"} | {
    path.stem for path in SPACE_DIR.glob("*.py")}
# Imports of modeling/ that only an optional path needs, and the extra that provides each.
MODEL_OPTIONAL_IMPORTS = {"pytorch_grad_cam": "train"}  # explain(method="gradcam++", ...)
# The Space's Gradio image brings these with gradio itself.
GRADIO_IMAGE = {"gradio", "gradio-client", "huggingface-hub"}


def requirement_names(requirements) -> set:
    """Canonical distribution names; this project's own extras (`pdac-ln-attention[train]`) expanded."""
    names = set()
    for line in requirements:
        requirement = Requirement(line)
        if canonicalize_name(requirement.name) == canonicalize_name(PROJECT["name"]):
            names |= set().union(*(extra_names(extra) for extra in requirement.extras))
        else:
            names.add(canonicalize_name(requirement.name))
    return names


def extra_names(extra: str) -> set:
    return requirement_names(PROJECT["optional-dependencies"][extra])


CORE = requirement_names(PROJECT["dependencies"])


def third_party_imports(files) -> set:
    """Top-level names of absolute imports that are neither the standard library nor this repository."""
    names = set()
    for path in files:
        local = {sibling.stem for sibling in path.parent.glob("*.py")}
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names.add(node.module.split(".")[0])
        names -= local
    return names - set(sys.stdlib_module_names) - FIRST_PARTY


def undeclared(imports: set, declared: set) -> set:
    """Imports none of whose providing distributions is in `declared`."""
    providers = importlib.metadata.packages_distributions()
    return {
        name for name in imports
        if not {canonicalize_name(dist) for dist in providers.get(name, [name])} & declared
    }


def python_files(folder: str) -> list:
    return sorted((ROOT / folder).glob("*.py"))


def test_core_install_is_the_model_without_training_demo_or_hub_tools():
    assert not CORE & {"gradio", "gradio-client", "datasets", "scikit-learn", "grad-cam", "playwright"}
    # accelerate is core: `accelerate launch -m modeling.predict` splits an archive across processes
    assert {"torch", "timm", "transformers", "safetensors", "numpy", "pillow", "pydicom", "accelerate"} <= CORE
    assert set(PROJECT["optional-dependencies"]) == {"train", "demo", "hub", "dev"}
    everything = CORE | extra_names("train") | extra_names("demo") | extra_names("hub")
    assert everything <= CORE | extra_names("dev")


def test_core_covers_every_import_of_the_model_code():
    imports = third_party_imports(python_files("modeling"))
    assert {"torch", "timm", "transformers", "numpy", "PIL"} <= imports  # the parse sees the model's imports
    assert undeclared(imports - set(MODEL_OPTIONAL_IMPORTS), CORE) == set()
    for name, extra in MODEL_OPTIONAL_IMPORTS.items():
        assert undeclared({name}, extra_names(extra)) == set(), (name, extra)


@pytest.mark.parametrize(
    "files, extras",
    [
        (python_files("training"), ["train"]),
        (python_files("hub_upload"), ["hub"]),
        ([SPACE_DIR / name for name in space_files(SPACE_DIR) if name.endswith(".py")], ["demo"]),
        (python_files("tests") + python_files("benchmarks"), ["dev"]),
    ],
    ids=["training", "hub_upload", "space", "tests+benchmarks"],
)
def test_each_extra_covers_the_imports_of_its_code(files, extras):
    declared = CORE.union(*(extra_names(extra) for extra in extras))
    assert undeclared(third_party_imports(files), declared) == set()


def test_space_requirements_pin_everything_the_staged_space_imports():
    lines = [line.strip() for line in (SPACE_DIR / "requirements.txt").read_text().splitlines()]
    requirements = [line for line in lines if line and not line.startswith("#")]
    assert all(re.fullmatch(r"[A-Za-z0-9_.-]+==[\w.]+", line) for line in requirements), requirements
    staged = [SPACE_DIR / name for name in space_files(SPACE_DIR) if name.endswith(".py")]
    staged += [ROOT / "modeling" / name for name in space_modeling_files(SPACE_DIR)]
    imports = third_party_imports(staged) - set(MODEL_OPTIONAL_IMPORTS)  # the app uses the one-pass Grad-CAM
    assert "gradio" in imports and "pydicom" in imports
    assert undeclared(imports, requirement_names(requirements) | GRADIO_IMAGE) == set()


def test_readme_says_which_extra_does_what():
    readme = (ROOT / "README.md").read_text()
    assert re.search(r"pip install \.\s", readme)
    for extra in PROJECT["optional-dependencies"]:
        assert re.search(rf'pip install "?\.\[{extra}\]', readme), extra


# --- the lock of tested versions --------------------------------------------------------------------------------

LOCK_PATH = ROOT / "requirements" / "lock.txt"


def locked_versions() -> dict:
    pins = {}
    for line in LOCK_PATH.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            assert re.fullmatch(r"[A-Za-z0-9_.-]+==[\w.+!-]+", line), line
            name, version = line.split("==")
            pins[canonicalize_name(name)] = version
    return pins


def direct_requirements() -> list:
    """pyproject's requirements of this Python, the project's own extras left out."""
    lines = PROJECT["dependencies"] + [line for extra in PROJECT["optional-dependencies"].values() for line in extra]
    requirements = [Requirement(line) for line in lines]
    return [r for r in requirements if canonicalize_name(r.name) != canonicalize_name(PROJECT["name"])
            and (r.marker is None or r.marker.evaluate())]


def test_the_lock_pins_every_declared_dependency_within_its_range():
    pins = locked_versions()
    for requirement in direct_requirements():
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{name} is not in the lock"
        assert requirement.specifier.contains(pins[name], prereleases=True), (str(requirement), pins[name])


def test_the_space_installs_the_locked_versions():
    pins = locked_versions()
    lines = [line for line in (SPACE_DIR / "requirements.txt").read_text().splitlines() if "==" in line]
    assert lines and all(pins[canonicalize_name(line.split("==")[0])] == line.split("==")[1] for line in lines), lines
    sdk = re.search(r"^sdk_version: (\S+)$", (SPACE_DIR / "README.md").read_text(), re.MULTILINE).group(1)
    assert sdk == pins["gradio"]


@pytest.mark.skipif(bool(os.environ.get("TEST_UNLOCKED")), reason="make test-latest and test-lowest run off the lock")
def test_this_environment_is_the_locked_one():
    """`make test` and CI install with the lock, so the suite runs on what the lock says was tested."""
    pins = locked_versions()
    installed = {canonicalize_name(r.name): importlib.metadata.version(r.name) for r in direct_requirements()}
    assert {name: version for name, version in installed.items() if pins[name] != version} == {}

"""Print a pip constraints file that pins every direct dependency to its declared lower bound.

    python requirements/lowest.py > /tmp/lowest.txt     # what `make test-lowest` runs
    pip install -c /tmp/lowest.txt -e ".[dev]"

Every `name>=X` in pyproject.toml's `dependencies` and in all its optional-dependency extras becomes
`name==X`; the project's own extras (`pdac-ln-attention[train]`) are skipped, and so is an entry whose
environment marker does not hold for the Python that runs this script. Indirect dependencies are left
to float ("lowest-direct" resolution). A name listed in several extras gets the highest of its bounds.
An optional argument names another pyproject.toml (the tests use one of their own). Needs `packaging`
(and `tomli` on Python 3.10), which `make test-lowest` installs first.
"""

import platform
import sys
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def lower_bounds(pyproject: Path) -> dict:
    """{canonical name: (name as written, lowest version)} for every `>=` bound that applies here."""
    project = tomllib.loads(pyproject.read_text())["project"]
    lines = project.get("dependencies", []) + [
        line for extra in project.get("optional-dependencies", {}).values() for line in extra
    ]
    bounds = {}
    for requirement in map(Requirement, lines):
        name = canonicalize_name(requirement.name)
        if name == canonicalize_name(project["name"]) or (requirement.marker and not requirement.marker.evaluate()):
            continue
        for specifier in requirement.specifier:
            known = bounds.get(name)
            if specifier.operator == ">=" and (known is None or Version(specifier.version) > Version(known[1])):
                bounds[name] = (known[0] if known else requirement.name, specifier.version)
    return bounds


def main(argv) -> None:
    pyproject = Path(argv[1]) if len(argv) > 1 else PYPROJECT
    print(f"# the lowest versions that {pyproject.name} allows, for Python {platform.python_version()}")
    print(f"# made by: python requirements/lowest.py{' ' + argv[1] if len(argv) > 1 else ''}")
    for name, version in lower_bounds(pyproject).values():
        print(f"{name}=={version}")


if __name__ == "__main__":
    main(sys.argv)

"""Print a pip constraints file that pins every direct dependency to its declared lower bound.

    python requirements/lowest.py > /tmp/lowest.txt
    pip install -c /tmp/lowest.txt -e ".[dev]"

Every `name>=X` in pyproject.toml's `dependencies` and in all its optional-dependency extras becomes
`name==X`; the project's own extras (`pdac-ln-attention[train]`) are skipped, and so is an entry whose
environment marker does not hold for the Python that runs this script. Indirect dependencies are left
to float ("lowest-direct" resolution). A name listed in several extras gets the highest of its bounds.
An optional argument names another pyproject.toml (the tests use one of their own). Standard library only.
"""

import os
import platform
import re
import sys
from pathlib import Path

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"
# PEP 508: name, optional [extras], then the version specifiers up to an optional `; marker`
REQUIREMENT = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[[^\]]*\])?\s*([^;]*?)\s*(?:;\s*(.*?))?\s*$")
# a marker's tokens: parentheses, `and`/`or`, a quoted string, an operator, a variable
MARKER_TOKEN = re.compile(
    r"\s*(?:(\()|(\))|(and|or)\b|('[^']*'|\"[^\"]*\")|(===|==|!=|<=|>=|~=|<|>|not\s+in\b|in\b)|(\w+))"
)


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def marker_environment() -> dict:
    """The PEP 508 marker variables of the running interpreter."""
    return {
        "python_version": "%d.%d" % sys.version_info[:2],
        "python_full_version": platform.python_version(),
        "os_name": os.name,
        "sys_platform": sys.platform,
        "platform_system": platform.system(),
        "platform_machine": platform.machine(),
        "platform_release": platform.release(),
        "platform_version": platform.version(),
        "platform_python_implementation": platform.python_implementation(),
        "implementation_name": sys.implementation.name,
        "implementation_version": platform.python_version(),
    }


def version_key(version: str):
    return tuple(int(part) for part in re.findall(r"\d+", version))


def compare(left: str, op: str, right: str, versions: bool) -> bool:
    if op in ("in", "not in"):
        return (left in right) == (op == "in")
    if versions and op != "===":
        left, right = version_key(left), version_key(right)
        if op == "~=":
            return left >= right and left[: len(right) - 1] == right[: len(right) - 1]
    return {
        "==": left == right,
        "===": left == right,
        "!=": left != right,
        "<": left < right,
        "<=": left <= right,
        ">": left > right,
        ">=": left >= right,
    }[op]


def marker_holds(marker: str, env: dict) -> bool:
    """Evaluate a PEP 508 environment marker (`and`, `or`, parentheses, comparisons) against `env`."""
    tokens, position = [], 0
    while position < len(marker.rstrip()):
        match = MARKER_TOKEN.match(marker, position)
        if not match:
            raise ValueError(f"cannot read the marker {marker!r}")
        token = match.group(match.lastindex)
        tokens.append(token if token[0] in "'\"" else " ".join(token.split()))
        position = match.end()
    tokens.append(None)
    index = 0

    def take():
        nonlocal index
        index += 1
        return tokens[index - 1]

    def value():
        token = take()
        if token[0] in "'\"":
            return token[1:-1], False
        return env[token], token.endswith("version")

    def atom():
        if tokens[index] == "(":
            take()
            result = disjunction()
            if take() != ")":
                raise ValueError(f"unbalanced parentheses in the marker {marker!r}")
            return result
        (left, left_version), op, (right, right_version) = value(), take(), value()
        return compare(left, op, right, left_version or right_version)

    def conjunction():
        result = atom()
        while tokens[index] == "and":
            take()
            result = atom() and result
        return result

    def disjunction():
        result = conjunction()
        while tokens[index] == "or":
            take()
            result = conjunction() or result
        return result

    result = disjunction()
    if tokens[index] is not None:
        raise ValueError(f"cannot read the marker {marker!r}")
    return result


def lower_bounds(pyproject: Path, env: dict) -> dict:
    """{normalized name: (name as written, lowest version)} for every `>=` bound that applies to `env`."""
    project = tomllib.loads(pyproject.read_text())["project"]
    own = normalize(project["name"])
    lists = [project.get("dependencies", [])] + list(project.get("optional-dependencies", {}).values())
    bounds = {}
    for line in (line for requirements in lists for line in requirements):
        match = REQUIREMENT.match(line)
        if not match:
            raise ValueError(f"cannot read the requirement {line!r}")
        name, specifiers, marker = match.groups()
        if normalize(name) == own or (marker and not marker_holds(marker, env)):
            continue
        for specifier in specifiers.strip("()").split(","):
            specifier = specifier.strip()
            if specifier.startswith(">="):
                version = specifier[2:].strip()
                known = bounds.get(normalize(name))
                if known is None or version_key(version) > version_key(known[1]):
                    bounds[normalize(name)] = (known[0] if known else name, version)
    return bounds


def main(argv) -> None:
    pyproject = Path(argv[1]) if len(argv) > 1 else PYPROJECT
    print(f"# the lowest versions that {pyproject.name} allows, for Python {platform.python_version()}")
    print(f"# made by: python requirements/lowest.py{' ' + argv[1] if len(argv) > 1 else ''}")
    for name, version in lower_bounds(pyproject, marker_environment()).values():
        print(f"{name}=={version}")


if __name__ == "__main__":
    main(sys.argv)

"""requirements/lowest.py: each `>=` bound of the dependencies and extras becomes an `==` pin."""

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "requirements" / "lowest.py"

PYPROJECT = """
[project]
name = "Demo_Pkg"
version = "1.0"
dependencies = [
    "torch>=2.4",
    "numpy >= 1.26, <3",
    "requests",  # no lower bound: floats
    "pillow[extra]>=10.1",
    "only-old-python>=1.0; python_version < '3.0'",
    "only-new-python>=2.0 ; python_version >= '3.0' and (os_name == 'nt' or os_name != 'nt')",
]

[project.optional-dependencies]
train = ["datasets>=2.20", "pyyaml>=6.0"]
hub = ["datasets>=3.0", "PyYAML>=5.1", "jinja2==3.1.4"]
dev = ["demo-pkg[train,hub]", "pytest>=8.2"]
"""


def pins(tmp_path) -> list:
    (tmp_path / "pyproject.toml").write_text(PYPROJECT)
    result = subprocess.run(
        [sys.executable, str(SCRIPT), str(tmp_path / "pyproject.toml")], capture_output=True, text=True, check=True
    )
    return [line for line in result.stdout.splitlines() if line and not line.startswith("#")]


def test_pins_every_lower_bound_once(tmp_path):
    assert pins(tmp_path) == [
        "torch==2.4",
        "numpy==1.26",
        "pillow==10.1",  # a constraint carries no extras
        "only-new-python==2.0",
        "datasets==3.0",  # named by two extras: the higher bound, which both allow
        "pyyaml==6.0",
        "pytest==8.2",
    ]


def test_project_file_parses(tmp_path):
    """The repository's own pyproject.toml: every line a pin, and none of the project itself."""
    result = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, check=True)
    lines = [line for line in result.stdout.splitlines() if line and not line.startswith("#")]
    assert lines and all("==" in line for line in lines)
    assert not any(line.startswith("pdac-ln-attention") for line in lines)
    assert any(line.startswith("torch==") for line in lines)

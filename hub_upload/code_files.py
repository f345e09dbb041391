"""Which `modeling/*.py` files a model repo or a Space needs: the import closure, found statically.

Remote code on the Hub is the files that `config.json`'s `auto_map` and `custom_pipelines` name plus
everything they import relatively; shipping more (the CLI, explanations) would make users trust code
the model never runs. The closure is taken in a given code folder: `modeling/`, or a saved model
folder, which holds the copies `save_pretrained` wrote next to the weights.
"""

import ast
import importlib.util
from pathlib import Path
from typing import Iterable, Set

PACKAGE = "modeling"
# Located without importing it: staging only reads the files, and importing would pull in torch.
MODELING_DIR = Path(importlib.util.find_spec(PACKAGE).origin).resolve().parent


def _relative_imports(path: Path) -> Set[str]:
    """Module names (files beside `path`) that the file at `path` imports relatively.

    `from .x import y` needs x.py (missing, the closure reports it); `from . import y` names a module
    only where y.py exists (otherwise y is something the package's `__init__` defines).
    """
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module:
                names.add(node.module.split(".")[0])
            else:
                names.update(alias.name for alias in node.names if (path.parent / f"{alias.name}.py").is_file())
    return names


def module_closure(modules: Iterable[str], code_dir: Path = MODELING_DIR) -> list:
    """`modules` (names of files in `code_dir`, without `.py`) and all they import relatively, sorted."""
    pending, seen = list(modules), set()
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        path = Path(code_dir) / f"{name}.py"
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found (named by auto_map, custom_pipelines or an import)")
        seen.add(name)
        pending.extend(_relative_imports(path) - seen)
    return sorted(seen)


def auto_map_modules(auto_map: dict) -> Set[str]:
    """`{"AutoModel": "modeling_x.Cls", ...}` -> `{"modeling_x", ...}`."""
    modules = set()
    for reference in auto_map.values():
        # transformers also allows "repo--module.Class" and (slow, fast) pairs for processors
        for ref in reference if isinstance(reference, (list, tuple)) else [reference]:
            if ref:
                modules.add(ref.split("--")[-1].rsplit(".", 1)[0])
    return modules


def custom_pipeline_modules(custom_pipelines: dict) -> Set[str]:
    """`{"image-classification": {"impl": "pipeline_x.Cls", ...}}` -> `{"pipeline_x"}`."""
    return {task["impl"].rsplit(".", 1)[0] for task in custom_pipelines.values() if task.get("impl")}


def absolute_imports(script: Path) -> Set[str]:
    """Dotted names a script imports absolutely; `from a import b` gives both "a" and "a.b"."""
    names = set()
    for node in ast.walk(ast.parse(script.read_text(), filename=str(script))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def script_modules(script: Path) -> Set[str]:
    """Files of `modeling/` that a script (e.g. the Space's app.py) imports, `__init__` included."""
    modules = set()
    for name in absolute_imports(script):
        parts = name.split(".")
        if parts[0] != PACKAGE:
            continue
        modules.add("__init__")  # importing anything from the package runs its __init__
        if len(parts) > 1 and (MODELING_DIR / f"{parts[1]}.py").is_file():
            modules.add(parts[1])
    return modules

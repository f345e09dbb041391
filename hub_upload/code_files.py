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

from transformers.dynamic_module_utils import get_relative_import_files

PACKAGE = "modeling"
# Located without importing it: staging only reads the files, and importing would pull in torch.
MODELING_DIR = Path(importlib.util.find_spec(PACKAGE).origin).resolve().parent


def module_closure(modules: Iterable[str], code_dir: Path = MODELING_DIR) -> list:
    """`modules` (names of files in `code_dir`, without `.py`) and all they import relatively, sorted.

    The imports are followed by transformers' own `get_relative_import_files`, the rule its loader
    applies when it fetches remote code, so the staged files are the ones a user's transformers asks
    for. Where the roots come from (`auto_map`, `custom_pipelines`, a script) is this module's part.
    """
    closure = set()
    for name in modules:
        root = Path(code_dir) / f"{name}.py"
        try:
            files = [root, *get_relative_import_files(root)]
        except FileNotFoundError as missing:  # a root, or a file a relative import names
            raise FileNotFoundError(
                f"{missing.filename} not found (named by auto_map, custom_pipelines or an import)"
            ) from None
        closure.update(Path(file).stem for file in files)
    return sorted(closure)


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

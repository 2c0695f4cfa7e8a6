"""The folders' roles, as their imports show them: what the engine and the workers share lives in one home.

- ``engine/common``: what both processes import (the wire schema, the link,
  mailboxes, the keyframe rule, paced audio, settings); it imports nothing else of ours.
- ``transport``: the Pipecat facade a bot imports, with its media work; it
  reaches only ``engine/common`` besides itself.
- ``workers``: the worker process, hosting bots through the facade.
- ``engine``: the engine process; it never imports the facade or the workers
  (it starts workers as processes, ``python -m workers``).
"""

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("engine", "workers", "transport")
# Which of our folders each folder may import from, besides its own subfolders.
ALLOWED = {
    "engine/common": set(),
    "transport": {"engine/common"},
    "workers": {"engine/common", "transport"},
    "engine": {"engine/common"},
}


def layer_of(parts: tuple[str, ...]) -> str:
    """The folder in ``ALLOWED`` that a module path (as parts) belongs to."""
    for length in (2, 1):
        name = "/".join(parts[:length])
        if name in ALLOWED:
            return name
    raise AssertionError(f"{'/'.join(parts)} is in no known folder")


def imports(path: Path) -> list[tuple[int, str]]:
    """This project's modules ``path`` imports (at any depth in the file), with their line."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found += [(node.lineno, name) for name in names if name.split(".")[0] in PACKAGES]
    return found


SOURCES = sorted(path for package in PACKAGES for path in (REPO / package).rglob("*.py"))


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(REPO)))
def test_a_module_imports_only_the_folders_below_its_own(path):
    layer = layer_of(path.relative_to(REPO).parts)
    for line, module in imports(path):
        target = layer_of(tuple(module.split(".")))
        assert target == layer or target in ALLOWED[layer], (
            f"{path.relative_to(REPO)}:{line} imports {module} ({target}); {layer} may import only "
            f"{', '.join(sorted(ALLOWED[layer])) or 'itself'}"
        )


def test_no_module_is_named_like_its_package():
    for path in SOURCES:
        assert path.stem != path.parent.name, f"{path.relative_to(REPO)} is named like its package"


def test_every_folder_is_a_package():
    for package in PACKAGES:
        for folder in [REPO / package, *(p for p in (REPO / package).rglob("*") if p.is_dir())]:
            if folder.name != "__pycache__" and any(folder.glob("*.py")):
                assert (folder / "__init__.py").is_file(), f"{folder.relative_to(REPO)} has no __init__.py"

"""The engine/studio boundary. The engine (mtbert/ outside mtbert/studio/) must work without the
studio: the trainer runs as its own process, the CLI and the scripts have no UI, and the two meet
only in a run folder. So no engine module imports mtbert.studio, Streamlit or Gradio, anywhere in
it (an import inside a function counts: it runs when the function is called). The studio builds on
the engine and may import any of it."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "mtbert"
STUDIO = PACKAGE / "studio"
FORBIDDEN = ("mtbert.studio", "streamlit", "gradio")


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(source: str, module: str, is_package: bool = False) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in `source`, the text of `module`, at any depth:
    relative ones resolved, and `from a import b` as both `a` and `a.b` (b may be a module)."""
    package = module.split(".") if is_package else module.split(".")[:-1]
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[:len(package) - node.level + 1] + ([node.module] if node.module else []))
            found += [(node.lineno, base)] + [(node.lineno, f"{base}.{a.name}") for a in node.names if a.name != "*"]
        elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)
              and (isinstance(node.func, ast.Name) and node.func.id == "__import__"
                   or isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")):
            found.append((node.lineno, node.args[0].value))
    return found


def forbidden(source: str, module: str, is_package: bool = False) -> list[tuple[int, str]]:
    """The imports of `source` that reach the studio or a UI library, one per line and library."""
    hits = {(line, f) for line, name in imports(source, module, is_package)
            for f in FORBIDDEN if name == f or name.startswith(f + ".")}
    return sorted(hits)


def engine_modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if STUDIO not in p.parents)


def test_the_engine_never_imports_the_studio_streamlit_or_gradio():
    modules = engine_modules()
    assert {PACKAGE / "train.py", PACKAGE / "runfolder.py", PACKAGE / "cli.py"} <= set(modules)
    found = [f"{path.relative_to(REPO)}:{line}: imports {name}"
             for path in modules
             for line, name in forbidden(path.read_text(encoding="utf-8"), module_name(path),
                                         path.name == "__init__.py")]
    assert not found, ("the engine must run without the studio; move this code to mtbert/studio/ or pass "
                       "what it needs in from there:\n" + "\n".join(found))


@pytest.mark.parametrize("source, name", [
    ("import streamlit as st", "streamlit"),
    ("import gradio", "gradio"),
    ("from streamlit.testing.v1 import AppTest", "streamlit"),
    ("import mtbert.studio.runs", "mtbert.studio"),
    ("from mtbert.studio import runs", "mtbert.studio"),
    ("from mtbert import studio", "mtbert.studio"),
    ("from .studio import runs", "mtbert.studio"),
    ("from .studio.charts import ema", "mtbert.studio"),
    ("from . import studio", "mtbert.studio"),
    ("def later():\n    if True:\n        from .studio.runs import list_runs", "mtbert.studio"),
    ("class C:\n    def f(self):\n        import gradio as gr", "gradio"),
    ("import importlib\nimportlib.import_module('mtbert.studio.playground')", "mtbert.studio"),
    ("__import__('streamlit')", "streamlit"),
])
def test_the_check_finds_every_form_of_a_forbidden_import(source, name):
    hits = forbidden(source, "mtbert.train")
    assert [n for _, n in hits] == [name], hits
    assert hits[0][0] == len(source.splitlines())  # the line of the import


def test_the_check_resolves_relative_imports_from_where_they_stand():
    assert forbidden("from .. import studio", "mtbert.sub.module") == [(1, "mtbert.studio")]
    assert forbidden("from .studio import runs", "mtbert", is_package=True) == [(1, "mtbert.studio")]
    assert forbidden("from . import runs", "mtbert.studio.charts") == [(1, "mtbert.studio")]  # "." is its package


def test_the_check_lets_the_engines_own_imports_through_and_the_studio_builds_on_the_engine():
    engine_like = ("from . import runfolder\nfrom .config import TrainConfig\nimport torch\n"
                   "from .studious import x\nimport streamlitish\nfrom mtbert import studios\n")
    assert forbidden(engine_like, "mtbert.train") == []
    studio_imports = {name for path in STUDIO.rglob("*.py")
                      for _, name in imports(path.read_text(encoding="utf-8"), module_name(path),
                                             path.name == "__init__.py")}
    assert {"mtbert.runfolder", "mtbert.checkpoint"} <= studio_imports  # allowed, and seen by the check

"""Import hygiene, checked on the code itself.

**The rule for function-local imports of project modules.** An ``import vistream...`` or
``from vistream... import ...`` (or a relative import) inside a function or method must say why
it is not at the module top: a comment on the import's own line, or a comment directly above
the run of consecutive import statements it belongs to (blank lines between them allowed, as
isort groups third-party and project imports), whose text contains one of the words in
:data:`REASONS` (case-insensitive), e.g. ``# deferred: loads torch; --help stays instant``.
The accepted reasons are a heavy dependency (torch, cv2, FAISS, FastAPI...) kept out of
``vistream --help`` and out of listing stage types, or an import cycle. Any other project
import belongs at the module top.

Also: the 1-bit method names the CLI accepts are the method registry's names.
"""

from __future__ import annotations

import ast
import io
import tokenize
from pathlib import Path

from vistream.cli.commands.binary import METHOD_NAMES
from vistream.models.binary.train import list_methods

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("pipeline", "stages", "models", "vistream")
REASONS = ("defer", "heavy", "--help", "torch", "cycle")


def _python_files() -> list[Path]:
    """The project's .py files, each once (``vistream/pipeline`` etc. are links to the root
    folders: they are not followed)."""
    files: list[Path] = []
    for folder in FOLDERS:
        stack = [ROOT / folder]
        while stack:
            d = stack.pop()
            for p in sorted(d.iterdir()):
                if p.is_symlink() or p.name == "__pycache__":
                    continue
                if p.is_dir():
                    stack.append(p)
                elif p.suffix == ".py":
                    files.append(p)
    return sorted(files)


def _is_project_import(node: ast.stmt) -> bool:
    if isinstance(node, ast.Import):
        return any(a.name == "vistream" or a.name.startswith("vistream.") for a in node.names)
    if isinstance(node, ast.ImportFrom):
        mod = node.module or ""
        return node.level > 0 or mod == "vistream" or mod.startswith("vistream.")
    return False


def _comments(source: str) -> dict[int, str]:
    """Line number -> the text of the comment on that line."""
    out: dict[int, str] = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            out[tok.start[0]] = tok.string
    return out


def _gives_reason(text: str) -> bool:
    return any(r in text.lower() for r in REASONS)


def _statement_lists(node: ast.AST, in_function: bool = False):
    """(statement list, inside a function?) for every block of statements under ``node``."""
    for name in ("body", "orelse", "finalbody"):
        block = getattr(node, name, None)
        if isinstance(block, list) and block and isinstance(block[0], ast.stmt):
            yield block, in_function
    for child in ast.iter_child_nodes(node):
        yield from _statement_lists(
            child, in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef))


def unexplained_local_imports(source: str, name: str = "<source>") -> list[str]:
    """``name:line`` of each function-local project import that breaks the rule."""
    tree = ast.parse(source)
    lines = source.splitlines()
    comments = _comments(source)
    bad = []
    for block, in_function in _statement_lists(tree):
        if not in_function:
            continue
        runs: list[list[ast.stmt]] = []
        for i, stmt in enumerate(block):
            is_import = isinstance(stmt, ast.Import | ast.ImportFrom)
            if is_import and i > 0 and isinstance(block[i - 1], ast.Import | ast.ImportFrom):
                runs[-1].append(stmt)
            elif is_import:
                runs.append([stmt])
        for run in runs:
            # the comment lines directly above the run (a comment may span several lines)
            above, k = [], run[0].lineno - 1
            while k >= 1 and lines[k - 1].strip().startswith("#"):
                above.append(lines[k - 1])
                k -= 1
            run_explained = _gives_reason(" ".join(above))
            for stmt in run:
                if not _is_project_import(stmt) or run_explained:
                    continue
                own = " ".join(comments.get(n, "") for n in range(stmt.lineno, stmt.end_lineno + 1))
                if not _gives_reason(own):
                    bad.append(f"{name}:{stmt.lineno}")
    return bad


def test_rule_checker_on_examples():
    ok = (
        "def f():\n"
        "    # deferred: loads torch; --help stays instant\n"
        "    import torch\n"
        "\n"
        "    from vistream.models.x import a\n"
        "    from vistream.models.y import b\n"
        "    return a, b, torch\n"
        "def g():\n"
        "    from vistream.models.x import a  # heavy: FAISS\n"
        "    try:\n"
        "        # breaks an import cycle\n"
        "        from vistream.models import z\n"
        "    except ImportError:\n"
        "        z = None\n"
        "    return a, z\n"
        "from vistream.models.top import t\n"
        "try:\n"
        "    from vistream.models import ext\n"
        "except ImportError:\n"
        "    ext = None\n"
    )
    assert unexplained_local_imports(ok) == []
    bad = (
        "def f():\n"
        "    # load the config\n"
        "    from vistream.pipeline.config import load_config\n"
        "    x = 1\n"
        "    from vistream.models.x import a\n"
        "    return load_config, a, x\n"
        "class C:\n"
        "    def m(self):\n"
        "        import json\n"
        "        import vistream.stages.base\n"
        "        return json\n"
        "    def n(self):\n"
        "        from . import sibling\n"
        "        return sibling\n"
    )
    assert unexplained_local_imports(bad) == ["<source>:3", "<source>:5", "<source>:10", "<source>:13"]


def test_function_local_project_imports_say_why():
    files = _python_files()
    assert len(files) > 50
    bad = []
    for path in files:
        bad += unexplained_local_imports(path.read_text(), str(path.relative_to(ROOT)))
    assert bad == [], ("function-local project imports without a reason comment (move them to the "
                       f"module top, or say what they defer; see this file's docstring): {bad}")


def test_cli_binary_methods_match_the_method_registry():
    assert len(set(METHOD_NAMES)) == len(METHOD_NAMES)
    assert sorted(METHOD_NAMES) == list_methods()

"""The command line loads no method module (and no JAX) to parse its arguments, no
library module imports the command line, module-level imports have no cycle, and the
names the command line offers equal the library's."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "cnnvis_jax"


def test_parsing_arguments_loads_no_jax_and_no_method_module():
    code = (
        "import sys, json, cnnvis_jax, cnnvis_jax.cli\n"
        "cnnvis_jax.cli.build_parser().parse_args(['models'])\n"
        "print(json.dumps(sorted(m for m in sys.modules if m == 'jax' or m.startswith(('jax.', "
        "'flax', 'cnnvis_jax')))))"
    )
    loaded = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True,
                                       text=True, check=True).stdout)  # fmt: skip
    assert not [m for m in loaded if m == "jax" or m.startswith(("jax.", "flax"))], loaded
    light = {"cnnvis_jax", "cnnvis_jax._lazy", "cnnvis_jax.catalog", "cnnvis_jax.errors",
             "cnnvis_jax.survey",
             "cnnvis_jax.survey.config"}  # fmt: skip
    assert {m for m in loaded if not m.startswith("cnnvis_jax.cli")} <= light, loaded


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _imports(path: Path, module: str, *, top_level_only: bool) -> set[str]:
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            found.add(base)
            found |= {f"{base}.{a.name}" for a in node.names}
    return {m for m in found if m.startswith("cnnvis_jax")}


def test_no_library_module_imports_the_command_line():
    offenders = [
        name
        for name, path in _modules().items()
        if not name.startswith("cnnvis_jax.cli")
        and any(m.startswith("cnnvis_jax.cli") for m in _imports(path, name, top_level_only=False))
    ]
    assert not offenders


def test_module_level_imports_have_no_cycle():
    modules = _modules()
    graph = {
        name: {m for m in _imports(path, name, top_level_only=True) if m in modules and m != name}
        for name, path in modules.items()
    }
    # a module importing its own package (its __init__) is how Python imports it anyway
    graph = {n: {m for m in deps if not n.startswith(m + ".")} for n, deps in graph.items()}
    state: dict[str, int] = {}

    def visit(node, trail):
        state[node] = 1
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                raise AssertionError("import cycle: " + " -> ".join([*trail, node, dep]))
            if dep not in state:
                visit(dep, [*trail, node])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [])


def test_the_names_the_command_line_offers_are_the_librarys():
    from cnnvis_jax import catalog, zoo
    from cnnvis_jax.am import PRESETS as AM
    from cnnvis_jax.inversion.presets import PRESETS as INVERSION

    assert tuple(sorted(catalog.ZOO)) == zoo.names()
    assert {n: zoo.entry(n).description for n in zoo.names()} == catalog.ZOO
    assert catalog.AM_PRESETS == tuple(AM)
    assert catalog.INVERSION_PRESETS == tuple(INVERSION)

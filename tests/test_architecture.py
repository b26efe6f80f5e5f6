"""The package's structure, checked: two wings meeting at the format (the converter imports neither the reader
nor torch), no import cycle, no module past ~300 lines, the loader blind to the device side, one module that
asks what a device is, no probing of datasets, loaders or decoders with hasattr/getattr."""
from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "imagenet_pack"
MODULES = {".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__"): p
           for p in PACKAGE.rglob("*.py")}


def imports(module: str, path: Path, top_level_only: bool) -> set[str]:
    """The package modules ``module`` imports (at its top level only, or anywhere)."""
    tree = ast.parse(path.read_text())
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found = set()
    for node in nodes:
        if top_level_only and isinstance(node, ast.If) and "TYPE_CHECKING" in ast.dump(node.test):
            continue
        for sub in ast.walk(node) if top_level_only else (node,):
            if isinstance(sub, ast.ImportFrom):
                base = package.split(".")[: len(package.split(".")) - (sub.level - 1)] if sub.level else []
                target = ".".join(base + ([sub.module] if sub.module else [])) if sub.level else sub.module or ""
                found |= {f"{target}.{a.name}" if f"{target}.{a.name}" in MODULES else target for a in sub.names}
            elif isinstance(sub, ast.Import):
                found |= {a.name for a in sub.names}
    return {m for m in found if m in MODULES and m != module}


def in_wing(module: str, *wings: str) -> bool:
    return any(module == f"imagenet_pack.{w}" or module.startswith(f"imagenet_pack.{w}.") for w in wings)


def test_the_wings_meet_only_at_what_both_share():
    crossing = []
    for module, path in MODULES.items():
        found = imports(module, path, top_level_only=False)
        if in_wing(module, "write", "sources"):
            crossing += [(module, t) for t in found if in_wing(t, "read", "loader", "gpu")]
        if in_wing(module, "read", "loader", "gpu"):
            crossing += [(module, t) for t in found if in_wing(t, "write")]
        if in_wing(module, "loader", "read"):
            crossing += [(module, t) for t in found if in_wing(t, "gpu")]
        if in_wing(module, "contract"):  # what both wings share depends on neither
            crossing += [(module, t) for t in found if not in_wing(t, "contract", "errors")]
    assert not crossing


def test_no_import_cycle():
    graph = {m: {t for t in imports(m, p, top_level_only=True) if not m.startswith(t + ".")}
             for m, p in MODULES.items()}
    state: dict[str, int] = {}

    def visit(module: str, stack: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph[module]):
            assert state.get(target) != 1, " -> ".join(stack[stack.index(target):] + [target])
            if target not in state:
                visit(target, stack + [target])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_module_is_past_320_lines(module):
    assert len(MODULES[module].read_text().splitlines()) <= 320


DEVICE_HOMES = {PACKAGE / "gpu" / "device.py", PACKAGE / "machine.py"}


def _attribute_chain(node: ast.AST) -> str:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
    return ".".join(reversed(parts))


def test_only_the_device_module_asks_what_the_device_is():
    """By meaning: no ``torch.cuda`` attribute, no ``os.cpu_count()``, no comparison of a device's type with
    "cuda" outside gpu/device.py and machine.py."""
    asking = []
    for path in PACKAGE.rglob("*.py"):
        if path in DEVICE_HOMES:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            chain = _attribute_chain(node) if isinstance(node, ast.Attribute) else ""
            if chain.startswith("torch.cuda.") or chain == "os.cpu_count":
                asking.append(f"{path}:{node.lineno} {chain}")
            if isinstance(node, ast.Compare) and any(isinstance(c, ast.Constant) and c.value == "cuda"
                                                     for c in [node.left, *node.comparators]):
                sides = [node.left, *node.comparators]
                if any(isinstance(side, ast.Attribute) and side.attr == "type" for side in sides):
                    asking.append(f"{path}:{node.lineno} .type == 'cuda'")
    assert not asking, asking


def test_no_decision_is_taken_on_an_error_message_text():
    """Errors are told apart by their class: no ``... in str(exc)`` anywhere in the package."""
    branching = [f"{path}:{node.lineno}" for path in PACKAGE.rglob("*.py")
                 for node in ast.walk(ast.parse(path.read_text()))
                 if isinstance(node, ast.Compare) and any(isinstance(op, (ast.In, ast.NotIn)) for op in node.ops)
                 and any(isinstance(c, ast.Call) and isinstance(c.func, ast.Name) and c.func.id == "str"
                         and c.args and isinstance(c.args[0], ast.Name) for c in node.comparators)]
    assert not branching, branching


def test_every_error_raised_is_of_a_kind_a_caller_can_catch():
    """The base error is a base: every raise (or returned error) names one of its kinds, and every damage
    message ends with the one remedy its class owns (no "reconvert" pasted in)."""
    def made(node: ast.AST) -> ast.expr | None:  # what a raise raises or a return returns
        return node.exc if isinstance(node, ast.Raise) else node.value if isinstance(node, ast.Return) else None

    bare = [f"{path}:{node.lineno}" for path in PACKAGE.rglob("*.py")
            for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(call := made(node), ast.Call) and isinstance(call.func, ast.Name)
            and call.func.id == "ImagenetPackError"]
    assert not bare, bare
    pasted = [f"{p}:{i}" for p in PACKAGE.rglob("*.py") for i, line in enumerate(p.read_text().splitlines(), 1)
              if re.search(r"damaged, reconvert|reconvert the database", line)]
    assert not pasted, pasted


def test_datasets_loaders_and_decoders_are_asked_not_probed():
    probes = [f"{p}:{i}" for p in PACKAGE.rglob("*.py") for i, line in enumerate(p.read_text().splitlines(), 1)
              if re.search(r"\b(hasattr|getattr)\((self\.)?(dataset|loader|decoder|ds)\b", line)]
    assert not probes, probes


def test_the_converter_imports_neither_the_reader_nor_torch():
    """A data host that only converts needs no torch: importing the converter and the CLI pulls in none."""
    code = ("import sys, imagenet_pack.write.converter, imagenet_pack.cli; "
            "print(sorted(m for m in sys.modules if m.startswith(('imagenet_pack.read', 'imagenet_pack.loader', "
            "'imagenet_pack.gpu', 'torch'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"

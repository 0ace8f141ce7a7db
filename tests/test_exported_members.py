"""The public surface: ``__all__`` lists exactly the public names, sorted, all from the root."""

from __future__ import annotations

import ast
import subprocess
import sys
import types
from pathlib import Path

import pytest

import modelslab_async
import modelslab_async.errors


def public_names(module: types.ModuleType) -> list[str]:
    """Names a user can reach on *module*: not private, not a submodule."""
    return [
        name
        for name, value in vars(module).items()
        if (not name.startswith("_") or name == "__version__")
        and not isinstance(value, types.ModuleType)
    ]


#: Names exported lazily (module ``__getattr__``): their modules import optional extras.
LAZY = {"RaySlots", "RedisSlots"}


def test_all_is_exactly_the_sorted_public_names() -> None:
    loaded = set(public_names(modelslab_async))
    assert modelslab_async.__all__ == sorted(loaded | LAZY)
    for name in LAZY:
        getattr(modelslab_async, name)
    assert modelslab_async.__all__ == sorted(public_names(modelslab_async))
    assert set(modelslab_async.__all__) <= set(dir(modelslab_async))


def test_importing_the_package_imports_no_optional_extra() -> None:
    code = (
        "import sys, modelslab_async, modelslab_async.errors\n"
        "modelslab_async.RedisSlots, modelslab_async.RaySlots\n"
        "print(sorted({'redis', 'ray', 'pyarrow'} & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="NoSuchThing"):
        modelslab_async.NoSuchThing  # type: ignore[attr-defined]  # noqa: B018


def test_every_exported_class_claims_the_package_as_its_module() -> None:
    for name in modelslab_async.__all__:
        value = getattr(modelslab_async, name)
        if isinstance(value, type):
            assert value.__module__ == "modelslab_async", name
            assert repr(value) == f"<class 'modelslab_async.{name}'>"


def test_version_is_a_string() -> None:
    assert isinstance(modelslab_async.__version__, str)
    assert modelslab_async.__version__


def test_errors_module_exports_the_exception_tree() -> None:
    errors = modelslab_async.errors
    assert errors.__all__ == sorted(public_names(errors))
    exported = {
        name
        for name in modelslab_async.__all__
        if isinstance(value := getattr(modelslab_async, name), type)
        and issubclass(value, BaseException)
    }
    assert set(errors.__all__) == exported
    for name in errors.__all__:
        assert getattr(errors, name) is getattr(modelslab_async, name)


# --- the package's source -------------------------------------------------------------------

PACKAGE = Path(modelslab_async.__file__).parent
SOURCES = sorted(PACKAGE.rglob("*.py"))


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_code_is_generated_at_run_time(path: Path) -> None:
    calls = [
        node.func.id
        for node in ast.walk(_tree(path))
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id in ("exec", "eval", "compile")
    ]
    assert calls == []


def test_only_the_command_line_imports_the_allocator_tweak() -> None:
    importers = {
        _module_name(path)
        for path in SOURCES
        for node in ast.walk(_tree(path))
        if isinstance(node, ast.ImportFrom) and (node.module or "").endswith("_alloc")
    }
    assert importers == {"modelslab_async.cli._commands"}


def _top_level(body: list[ast.stmt]) -> list[ast.stmt]:
    """Statements run at import, into ``if`` and ``try`` blocks."""
    found: list[ast.stmt] = []
    for node in body:
        found.append(node)
        if isinstance(node, ast.If | ast.Try):
            nested = [*node.body, *node.orelse]
            if isinstance(node, ast.Try):
                nested += [s for handler in node.handlers for s in handler.body]
            found += _top_level(nested)
    return found


def _defined_names(tree: ast.Module) -> set[str]:
    names: set[str] = set()
    for node in _top_level(tree.body):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    return names


def _all_of(tree: ast.Module) -> list[str] | None:
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets
        ):
            return list(ast.literal_eval(node.value))
    return None


#: Modules whose ``__all__`` re-exports what they import, on purpose: the public faces.
REEXPORTING = {
    "modelslab_async",
    "modelslab_async.errors",
    "modelslab_async.cli",
    "modelslab_async.datasets",
    "modelslab_async.emulator",
}
PRIVATE = [
    path
    for path in SOURCES
    if _module_name(path) not in REEXPORTING and _all_of(_tree(path)) is not None
]


@pytest.mark.parametrize("path", PRIVATE, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_a_private_modules_all_lists_only_names_it_defines(path: Path) -> None:
    tree = _tree(path)
    exported = _all_of(tree) or []
    assert sorted(set(exported) - _defined_names(tree)) == []


def test_the_ray_module_exports_text2img_and_imports_ray_only_when_used() -> None:
    code = "import sys, modelslab_async.ray as r\nprint(r.__all__, 'ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "['Text2Img'] False"

"""The public surface: ``__all__`` lists exactly the public names, sorted, all from the root."""

from __future__ import annotations

import subprocess
import sys
import types

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

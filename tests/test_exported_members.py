"""The public surface: ``__all__`` lists exactly the public names, sorted, all from the root."""

from __future__ import annotations

import types

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


def test_all_is_exactly_the_sorted_public_names() -> None:
    assert modelslab_async.__all__ == sorted(public_names(modelslab_async))


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

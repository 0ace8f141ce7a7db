"""Print pip constraints that pin every runtime dependency to its declared floor.

    python scripts/floors.py > floors.txt
    pip install -c floors.txt -e '.[dev]'
    python scripts/floors.py --check     # every installed runtime dependency at its floor

The floors come from ``pyproject.toml`` (the one source of truth): each ``name>=X`` of
``[project] dependencies`` and of the optional groups users install (every group but the
tool groups ``dev`` and ``bench``) becomes ``name==X``. ``.ci/run`` installs the project
this way in a second virtualenv and runs the test suite there, so a floor the code has
outgrown fails CI instead of a user's install.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

try:
    import tomllib
except ImportError:  # Python 3.10: pip vendors a TOML reader
    from pip._vendor import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
TOOL_GROUPS = {"dev", "bench"}
_FLOOR = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[[^\]]*\])?\s*>=\s*([^,;\s]+)")


def floors(pyproject: Path = ROOT / "pyproject.toml") -> dict[str, str]:
    """{distribution name: floor version} of the runtime dependencies."""
    project = tomllib.loads(pyproject.read_text())["project"]
    specs = list(project.get("dependencies", []))
    for group, deps in project.get("optional-dependencies", {}).items():
        if group not in TOOL_GROUPS:
            specs += deps
    found: dict[str, str] = {}
    for spec in specs:
        match = _FLOOR.match(spec)
        if match is None:
            if not spec.startswith(project["name"]):
                raise SystemExit(f"no floor (name>=X) in the dependency {spec!r}")
            continue
        name, version = match[1].lower(), match[2]
        found[name] = version
    return found


def _release(version: str) -> tuple[int, ...]:
    parts = [int(p) for p in re.findall(r"\d+", version.split("+")[0])[:3]]
    return tuple(parts + [0] * (3 - len(parts)))


def check() -> int:
    """Exit status 1 unless every installed runtime dependency is at its floor."""
    from importlib.metadata import PackageNotFoundError, version

    wrong = 0
    for name, floor in sorted(floors().items()):
        try:
            installed = version(name)
        except PackageNotFoundError:
            print(f"{name}: not installed (floor {floor})")
            continue
        ok = _release(installed) == _release(floor)
        wrong += not ok
        print(f"{name}: {installed} (floor {floor}){'' if ok else '  <- not the floor'}")
    return 1 if wrong else 0


def main() -> None:
    if sys.argv[1:] == ["--check"]:
        raise SystemExit(check())
    for name, version in sorted(floors().items()):
        sys.stdout.write(f"{name}=={version}\n")


if __name__ == "__main__":
    main()

"""The ``modelslab-async`` command line: ``generate``, ``batch``, ``fetch``, ``report``,
``emulator``.

Built on click, with rich for the progress bar and the summary (the ``cli`` extra:
``pip install 'modelslab-async[cli]'``). Modules: ``_options`` (the options, one per request
field from ``REQUEST_FIELDS``), ``_input`` (reading PROMPTS), ``_display`` (progress, summary,
``--json``), ``_run`` (targets, shared slots, signals, exit codes), ``_reporting`` (the
batch's ``report.html``), ``_commands`` (the commands and ``main``), ``_alloc`` (the
process-wide allocator tweak ``main`` makes). ``docs/cli.md`` documents every option.
"""

from __future__ import annotations

import sys

try:
    import click  # noqa: F401
    import rich  # noqa: F401
except ModuleNotFoundError as _missing:  # pragma: no cover - tested in a subprocess
    if (_missing.name or "").split(".")[0] not in ("click", "rich"):
        raise
    sys.stderr.write(
        f"modelslab-async: the command line needs the 'cli' extra ({_missing.name} is not "
        "installed): pip install 'modelslab-async[cli]'\n"
    )
    raise SystemExit(2) from None

from ._commands import cli, main

__all__ = ["cli", "main"]

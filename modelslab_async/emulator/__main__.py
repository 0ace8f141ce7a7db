"""``python -m modelslab_async.emulator --host 127.0.0.1 --port 8000 [options]``."""

from __future__ import annotations

from ._cli import main

if __name__ == "__main__":
    raise SystemExit(main())

"""Files written whole: the one way hfreg replaces a file that another process may be writing or reading at the
same moment (a shared grid's reports and plots, the verdict cache). Standard library only."""

from __future__ import annotations

import contextlib
import os
import secrets


@contextlib.contextmanager
def replacing(path: str):
    """A temporary path of this writer's own beside ``path``, which replaces ``path`` when the block ends (or is
    removed if it fails): two processes writing one file at once each leave it whole, never a mix."""
    tmp = f"{path}.{os.getpid()}-{secrets.token_hex(4)}.tmp"
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)

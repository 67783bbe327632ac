"""One exception type for every user-facing mistake.

The CLI prints `error: <message>` on one line and exits with status 2; the message names the problem
and the fix. Anything else that escapes is a bug and keeps its traceback. A full disk is the environment's
problem, not a bug: `disk_full` words it once for every writer (slm.guard's output guard and the CLI use it).
"""

import errno as _errno
import os as _os
import re as _re
import shutil as _shutil


class SlmError(Exception):
    """A problem with the user's input or environment, with a one-line message that says how to fix it."""


# ---- a full disk: one message for every writer ------------------------------------------------------------

_FULL = (_errno.ENOSPC, _errno.EDQUOT)
# numpy's ndarray.tofile (the gguf package's writer) reports a short write without an errno
_SHORT_WRITE = _re.compile(r"\d+ requested and \d+ written")


def is_disk_full(e: BaseException) -> bool:
    """Whether an exception is a write that found no space left (ENOSPC, a quota, or a short write)."""
    return isinstance(e, OSError) and (e.errno in _FULL or bool(_SHORT_WRITE.search(str(e))))


def _mount(path) -> str:
    p = _os.path.abspath(path)
    while not _os.path.ismount(p):
        p = _os.path.dirname(p)
    return p


def _mib(n: float) -> str:
    return f"{n / 2**20:,.1f} MiB"


def disk_full(where, written: int | None = None, need: int | None = None) -> SlmError:
    """The one-line error for a full disk under `where`: its filesystem, the space free now (after the
    partial output was removed), what was written before it filled and, when the writer knows it, what was
    needed."""
    folder = _os.path.abspath(where)
    while not _os.path.isdir(folder):
        folder = _os.path.dirname(folder)
    free = _shutil.disk_usage(folder).free
    parts = [f"{_mib(free)} free on {_mount(folder)}"]
    if written:
        parts.append(f"{_mib(written)} written before it filled")
    if need:
        parts.append(f"needs about {_mib(need)}")
    return SlmError(f"disk full while writing {where} ({', '.join(parts)}); what it half-wrote was removed: "
                    "free space there or choose an output on another disk")


def tree_bytes(path) -> int:
    """Bytes of the files under `path` (0 when it is gone): how much a writer had written."""
    total = 0
    for root, _, files in _os.walk(path):
        for f in files:
            try:
                total += _os.lstat(_os.path.join(root, f)).st_size
            except OSError:
                pass
    return total

"""The output guard every verb writes through: an output can never destroy an input, two runs never write one
output at once, and nothing is left behind.

`guard_output(out, inputs, force)` resolves the paths and, before any long work:
- refuses an output that is, contains or lies inside one of the inputs — even with --force, since replacing it
  would delete what the run is about to read;
- checks that the output's parent can be created and written (a probe file, not os.access, which lies for
  read-only mounts and /proc);
- takes an exclusive lock beside the output (`.NAME.lock`, created with O_EXCL, holding the owner's PID and
  host); a lock whose PID is dead on this host is stale by proof and is broken at once, saying so (a lock
  with no readable owner proves nothing about its writer and is broken only with --force);
- removes temporaries that dead processes left beside the output (`.NAME.tmp-PID`, `.NAME.old-PID`), saying
  so;
- turns a full disk inside the block into one line naming the output, its filesystem and the space (slm.errors
  `disk_full`), after the atomic writer has removed what it had written.
The lock is released when the block exits, however it exits; a block that fails also removes the (empty)
parent folders the guard created, so a refused or failed run leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from slm.errors import SlmError, disk_full, is_disk_full, tree_bytes

_TEMP = re.compile(r"\.(?:tmp|old)-(\d+)$")  # the suffixes atomic writers here append: .tmp-PID, .old-PID


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class LockedError(SlmError):
    """The output is locked by a live process (a second run of the same output)."""


def pid_alive(pid: int) -> bool:
    """Whether a process with this PID exists on this host (signal 0 checks without sending anything)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    try:  # a zombie (exited, not yet reaped by its parent) still answers signal 0 but runs no more
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def check_not_input(out: Path, inputs: Iterable[Path | str]) -> None:
    """Refuse an output that is, contains or lies inside an input (compared after resolving links)."""
    o = Path(out).resolve()
    for i in inputs:
        if i is None:
            continue
        p = Path(i).resolve()
        if o == p or o in p.parents or p in o.parents:
            rel = "is" if o == p else ("contains" if o in p.parents else "lies inside")
            raise SlmError(f"output {out} {rel} the input {i}: writing it would destroy the input; choose "
                           "another output path (--force cannot override this)")


def check_writable(out: Path) -> None:
    """A file can be created in the output's nearest existing ancestor folder (nothing is created that
    stays)."""
    out = Path(out).absolute()
    probe_from = out.parent
    while not probe_from.exists():
        probe_from = probe_from.parent
    if not probe_from.is_dir():
        raise SlmError(f"cannot write {out}: {probe_from} is a file, not a folder; choose another output "
                       "path")
    try:
        probe = probe_from / f".{out.name}.probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise SlmError(f"cannot write {out} ({e.strerror or e}): choose a writable output path") from None


def clean_stale_temps(folder: Path, prefix: str = "", say: Callable[[str], None] = _say) -> list[Path]:
    """Remove `.{prefix}…tmp-PID` / `.old-PID` entries in `folder` whose PID is dead; return what was
    removed."""
    removed = []
    if not folder.is_dir():
        return removed
    for p in folder.iterdir():
        m = _TEMP.search(p.name)
        if not (m and p.name.startswith("." + prefix)) or pid_alive(int(m[1])):
            continue
        (shutil.rmtree(p, ignore_errors=True) if p.is_dir() and not p.is_symlink()
         else p.unlink(missing_ok=True))
        say(f"removed {p}, left by a process (PID {m[1]}) that died before finishing")
        removed.append(p)
    return removed


def lock_path(out: Path) -> Path:
    return Path(out).with_name(f".{Path(out).name}.lock")


def _read_lock(lock: Path) -> dict:
    try:
        return json.loads(lock.read_text())
    except (OSError, ValueError):
        return {}


_HELD: dict[Path, int] = {}  # locks this process holds → nesting depth (a verb's guard around a library's)


_HALF_WRITTEN_S = 10.0  # a lock with no readable owner younger than this may be mid-write by its creator


def _stale_owner(lock: Path, me: dict) -> tuple[bool, int, str]:
    """(stale?, pid, host) of an existing lock: stale when its PID is dead on this host, or when it holds no
    owner at all (its writer died between creating and filling it, or the disk was full) and is older than a
    moment."""
    owner = _read_lock(lock)
    pid, host = int(owner.get("pid", 0) or 0), str(owner.get("host", "?"))
    if not pid:
        try:
            age = time.time() - lock.stat().st_mtime
        except FileNotFoundError:
            return True, 0, host
        return age > _HALF_WRITTEN_S, 0, host
    return host == me["host"] and not pid_alive(pid), pid, host


def acquire_lock(out: Path, force: bool = False) -> Path:
    """Create `.NAME.lock` beside `out` exclusively; refuse while another live process holds it. A lock of a
    dead PID on this host is broken without asking; `force` also breaks an owner-less lock. Re-entrant within
    one process: a verb may guard its output early (before long work) and the atomic writer guard it
    again."""
    lock = lock_path(out)
    if _HELD.get(lock):
        _HELD[lock] += 1
        return lock
    me = {"pid": os.getpid(), "host": socket.gethostname()}
    for _ in range(3):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            stale, pid, host = _stale_owner(lock, me)
            if not stale:
                raise LockedError(f"output {out} locked by PID {pid or '?'} on {host}: wait for that run to "
                                  "finish or choose another output") from None
            if not pid and not force:  # no owner to check: the writer may be on another host
                raise SlmError(f"output {out} has a lock {lock.name} naming no owner, left by a run that "
                               "died while taking it: pass --force to break it") from None
            # Break it by renaming (atomic: of two runs breaking the same lock only one rename succeeds), then
            # retry.
            with contextlib.suppress(FileNotFoundError):
                broken = lock.with_name(f"{lock.name}.broken-{os.getpid()}")
                os.rename(lock, broken)
                broken.unlink()
                _say(f"broke the stale lock of PID {pid or '?'} on {out} (that process is no longer running)")
            continue
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
        except BaseException:
            lock.unlink(missing_ok=True)  # an empty lock would block the next run
            raise
        _HELD[lock] = 1
        return lock
    raise SlmError(f"cannot lock output {out}: another run keeps taking {lock.name}; try again")


def release_lock(lock: Path) -> None:
    _HELD[lock] = _HELD.get(lock, 1) - 1
    if _HELD[lock] > 0:
        return
    del _HELD[lock]
    if _read_lock(lock).get("pid") == os.getpid():
        lock.unlink(missing_ok=True)


@contextlib.contextmanager
def guard_output(out: Path | str, inputs: Iterable[Path | str | None] = (), force: bool = False,
                 exists_ok: bool = False) -> Iterator[Path]:
    """Check and lock `out` for the duration of the block (see the module docstring). An existing `out` is
    refused without `force` unless `exists_ok` (a run folder that resumes)."""
    out = Path(out)
    check_not_input(out, inputs)
    if out.exists() and not (force or exists_ok):
        raise SlmError(f"output {out} already exists: choose another path or pass --force to replace it")
    made = [p for p in (out.parent, *out.parent.parents) if not p.exists()]  # deepest first
    try:
        check_writable(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        lock = acquire_lock(out, force)
        # another run finished it meanwhile
        if out.exists() and not (force or exists_ok) and _HELD[lock] == 1:
            release_lock(lock)
            raise SlmError(f"output {out} already exists: choose another path or pass --force to replace it")
    except BaseException:
        _remove_empty(made)
        raise
    failed = True
    try:
        clean_stale_temps(out.parent, out.name + ".")  # `.o.tmp-1`, not `.o2.tmp-1`: that is another output's
        yield out
        failed = False
    except OSError as e:
        if is_disk_full(e):
            raise disk_full(out) from None
        raise
    finally:
        release_lock(lock)
        if failed and not out.exists():
            _remove_empty(made)  # a failed run leaves no empty parent folders it created


def _remove_empty(folders: list[Path]) -> None:
    """rmdir each folder (deepest first) while it is empty: the parents this guard created for an output."""
    for p in folders:
        try:
            p.rmdir()
        except OSError:
            return


@contextlib.contextmanager
def shared_entry(entry: Path | str, say: Callable[[str], None] = _say, timeout_s: float = 4 * 3600,
                 poll_s: float = 1.0) -> Iterator[Path]:
    """Hold the lock of a cache entry that several runs may want at once: while another live process holds
    it (it is making the entry), wait, saying so once, then hold it. The caller checks inside the block
    whether the entry is finished before making it."""
    entry, waited, t0 = Path(entry), False, time.monotonic()
    entry.parent.mkdir(parents=True, exist_ok=True)
    while True:
        try:
            lock = acquire_lock(entry)
            break
        except LockedError:
            if time.monotonic() - t0 > timeout_s:
                raise
            if not waited:
                owner = _read_lock(lock_path(entry))
                say(f"waiting for PID {owner.get('pid', '?')}, which is making the cache entry {entry}")
                waited = True
            time.sleep(poll_s)
    try:
        yield entry
    finally:
        release_lock(lock)


# ---- the atomic writer every output folder goes through ----------------------------------------------------
@contextlib.contextmanager
def atomic_dir(out: Path | str, force: bool = False,
               inputs: Iterable[Path | str | None] = ()) -> Iterator[Path]:
    """Yield a temp directory beside `out`; on success it replaces `out`, on failure it is removed.

    Written through slm.guard: refuses an existing `out` unless force, and an `out` that is, contains or lies
    inside one of `inputs` even with force; holds `out`'s lock while writing.
    """
    out = Path(out)
    with guard_output(out, inputs, force):
        tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        try:
            yield tmp
        except BaseException as e:
            written = tree_bytes(tmp)
            shutil.rmtree(tmp, ignore_errors=True)
            if is_disk_full(e):
                raise disk_full(out, written) from None
            raise
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        if out.exists():
            os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)


def check_output(out: Path | str, force: bool, inputs: Iterable[Path | str | None] = ()) -> None:
    """The cheap checks of slm.guard, before long work: not an input, not existing (unless force),
    writable."""
    out = Path(out)
    check_not_input(out, inputs)
    if out.exists() and not force:
        raise SlmError(f"output {out} already exists: choose another path or pass --force to replace it")
    check_writable(out)

"""The output guard: inputs are never outputs, outputs are locked, unwritable places fail before work,
temporaries of dead processes are cleaned."""

import json
import os
import socket
import subprocess
import sys

import pytest

from slm.errors import SlmError
from slm.guard import clean_stale_temps, guard_output, lock_path, pid_alive


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


@pytest.mark.parametrize("out_rel, why", [("m", "is"), ("m/sub", "lies inside"), (".", "contains")])
def test_output_overlapping_an_input_is_refused_even_with_force(tmp_path, out_rel, why):
    model = tmp_path / "m"
    model.mkdir()
    (model / "config.json").write_text("{}")
    out = tmp_path / out_rel if out_rel != "." else tmp_path
    with pytest.raises(SlmError, match=f"{why} the input"):
        with guard_output(out, [model], force=True):
            pass
    assert (model / "config.json").read_text() == "{}"


def test_existing_output_needs_force(tmp_path):
    (tmp_path / "o").mkdir()
    with pytest.raises(SlmError, match="already exists"):
        with guard_output(tmp_path / "o"):
            pass
    with guard_output(tmp_path / "o", force=True) as o:
        assert o == tmp_path / "o"


def test_unwritable_parent_fails_before_work(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(SlmError, match="is a file, not a folder"):
        with guard_output(f / "out"):
            pytest.fail("the block must not run")
    with pytest.raises(SlmError, match="choose a writable output path"):
        with guard_output("/proc/slm-test-out"):
            pytest.fail("the block must not run")


def test_lock_is_exclusive_and_released(tmp_path):
    out = tmp_path / "o"
    with guard_output(out):
        assert json.loads(lock_path(out).read_text())["pid"] == os.getpid()
        with guard_output(out):  # re-entrant in one process: the verb's guard around the writer's
            assert lock_path(out).exists()
        assert lock_path(out).exists()  # the inner block left the outer one's lock in place
    assert not lock_path(out).exists()


def test_lock_held_by_a_live_process_is_refused(tmp_path):
    out = tmp_path / "o"
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        lock_path(out).write_text(json.dumps({"pid": holder.pid, "host": socket.gethostname()}))
        with pytest.raises(SlmError, match=f"locked by PID {holder.pid}"):
            with guard_output(out):
                pass
    finally:
        holder.kill()
        holder.wait()


def test_a_dead_pids_lock_is_broken_without_force_and_its_temporaries_removed(tmp_path, capsys):
    """kill -9 leaves the lock and the temporary folder: the PID is dead on this host, which proves the lock
    stale, so a rerun breaks it and cleans up without --force (which keeps meaning "replace the output")."""
    out = tmp_path / "o"
    dead = _dead_pid()
    assert not pid_alive(dead)
    lock_path(out).write_text(json.dumps({"pid": dead, "host": socket.gethostname()}))
    tmp = tmp_path / f".o.tmp-{dead}"
    tmp.mkdir()
    (tmp / "model.safetensors").write_bytes(b"0" * 1000)
    with guard_output(out):
        assert json.loads(lock_path(out).read_text())["pid"] == os.getpid()
    err = capsys.readouterr().err
    assert f"broke the stale lock of PID {dead}" in err and f"removed {tmp}" in err
    assert not tmp.exists() and not lock_path(out).exists()


def test_a_dead_pid_on_another_host_is_not_proof(tmp_path):
    out = tmp_path / "o"
    lock_path(out).write_text(json.dumps({"pid": _dead_pid(), "host": "another-host"}))
    with pytest.raises(SlmError, match="locked by PID .* on another-host"):
        with guard_output(out, force=True):
            pass


def test_temporaries_of_dead_processes_are_removed_live_ones_kept(tmp_path, capsys):
    dead = _dead_pid()
    stale = tmp_path / f".o.tmp-{dead}"
    stale.mkdir()
    (stale / "w.bin").write_bytes(b"0" * 10)
    live = tmp_path / f".o.tmp-{os.getpid()}"
    live.mkdir()
    other = tmp_path / f".p.tmp-{dead}"
    other.mkdir()
    removed = clean_stale_temps(tmp_path, "o")
    assert removed == [stale] and not stale.exists() and live.exists() and other.exists()
    assert f"PID {dead}" in capsys.readouterr().err


def test_only_this_outputs_temporaries_are_cleaned(tmp_path):
    dead = _dead_pid()
    mine, sibling = tmp_path / f".o.tmp-{dead}", tmp_path / f".o2.tmp-{dead}"
    mine.mkdir()
    sibling.mkdir()
    with guard_output(tmp_path / "o"):
        pass
    assert not mine.exists() and sibling.exists()  # `.o2.tmp-PID` belongs to output o2, not o


def test_checkpoint_temporaries_match_the_step_prefix(tmp_path):
    dead = _dead_pid()
    stale = tmp_path / f".step-000010.tmp-{dead}"
    stale.mkdir()
    assert clean_stale_temps(tmp_path, "step-", say=lambda _: None) == [stale]


def test_a_failed_block_leaves_no_parent_folders_it_made(tmp_path):
    out = tmp_path / "a" / "b" / "out"
    with pytest.raises(RuntimeError):
        with guard_output(out):
            raise RuntimeError("the work failed")
    assert not (tmp_path / "a").exists()
    with guard_output(out):
        out.mkdir()
    assert out.is_dir() and not lock_path(out).exists()


def test_an_empty_lock_is_stale_once_old_and_force_breaks_it(tmp_path):
    """A writer killed between creating its lock and filling it (or a full disk) leaves an empty lock."""
    out = tmp_path / "o"
    lock = lock_path(out)
    lock.write_text("")
    with pytest.raises(SlmError, match="locked by PID"):  # young: its writer may still be filling it
        with guard_output(out, force=True):
            pass
    old = lock.stat().st_mtime - 60
    os.utime(lock, (old, old))
    with pytest.raises(SlmError, match="naming no owner.*--force"):
        with guard_output(out):
            pass
    with guard_output(out, force=True):
        assert json.loads(lock.read_text())["pid"] == os.getpid()
    assert not lock.exists()


def test_sigterm_in_any_verb_releases_the_lock_and_removes_temporaries(tmp_path):
    """`timeout slm export …` sends SIGTERM: the CLI turns it into a normal exit, so the guard's cleanup
    runs."""
    out = tmp_path / "o"
    code = ("import os, signal, sys, time\n"
            "from slm.cli import _exit_on_sigterm\n"
            "from slm.guard import atomic_dir\n"
            "_exit_on_sigterm()\n"
            f"with atomic_dir({str(out)!r}) as tmp:\n"
            "    (tmp / 'x').write_text('partial')\n"
            "    print('ready', flush=True)\n"
            "    time.sleep(60)\n")
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "ready"
    p.terminate()
    assert p.wait(timeout=30) == 143
    assert sorted(x.name for x in tmp_path.iterdir()) == []  # no lock, no .o.tmp-PID, no output

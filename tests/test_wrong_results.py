"""Cases where the right outcome is a correct answer, not an error: what a careless user's run must get right
(a rerun after kill -9, a cache after the weights changed, names of two models in one folder name, ...).

Each test drives the CLI in this process (`slm.cli.main`) or the library call behind it on tiny models.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys

from slm.cli import main
from slm.guard import lock_path
from tests.conftest import make_tiny


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_a_rerun_after_kill_9_needs_no_force_and_removes_the_dead_runs_temporary(tmp_path, capsys):
    """kill -9 of `expand` leaves its lock and its half-written temporary folder; the rerun without --force
    breaks the lock (its PID is dead on this host), removes the temporary, says both, and expands."""
    model = make_tiny(tmp_path / "m")
    out, dead = tmp_path / "x", _dead_pid()
    lock_path(out).write_text(json.dumps({"pid": dead, "host": socket.gethostname()}))
    tmp = tmp_path / f".x.tmp-{dead}"
    tmp.mkdir()
    (tmp / "model.safetensors").write_bytes(b"\0" * 4096)
    assert main(["expand", str(model), str(out), "--groups", "2"]) == 0
    err = capsys.readouterr().err
    assert f"broke the stale lock of PID {dead}" in err and f"removed {tmp}" in err
    assert not tmp.exists() and not lock_path(out).exists()
    assert json.loads((out / "config.json").read_text())["num_hidden_layers"] == 8

"""Cases where the right outcome is a correct answer, not an error: what a careless user's run must get right
(a rerun after kill -9, a cache after the weights changed, names of two models in one folder name, ...).

Each test drives the CLI in this process (`slm.cli.main`) or the library call behind it on tiny models.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

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


# ---- the profile cache measures the weights it is given --------------------------------------------------
def _resolve(model, quant=("q8_0",)):
    from slm.profiling.inputs import resolve

    said = []
    return resolve(model, None, quant, 1, backends=("llama.cpp",), progress=said.append), said


def test_the_profile_cache_follows_the_weights_not_the_config(tmp_path, monkeypatch):
    """Replacing model.safetensors (a retrain with --force, a copy) leaves config.json untouched; the cache is
    keyed by the weights' content, so the second profile quantizes the new weights, and a third of the same
    weights says it reused the cache."""
    import slm.profiling.inputs as inputs
    from slm.record import file_sha256

    monkeypatch.setattr(inputs, "CACHE", tmp_path / "cache")
    model = make_tiny(tmp_path / "m", seed=0)
    first, said = _resolve(model)
    q8_old = file_sha256(first.files["q8_0"])
    assert not first.cache_note and any("exporting" in s for s in said)

    other = make_tiny(tmp_path / "other", seed=1)  # same shape, other weights
    config_before = (model / "config.json").stat().st_mtime_ns
    (model / "model.safetensors").write_bytes((other / "model.safetensors").read_bytes())
    assert (model / "config.json").stat().st_mtime_ns == config_before
    second, _ = _resolve(model)
    assert file_sha256(second.files["q8_0"]) != q8_old
    assert not second.cache_note

    third, said = _resolve(model)
    assert third.files["q8_0"] == second.files["q8_0"] and not any("exporting" in s for s in said)
    assert "taken from the cache" in third.cache_note and "q8_0" in third.cache_note


def test_a_second_profile_of_the_same_weights_waits_for_the_cache_entry(tmp_path, monkeypatch):
    """Two profiles of one HF folder at once: the second finds the entry locked by the first (a live
    process) and waits for it, instead of failing with the cache's internal path."""
    import slm.profiling.inputs as inputs
    from slm.record import model_sha256

    monkeypatch.setattr(inputs, "CACHE", tmp_path / "cache")
    model = make_tiny(tmp_path / "m")
    entry = tmp_path / "cache" / model_sha256(model)[:16]
    entry.mkdir(parents=True)
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3)"])
    try:
        lock_path(entry / "export").write_text(json.dumps({"pid": holder.pid, "host": socket.gethostname()}))
        inp, said = _resolve(model, ("f16",))
    finally:
        holder.kill()
        holder.wait()
    assert any(f"waiting for PID {holder.pid}" in s for s in said)
    assert inp.gguf and inp.gguf.is_file()


def test_a_failed_export_leaves_no_empty_cache_entry(tmp_path, monkeypatch):
    import slm.profiling.inputs as inputs

    monkeypatch.setattr(inputs, "CACHE", tmp_path / "cache")

    def fail(*a, **k):
        raise RuntimeError("the export failed")

    monkeypatch.setattr(inputs, "export_f16", fail)
    model = make_tiny(tmp_path / "m")
    try:
        _resolve(model)
    except RuntimeError:
        pass
    assert not any((tmp_path / "cache").rglob("*"))


def test_slm_cache_reports_and_cleans_by_age_and_keeps_entries_in_use(tmp_path, monkeypatch, capsys):
    import os
    import time

    import slm.profiling.inputs as inputs

    monkeypatch.setattr(inputs, "CACHE", tmp_path / "quant")
    old, new, busy = (tmp_path / "quant" / n for n in ("a" * 16, "b" * 16, "c" * 16))
    for d, days in ((old, 30), (new, 0), (busy, 30)):
        (d / "export").mkdir(parents=True)
        (d / "export" / "m.f16.gguf").write_bytes(b"\0" * 2**20)
        t = time.time() - days * 86400
        os.utime(d, (t, t))
    lock_path(busy / "export").write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))
    assert main(["cache"]) == 0
    out = capsys.readouterr().out
    assert "3 entries, 3.0 MiB" in out and "(in use)" in out
    assert main(["cache", "clean", "--older-than", "7"]) == 0
    assert "removed 1 entries, 1.0 MiB" in capsys.readouterr().out
    assert not old.exists() and new.exists() and busy.exists()
    assert main(["cache", "clean"]) == 0
    assert not new.exists() and busy.exists()  # a live process's entry is never removed


# ---- reports: names, comparisons and records that cannot be read -----------------------------------------
def test_eval_names_two_models_of_one_folder_name_apart():
    """`slm eval A/m B/m` and `eval RUN RUN/checkpoints/step-000100`: every row and figure has its own
    name."""
    from slm.train.eval_report import eval_figures
    from slm.train.evaluate import display_names

    for models in (["/x/A/m", "/x/B/m"], ["/x/run", "/x/run/checkpoints/step-000100"]):
        names = display_names(models)
        assert len(set(names)) == 2, names
        row = {"code": {"ppl": 9.0, "loss_se": 0.01, "tokens": 100, "loss": 2.2}}
        figs = eval_figures({"matrix": [row, row]}, names)
        assert len({f.name for f in figs}) == len(figs) == 2


def _run(folder: Path, kind: str, figures: list) -> Path:
    from slm.record import write_record

    folder.mkdir(parents=True)
    write_record(folder, kind, {}, figures=figures)
    return folder


def test_compare_of_runs_sharing_no_figure_says_so(tmp_path):
    """A training run against a profile: nothing is shared, so the headline must not claim 'no significant
    difference'."""
    from slm.figure import Figure
    from slm.report.compare import compare_runs

    a = _run(tmp_path / "train", "train", [Figure("train.loss", "final loss", 2.0, "nats/token", "lower",
                                                  "quality", interval=0.1)])
    b = _run(tmp_path / "profile", "profile", [Figure("tg32", "decode", 50.0, "tok/s", "higher", "speed",
                                                      interval=1.0)])
    html = compare_runs([a, b], tmp_path / "cmp").read_text()
    assert "share no figure to compare" in html and "no significant difference" not in html


BROKEN_RECORDS = {"cut": '{"schema": 3, "kind": "info", "res', "list": "[1, 2]", "no-kind": '{"schema": 3}',
                  "figures-text": '{"schema": 3, "kind": "info", "result": {"figures": "abc"}}',
                  "figures-numbers": '{"schema": 3, "kind": "info", "result": {"figures": [1, 2]}}',
                  "result-list": '{"schema": 3, "kind": "info", "result": [1]}',
                  "binary": "\udcff"}


def test_index_lists_unreadable_records_and_goes_on_compare_names_the_file(tmp_path, capsys):
    from slm.figure import Figure

    _run(tmp_path / "good", "info", [Figure("params", "parameters", 1e6, "parameters", key=True)])
    for name, text in BROKEN_RECORDS.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "slm.json").write_bytes(text.encode("utf-8", "surrogateescape"))
    assert main(["report", "index", str(tmp_path)]) == 0
    html = (tmp_path / "index.html").read_text()
    assert "Unreadable folders" in html and all(f">{n}<" in html for n in BROKEN_RECORDS)
    for name in BROKEN_RECORDS:
        capsys.readouterr()
        assert main(["report", "compare", str(tmp_path / "good"), str(tmp_path / name), "-o",
                     str(tmp_path / f"cmp-{name}")]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"{tmp_path / name / 'slm.json'}" in err, err

"""`slm profile --host`: end to end against a local sshd with host-key checking, and clean failures."""

from __future__ import annotations

import getpass
import json
import socket
import sys
from pathlib import Path

import pytest

from slm.cli import main

SLM = str(Path(sys.executable).with_name("slm"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _argv(sshd, model, out, *extra, key="id", known="known_hosts", slm=SLM, port=None):
    d = sshd["dir"]
    return ["profile", str(model), "--host", f"{getpass.getuser()}@127.0.0.1", "--port",
            str(port or sshd["port"]), "--identity", str(d / key), "--known-hosts", str(d / known),
            "--remote-slm", slm, "--remote-dir", str(d / "remote"), "-o", str(out), *extra]


@pytest.mark.slow
def test_ssh_end_to_end(sshd, gguf, tmp_path, capsys):
    out = tmp_path / "remote-profile"
    rc = main(_argv(sshd, gguf, out, "--quick", "--json", "--backends", "llama.cpp"))
    assert rc == 0
    res = json.loads(capsys.readouterr().out)
    assert res["schema_version"] == 3 and res["where"] == "measured over SSH"
    assert res["how"].startswith("measured over SSH on ")
    rows = res["backends"]["llama.cpp"]["rows"]
    assert rows and all(r["how"] == res["how"] and r["tok_s"] > 0 for r in rows)
    assert (sshd["dir"] / "remote" / gguf.name).is_file()  # the model really was copied
    saved = json.loads((out / "profile.json").read_text())
    assert saved["how"] == res["how"]
    assert (out / "slm.json").is_file() and (out / "index.html").is_file()
    figs = {f["name"]: f for f in json.loads((out / "slm.json").read_text())["result"]["figures"]}
    assert figs["llama.cpp.tg32@d0"]["how"] == "measured over SSH"


@pytest.mark.parametrize("case, kw, expect", [
    ("unreachable", {"port": "free"}, "cannot reach"),
    ("key refused", {"key": "other_id"}, "refused the key"),
    ("unknown host key", {"known": "empty_known_hosts"}, "host key"),
    ("slm missing", {"slm": "/nonexistent/bin/slm"}, "not installed on"),
])
def test_ssh_fails_cleanly(sshd, tmp_path, capsys, case, kw, expect):
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF" + b"\0" * 64)  # never read: each failure happens before the copy
    if kw.get("port") == "free":
        kw = {"port": free_port()}
    out = tmp_path / "out"
    rc = main(_argv(sshd, model, out, "--json", **kw))
    cap = capsys.readouterr()
    assert rc == 2, case
    last = cap.err.strip().splitlines()[-1]
    assert last.startswith("error: ") and expect in last, cap.err  # one clear line, after the progress lines
    assert cap.out == ""  # no partial JSON
    assert not out.exists()

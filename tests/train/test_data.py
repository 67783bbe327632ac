"""slm data prepare: shards, document index, held-out split, idempotence, bad input."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from slm.errors import SlmError
from slm.train.data import DataArgs, Source, parse_source, prepare
from slm.train.pack import Sampler, open_data

from .conftest import write_chat, write_texts


def _hashes(folder):
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != "slm.json"}


def test_prepare_is_idempotent_and_deterministic(tmp_path, tiny_lm):
    tok = tiny_lm()
    code = write_texts(tmp_path / "code", 30, 1, "code")
    chat = write_chat(tmp_path / "chat.jsonl", 20, 2)
    srcs = [Source("code", str(code), 1.5), Source("chat", str(chat))]
    r1 = prepare(DataArgs(srcs, str(tok), heldout=0.2, workers=1, progress=False), tmp_path / "d1")
    assert not r1.get("up_to_date")
    assert prepare(DataArgs(srcs, str(tok), heldout=0.2, workers=1, progress=False),
                   tmp_path / "d1")["up_to_date"]
    # two tokenizer processes give the same bytes as one
    prepare(DataArgs(srcs, str(tok), heldout=0.2, workers=2, progress=False), tmp_path / "d2")
    assert _hashes(tmp_path / "d1") == _hashes(tmp_path / "d2")

    splits = open_data(tmp_path / "d1", "train")
    code_split = splits["code"]
    assert code_split.tokens.dtype == np.uint16 and code_split.kind == "text"
    # the document index points at whole documents: each one ends with EOS
    eos = json.loads((tok / "tokenizer_config.json").read_text())
    assert all(code_split.tokens[e - 1] == code_split.tokens[code_split.docs[1] - 1]
               for e in code_split.docs[1:])
    assert eos  # the tokenizer config exists
    assert splits["chat"].kind == "chat" and splits["chat"].mask is not None
    held = open_data(tmp_path / "d1", "heldout")
    assert held["code"].n_tokens > 0 and held["chat"].n_tokens > 0
    assert r1["sources"]["code"]["train_docs"] + r1["sources"]["code"]["heldout_docs"] == 30

    # other inputs into the same folder need --force
    write_texts(tmp_path / "code", 31, 1, "code")
    with pytest.raises(SlmError, match="--force"):
        prepare(DataArgs(srcs, str(tok), workers=1, progress=False), tmp_path / "d1")


def test_mixture_weights_set_the_share_of_sequences(tiny_data):
    data, _ = tiny_data
    s = Sampler(open_data(data, "train"), 32, seed=0)
    picks = [s.splits[int(np.random.default_rng([0, i]).choice(2, p=s.p))].name for i in range(2000)]
    assert abs(picks.count("code") / 2000 - 0.6) < 0.04  # weights 1.5 : 1.0
    a, b = s.sequence(5), s.sequence(5)
    assert all(np.array_equal(a[k], b[k]) for k in a)  # stateless: same index, same sequence


def test_bad_sources(tmp_path, tiny_lm):
    tok = str(tiny_lm())
    with pytest.raises(SlmError, match="does not exist"):
        prepare(DataArgs([Source("x", str(tmp_path / "nope"))], tok, progress=False), tmp_path / "o1")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SlmError, match="no files"):
        prepare(DataArgs([Source("x", str(tmp_path / "empty"))], tok, progress=False), tmp_path / "o2")
    (tmp_path / "blank").mkdir()
    (tmp_path / "blank" / "a.txt").write_text("  \n")
    with pytest.raises(SlmError, match="no non-empty documents"):
        prepare(DataArgs([Source("x", str(tmp_path / "blank"))], tok, workers=1, progress=False),
                tmp_path / "o3")
    assert not (tmp_path / "o3").exists()  # failed while tokenizing: no empty output folder, no temporary
    (tmp_path / "bad.jsonl").write_text('{"body": 1}\n')
    with pytest.raises(SlmError, match="needs a `text`"):
        prepare(DataArgs([Source("x", str(tmp_path / "bad.jsonl"))], tok, workers=1, progress=False),
                tmp_path / "o4")
    with pytest.raises(SlmError, match="no tokenizer"):
        prepare(DataArgs([Source("x", str(tmp_path / "blank"))], str(tmp_path / "empty"), progress=False),
                tmp_path / "o5")
    assert parse_source("code=/a/b:1.5").weight == 1.5 and parse_source("c=/x").path == "/x"
    assert parse_source(f"c={tmp_path}/no:such").path == f"{tmp_path}/no:such"  # a colon in a path stays
    with pytest.raises(SlmError, match="weight 'abc' is not a number"):
        parse_source(f"c={tmp_path}:abc")


def test_records_are_checked_before_tokenizing(tmp_path, tiny_lm, monkeypatch):
    """A malformed line, mixed text/chat records or chat without assistant turns: one line with file:line,
    raised before a single document is tokenized and before the output folder exists."""
    import json

    from slm.train import data as data_mod

    monkeypatch.setattr(data_mod, "_tokenized",
                        lambda *a: pytest.fail("tokenized before the records were checked"))
    tok = str(tiny_lm())
    user = {"messages": [{"role": "user", "content": "hi"}]}
    cases = [('{"text": "a"}\n{"text": "b"\n', r"bad\.jsonl:2: not valid JSON"),
             ('{"text": "a"}\n' + json.dumps(user) + "\n",
              r"bad\.jsonl:2: source x mixes text and chat records"),
             (json.dumps(user) + "\n", "none of its 1 conversations has an assistant turn"),
             ('{"messages": [{"role": "user"}]}\n',
              r"bad\.jsonl:1: each message needs a `role` and a `content`")]
    for text, message in cases:
        (tmp_path / "bad.jsonl").write_text(text)
        with pytest.raises(SlmError, match=message):
            prepare(DataArgs([Source("x", str(tmp_path / "bad.jsonl"))], tok, workers=2, progress=False),
                    tmp_path / "out")
        assert not (tmp_path / "out").exists()


def test_a_killed_prepare_is_continued_by_a_rerun(tmp_path, tiny_lm, capsys):
    """kill -9 mid-prepare leaves the output's lock and a source's temp folder: the rerun breaks the dead
    lock, removes the temp folder, saying so, and prepares the data."""
    import socket
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    out = tmp_path / "out"
    (out / f".x.tmp-{dead}").mkdir(parents=True)
    (tmp_path / ".out.lock").write_text(json.dumps({"pid": int(dead), "host": socket.gethostname()}))
    src = write_texts(tmp_path / "src", 4, 0, "prose")
    prepare(DataArgs([Source("x", str(src))], str(tiny_lm()), workers=1, progress=False), out)
    err = capsys.readouterr().err
    assert f"stale lock of PID {dead}" in err and f"removed {out / f'.x.tmp-{dead}'}" in err
    assert (out / "x" / "source.json").is_file()
    assert not (out / f".x.tmp-{dead}").exists() and not (tmp_path / ".out.lock").exists()

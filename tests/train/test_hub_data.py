"""Hub datasets as data sources, read offline from an HF cache laid out by the test (the same streaming reader
as online); the "online" errors come from a 127.0.0.1 server answering as the Hub does."""

from __future__ import annotations

import json

import pytest

from slm.cli import main
from slm.errors import SlmError
from slm.train.data import DataArgs, Source, parse_source, prepare
from tests.conftest import put_in_hub_cache
from tests.core.test_hub import fake_hub  # noqa: F401 (a fixture)

pytest.importorskip("datasets")
COMMIT = "fedcba9876543210fedcba9876543210fedcba98"


@pytest.fixture
def stack(tmp_path, hub_cache):
    """acme/stack: data/python (60 `content` rows) and data/js parquet files, plus a chat config, in the HF
    cache."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    src = tmp_path / "stack-src"
    for sub in ("data/python", "data/js", "chat"):
        (src / sub).mkdir(parents=True)
    py = [f"def f{i}(x):\n    return x * {i % 7} + {i}\n" for i in range(60)]
    pq.write_table(pa.table({"content": py, "lang": ["python"] * 60}), src / "data/python/train-0.parquet")
    pq.write_table(pa.table({"content": [f"function f{i}() {{}}" for i in range(9)]}),
                   src / "data/js/train-0.parquet")
    chats = [[{"role": "user", "content": f"{i} plus 1?"}, {"role": "assistant", "content": f"{i + 1}."}]
             for i in range(12)]
    pq.write_table(pa.table({"messages": chats}), src / "chat/train-0.parquet")
    put_in_hub_cache(hub_cache, "acme/stack", src, COMMIT, kind="datasets")
    return py


def test_prepare_from_a_hub_dataset_offline_records_its_revision(stack, tiny_lm, tmp_path):
    tok = tiny_lm()
    out = tmp_path / "data"
    argv = ["data", "prepare", str(out), "-s", "code=hf:acme/stack:data/python:1.5", "-t", str(tok),
            "--workers", "1", "--heldout", "0.2"]
    assert main(argv) == 0
    rec = json.loads((out / "slm.json").read_text())
    meta = rec["result"]["sources"]["code"]
    assert meta["hub"] == {"repo": "acme/stack", "revision": COMMIT, "type": "dataset", "config": "",
                           "data_dir": "data/python", "split": "train", "column": "content"}
    assert meta["weight"] == 1.5 and meta["train_docs"] + meta["heldout_docs"] == 60  # python only
    assert main(argv) == 0 and prepare(_args(tok, "code=hf:acme/stack:data/python:1.5"), out)["up_to_date"]

    # the same rows as a local JSONL give the same shards: one reader of documents, whatever the source
    jsonl = tmp_path / "py.jsonl"
    jsonl.write_text("".join(json.dumps({"text": t}) + "\n" for t in stack))
    local = tmp_path / "local"
    prepare(DataArgs([Source("code", str(jsonl), 1.5)], str(tok), heldout=0.2, workers=1, progress=False),
            local)
    for f in ("train.tokens.bin", "heldout.tokens.bin", "train.docs.npy"):
        assert (out / "code" / f).read_bytes() == (local / "code" / f).read_bytes()


def _args(tok, *specs, **kw):
    return DataArgs([parse_source(s) for s in specs], str(tok), heldout=0.2, workers=1, progress=False, **kw)


def test_max_tokens_and_max_docs_take_a_sample_and_chat_columns_work(stack, tiny_lm, tmp_path):
    tok = tiny_lm()
    r = prepare(_args(tok, "code=hf:acme/stack:data/python", max_tokens=300), tmp_path / "a")
    r = r["sources"]["code"]
    per_doc = len(stack[0]) + 1  # byte tokenizer: one token a byte, plus EOS
    assert 300 <= r["train_tokens"] + r["heldout_tokens"] < 300 + 2 * per_doc
    r = prepare(_args(tok, "code=hf:acme/stack:data/python", limit=7), tmp_path / "b")["sources"]["code"]
    assert r["train_docs"] + r["heldout_docs"] == 7
    r = prepare(_args(tok, "chat=hf:acme/stack@main:data_dir=chat:column=messages"), tmp_path / "c")
    assert r["sources"]["chat"]["kind"] == "chat" and r["sources"]["chat"]["hub"]["revision"] == COMMIT


def test_parse_hub_sources():
    s = parse_source("x=hf:org/ds@v1.0:sub:split=validation:column=body:2")
    assert (s.path, s.revision, s.config, s.split, s.column, s.weight) == (
        "hf:org/ds", "v1.0", "sub", "validation", "body", 2.0)
    with pytest.raises(SlmError, match="unknown option 'colum'"):
        parse_source("x=hf:org/ds:colum=text")
    with pytest.raises(SlmError, match="dataset id ORG/NAME"):
        parse_source("x=hf:justaname")
    with pytest.raises(SlmError, match="for Hub datasets"):
        Source("x", "local/dir", column="text")


def test_bad_hub_sources_are_one_line_and_write_nothing(stack, tiny_lm, tmp_path, capsys):
    tok = tiny_lm()
    out = tmp_path / "out"
    with pytest.raises(SlmError, match=r"column 'body' is not in its columns \['content', 'lang'\]"):
        prepare(_args(tok, "code=hf:acme/stack:data/python:column=body"), out)
    capsys.readouterr()
    assert main(["data", "prepare", str(out), "-s", "x=hf:acme/nothing", "-t", str(tok)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "HF_HUB_OFFLINE" in err and "acme/nothing" in err
    assert not out.exists()


def test_online_missing_dataset_and_revision(fake_hub, tiny_lm, tmp_path):  # noqa: F811
    tok = tiny_lm()
    with pytest.raises(SlmError, match="no dataset acme/missing on the Hub"):
        prepare(_args(tok, "x=hf:acme/missing"), tmp_path / "a")
    with pytest.raises(SlmError, match="'v9' is not a commit, branch or tag of dataset acme/real"):
        prepare(_args(tok, "x=hf:acme/real@v9"), tmp_path / "b")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()

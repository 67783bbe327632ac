"""Hub ids as model arguments, resolved offline from an HF cache laid out by the test (no network: the
"online" cases talk to a 127.0.0.1 server that answers as the Hub does for a missing repo or revision)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from slm import hub
from slm.cli import main
from slm.errors import SlmError
from tests.conftest import put_in_hub_cache

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def test_expand_a_hub_id_offline_records_its_revision(tiny, hub_cache, tmp_path, capsys):
    src = tiny("llama", name="src")
    snap = put_in_hub_cache(hub_cache, "acme/tiny-llama", src, COMMIT)
    assert hub.resolve_model("acme/tiny-llama") == str(snap)
    assert hub.resolve_model(f"acme/tiny-llama@{COMMIT}") == str(snap)
    assert hub.resolve_model("acme/tiny-llama@main") == str(snap)

    out = tmp_path / "out"
    assert main(["expand", "acme/tiny-llama", str(out), "--groups", "2"]) == 0
    rec = json.loads((out / "slm.json").read_text())
    assert rec["inputs"]["model"]["hub"] == {"repo": "acme/tiny-llama", "revision": COMMIT, "type": "model"}
    assert rec["inputs"]["model"]["path"] == str(snap)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["num_hidden_layers"] == 8


def test_only_safetensors_config_and_tokenizer_files_are_fetched():
    from huggingface_hub.utils import filter_repo_objects

    repo = ["model.safetensors", "model-00001-of-00002.safetensors", "model.safetensors.index.json",
            "pytorch_model.bin", "training_args.pt", "config.json", "tokenizer.json",
            "generation_config.json", "onnx/model.onnx", "README.md", "consolidated.safetensors",
            "gguf/model-q4.gguf"]
    assert sorted(filter_repo_objects(repo, allow_patterns=hub.PATTERNS["weights"])) == [
        "config.json", "generation_config.json", "model-00001-of-00002.safetensors", "model.safetensors",
        "model.safetensors.index.json", "tokenizer.json"]
    assert list(filter_repo_objects(repo, allow_patterns=hub.PATTERNS["config"])) == ["config.json"]


def test_a_local_path_wins_over_a_hub_id(tiny, hub_cache, tmp_path, monkeypatch):
    local = tiny("llama", name="x")
    monkeypatch.chdir(tmp_path)
    assert hub.parse_id("x") is None  # not org/name
    (tmp_path / "org").mkdir()
    (tmp_path / "org" / "x").symlink_to(local)
    assert hub.resolve_model("org/x") == "org/x"  # an existing folder is never looked up on the Hub
    assert hub.parse_id("./org/y") is None and hub.parse_id("/abs/path") is None


def test_missing_id_offline_is_one_line_naming_the_cache_and_nothing_is_written(hub_cache, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["expand", "acme/nothing-here", str(out), "--groups", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "HF_HUB_OFFLINE" in err and str(hub_cache) in err
    assert not out.exists()


def test_hub_id_inside_recipes_resolves(tiny, hub_cache, tmp_path):
    from slm.surgery.merge import load_recipe as merge_recipe
    from slm.train.args import load_recipe

    snap = put_in_hub_cache(hub_cache, "acme/tiny-llama", tiny("llama", name="src"), COMMIT)
    targs = load_recipe(None, ["model=acme/tiny-llama", f"data={tmp_path}", f"out={tmp_path / 'run'}",
                               "steps=1"])
    assert targs.model == str(snap)
    recipe = tmp_path / "merge.yaml"
    recipe.write_text("method: linear\nmodels: [{model: acme/tiny-llama, weight: 1}, {model: acme/tiny-llama,"
                      " weight: 1}]\n")
    assert {m["model"] for m in merge_recipe(recipe).models} == {str(snap)}


def test_info_needs_only_the_config(tiny, hub_cache, tmp_path, capsys):
    src = tiny("llama", name="src")
    cfg_only = tmp_path / "cfg"
    cfg_only.mkdir()
    (cfg_only / "config.json").write_text((src / "config.json").read_text())
    put_in_hub_cache(hub_cache, "acme/cfg", cfg_only, COMMIT)
    assert main(["info", "acme/cfg", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["layers"] == 6
    # weights are needed for surgery: a config-only snapshot is refused in one line
    with pytest.raises(SlmError, match="no .safetensors"):
        hub.resolve_model("acme/cfg@main", "weights")


class _FakeHub(BaseHTTPRequestHandler):
    """Answers as the Hub's API does for a repo or revision that does not exist (huggingface_hub reads the
    X-Error-Code header)."""

    def do_GET(self):  # noqa: N802 (http.server's name)
        code = "RepoNotFound" if "/missing" in self.path else "RevisionNotFound"
        self.send_response(404 if code == "RevisionNotFound" else 401)
        self.send_header("X-Error-Code", code)
        self.send_header("X-Error-Message", "not found")
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b'{"error": "not found"}')

    do_HEAD = do_GET

    def log_message(self, *a):
        pass


@pytest.fixture
def fake_hub(hub_cache, monkeypatch):
    import huggingface_hub.constants as c

    server = HTTPServer(("127.0.0.1", 0), _FakeHub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", False)  # huggingface_hub read the variable at import
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.server_port}")
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    yield
    server.shutdown()


def test_online_missing_repo_and_revision_are_one_line_each(fake_hub):
    with pytest.raises(SlmError, match="no model acme/missing on the Hub"):
        hub.resolve_model("acme/missing")
    with pytest.raises(SlmError, match="'v9' is not a commit, branch or tag of acme/real"):
        hub.resolve_model("acme/real@v9")


def test_import_one_gguf_of_a_hub_repo_offline(hub_cache, tmp_path):
    from slm.gguf_import import default_gguf

    repo = tmp_path / "gguf-repo"
    repo.mkdir()
    (repo / "smol-q4_1.gguf").symlink_to(default_gguf())
    snap = put_in_hub_cache(hub_cache, "acme/smol-GGUF", repo, COMMIT)
    assert hub.resolve_model("acme/smol-GGUF/smol-q4_1.gguf", "gguf") == str(snap / "smol-q4_1.gguf")
    assert hub.resolve_model("models/smollm2", "gguf") == "models/smollm2"  # `slm import --default OUT`
    with pytest.raises(SlmError, match="HF_HUB_OFFLINE"):
        hub.resolve_model("acme/smol-GGUF/other.gguf", "gguf")


def test_llama_bench_flags_need_a_host(capsys):
    assert main(["profile", "x.gguf", "--runner", "llama-bench"]) == 2
    assert "add --host" in capsys.readouterr().err

"""Device registry, detection, projection and the weight-less `--config` projection."""

from __future__ import annotations

import json

import pytest

from slm.cli import main
from slm.errors import SlmError
from slm.profiling import devices

BIG = dict(model_type="llama", num_hidden_layers=32, hidden_size=4096, intermediate_size=14336,
           num_attention_heads=32, num_key_value_heads=8, vocab_size=128256,
           max_position_embeddings=131072)  # Llama-3-8B's shape


def test_registry_and_alias():
    assert devices.get_device("jetson").key == "jetson-orin-nx-16gb"
    d = devices.get_device("jetson-agx-thor")
    assert d.bandwidth_GBps == 273 and d.memory_gib == 128
    assert all(x.source.startswith("https://") for x in devices.DEVICES.values())


def test_unknown_device_lists_known():
    with pytest.raises(SlmError) as e:
        devices.get_device("raspberry-pi")
    for key in devices.DEVICES:
        assert key in str(e.value)


@pytest.mark.parametrize("model, mem_kb, key", [
    ("NVIDIA Jetson Orin NX Engineering Reference Developer Kit", 16_000_000, "jetson-orin-nx-16gb"),
    ("NVIDIA Jetson Orin NX Engineering Reference Developer Kit", 7_600_000, "jetson-orin-nx-8gb"),
    ("NVIDIA Jetson AGX Orin Developer Kit", 64_000_000, "jetson-agx-orin-64gb"),
    ("NVIDIA Jetson Orin Nano Developer Kit", 7_600_000, "jetson-orin-nano-8gb"),
])
def test_detect_from_device_tree(tmp_path, model, mem_kb, key):
    (tmp_path / "proc/device-tree").mkdir(parents=True)
    (tmp_path / "proc/device-tree/model").write_text(model + "\x00")
    (tmp_path / "proc/meminfo").write_text(f"MemTotal:       {mem_kb} kB\n")
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/nv_tegra_release").write_text("# R36 (release), REVISION: 4.0\n")
    assert devices.detect(tmp_path).key == key


def test_not_a_jetson(tmp_path):
    assert devices.detect(tmp_path) is None


def _project(tmp_path, capsys, cfg, *extra):
    p = tmp_path / "config.json"
    p.write_text(json.dumps(cfg))
    out = tmp_path / "out"
    assert main(["profile", "--config", str(p), "--json", "-o", str(out), *extra]) == 0
    return json.loads(capsys.readouterr().out), out


def test_config_only_projection_fits(tmp_path, capsys):
    small = dict(BIG, num_hidden_layers=4, hidden_size=512, intermediate_size=1024, num_attention_heads=8,
                 num_key_value_heads=2, vocab_size=32000, max_position_embeddings=8192)
    res, out = _project(tmp_path, capsys, small, "--quant", "q4_k_m", "--device", "jetson-orin-nano-8gb")
    assert res["backends"] == {}  # nothing measured: no weights
    p = res["projection"]
    assert p["how"] == "projected" and p["device"]["key"] == "jetson-orin-nano-8gb"
    assert p["flagged"] == [] and all(r["tok_s"] > 0 and r["how"] == "projected" for r in p["rows"])
    # every projected figure names the calibration that produced it and its expected error
    assert all(r["calibration"].startswith("projected: llama.cpp calibration") and r["expected_error"] < 0.25
               for r in p["rows"] if r["kind"] == "decode")
    # this model is far below the smallest published prefill point: an upper estimate whose error is not known
    assert all(r["calibration"].startswith("projected: llama.cpp CUDA prefill calibration")
               and "upper estimate" in
               r["calibration"] and r["expected_error"] is None for r in p["rows"] if r["kind"] == "prefill")
    assert "host_figures" in p["inputs"] and "efficiency_from" not in p["inputs"]
    # decode slows down with depth (more KV read per token); the bound follows bandwidth / bytes
    dec = [r for r in p["rows"] if r["kind"] == "decode"]
    assert dec[0]["device_bound_tok_s"] > dec[-1]["device_bound_tok_s"]
    assert p["inputs"]["weight_bytes"] == pytest.approx(res["model"]["params"] * 4.5 / 8)
    assert (out / "index.html").is_file() and json.loads((out / "slm.json").read_text())["kind"] == "profile"


def test_too_large_model_is_flagged(tmp_path, capsys):
    # 8B at f16 = 16 GB of weights: more than an 8 GB Orin Nano can hold at any context
    res, _ = _project(tmp_path, capsys, BIG, "--quant", "f16", "--device", "jetson-orin-nano-8gb")
    p = res["projection"]
    assert p["flagged"] == [r["test"] for r in p["rows"]]
    assert all(r["tok_s"] is None and not r["fits"] for r in p["rows"])
    assert p["max_context_that_fits_f16_kv"] == 0
    # the same model at q4_k_m fits AGX Orin 64GB at these contexts
    (tmp_path / "b").mkdir()
    res, _ = _project(tmp_path / "b", capsys, BIG, "--quant", "q4_k_m", "--device", "jetson-agx-orin-64gb")
    assert res["projection"]["flagged"] == []


def test_unknown_device_cli(tmp_path, capsys):
    p = tmp_path / "config.json"
    p.write_text(json.dumps(BIG))
    assert main(["profile", "--config", str(p), "--device", "nano", "-o", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "unknown device 'nano'" in err and "jetson-orin-nx-16gb" in err
    assert not (tmp_path / "o").exists()

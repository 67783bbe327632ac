"""The loop: what trains, what stays bit-identical, recipes, checkpoints, errors before any work."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from slm.errors import SlmError
from slm.train import checkpoint as ckpt
from slm.train.args import PRESETS, load_recipe
from slm.train.loop import train


def _args(model, data, out, *extra):
    return load_recipe(None, [f"model={model}", f"data={data}", f"out={out}", "steps=4", "seq_len=48",
                              "global_batch=4", "micro_batch=2", "lr=3e-3", "progress=false", "report=true",
                              *extra])


def _weights(folder):
    return load_file(str(folder / "model.safetensors"))


def test_only_expanded_layers_change(tiny_expanded, tiny_data, tmp_path):
    data, _ = tiny_data
    res = train(_args(tiny_expanded, data, tmp_path / "run", "trainable=expanded", "warmup_ratio=0"))
    new = json.loads((tiny_expanded / "config.json").read_text())["slm_surgery"]["new_layers"]
    before, after = _weights(tiny_expanded), _weights(tmp_path / "run" / "final")
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed, "nothing trained"
    assert all(any(k.startswith(f"model.layers.{i}.") for i in new) for k in changed)
    # LLaMA Pro: the zero-initialised o_proj/down_proj of every new block move first
    assert {f"model.layers.{i}.mlp.down_proj.weight" for i in new} <= changed
    rec = json.loads((tmp_path / "run" / "slm.json").read_text())
    assert {f["name"]: f["value"] for f in rec["result"]["figures"]}["trainable_params"] == sum(
        v.numel() for k, v in before.items() if any(k.startswith(f"model.layers.{i}.") for i in new))
    assert ((tmp_path / "run" / "report.html").is_file()
            and {f.name: f.value for f in res["figures"]}["steps"] == 4)
    # optimizer state exists for trainable tensors only
    state = torch.load(ckpt.latest(tmp_path / "run") / "trainer_state.pt", weights_only=True)
    assert len(state["optimizer"]["state"]) == len(state["trainable"])
    assert all(any(f"layers.{i}." in k for i in new) for k in state["trainable"])


def test_lora_and_layer_list(tiny_lm, tiny_data, tmp_path):
    data, _ = tiny_data
    model = tiny_lm()
    train(_args(model, data, tmp_path / "lora", "trainable=lora", "lora_r=4", "lora_layers=[1, 2]"))
    before, after = _weights(model), _weights(tmp_path / "lora" / "final")
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith(("model.layers.1.", "model.layers.2.")) for k in changed)
    state = torch.load(ckpt.latest(tmp_path / "lora") / "trainer_state.pt", weights_only=True)
    assert all("lora_" in k for k in state["trainable"])

    train(_args(model, data, tmp_path / "list", "trainable=[0, 3]"))
    after = _weights(tmp_path / "list" / "final")
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith(("model.layers.0.", "model.layers.3.")) for k in changed)
    # --init: weights only, from the previous run's newest checkpoint; a new schedule and optimizer
    res = train(_args(model, data, tmp_path / "next", "trainable=full", f"init={tmp_path / 'list'}",
                      "steps=1"))
    rec = json.loads((tmp_path / "next" / "slm.json").read_text())
    assert rec["inputs"]["model"]["path"] == str(ckpt.latest(tmp_path / "list") / "model")
    state = torch.load(ckpt.latest(tmp_path / "next") / "trainer_state.pt", weights_only=True)
    # not the 4 steps of the run it started from
    assert state["step"] == 1 and state["scheduler"]["last_epoch"] == 1
    start, now = _weights(tmp_path / "list" / "final"), _weights(tmp_path / "next" / "final")
    # full trains all
    assert any(not torch.equal(start[k], now[k]) for k in start if k.startswith("model.layers.1."))
    from slm.io import load_model

    # final/ is a loadable HF checkpoint of the trained weights
    loaded = load_model(res["model"]).state_dict()
    assert res["model"] == str(tmp_path / "next" / "final")
    assert all(torch.equal(loaded[k], v) for k, v in now.items())


def test_half_written_checkpoint_is_ignored(tmp_path):
    run = tmp_path / "run"
    good = run / "checkpoints" / "step-000004"
    good.mkdir(parents=True)
    (good / "DONE").write_text("step 4\n")
    (run / "checkpoints" / "step-000008").mkdir()  # crashed before DONE
    (run / "checkpoints" / ".step-000012.tmp-99").mkdir()  # crashed while writing
    assert ckpt.latest(run) == good


def test_recipe_presets_overrides_and_unknown_keys(tmp_path):
    base = ["model=m", "data=d", "out=o", "steps=1"]
    a = load_recipe(None, ["preset=cpt", *base])
    assert (a.lr, a.warmup_ratio, a.global_batch, a.trainable) == (2e-4, 0.06, 1024, "expanded")
    b = load_recipe(None, ["preset=sft", *base, "lr=1e-4"])
    assert (b.lr, b.global_batch, b.warmup_ratio) == (1e-4, PRESETS["sft"]["global_batch"], 0.03)
    recipe = tmp_path / "r.yaml"
    recipe.write_text("preset: cpt\nmodel: m\ndata: d\nout: o\nsteps: 3\nlearning_rate: 1e-3\n")
    with pytest.raises(SlmError, match="unknown recipe key `learning_rate`"):
        load_recipe(recipe)
    with pytest.raises(SlmError, match="trainable"):
        load_recipe(None, [*base, "trainable=frozen"])
    with pytest.raises(SlmError, match="steps"):
        load_recipe(None, ["model=m", "data=d", "out=o"])


def test_bad_input_fails_before_work(tiny_lm, tiny_expanded, tiny_data, tmp_path, monkeypatch):
    data, _ = tiny_data
    plain = tiny_lm()
    with pytest.raises(SlmError, match="slm_surgery"):
        train(_args(plain, data, tmp_path / "a", "trainable=expanded"))
    with pytest.raises(SlmError, match="exceeds the model's context 256"):
        train(_args(tiny_expanded, data, tmp_path / "b", "seq_len=512"))
    with pytest.raises(SlmError, match="not a prepared data folder"):
        train(_args(tiny_expanded, tmp_path / "missing", tmp_path / "c"))
    with pytest.raises(SlmError, match="fewer than seq_len"):
        train(_short_data_args(tiny_expanded, tiny_data[1], tmp_path))
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**9, 10**9 - 1000, 1000))
    with pytest.raises(SlmError, match="not enough disk"):
        train(_args(tiny_expanded, data, tmp_path / "e"))
    assert not any((tmp_path / n).exists() for n in "abcde")  # nothing was written


def _short_data_args(model, tok, tmp_path):
    from slm.train.data import DataArgs, Source, prepare

    (tmp_path / "short").mkdir()
    (tmp_path / "short" / "a.txt").write_text("tiny document\n")
    prepare(DataArgs([Source("s", str(tmp_path / "short"))], str(tok), heldout=0,
                     workers=1, progress=False), tmp_path / "shortdata")
    return _args(model, tmp_path / "shortdata", tmp_path / "d")


@pytest.mark.parametrize("override, message", [
    ("eps=-1", r"eps must be a finite number in \(0, ∞\) \(got -1\.0\)"),
    ("lr=0", r"lr must be a finite number in \(0, ∞\)"),
    ("lr=.inf", r"lr=inf is not a finite number"),
    ("betas=[0.9, 1]", r"betas\[1\] must be a finite number in \[0, 1\)"),
    ("betas=[0.9, abc]", r"betas\[1\] .* \(got 'abc'\)"),
    ("betas=0.9", r"betas must be two numbers"),
    ("weight_decay=-0.1", r"weight_decay must be a finite number in \[0, ∞\)"),
    ("grad_clip=-1", r"grad_clip must be a finite number in \[0, ∞\)"),
    ("warmup_ratio=1.5", r"warmup_ratio must be a finite number in \[0, 1\]"),
    ("steps=2.9", r"steps=2\.9 is not a whole number"),
    ("seed=-1", r"seed must be a whole number ≥ 0"),
    ("eval=maybe", r"eval='maybe': use true or false"),
    ("mixture={code: .inf}", r"mixture must map source names to finite weights"),
])
def test_numeric_fields_are_validated(override, message):
    with pytest.raises(SlmError, match=message):
        load_recipe(None, ["model=m", "data=d", "out=o", "steps=2", override])


def test_whole_float_and_edge_values_are_accepted():
    a = load_recipe(None, ["model=m", "data=d", "out=o", "steps=3.0", "warmup_ratio=1", "grad_clip=0",
                           "betas=[0, 0.5]"])
    assert (a.steps, a.warmup_ratio, a.grad_clip, a.betas) == (3, 1.0, 0.0, [0, 0.5])


def test_non_finite_loss_stops_before_the_weights_change(tiny_lm, tiny_data, tmp_path):
    """lr=1e30 makes step 1's update huge and step 2's gradients NaN: the run stops there with one line naming
    the step and the likely cause, keeps step 1's checkpoint (finite) and writes no final model."""
    data, _ = tiny_data
    run = tmp_path / "run"
    with pytest.raises(SlmError, match=r"step 2: the .* is nan.*learning rate too high \(lr=1e\+30\).*"
                                       r"step-000001 is kept"):
        train(_args(tiny_lm(), data, run, "lr=1e30", "save_every=1", "trainable=full", "warmup_ratio=0"))
    assert [p.name for p in ckpt.checkpoint_dirs(run)] == ["step-000001"] and not (run / "final").exists()
    assert all(torch.isfinite(v).all() for v in _weights(ckpt.latest(run) / "model").values())
    assert not (tmp_path / ".run.lock").exists()  # the lock is released on the error


def test_weights_that_are_not_finite_are_never_saved(tmp_path):
    from types import SimpleNamespace

    from slm.train.control import check_weights_finite

    one = SimpleNamespace(sum=lambda x: x)  # a single process: sums are the value itself
    model = torch.nn.Linear(2, 2)
    check_weights_finite(one, model, 3, SimpleNamespace(lr=1.0), tmp_path)  # finite: no error
    with torch.no_grad():
        model.weight[0, 0] = float("inf")
    with pytest.raises(SlmError, match="step 3: the weights are no longer finite.*"
                                       "no checkpoint had been written"):
        check_weights_finite(one, model, 3, SimpleNamespace(lr=1.0), tmp_path)
    model.weight.requires_grad_(False)  # frozen weights never change: only trainable ones are checked
    check_weights_finite(one, model, 3, SimpleNamespace(lr=1.0), tmp_path)


def _losses(run):
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [(x["step"], x["loss"], x["grad_norm"]) for x in lines]


def test_resume_after_a_kill_mid_write(tiny_lm, tiny_data, tmp_path, capsys):
    """A kill can cut metrics.jsonl's last line short and leave a checkpoint's temp folder: --resume drops the
    partial line, removes the temp folder (saying so) and gives the same metrics as the uninterrupted run."""
    import shutil
    import subprocess
    import sys

    data, _ = tiny_data
    model, run = tiny_lm(), tmp_path / "run"
    train(_args(model, data, run, "save_every=2", "eval=false", "trainable=full"))
    full = _losses(run)
    shutil.rmtree(run / "checkpoints" / "step-000004")  # as if killed after step 3, before checkpoint 4
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    (run / "checkpoints" / f".step-000004.tmp-{dead}").mkdir()
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 5, "loss": 2.3')  # a line cut mid-write
    capsys.readouterr()
    train(_args(model, data, run, "save_every=2", "eval=false", "trainable=full", "resume=true"))
    err = capsys.readouterr().err
    assert "dropped 1 unreadable line" in err and f"PID {dead}" in err
    assert not (run / "checkpoints" / f".step-000004.tmp-{dead}").exists()
    assert _losses(run) == full  # steps 3 and 4 recomputed bit-identically, the partial line gone


def test_frozen_blocks_stay_free_under_activation_checkpointing(tiny_expanded, tmp_path):
    """trainable=expanded with activation checkpointing: frozen blocks get no gradient; blocks below the
    lowest new one run forward once (nothing recomputed), checkpointed blocks from the lowest new one up run
    twice."""
    from slm.io import read_config
    from slm.train.attention import AttnInputs
    from slm.train.loss import micro_loss
    from slm.train.model import build_model, decoder_layers
    from slm.train.pack import collate, label_window

    args = _args(tiny_expanded, tmp_path, tmp_path / "run", "trainable=expanded",
                 "activation_checkpointing=true")
    cfg = read_config(tiny_expanded)
    new = cfg["slm_surgery"]["new_layers"]
    model, head = build_model(args, tiny_expanded, cfg, torch.device("cpu"), "sdpa", "chunked")
    model.train()
    calls = [0] * len(decoder_layers(model))
    for i, layer in enumerate(decoder_layers(model)):
        layer.self_attn.register_forward_pre_hook(lambda *_, i=i: calls.__setitem__(i, calls[i] + 1))
    import numpy as np

    seq = label_window(np.arange(41) % 200, np.zeros(41, np.int64), None)
    micro_loss(model, head, collate([seq]), torch.device("cpu"), AttnInputs("sdpa", torch.float32),
               False).backward()
    assert calls == [1 if i < min(new) else 2 for i in range(len(calls))]
    for name, p in model.named_parameters():
        trains = any(name.startswith(f"model.layers.{i}.") for i in new)
        assert p.requires_grad == trains and (p.grad is not None) == trains, name


def test_compile_auto_is_on_for_cuda_only():
    from slm.train.model import wants_compile

    base = ["model=m", "data=d", "out=o", "steps=1"]
    auto, off, on = (load_recipe(None, base + extra) for extra in ([], ["compile=false"], ["compile=true"]))
    assert wants_compile(auto, torch.device("cuda")) and not wants_compile(auto, torch.device("cpu"))
    assert not wants_compile(off, torch.device("cuda")) and wants_compile(on, torch.device("cpu"))
    with pytest.raises(SlmError, match=r"compile='maybe': use auto, true, false"):
        load_recipe(None, base + ["compile=maybe"])


def test_regional_compile_shares_one_graph_across_blocks(tiny_expanded, tmp_path):
    """compile per decoder block: 8 blocks (2 trainable, 6 frozen) trace into one graph per kind of block —
    (input needs grad, weights need grad) ∈ 2 × 2, so at most 4 whatever the depth, under dynamo's recompile
    limit of 8 — and give the eager loss (dynamo's eager backend: the tracing is what is checked, cheaply, on
    CPU)."""
    import numpy as np
    import torch._dynamo

    from slm.io import read_config
    from slm.train.attention import AttnInputs
    from slm.train.loss import micro_loss
    from slm.train.model import build_model, compile_blocks
    from slm.train.pack import collate, label_window

    args = _args(tiny_expanded, tmp_path, tmp_path / "run", "trainable=expanded")
    cfg = read_config(tiny_expanded)
    seq = collate([label_window(np.arange(33) % 200, np.repeat([0, 1], [20, 13]), None)])
    losses = []
    for compiled in (False, True):
        model, head = build_model(args, tiny_expanded, cfg, torch.device("cpu"), "sdpa", "chunked")
        if compiled:
            torch._dynamo.reset()
            torch._dynamo.utils.counters.clear()
            compile_blocks(model, backend="eager")
        loss = micro_loss(model, head, seq, torch.device("cpu"), AttnInputs("sdpa", torch.float32), False)
        loss.backward()
        losses.append(float(loss))
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    assert 1 <= graphs <= 4, graphs  # not one per block
    assert losses[0] == pytest.approx(losses[1], rel=1e-6)
    torch._dynamo.reset()


def test_keep_state_false_leaves_only_the_final_model(tiny_lm, tiny_data, tmp_path):
    """A finished run with keep_state=false drops its checkpoints (the AdamW state) and keeps final/ whole;
    --resume says what to do instead, and --init of the run takes final/."""
    data, _ = tiny_data
    model = tiny_lm()
    kept = train(_args(model, data, tmp_path / "kept", "trainable=full"))
    res = train(_args(model, data, tmp_path / "lean", "trainable=full", "keep_state=false"))
    run = tmp_path / "lean"
    assert ckpt.latest(tmp_path / "kept") is not None and kept["checkpoint"]
    assert not (run / "checkpoints").exists() and res["checkpoint"] is None
    a, b = _weights(tmp_path / "kept" / "final"), _weights(run / "final")  # same seed, same weights
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(SlmError, match="keep_state=false.*--init"):
        train(_args(model, data, run, "trainable=full", "resume=true", "steps=6"))
    assert ckpt.resolve_init(run) == run / "final"

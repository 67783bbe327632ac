"""slm eval --lm-eval: the lm-evaluation-harness on a local task (a YAML over a JSONL file), offline."""

from __future__ import annotations

import json
import math

import pytest

pytest.importorskip("lm_eval")


def _task(folder, n=6):
    data = folder / "qa.jsonl"
    with open(data, "w") as f:
        for i in range(n):
            right, wrong = f" {i + 1}", f" {i + 7}"
            f.write(json.dumps({"question": f"{i} plus 1 is", "choices": [right, wrong] if i % 2 else
                                [wrong, right], "label": i % 2 ^ 1}) + "\n")
    (folder / "slm_local_qa.yaml").write_text(
        "task: slm_local_qa\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
        f"    test: {data}\ntest_split: test\noutput_type: multiple_choice\n"
        "doc_to_text: '{{question}}'\ndoc_to_choice: '{{choices}}'\ndoc_to_target: '{{label}}'\n"
        "metric_list:\n  - metric: acc\n")
    return folder


def test_lm_eval_on_a_local_task_folds_results_into_the_record(tiny_lm, tmp_path, monkeypatch, capsys):
    from slm.cli import main

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    tasks = _task(tmp_path)
    a = tiny_lm()
    out = tmp_path / "ev"
    assert main(["eval", str(a), "--lm-eval", "slm_local_qa", "--lm-eval-include", str(tasks), "--out",
                 str(out)]) == 0
    rec = json.loads((out / "slm.json").read_text())
    r = rec["result"]["matrix"][0]["lm_eval"]
    acc = r["tasks"]["slm_local_qa"]["acc"]
    p, n = acc["value"], r["n"]["slm_local_qa"]
    assert n == 6 and 0 <= p <= 1 and set(r["tasks"]["slm_local_qa"]) == {"acc"}
    # the harness's own s.e. of a mean of 0/1 outcomes: the sample std (ddof 1) / √n
    assert acc["stderr"] == pytest.approx(math.sqrt(p * (1 - p) * n / (n - 1) / n), abs=1e-9)
    fig = next(f for f in rec["result"]["figures"] if f["name"].endswith("lm_eval.slm_local_qa.acc"))
    assert fig["value"] == acc["value"] and fig["interval"] == pytest.approx(1.96 * acc["stderr"], abs=1e-6)
    assert "lm-evaluation-harness" in (out / "report.html").read_text()
    # an unknown task: one line, before any model is loaded
    assert main(["eval", str(a), "--lm-eval", "slm_local_qb", "--lm-eval-include", str(tasks)]) == 2
    assert "unknown task 'slm_local_qb'" in capsys.readouterr().err

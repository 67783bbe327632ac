"""The export report reads as one table, a row per artifact, with labels rather than summary keys."""

from __future__ import annotations

import os
import re

import pytest

from slm.quant.export import ExportArgs, export


def test_export_report_is_one_row_per_artifact(tiny, tmp_path):
    out = tmp_path / "exp"
    export(tiny("llama"), out, ExportArgs(gguf=["f16", "q8_0", "q4_k_m"], n_ctx=32, threads=1))
    html = (out / "report.html").read_text()
    table = re.search(r"<h2>Artifacts</h2>\s*<table.*?</table>", html, re.DOTALL).group(0)
    rows = re.findall(r"<tr[^>]*><td class=\"txt\">([^<]+)</td>", table)
    assert rows == ["HF model (f32, reference)", "GGUF f16", "GGUF q8_0", "GGUF q4_k_m"]
    q4 = re.search(r"GGUF q4_k_m</td>(.*?)</tr>", table, re.DOTALL).group(1)
    # the tiny rows (64) are no multiple of 256: what the file really holds
    assert "Q8_0" in q4 or "Q5_0" in q4
    assert 'class="hl"' in table  # the row whose tensors fell back is highlighted
    assert "<h2>Files</h2>" not in html and "<h2>Parity and quality</h2>" not in html
    assert "gguf.q4_k_m" not in html and "hf.ppl" not in html and "HF model (f32): perplexity" in html
    if os.environ.get("SLM_SCREENSHOTS"):
        import shutil

        shutil.copy(out / "report.html", os.path.join(os.environ["SLM_SCREENSHOTS"], "export_report.html"))


def test_divergence_names_the_token_and_calls_a_near_tie_by_the_files_own_error():
    import numpy as np

    from slm.quant.validate import divergence, divergence_text

    ref, got = [5, 7, 9], [5, 8, 1]
    logp = np.log(np.full((3, 10), 0.01))
    logp[1, 7], logp[1, 8] = np.log(0.233), np.log(0.226)  # the SmolLM2 case: a near tie at token 2
    d = divergence(ref, got, logp, noise=0.4, text=str)
    assert d["token"] == 1 and d["reference"] == "7" and d["artifact"] == "8"
    assert [t["text"] for t in d["top2"]] == ["7", "8"]
    assert abs(d["logit_gap"] - np.log(0.233 / 0.226)) < 1e-9 and d["near_tie"]
    assert "token 2" in divergence_text(d) and "near tie" in divergence_text(d)
    far = divergence(ref, got, logp, noise=0.01, text=str)  # a file this exact should not flip it
    assert not far["near_tie"] and "real change" in divergence_text(far)
    assert divergence(ref, ref[:2], logp, 0.4, str) is None  # stopped early (EOS) without leaving HF
    assert divergence_text(None) == "same tokens as HF"


def test_gap_noise_is_how_much_a_file_moves_the_reference_top_two():
    import numpy as np

    from slm.quant.validate import gap_noise

    ref = [np.array([[3.0, 1.0, 0.0], [0.0, 2.0, 1.5]])]
    assert gap_noise(ref, ref) == 0
    # the file shifts HF's top token down by 0.5 at every position: every top-2 gap shrinks by 0.5
    got = [ref[0] - np.array([[0.5, 0, 0], [0, 0.5, 0]])]
    assert gap_noise(ref, got) == pytest.approx(0.5)


def test_export_report_says_where_each_generation_leaves_hf(tiny, tmp_path):
    out = tmp_path / "exp"
    export(tiny("llama"), out, ExportArgs(gguf=["q8_0", "q2_k"], n_ctx=32, threads=1))
    import json

    v = json.loads((out / "slm.json").read_text())["result"]["validation"]
    html = (out / "report.html").read_text()
    assert "where it leaves HF" in html
    for t, r in v["gguf"].items():
        d = r["divergence"]
        assert (d is None) == r["same_generation"], t
        if d:  # the reference's own pick is its top-1 where the texts part
            assert d["top2"][0]["text"] == d["reference"] and d["top2"][0]["p"] >= d["artifact_p"]
            assert f"token {d['token'] + 1}:" in html

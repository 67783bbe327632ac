"""The export report reads as one table, a row per artifact, with labels rather than summary keys."""

from __future__ import annotations

import os
import re

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

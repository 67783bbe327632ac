"""The HTML page of one export run: files, real bits per weight, fallbacks, parity and quality per type."""

from __future__ import annotations

from pathlib import Path

from slm.figure import Figure
from slm.report.render import Chart, Table, new_figure, render_report, svg_of

from .validate import divergence_text

MAX_FALLBACK_ROWS = 60  # per type; the full list is in slm.json


def _quality_chart(result: dict) -> Chart | None:
    v = result["validation"]
    pts = []
    for f in result["files"]:
        r = (v.get(f["format"]) or {}).get(f["type"]) if v else None
        if r:
            pts.append((f"{f['format']} {f['type']}", f["size_bytes"] / 1e6, r["perplexity"],
                        (r.get("kld") or {}).get("kld_mean")))
    if len(pts) < 1:
        return None
    fig, ax = new_figure(7.5, 3.8)
    ax.scatter([p[1] for p in pts], [p[2] for p in pts], color="tab:blue", label="perplexity")
    for label, x, y, _ in pts:
        ax.annotate(label, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.axhline(v["hf"]["perplexity"], color="tab:gray", ls="--", label="HF model (f32)")
    ax.set_xlabel("file size (MB)")
    ax.set_ylabel("perplexity on held-out text")
    ax.set_xscale("log")
    kl = [(p[1], p[3]) for p in pts if p[3] is not None]
    if kl:
        ax2 = ax.twinx()
        ax2.scatter([k[0] for k in kl], [k[1] for k in kl], color="tab:red", marker="x",
                    label="KL divergence vs f16")
        ax2.set_ylabel("mean KL divergence vs f16 GGUF (nats)")
        h1, l1 = ax.get_legend_handles_labels()
        h2, l2 = ax2.get_legend_handles_labels()
        ax.legend(h1 + h2, l1 + l2, loc="upper right", fontsize=8)
    else:
        ax.legend(fontsize=8)
    ax.set_title("Size vs quality per export")
    how = (f"measured on this host: perplexity and KL divergence scored over {scoring_of(v)} of "
           f"{v['text_tokens']} tokens of held-out text (llama.cpp with an F32 KV cache / "
           "onnxruntime-genai); KL divergence per position of the f16 GGUF's next-token distribution against "
           "each file's")
    return Chart("Size vs perplexity and KL divergence", svg_of(fig), how)


def scoring_of(v: dict) -> str:
    """Which tokens the perplexity / KLD figures were scored over (runs before the mode was recorded:
    `all`)."""
    return ((v.get("scoring") or {}).get("what")
            or f"every token of non-overlapping {v['n_ctx']}-token windows")


def _holds(f: dict) -> str:
    """What the file really contains: its tensor types by count, the main one first."""
    by = f.get("by_type") or {}
    parts = sorted(by.items(), key=lambda kv: -kv[1]["tensors"])
    return ", ".join(f"{k}×{e['tensors']}" for k, e in parts) or f.get("main_type", "")


ARTIFACT_COLUMNS = ["artifact (type asked)", "what the file holds", "size (MB)", "bits per weight",
                    "tensors fell back", "top-1 vs HF", "max rel. err vs HF", "perplexity", "KLD vs f16",
                    "top-1 vs f16"]


def artifacts_table(result: dict) -> Table:
    """One row per artifact — the type asked, what the file really holds, size, real bits per weight,
    fallbacks, parity with HF and quality vs f16 — with the HF model as the reference row."""
    v = result["validation"] or {}
    rows = [["HF model (f32, reference)", "float32", None, 32.0, None, 1.0, 0.0, v["hf"]["perplexity"], None,
             None]] if v else []
    for f in result["files"]:
        r = (v.get(f["format"]) or {}).get(f["type"]) or {}
        k = r.get("kld") or {}
        rows.append([f"{f['format'].upper()} {f['type']}", _holds(f), f["size_bytes"] / 1e6,
                     f["bits_per_weight"], len(f["fallbacks"]) if f["format"] == "gguf" else None,
                     r.get("top1_agree"), r.get("max_rel_err"), r.get("perplexity"), k.get("kld_mean"),
                     k.get("top1_agree")])
    note = ("bits per weight = 8 × tensor bytes / parameters, read back from each file's tensor table "
            "(ONNX: folder bytes / parameters); a type falls back where a tensor's rows do not fit its "
            "blocks (K-quants need multiples of 256)")
    if v:
        note += (f"; logits on {len(v['prompts'])} fixed prompts (every position), relative error = "
                 f"max |Δ| / max |HF logit|; perplexity and KLD scored over {scoring_of(v)}")
    return Table("Artifacts", ARTIFACT_COLUMNS, rows, note=note,
                 highlight=[i + bool(v) for i, f in enumerate(result["files"]) if f["fallbacks"]])


def _ci(v, ci) -> str | None:
    return None if v is None else f"{v:.1f} ± {ci:.1f}" if ci is not None else f"{v:.1f}"


def int4_table(s: dict) -> Table | None:
    """The int4 recipe search: every candidate on both axes (KLD, decode / prefill speed), the rule and which
    one it kept."""
    if not s or not s.get("scoring"):  # one named recipe: built, not searched (validation scores it)
        return None
    rows, kept = [], None
    for i, c in enumerate(s["candidates"]):
        if c["name"] == s["kept"]:
            kept = i
        rows.append([c["name"] + (" (kept)" if c["name"] == s["kept"] else ""), c.get("note", ""),
                     c["weight_bytes"] / 2**20 if "weight_bytes" in c else None, c.get("fits"), c.get("kld"),
                     _ci(c.get("decode_tok_s"), c.get("decode_ci95")),
                     _ci(c.get("prefill_tok_s"), c.get("prefill_ci95")), c.get("build_s"), c.get("error")])
    sp = s.get("speed_protocol") or {}
    note = (f"rule ({s.get('rule', 'quality')}): {s.get('rule_text', 'lowest KLD within the size bound')}. "
            f"KLD vs the {s['reference']} over {s['score_tokens']} tokens; size bound "
            f"{s['bound_bytes'] / 2**20:.1f} MiB ({s['bound_from']})")
    if sp:
        note += (f"; speed {sp.get('how', 'measured here')}: mean ± 95 % of {sp['reps']} runs after "
                 f"{sp['warmup']} warm-up, decode {sp['tokens']} single-token steps after one token, prefill "
                 f"{sp['prompt']} tokens, {sp.get('threads') or 'all'} threads")
    g = s.get("source_grid") or {}
    if g.get("on_grid"):
        note += (f". The source's weights sit on a 4-bit grid ({100 * g['share_on_grid']:.0f} % of blocks of "
                 f"{g['block']} hold ≤ 16 values: dequantized from a 4-bit GGUF); recipes with float zero "
                 "points at that block size reproduce it, so their KLD here is lower than on a model trained "
                 "in bf16")
    return Table("ONNX int4: recipes searched (quality and speed)",
                 ["recipe", "what", "weights MiB", "fits", "KLD", "decode tok/s", "prefill tok/s", "build s",
                  "error"], rows, note=note, highlight=[kept] if kept is not None else [])


def write_report(out_html: Path, result: dict, figures: list[Figure]) -> Path:
    v = result["validation"]
    tables = [artifacts_table(result)]
    search = int4_table(result.get("onnx_int4"))
    if search:
        tables.append(search)
    charts = []
    if v:
        gens = [["HF (f32)", v["hf"]["generation"], "reference"]] + [
            [f"{f['format'].upper()} {f['type']}", r["generation"],
             divergence_text(r["divergence"]) if "divergence" in r else None] for f in result["files"]
            if (r := (v.get(f["format"]) or {}).get(f["type"]))]
        note = ("p: HF's next-token probability at the first differing token; logit gap = log p1 − log p2 of "
                "HF's top two; a near tie is a gap below the 90th percentile of |Δ gap| this file makes on "
                "HF's top two over the fixed prompts' positions; every later token follows a different text")
        tables.append(Table("Greedy generation from the first prompt",
                            ["artifact", "text", "where it leaves HF"], gens, note=note))
        if v.get("failed"):
            tables.append(Table("Validation failures", ["artifact", "error"],
                                [[k, e] for k, e in v["failed"].items()],
                                note="the files are kept; validation found this"))
        if v.get("flagged"):
            tables.append(Table(f"Artifacts that differ from HF beyond {v['exact_ctx']} tokens",
                                ["artifact", "finding"], [[k, e] for k, e in v["flagged"].items()],
                                note="llama.cpp does not compute the source model's function past this "
                                     "context; within it the artifacts were validated"))
        if "tokenizer" in v:
            tables.append(Table("Tokenizer: GGUF ids vs HF ids", ["string", "same ids", "HF ids", "GGUF ids"],
                                [[repr(r["text"]), r["hf"] == r["gguf"], str(r["hf"][:24]),
                                  str(r["gguf"][:24])] for r in v["tokenizer"]["rows"]]))
        chart = _quality_chart(result)
        if chart:
            charts.append(chart)
    for f in result["files"]:
        if f["fallbacks"]:
            fb = f["fallbacks"]
            tables.append(Table(f"{f['type']}: tensors that fell back ({len(fb)})",
                                ["tensor", "wanted", "got", "why"],
                                [[x["tensor"], x.get("wanted", f["main_type"]), x["type"], x["why"]]
                                 for x in fb[:MAX_FALLBACK_ROWS]],
                                note="llama.cpp's own warnings from the quantizer; full list in slm.json"
                                     + (f" (first {MAX_FALLBACK_ROWS} shown)" if len(fb) > MAX_FALLBACK_ROWS
                                        else "")))
    notes = [f"source: {result['model']} ({result['arch']}, {result['params']:,} parameters)",
             f"pre-tokenizer: {result['pre_tokenizer']}" if result["pre_tokenizer"]
             else "no tokenizer in the source",
             "importance matrix: computed from the calibration text" if result["imatrix"]
             else "no importance matrix",
             "timings (s): " + ", ".join(f"{k} {t:.1f}" for k, t in result["timings_s"].items())]
    links = [(f["path"], f["path"]) for f in result["files"]]
    # the top keeps the run's own figures; each artifact's are in its row of the table (slm.json keeps
    # them all)
    head = [f for f in figures if not f.name.startswith(("gguf.", "onnx."))]
    return render_report(out_html, f"Export of {result['name']}", "export", head, charts, tables, notes,
                         links)

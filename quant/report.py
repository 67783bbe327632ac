"""The HTML page of one export run: files, real bits per weight, fallbacks, parity and quality per type."""

from __future__ import annotations

from pathlib import Path

from slm.report.render import Figure, Table, new_figure, render_report, svg_of

MAX_FALLBACK_ROWS = 60  # per type; the full list is in slm.json


def _quality_figure(result: dict) -> Figure | None:
    v = result["validation"]
    pts = []
    for f in result["files"]:
        r = (v.get(f["format"]) or {}).get(f["type"]) if v else None
        if r:
            pts.append((f"{f['format']} {f['type']}", f["size_bytes"] / 1e6, r["perplexity"], (r.get("kld") or {}).get("kld_mean")))
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
        ax2.scatter([k[0] for k in kl], [k[1] for k in kl], color="tab:red", marker="x", label="KL divergence vs f16")
        ax2.set_ylabel("mean KL divergence vs f16 GGUF (nats)")
        h1, l1 = ax.get_legend_handles_labels()
        h2, l2 = ax2.get_legend_handles_labels()
        ax.legend(h1 + h2, l1 + l2, loc="upper right", fontsize=8)
    else:
        ax.legend(fontsize=8)
    ax.set_title("Size vs quality per export")
    how = (f"measured on this host: perplexity and KL divergence scored over {scoring_of(v)} of "
           f"{v['text_tokens']} tokens of held-out text (llama.cpp with an F32 KV cache / onnxruntime-genai); KL "
           "divergence per position of the f16 GGUF's next-token distribution against each file's")
    return Figure("Size vs perplexity and KL divergence", svg_of(fig), how)


def scoring_of(v: dict) -> str:
    """Which tokens the perplexity / KLD figures were scored over (runs before the mode was recorded: `all`)."""
    return (v.get("scoring") or {}).get("what") or f"every token of non-overlapping {v['n_ctx']}-token windows"


def write_report(out_html: Path, result: dict) -> Path:
    v = result["validation"]
    files = Table("Files", ["format", "type", "file", "size (MB)", "bits per weight", "main type", "fallback tensors", "ggml types"],
                  [[f["format"], f["type"], f["path"], f["size_bytes"] / 1e6, f["bits_per_weight"], f["main_type"],
                    len(f["fallbacks"]), ", ".join(f"{k}×{e['tensors']}" for k, e in (f.get("by_type") or {}).items())]
                   for f in result["files"]],
                  note="bits per weight = 8 × tensor bytes / parameters, read back from each file's tensor table "
                       "(ONNX: folder bytes / parameters)")
    tables = [files]
    figures = []
    if v:
        rows = [["HF (f32)", "", "", 1.0, v["hf"]["perplexity"], "", "", v["hf"]["generation"]]]
        for f in result["files"]:
            r = v.get(f["format"], {}).get(f["type"])
            if r:
                k = r.get("kld") or {}
                rows.append([f"{f['format']} {f['type']}", r["max_rel_err"], r["max_abs_err"], r["top1_agree"],
                             r["perplexity"], k.get("kld_mean"), k.get("top1_agree"), r["generation"]])
        tables.append(Table("Parity and quality", ["artifact", "max rel. err vs HF", "max abs err", "top-1 vs HF",
                                                   "perplexity", "KLD vs f16", "top-1 vs f16", "greedy generation"],
                            rows, note=f"logits on {len(v['prompts'])} fixed prompts (every position); relative error = "
                                       "max |Δ| / max |HF logit| per prompt; perplexity and KLD scored over "
                                       f"{scoring_of(v)}; generation from the first prompt"))
        if v.get("failed"):
            tables.append(Table("Artifacts that failed to run", ["artifact", "error"], [[k, e] for k, e in v["failed"].items()],
                                note="the file is kept; the runtime raised this while validating it"))
        if "tokenizer" in v:
            tables.append(Table("Tokenizer: GGUF ids vs HF ids", ["string", "same ids", "HF ids", "GGUF ids"],
                                [[repr(r["text"]), r["hf"] == r["gguf"], str(r["hf"][:24]), str(r["gguf"][:24])]
                                 for r in v["tokenizer"]["rows"]]))
        fig = _quality_figure(result)
        if fig:
            figures.append(fig)
    for f in result["files"]:
        if f["fallbacks"]:
            fb = f["fallbacks"]
            tables.append(Table(f"{f['type']}: tensors that fell back ({len(fb)})", ["tensor", "wanted", "got", "why"],
                                [[x["tensor"], x.get("wanted", f["main_type"]), x["type"], x["why"]] for x in fb[:MAX_FALLBACK_ROWS]],
                                note="llama.cpp's own warnings from the quantizer; full list in slm.json"
                                     + (f" (first {MAX_FALLBACK_ROWS} shown)" if len(fb) > MAX_FALLBACK_ROWS else "")))
    notes = [f"source: {result['model']} ({result['arch']}, {result['params']:,} parameters)",
             f"pre-tokenizer: {result['pre_tokenizer']}" if result["pre_tokenizer"] else "no tokenizer in the source",
             "importance matrix: computed from the calibration text" if result["imatrix"] else "no importance matrix",
             "timings (s): " + ", ".join(f"{k} {t:.1f}" for k, t in result["timings_s"].items())]
    links = [(f["path"], f["path"]) for f in result["files"]]
    return render_report(out_html, f"Export of {result['name']}", "export", result["summary"], figures, tables, notes, links)

"""One registry of the figures reports show: flat summary key → human label, unit, which way is better, group and
how the number is obtained. Every report, the index and compare read labels from here, so no page prints a raw key;
a key no entry matches gets a humanised label (underscores and dots to spaces) rather than failing.

An entry's `pattern` is a regex matched against the whole key; its named groups fill the label (a group named
`fmt` is upper-cased: gguf → GGUF). Entries are tried in order, the first match wins (put narrower ones first).
`exact` marks figures computed rather than timed (sizes, counts, analytic bytes, deterministic scores): any change in
them is real, while timed figures need an interval to be told apart from noise (slm.report.uncertainty).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from slm.errors import SlmError

GROUPS = ("speed", "energy", "memory", "size", "quality", "training", "model", "setting")  # in the order compare shows them
HOWS = ("measured", "projected", "analytic", "file", "setting")  # measured: where, the run's own `how` says
BETTER = ("higher", "lower", "")
COMPANIONS = (".std", ".n", ".disturbed")  # suffixes carrying a figure's spread (slm.profiling.run._spread)


@dataclass(frozen=True)
class Fig:
    """How to read one family of summary keys."""

    pattern: str  # regex, matched against the whole key; named groups are substituted into `label`
    label: str  # what a person reads, e.g. "decode {n} tokens at depth {d} ({b})"
    unit: str = ""  # tok/s, bytes, MiB, nats, bpw, tokens, s, … ('' for counts and ratios)
    better: str = ""  # 'higher', 'lower', or '' where neither is better
    group: str = "model"  # one of GROUPS
    how: str = "measured"  # one of HOWS
    exact: bool = False  # computed, not timed: any difference is significant
    rx: re.Pattern = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        if self.better not in BETTER or self.group not in GROUPS or self.how not in HOWS:
            raise SlmError(f"figure {self.pattern!r}: better/group/how must be one of {BETTER}/{GROUPS}/{HOWS}")
        object.__setattr__(self, "rx", re.compile(self.pattern))

    @property
    def setting(self) -> bool:
        return self.group == "setting"


def _set(pattern: str, label: str) -> Fig:
    return Fig(pattern, label, group="setting", how="setting")


def _x(pattern: str, label: str, unit: str = "", better: str = "", group: str = "model", how: str = "analytic") -> Fig:
    return Fig(pattern, label, unit, better, group, how, exact=True)


_SPEED = {"unit": "tok/s", "better": "higher", "group": "speed"}
_TYPE = r"(?P<t>[a-z0-9_]+)"
REGISTRY: tuple[Fig, ...] = (
    # ---- settings: how a run was made, shown apart and never compared as figures ---------------------------------
    _set(r"schema_version", "result schema version"), _set(r"threads", "CPU threads"),
    _set(r"how", "how the figures were obtained"), _set(r"device", "device"), _set(r"model", "model"),
    _set(r"arch", "architecture"), _set(r"method", "method"), _set(r"ranks", "training processes (ranks)"),
    _set(r"(quant\.)?ppl_scoring", "tokens scored for perplexity / KLD"), _set(r"target", "merge target"),
    _set(r"inputs", "inputs"), _set(r"runs", "runs compared"),
    _set(r"comparisons", "comparisons"), _set(r"runs listed", "runs"),  # the index's own headline
    _set(r"measurement conditions", "measurement conditions"),  # profile report headline (profiling/report.py)
    _set(r"does a lower bit-width always run faster here\?", "does a lower bit-width always run faster here?"),
    # ---- profile (slm.profiling.run.summary) -------------------------------------------------------------------
    Fig(r"projected\.pp(?P<n>\d+)\.tok_s", "prefill of {n} tokens on the device (projected)", **_SPEED, how="projected"),
    Fig(r"projected\.tg(?P<n>\d+)@d(?P<d>\d+)\.tok_s", "decode at depth {d} on the device (projected)", **_SPEED,
        how="projected"),
    Fig(r"(?P<b>.+?)\.pp(?P<n>\d+)\.tok_s", "prefill of {n} tokens ({b})", **_SPEED),
    Fig(r"(?P<b>.+?)\.tg(?P<n>\d+)@d(?P<d>\d+)\.tok_s", "decode at depth {d} ({b}, {n} tokens)", **_SPEED),
    _x(r"projected\.decode_expected_error", "expected error of the projected decode speed (held-out calibration)",
       "share", "lower", "speed", "projected"),
    _x(r"projected\.flagged_tests", "projected tests that do not fit the device's memory", "", "lower", "memory",
       "projected"),
    Fig(r"(?P<b>.+?)\.pp(?P<n>\d+)\.roofline_fraction", "prefill of {n} tokens: share of the roofline ({b})", "share",
        "higher", "speed"),
    Fig(r"(?P<b>.+?)\.tg(?P<n>\d+)@d(?P<d>\d+)\.roofline_fraction", "decode at depth {d}: share of the roofline ({b})",
        "share", "higher", "speed"),
    # energy (slm.profiling.energy): INA3221 rails on a Jetson, RAPL on a host; absent where not measurable
    Fig(r"(?P<b>.+?)\.pp(?P<n>\d+)\.j_per_token", "prefill of {n} tokens: energy per token ({b})", "J/token", "lower",
        "energy"),
    Fig(r"(?P<b>.+?)\.tg(?P<n>\d+)@d(?P<d>\d+)\.j_per_token", "decode at depth {d}: energy per token ({b})", "J/token",
        "lower", "energy"),
    Fig(r"(?P<b>.+?)\.pp(?P<n>\d+)\.tok_per_j", "prefill of {n} tokens: tokens per joule ({b})", "tok/J", "higher",
        "energy"),
    Fig(r"(?P<b>.+?)\.tg(?P<n>\d+)@d(?P<d>\d+)\.tok_per_j", "decode at depth {d}: tokens per joule ({b})", "tok/J",
        "higher", "energy"),
    Fig(r"(?P<b>.+?)\.peak_rss_mib", "peak resident memory ({b})", "MiB", "lower", "memory"),
    Fig(r"host_bandwidth_GBps", "host memory bandwidth", "GB/s", "higher", "speed"),
    Fig(r"host_gflops", "host matmul peak", "GFLOP/s", "higher", "speed"),
    _x(r"kv_bytes_per_token_f16", "KV cache per token (f16)", "bytes", "lower", "memory"),
    _x(r"kv_crossover_context_f16", "context where the KV cache outgrows the weights (f16)", "tokens", "higher", "memory"),
    _x(r"kv_share_at_max_context_f16", "KV-cache share of memory at max context (f16)", "share", "lower", "memory"),
    _x(rf"quant\.{_TYPE}\.size_bytes", "{t}: file size", "bytes", "lower", "size", "file"),
    _x(rf"quant\.{_TYPE}\.bits_per_weight", "{t}: bits per weight", "bpw", "lower", "size", "file"),
    Fig(rf"quant\.{_TYPE}\.pp_tok_s", "{t}: prefill speed", **_SPEED),
    Fig(rf"quant\.{_TYPE}\.tg_tok_s", "{t}: decode speed", **_SPEED),
    _x(rf"quant\.{_TYPE}\.ppl", "{t}: perplexity", "", "lower", "quality", "measured"),
    _x(rf"quant\.{_TYPE}\.kld_vs_ref", "{t}: KL divergence vs the reference type", "nats", "lower", "quality",
       "measured"),
    # ---- export (slm.quant.export.summarize) -------------------------------------------------------------------
    _x(r"(?P<fmt>gguf|onnx)_(?P<t>.+)_mb", "{fmt} {t}: file size", "MB", "lower", "size", "file"),
    _x(r"(?P<fmt>gguf|onnx)_(?P<t>.+)_bpw", "{fmt} {t}: bits per weight", "bpw", "lower", "size", "file"),
    _x(r"(?P<fmt>gguf|onnx)_(?P<t>.+)_fallbacks", "{fmt} {t}: tensors that fell back to another type", "", "lower",
       "size", "file"),
    _x(r"(?P<fmt>gguf|onnx)_(?P<t>.+)_max_rel_err", "{fmt} {t}: largest logit error vs HF (relative)", "", "lower",
       "quality", "measured"),
    _x(r"(?P<fmt>gguf|onnx)_(?P<t>.+)_top1", "{fmt} {t}: top-1 agreement with HF", "share", "higher", "quality",
       "measured"),
    _x(r"(?P<fmt>gguf|onnx)_(?P<t>.+)_ppl", "{fmt} {t}: perplexity", "", "lower", "quality", "measured"),
    _x(r"(?P<fmt>gguf|onnx)_(?P<t>.+)_kld", "{fmt} {t}: KL divergence vs f16", "nats", "lower", "quality", "measured"),
    _x(r"hf_perplexity", "HF model perplexity (f32)", "", "lower", "quality", "measured"),
    _x(r"validation_failures", "artifacts that failed validation", "", "lower", "quality", "measured"),
    _x(r"tokenizer_match", "tokenizer strings encoded alike (GGUF vs HF)", "", "higher", "quality", "measured"),
    _x(r"artifacts", "artifacts written", "", "", "size", "file"),
    Fig(r"wall_s", "wall time", "s", "lower", "speed"),
    # ---- train (train/loop.py _summary), eval (train/evaluate.py), data (train/data.py) --------------------------
    _x(r"steps", "optimizer steps", "", "", "training", "setting"),
    Fig(r"final train loss", "final training loss", "nats/token", "lower", "training"),
    _x(r"trainable params", "trainable parameters", "", "", "training"),
    Fig(r"tok/s \(median\)", "training throughput (median step)", "tok/s", "higher", "training"),
    Fig(r"peak memory GB", "peak memory while training", "GB", "lower", "memory"),
    _x(r"flops/token", "training FLOPs per token", "FLOP", "lower", "training"),
    Fig(r"MFU \(median\)", "model FLOPs utilisation (median step)", "share", "higher", "training"),
    # ---- prune (slm/surgery/prune.py), ablate (train/ablate_report.py), the probe, diff, plan --------------------
    _x(r"held-out ppl before", "held-out perplexity before pruning", "", "lower", "quality", "measured"),
    _x(r"held-out ppl after", "held-out perplexity after pruning", "", "lower", "quality", "measured"),
    _x(r"held-out tokens", "held-out tokens scored", "tokens", "", "quality", "file"),
    _set(r"held-out text", "held-out text"), _set(r"dropped layers", "dropped layers"),
    Fig(r"(?P<m>.+) domain loss gain", "{m}: domain loss gain (ablation)", "nats/token", "higher", "quality"),
    Fig(r"(?P<m>.+) probe loss rise", "{m}: instruction-probe loss rise (forgetting)", "nats/token", "lower",
        "quality"),
    _x(r"(?P<s>.+) instruct-probe ppl", "{s}: perplexity of the reference chat answers (instruction probe)", "",
       "lower", "quality", "measured"),
    _x(r"changed layers", "layers whose weights changed", "", "", "model", "file"),
    _x(r"intruders", "intruder dimensions (Shuttleworth et al. 2024)", "", "lower", "model", "file"),
    _x(r"max layer change", "largest relative weight change of a layer", "", "", "model", "file"),
    _set(r"context", "context (tokens)"), _x(r"candidates", "candidates", "", "", "model", "projected"),
    _x(r"meet the budget", "candidates meeting the budget", "", "higher", "model", "projected"),
    _set(r"types that hold on this shape", "GGUF types that keep their bits on this shape"),
    _x(r"(?P<s>.+) ppl before", "perplexity on {s}, before training", "", "lower", "quality", "measured"),
    _x(r"(?P<s>.+) ppl", "perplexity on {s}", "", "lower", "quality", "measured"),
    _x(r"OP", "overall performance (OP, −nats/token)", "", "higher", "quality", "measured"),
    _x(r"BWT", "backward transfer (BWT, nats/token; negative = forgetting)", "", "higher", "quality", "measured"),
    _x(r"(?P<s>.+) train_tokens", "{s}: training tokens", "tokens", "", "training", "file"),
    _x(r"(?P<s>.+) heldout_tokens", "{s}: held-out tokens", "tokens", "", "training", "file"),
    # ---- model shape: info (slm/info.py), surgery (slm/surgery), merge, compare's model.* -------------------------
    _x(r"params", "parameters", "", "", "size"),
    _x(r"model\.params", "parameters (config.json)", "", "", "size"),
    _x(r"parameters \(M\)", "parameters (millions)", "M", "", "size"),
    _x(r"layers", "layers", "", "", "model"),
    _x(r"model\.layers", "layers (config.json)", "", "", "model"),
    _x(r"layers before", "layers before the step", "", "", "model"),
    _x(r"layers after", "layers after the step", "", "", "model"),
    _x(r"new layers", "new layers", "", "", "model"),
    _x(r"untouched layers", "layers left untouched", "", "", "model"),
    _x(r"tensors", "tensors", "", "", "model"),
    _x(r"KV heads", "KV heads", "", "", "model"),
    _x(r"model\.kv_heads", "KV heads (config.json)", "", "", "model"),
    _x(r"model\.weights_MiB \(fp32\)", "weights (fp32, config.json)", "MiB", "lower", "size"),
    _x(r"weights MB", "weights written", "MB", "lower", "size", "file"),
    _x(r"bytes written", "bytes written", "bytes", "lower", "size", "file"),
    _x(r"KV bytes/token \(f16\)", "KV cache per token (f16)", "bytes", "lower", "memory"),
    _x(r"model\.kv_bytes_per_token \(f16\)", "KV cache per token (f16, config.json)", "bytes", "lower", "memory"),
    _x(r"KV overtakes weights at", "context where the KV cache outgrows the weights (f16)", "tokens", "higher", "memory"),
    _x(r"parity:? max \|Δ logits\|( \(fp32\))?", "largest logit change after surgery (fp32)", "", "lower", "quality",
       "measured"),
    _x(r"parity:? bit-identical", "logits bit-identical after surgery", "", "", "quality", "measured"),
)


@dataclass(frozen=True)
class Resolved:
    """A key read through the registry."""

    key: str  # the raw summary key
    label: str  # human label
    fig: Fig | None  # the entry that matched (None: unknown key, humanised)

    def __getattr__(self, name):  # unit, better, group, how, exact, setting of the entry (defaults when unknown)
        if name in ("unit", "better", "group", "how", "exact", "setting"):
            f = object.__getattribute__(self, "fig")
            return getattr(f, name) if f else {"unit": "", "better": "", "group": "model", "how": "measured",
                                                "exact": False, "setting": False}[name]
        raise AttributeError(name)


def humanise(key: str) -> str:
    """A label for a key no entry knows: machine separators to spaces (keys that already read as words stay)."""
    return key if " " in key else re.sub(r"[_.]+", " ", key).strip()


def is_companion(key: str) -> bool:
    """`K.std`, `K.n`, `K.disturbed`: the spread of figure K, folded into K by compare, never shown alone."""
    return key.endswith(COMPANIONS)


def lookup(key: str) -> Resolved:
    for f in REGISTRY:
        m = f.rx.fullmatch(key)
        if m:
            groups = {k: (v.upper() if k == "fmt" else v) for k, v in m.groupdict().items() if v is not None}
            return Resolved(key, f.label.format(**groups), f)
    return Resolved(key, humanise(key), None)


def value_text(v, unit: str) -> str:
    """A value with its unit as a person reads it (bytes scaled to KiB/MiB/GiB, shares as percentages)."""
    from slm.report.render import fmt

    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return fmt(v)
    if unit == "bytes" and abs(v) >= 1024:
        for scale, name in ((2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
            if abs(v) >= scale:
                return f"{fmt(v / scale)} {name}"
    if unit == "share":
        return f"{v:.1%}"
    return f"{fmt(v)} {unit}".strip()


def labelled(summary: dict) -> dict:
    """A summary with its keys turned into labels and its values into text with units (companions dropped)."""
    out = {}
    for k, v in summary.items():
        if is_companion(k):
            continue
        r = lookup(k)
        out[r.label] = value_text(v, r.unit)
    return out

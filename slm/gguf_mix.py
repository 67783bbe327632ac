"""What a quantized GGUF will hold, from a model's shape alone — without quantizing.

A port of llama.cpp's type choice (src/llama-quant.cpp: llama_tensor_get_type_impl picks each tensor's type
for the file type's mix, tensor_type_fallback then replaces a type whose block does not divide the row length
ne[0]) for dense, non-Falcon llama-family models. Tensors are visited in the loader's order (weights_map sorts
by layer, then name), so the mix's per-layer counters equal the layer index. Only what changes the type of a
dense llama/qwen tensor is ported (no MoE, Falcon or 70B rules); tests/quant/test_fallbacks.py checks the
prediction against the real quantizer.
Format facts (types, blocks, bits per weight) come from slm.gguf.
"""

from __future__ import annotations

import gguf as gguf_py

from slm.gguf import QUANT_TYPES, TYPES, get_type

_FALLBACK_TO = {"IQ1_S": "IQ4_NL", "IQ1_M": "IQ4_NL", "IQ2_XXS": "IQ4_NL", "IQ2_XS": "IQ4_NL",
                "IQ2_S": "IQ4_NL", "IQ3_XXS": "IQ4_NL", "IQ3_S": "IQ4_NL", "IQ4_XS": "IQ4_NL",
                "Q2_K": "Q4_0", "Q3_K": "Q4_0", "Q4_K": "Q5_0", "Q5_K": "Q5_1",
                "Q6_K": "Q8_0"}  # tensor_type_fallback's switch
_IQ_LOW = ("iq2_xxs", "iq2_xs", "iq1_s", "iq2_s", "iq2_m", "iq1_m")


def _block(ggml_type: str) -> int:
    return gguf_py.GGML_QUANT_SIZES[gguf_py.GGMLQuantizationType[ggml_type]][0]


def gguf_tensors(spec) -> list[tuple[str, tuple]]:
    """(GGUF name, ggml-order shape) of every tensor slm's writer emits for this shape, in llama.cpp's
    order."""
    h, q, kv = spec.hidden, spec.heads * spec.head_dim, spec.kv_heads * spec.head_dim
    out = [("output_norm.weight", (h,))] + ([] if spec.tied else [("output.weight", (h, spec.vocab))])
    out.append(("token_embd.weight", (h, spec.vocab)))
    for i in range(spec.layers):
        blk = [("attn_norm.weight", (h,)), ("ffn_norm.weight", (h,)), ("attn_q.weight", (h, q)),
               ("attn_k.weight", (h, kv)), ("attn_v.weight", (h, kv)), ("attn_output.weight", (q, h)),
               ("ffn_gate.weight", (h, spec.intermediate)), ("ffn_up.weight", (h, spec.intermediate)),
               ("ffn_down.weight", (spec.intermediate, h))]
        if spec.attention_bias:
            blk += [("attn_q.bias", (q,)), ("attn_k.bias", (kv,)), ("attn_v.bias", (kv,))]
        if spec.qk_norm:
            blk += [("attn_q_norm.weight", (spec.head_dim,)), ("attn_k_norm.weight", (spec.head_dim,))]
        out += sorted((f"blk.{i}.{n}", s) for n, s in blk)
    return out


def _more_bits(i: int, n: int) -> bool:
    """llama-quant.cpp's use_more_bits: the first and last eighth of the layers and every third one
    between."""
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def _mix_type(f: str, name: str, row: int, new: str, i: int, n: int, gqa: float, tied: bool,
              imatrix: bool) -> str:
    """The type llama_tensor_get_type_impl wants for one tensor of file type `f` (before the fallback)."""
    cat = name.split(".")[-2] if name.startswith("blk.") else name.split(".")[0]
    if cat == "output" or (tied and cat == "token_embd"):
        if row % _block(new):
            return "Q8_0"
        if f in _IQ_LOW or f == "iq3_xxs":
            return "Q5_K"
        return new if new == "Q8_0" else "Q6_K"
    if cat == "token_embd":
        return {"iq2_xxs": "Q2_K", "iq2_xs": "Q2_K", "iq1_s": "Q2_K", "iq1_m": "Q2_K", "iq2_s": "IQ3_S",
                "iq2_m": "IQ3_S", "iq3_xxs": "IQ3_S"}.get(f, new)
    if f in _IQ_LOW:
        wide = "IQ3_S" if f in ("iq2_s", "iq2_m") else "Q2_K"
        if cat == "attn_v":
            return "Q4_K" if gqa >= 4 else wide
        if cat == "ffn_down":
            return wide if i < n // 8 else new
        if cat == "attn_output":
            return {"iq1_s": "IQ2_XXS", "iq1_m": "IQ2_XXS", "iq2_s": "IQ3_S", "iq2_m": "IQ3_S"}.get(f, new)
        return new
    if cat == "attn_v":
        rules = {"q2_k": "Q4_K" if gqa >= 4 else "Q3_K", "q2_k_s": "Q4_K" if gqa >= 4 else new,
                 "iq3_xxs": "Q4_K" if gqa >= 4 else ("IQ3_XXS" if imatrix else "IQ3_S"),
                 "iq3_s": "Q4_K" if gqa >= 4 else new, "iq3_m": "Q4_K", "q3_k_m": "Q5_K" if i < 2 else "Q4_K",
                 "q3_k_l": "Q5_K", "iq4_nl": "Q5_K" if gqa >= 4 else new,
                 "iq4_xs": "Q5_K" if gqa >= 4 else new,
                 "q4_k_m": "Q6_K" if _more_bits(i, n) else new, "q5_k_m": "Q6_K" if _more_bits(i, n) else new,
                 "q4_k_s": "Q5_K" if i < 4 else new}
        return rules.get(f, new)
    if cat in ("attn_k", "attn_q"):
        return "IQ2_S" if f == "iq3_xxs" else new
    if cat == "attn_output":
        return {"q2_k": "Q3_K", "iq3_xxs": "IQ3_S", "q3_k_m": "Q4_K", "q3_k_l": "Q5_K",
                "iq3_m": "Q4_K"}.get(f, new)
    if cat == "ffn_down":  # the if/else-if chain of llama_tensor_get_type_impl, first match wins
        early = i < n // 8
        chain = [(f == "q2_k", "Q3_K"), (f == "q2_k_s", "Q4_K" if early else new),
                 (f == "iq3_xxs" and not imatrix, "Q4_K" if early else "Q3_K"),
                 (f == "q3_k_m", "Q5_K" if i < n // 16 else "Q4_K"), (f == "iq3_m" and early, "Q4_K"),
                 (f == "q3_k_l", "Q5_K"), (f == "q4_k_m", "Q6_K" if _more_bits(i, n) else new),
                 (early and f in ("iq4_nl", "iq4_xs") and not imatrix, "Q5_K"),
                 (f == "q5_k_m" and _more_bits(i, n), "Q6_K"), (f == "q4_k_s" and early, "Q5_K"),
                 (f in ("q4_0", "q5_0") and imatrix and early, "Q4_1" if f == "q4_0" else "Q5_1")]
        return next((t for cond, t in chain if cond), new)
    return new


def predict_types(spec, qtype: str, imatrix: bool | None = None) -> list[dict]:
    """Per GGUF tensor: name, row length, parameters, the type llama.cpp wants and the type it will write."""
    t = get_type(qtype)
    imatrix = t.needs_imatrix if imatrix is None else imatrix
    rows = []
    for name, shape in gguf_tensors(spec):
        n_el = shape[0] * (shape[1] if len(shape) > 1 else 1)
        if len(shape) < 2 or t.is_float:
            ty = "F32" if len(shape) < 2 else t.ggml_type
            rows.append({"tensor": name, "row": shape[0], "params": n_el, "wanted": ty, "type": ty})
            continue
        i = int(name.split(".")[1]) if name.startswith("blk.") else 0
        want = _mix_type(t.name, name, shape[0], t.ggml_type, i, spec.layers, spec.heads / spec.kv_heads,
                         spec.tied, imatrix)
        got = want
        if shape[0] % _block(want):
            got = _FALLBACK_TO[want]
            got = got if shape[0] % _block(got) == 0 else "F16"  # "must use F16 due to unusual shape"
        rows.append({"tensor": name, "row": shape[0], "params": n_el, "wanted": want, "type": got})
    return rows


def fallbacks_for(spec, qtype: str, imatrix: bool | None = None) -> dict:
    """What a `qtype` GGUF of this shape will really hold, without quantizing: the tensors llama.cpp moves to
    another type because their rows are not a multiple of the wanted type's block, the bytes per ggml type,
    the effective bits per weight (bits_per_weight's definition), and whether the type holds its nominal bits
    (no tensor of its main type falls back)."""
    t = get_type(qtype)
    rows = predict_types(spec, qtype, imatrix)
    by_type: dict[str, dict] = {}
    for r in rows:
        block, size = gguf_py.GGML_QUANT_SIZES[gguf_py.GGMLQuantizationType[r["type"]]]
        e = by_type.setdefault(r["type"], {"tensors": 0, "params": 0, "bytes": 0})
        e["tensors"] += 1
        e["params"] += r["params"]
        e["bytes"] += r["params"] // block * size
    fell = [{"tensor": r["tensor"], "wanted": r["wanted"], "type": r["type"], "row": r["row"],
             "why": f"row length {r['row']} is not a multiple of {_block(r['wanted'])}"}
            for r in rows if r["type"] != r["wanted"]]
    params, nbytes = sum(r["params"] for r in rows), sum(e["bytes"] for e in by_type.values())
    return {"type": t.name, "main_type": t.ggml_type, "nominal_bpw": t.bpw,
            "bits_per_weight": 8 * nbytes / params, "params": params, "tensor_bytes": nbytes,
            "by_type": by_type, "fallbacks": fell, "holds": not any(f["wanted"] == t.ggml_type for f in fell)}


def types_that_hold(spec, include_imatrix: bool = False) -> list[str]:
    """The quantized types whose main type fits every row of this shape (K-quants need rows of 256)."""
    return [n for n in QUANT_TYPES if (include_imatrix or not TYPES[n].needs_imatrix)
            and fallbacks_for(spec, n)["holds"]]


def fallback_warning(spec, types) -> str | None:
    """One line naming the requested types that will fall back on this shape, what they will really hold and
    the types that keep their bits; None when every type holds."""
    bad = [fallbacks_for(spec, q) for q in types if not get_type(q).is_float]
    bad = [b for b in bad if not b["holds"]]
    if not bad:
        return None
    what = "; ".join(f"{b['type']}: {len(b['fallbacks'])} tensors fall back ("
                     + ", ".join(f"{k} {v['tensors']}" for k, v in sorted(b["by_type"].items()) if k != "F32")
                     + f"), {b['bits_per_weight']:.2f} bits/weight, not {b['nominal_bpw']:.2f}" for b in bad)
    return (f"warning: rows of {spec.hidden}/{spec.intermediate} are not a multiple of 256 for every tensor "
            f"— {what}; types that hold on this shape: {', '.join(types_that_hold(spec))}")

"""Published decode speeds of LLMs on Jetson Orin devices: the one table the device model
(slm.profiling.calibration) is fitted to. Every figure below was read in the cited source; a field the source
does not state is said so in the row's note, and what was assumed in its place is named there too.

Model shapes (layers × KV heads × head_dim, for the KV bytes per token) come from each model's published
config.json, not from the benchmark source; a row whose depth (tokens already in the cache) is not stated uses
depth 0, where the shape does not matter. Weight bytes are the file size where the source gives one, else
parameters × nominal bits per weight / 8 (slm.gguf.TYPES[q].bpw for GGUF types; MLC's q4f16 = 4-bit weights
plus one fp16 scale per 32 → 4.5 bits).

Bytes read per token: a decode step streams every weight matrix once, except an UNTIED input embedding, of
which a lookup reads one row (llama.cpp's get_rows, MLC's take): its vocab × hidden parameters
(`embed_params`, from config.json; 0 when tied, where the same matrix is streamed as the LM head) are taken
out of the weight bytes. `family` names an architecture whose kernels the fit may treat apart
(slm.profiling.calibration.FAMILY_TERMS).

`role` was set before any fit was run, except for the three llama-bench tg128 rows found later, which were
held out from the start (never fitted): "fit" points fit the model, "held-out" points only test it, "excluded"
points are kept for the record (and their error reported) but neither fit nor test it, with the reason in the
note.
"""

from __future__ import annotations

from dataclasses import dataclass

from slm.gguf import TYPES

# ---- sources -----------------------------------------------------------------------------------------------
SMOLHUB = "https://www.smolhub.com/posts/jetson-nano-super-benchmark-non-reasoning/"
YZMA = "https://github.com/hybridgroup/yzma/blob/main/benchmarks/linux.md"
HOLOHUB = "https://github.com/nvidia-holoscan/holohub/issues/170"
MINICPM = "https://github.com/OpenBMB/MiniCPM/issues/331"
NV_SUPER = "https://developer.nvidia.com/blog/nvidia-jetson-orin-nano-developer-kit-gets-a-super-boost/"
JMORGAN = "https://www.jeremymorgan.com/blog/tech/nvidia-jetson-orin-nano-speed-test/"
# both of the above were read through this compilation, which cites them (NVIDIA's figures are from its chart)
WAYFINDR = "https://raw.githubusercontent.com/msmcs-robotics/WayfindR-driver/main/docs/jetson_orin_nano_llm_benchmarks.md"
# read through the NanoLLM issue below, which quotes it
AI_LAB_SLM = "https://www.jetson-ai-lab.com/tutorial_slm.html"
NANOLLM_38 = "https://github.com/dusty-nv/NanoLLM/issues/38"

JUNWEI = ("https://github.com/JunweiLiang/MLLMs/blob/d065906ffdc7d580df7d33a4e35eda2a2148592f/"
          "note_running_deepseek.md")
TINY_AGENT = ("https://github.com/rhajamor/tiny_agent (its 'Jetson Orin Nano benchmark run, 2026-08-21' log, "
              "the raw output behind its benchmarks.md; the log's path in the repository was not resolved)")
NIXOS = ("https://github.com/GiveThanksAlways/jetpack-nixos (examples/CROSS_FRAMEWORK_BENCHMARK.md, "
         "2025-07-17 version)")

NANO, SUPER, AGX = "jetson-orin-nano-8gb", "jetson-orin-nano-8gb-super", "jetson-agx-orin-64gb"
MLC_Q4 = 4.5  # MLC q4f16_1 / q4f16_ft: 4-bit weights + an fp16 scale per group of 32 (assumed for "INT4")


def _kv(layers: int, kv_heads: int, head_dim: int) -> float:
    """f16 KV bytes per token (slm.spec.ModelSpec.kv_bytes_per_token's formula)."""
    return 2 * layers * kv_heads * head_dim * 2


@dataclass(frozen=True)
class Point:
    """One published decode measurement."""

    key: str  # short unique id
    device: str  # registry key (profiling/devices.py) whose bandwidth the point ran at
    power_mode: str  # as the source states it, or "not stated"
    backend: str  # "llama.cpp CUDA" | "Ollama" (llama.cpp's CUDA kernels) | "MLC" | "llama.cpp CPU"
    model: str
    params: float  # parameters (from the model card / config)
    # nominal bits per weight of the quantization; None where the file size is given instead
    bpw: float | None
    decode_tok_s: float  # what the source reports
    source: str  # where the figure was read
    note: str  # what was measured, what the source leaves out and what was assumed
    role: str = "fit"  # fit | held-out | excluded (chosen before fitting)
    file_bytes: float | None = None  # model file size when the source states it
    kv_bytes_per_token: float = 0.0  # f16 KV per token of this shape (config.json)
    depth: int = 0  # mean tokens in the cache while decoding; 0 where the source does not say
    embed_params: float = 0.0  # vocab × hidden of an untied input embedding (config.json); 0 when tied
    family: str = "llama"  # architecture family: "gemma2" for Gemma-2 (256-wide heads, four norms a block)

    @property
    def weight_bytes(self) -> float:
        return self.file_bytes if self.file_bytes else self.params * self.bpw / 8

    @property
    def bytes_per_token(self) -> float:
        streamed = self.weight_bytes * (1 - self.embed_params / self.params)
        return streamed + self.kv_bytes_per_token * self.depth


def _mlc(key, mode_dev, model, params, tok_s, role="fit", note="", embed=0.0, family="llama"):
    mode = "original (15 W, 68 GB/s)" if mode_dev == NANO else "Super (MAXN SUPER, 102 GB/s)"
    return Point(key, mode_dev, mode, "MLC", model, params, MLC_Q4, tok_s, NV_SUPER,
                 f"NVIDIA's 'LLM generation performance' chart, INT4 through MLC (read via {WAYFINDR}); "
                 f"depth not stated (0 used); 4.5 bits assumed for INT4 (q4f16). {note}".strip(), role,
                 embed_params=embed, family=family)


def _ollama(key, model, params, q, tok_s, kv, role="fit", note="", embed=0.0, family="llama"):
    return Point(key, SUPER, "25 W", "Ollama", model, params, TYPES[q].bpw, tok_s, JMORGAN,
                 f"Ollama eval rate '~{tok_s:g}' over ~1600 generated tokens (mean depth ≈ 800 used; prompt "
                 f"length not stated), read via {WAYFINDR}; quantization not stated — Ollama's default tag "
                 f"({q}) assumed. {note}".strip(), role, kv_bytes_per_token=kv, depth=800, embed_params=embed,
                 family=family)


POINTS: tuple[Point, ...] = (
    # ---- llama.cpp CUDA ------------------------------------------------------------------------------------
    Point("smolhub-smollm2-135m", SUPER, "25 W (nvpmodel -m 1)", "llama.cpp CUDA", "SmolLM2-135M", 134.5e6,
          None, 165.2, SMOLHUB, "llama.cpp CUDA -ngl 99, JetPack R36.4.7; headline at ctx=2048, gen=256 "
          "(mean depth 2176 used); file '101 MB' as stated (quantization type not in the text read); memory "
          "clock of the 25 W mode not stated (the registry's Super 102 GB/s used)", "fit", file_bytes=101e6,
          kv_bytes_per_token=_kv(30, 3, 64), depth=2176),
    Point("yzma-smollm-135m-q2k", SUPER, "not stated", "llama.cpp CUDA", "SmolLM-135M Q2_K", 134.5e6,
          TYPES["q2_k"].bpw, 190.5, YZMA, "yzma BenchmarkInference (llama.cpp b10964, CUDA0, -nctx=32000), "
          "median of 5; Orin Nano Engineering Reference Developer Kit Super; generation length/depth not "
          "stated (0 used); nominal Q2_K bits (SmolLM's 576-wide rows make llama.cpp fall back on many "
          "tensors: the real file is larger)", "held-out", kv_bytes_per_token=_kv(30, 3, 64)),
    Point("holohub-llama2-7b", AGX, "not stated", "llama.cpp CUDA", "Llama-2-7B 4-bit", 6.74e9,
          TYPES["q4_0"].bpw, 22.5, HOLOHUB, "IGX Orin iGPU, which the author says gives numbers identical to "
          "AGX Orin (Jan 2024 llama.cpp); prompt 'Once upon a time', generation length not stated (depth 0); "
          "'4-bit' type not stated (q4_0 assumed)", "fit", kv_bytes_per_token=_kv(32, 32, 128),
          embed_params=32000 * 4096),
    Point("holohub-llama2-13b", AGX, "not stated", "llama.cpp CUDA", "Llama-2-13B 4-bit", 13.0e9,
          TYPES["q4_0"].bpw, 13.3, HOLOHUB, "as holohub-llama2-7b", "fit",
          kv_bytes_per_token=_kv(40, 40, 128), embed_params=32000 * 5120),
    Point("holohub-llama2-70b", AGX, "not stated", "llama.cpp CUDA", "Llama-2-70B 4-bit", 69.0e9,
          TYPES["q4_0"].bpw, 3.0, HOLOHUB, "as holohub-llama2-7b (outside the 135M–8B target range; kept: it "
          "pins the bandwidth term)", "fit", kv_bytes_per_token=_kv(80, 8, 128), embed_params=32000 * 8192),
    # llama-bench tg128 rows of the tables the prefill points below come from; added after the decode fit was
    # made and held out of it (never fitted). tg128 from an empty cache: mean depth 64.
    Point("tiny-agent-qwen2.5-3b-tg128", SUPER, "MAXN_SUPER", "llama.cpp CUDA", "Qwen2.5-3B-Instruct Q4_K_M",
          3.09e9, None, 23.85, TINY_AGENT, "llama-bench -ngl 99 -p 512 -n 128 -r 3, build 873e5d8, L4T "
          "R36.5, CUDA 12.6: '23.85 ± 0.01'; file 1.79 GiB as the table states; tied embedding", "held-out",
          file_bytes=1.79 * 2**30, kv_bytes_per_token=_kv(36, 2, 128), depth=64),
    Point("junwei-qwen-14b-tg128", AGX, "not stated (listed after the MAXN run)", "llama.cpp CUDA",
          "DeepSeek-R1-Distill-Qwen-14B Q4_K_M", 14.77e9, None, 14.49, JUNWEI, "llama-bench --flash-attn 1, "
          "build 55ac8c77 (4675), JetPack 5: '14.49'; file 8.37 GiB as stated; outside the 135M–8B target "
          "range", "held-out", file_bytes=8.37 * 2**30, kv_bytes_per_token=_kv(48, 8, 128), depth=64,
          embed_params=152064 * 5120),
    Point("junwei-qwen-32b-tg128", AGX, "MAXN (nvpmodel -m 0)", "llama.cpp CUDA",
          "DeepSeek-R1-Distill-Qwen-32B Q4_K_M", 32.76e9, None, 6.84, JUNWEI, "as junwei-qwen-14b-tg128: "
          "'6.84 ± 0.01'; file 18.48 GiB; outside the target range", "held-out", file_bytes=18.48 * 2**30,
          kv_bytes_per_token=_kv(64, 8, 128), depth=64, embed_params=152064 * 5120),
    Point("junwei-qwen-32b-tg128-30w", AGX, "30 W (nvpmodel -m 2)", "llama.cpp CUDA",
          "DeepSeek-R1-Distill-Qwen-32B Q4_K_M", 32.76e9, None, 5.37, JUNWEI, "as junwei-qwen-32b-tg128 in "
          "the 30 W mode: '5.37 ± 0.01'. Excluded: the registry's figures are the MAXN mode's", "excluded",
          file_bytes=18.48 * 2**30, kv_bytes_per_token=_kv(64, 8, 128), depth=64, embed_params=152064 * 5120),
    Point("minicpm-8b-q4km", AGX, "nvpmodel max + jetson_clocks", "llama.cpp CUDA", "MiniCPM4.1-8B Q4_K_M",
          8.0e9, TYPES["q4_k_m"].bpw, 25.0, MINICPM, "'只能得到25t/s' (only 25 t/s); the reporter adds "
          "Qwen3-8B and DeepSeek-R1-0528-8B at the same quantization run no differently; AGX Orin memory "
          "size not stated (both modules have 204.8 GB/s); parameters '8B' from the name; depth not stated "
          "(0); embedding tying not verified (untied assumed: 73448 × 4096, 3.8 % of the bytes)", "held-out",
          embed_params=73448 * 4096),
    # ---- llama.cpp CPU (one point: shown, not fitted) ------------------------------------------------------
    Point("yzma-smollm-135m-q2k-cpu", SUPER, "not stated", "llama.cpp CPU", "SmolLM-135M Q2_K", 134.5e6,
          TYPES["q2_k"].bpw, 84.2, YZMA, "as yzma-smollm-135m-q2k on the 6 CPU cores (-nctx=8192). Excluded: "
          "the only CPU point, too few to fit a CPU calibration", "excluded",
          kv_bytes_per_token=_kv(30, 3, 64)),
    # ---- Ollama (llama.cpp's CUDA kernels behind a server) on Orin Nano Super 25 W -------------------------
    _ollama("ollama-llama3.2-1b", "Llama-3.2-1B", 1.24e9, "q4_k_m", 62, _kv(16, 8, 64)),
    _ollama("ollama-llama3.2-3b", "Llama-3.2-3B", 3.21e9, "q4_k_m", 30, _kv(28, 8, 128), "held-out"),
    _ollama("ollama-tinyllama", "TinyLlama-1.1B", 1.10e9, "q4_0", 58, _kv(22, 4, 64), embed=32000 * 2048),
    _ollama("ollama-qwen2.5-0.5b", "Qwen2.5-0.5B", 0.494e9, "q4_k_m", 50, _kv(24, 2, 64)),
    _ollama("ollama-gemma2-2b", "Gemma-2-2B", 2.61e9, "q4_0", 38, _kv(26, 4, 256), family="gemma2"),
    _ollama("ollama-phi3-3.8b", "Phi-3-mini (3.8B)", 3.82e9, "q4_0", 25, _kv(32, 32, 96), embed=32064 * 3072),
    _ollama("ollama-qwen2-7b", "Qwen2-7B", 7.62e9, "q4_0", 8, _kv(28, 4, 128), "excluded",
            "Excluded: a 4.4 GB model on an 8 GB board leaves little room beside the OS and Ollama (eMMC "
            "swap is reported on this board for 8B models); the same source's 3B runs at about twice its "
            "bandwidth share.", embed=152064 * 3584),
    # ---- MLC (NanoLLM / MLC API, INT4) on Orin Nano 8GB, original and Super mode ---------------------------
    _mlc("mlc-llama3.1-8b", NANO, "Llama-3.1-8B", 8.03e9, 14.0, embed=128256 * 4096),
    _mlc("mlc-llama3.1-8b-super", SUPER, "Llama-3.1-8B", 8.03e9, 19.14, embed=128256 * 4096),
    _mlc("mlc-llama3.2-3b", NANO, "Llama-3.2-3B", 3.21e9, 27.7),
    _mlc("mlc-llama3.2-3b-super", SUPER, "Llama-3.2-3B", 3.21e9, 43.07, "held-out"),
    _mlc("mlc-qwen2.5-7b", NANO, "Qwen2.5-7B", 7.62e9, 14.2, embed=152064 * 3584),
    _mlc("mlc-qwen2.5-7b-super", SUPER, "Qwen2.5-7B", 7.62e9, 21.75, embed=152064 * 3584),
    _mlc("mlc-gemma2-2b", NANO, "Gemma-2-2B", 2.61e9, 21.5, family="gemma2"),
    _mlc("mlc-gemma2-2b-super", SUPER, "Gemma-2-2B", 2.61e9, 34.97, "held-out", family="gemma2"),
    _mlc("mlc-gemma2-9b", NANO, "Gemma-2-9B", 9.24e9, 7.2, family="gemma2"),
    _mlc("mlc-gemma2-9b-super", SUPER, "Gemma-2-9B", 9.24e9, 9.21, family="gemma2"),
    _mlc("mlc-phi3.5-mini", NANO, "Phi-3.5-mini (3.8B)", 3.82e9, 24.7, embed=32064 * 3072),
    _mlc("mlc-phi3.5-mini-super", SUPER, "Phi-3.5-mini (3.8B)", 3.82e9, 38.1, "held-out", embed=32064 * 3072),
    _mlc("mlc-smollm2", NANO, "SmolLM2 (size not stated)", 1.71e9, 41.0, "excluded",
         "Excluded: the chart does not say which SmolLM2 (1.7B is the only size this speed fits; not used)."),
    _mlc("mlc-smollm2-super", SUPER, "SmolLM2 (size not stated)", 1.71e9, 64.5, "excluded",
         "Excluded: as mlc-smollm2."),
    Point("mlc-tinyllama", NANO, "not stated", "MLC", "TinyLlama-1.1B", 1.10e9, MLC_Q4, 68.0, AI_LAB_SLM,
          f"'about 68 tokens/sec' for TinyLlama on Orin Nano in the Jetson AI Lab SLM chart, as quoted in "
          f"{NANOLLM_38} (MLC q4f16_ft); depth not stated (0)", "fit", embed_params=32000 * 2048),
)


# ---- prefill: llama-bench pp512 on Orin GPUs (llama.cpp CUDA) ----------------------------------------------
@dataclass(frozen=True)
class PrefillPoint:
    """One published prompt-processing speed, with the model shape its FLOPs per token are computed from."""

    key: str
    device: str
    power_mode: str
    model: str
    # the model's config.json shape (model_type, layers, hidden, …), for slm.spec.spec_from_config
    config: dict
    n_prompt: int  # tokens in the prompt (llama-bench ppN)
    prefill_tok_s: float
    source: str
    note: str
    role: str = "fit"  # fit | held-out | excluded, set before fitting


def _qwen2(layers, hidden, inter, heads, kv, vocab, tied):
    return {"model_type": "qwen2", "num_hidden_layers": layers, "hidden_size": hidden,
            "intermediate_size": inter, "num_attention_heads": heads, "num_key_value_heads": kv,
            "vocab_size": vocab, "tie_word_embeddings": tied, "max_position_embeddings": 32768}


QWEN25_3B = _qwen2(36, 2048, 11008, 16, 2, 151936, True)
QWEN25_14B = _qwen2(48, 5120, 13824, 40, 8, 152064, False)
QWEN25_32B = _qwen2(64, 5120, 27648, 40, 8, 152064, False)
LLAMA32_1B = {**_qwen2(16, 2048, 8192, 32, 8, 128256, True), "model_type": "llama"}
LLAMA32_3B = {**_qwen2(28, 3072, 8192, 24, 8, 128256, True), "model_type": "llama"}

PREFILL_POINTS: tuple[PrefillPoint, ...] = (
    PrefillPoint("tiny-agent-qwen2.5-3b-pp512", SUPER, "MAXN_SUPER", "Qwen2.5-3B-Instruct Q4_K_M", QWEN25_3B,
                 512, 874.77, TINY_AGENT, "llama-bench -ngl 99 -p 512 -n 128 -r 3, build 873e5d8: '874.77 ± "
                 "28.22'"),
    PrefillPoint("junwei-qwen-32b-pp512", AGX, "MAXN (nvpmodel -m 0)", "DeepSeek-R1-Distill-Qwen-32B Q4_K_M",
                 QWEN25_32B, 512, 201.73, JUNWEI, "llama-bench --flash-attn 1, build 55ac8c77 (4675): "
                 "'201.73 ± 0.11'"),
    PrefillPoint("junwei-qwen-14b-pp512", AGX, "not stated (listed after the MAXN run)",
                 "DeepSeek-R1-Distill-Qwen-14B Q4_K_M", QWEN25_14B, 512, 455.47, JUNWEI,
                 "as junwei-qwen-32b-pp512: '455.47 ± 0.10'", "held-out"),
    PrefillPoint("junwei-qwen-32b-pp512-30w", AGX, "30 W (nvpmodel -m 2)",
                 "DeepSeek-R1-Distill-Qwen-32B Q4_K_M", QWEN25_32B, 512, 128.64, JUNWEI, "'128.64 ± 0.03'. "
                 "Excluded: the registry's figures are the MAXN mode's", "excluded"),
    PrefillPoint("nixos-llama3.2-1b-pp512", AGX, "not stated", "Llama-3.2-1B-Instruct Q4_K_M", LLAMA32_1B,
                 512, 1554.29, NIXOS, "llama-bench -r 3, llama.cpp 9a5f57795, flash attention on: '1554.29'. "
                 "Excluded: the same table's decode (34.8 tok/s for a 0.75 GB file) is a third of what the "
                 "AGX's bandwidth gives elsewhere, so the board was in a low power mode or clock the source "
                 "does not state", "excluded"),
    PrefillPoint("nixos-llama3.2-3b-pp512", AGX, "not stated", "Llama-3.2-3B-Instruct Q6_K", LLAMA32_3B, 512,
                 507.21, NIXOS, "as nixos-llama3.2-1b-pp512: '507.21' (flash attention on). Excluded for the "
                 "same reason", "excluded"),
)

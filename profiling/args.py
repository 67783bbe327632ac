"""What `slm profile` is asked to do: its inputs (`Inputs`) and its options (`ProfileArgs`), checked on
creation so a bad type, backend or device fails before any model is read."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

from slm.errors import SlmError
from slm.gguf import KV_CACHE_TYPES, parse_types
from slm.profiling import devices
from slm.profiling.protocol import BenchArgs

BACKENDS = ("llama.cpp", "torch", "onnxruntime-genai")
# `--quick`: short tests for a first look or a CI run
QUICK = {"bench": {"pp": (64, 256), "tg": 32, "depths": (0, 256), "reps": 2, "time_cap_s": 4.0},
         "sweep_pp": 128, "sweep_tg": 16, "ppl_chunks": 2, "kv_contexts": (512, 2048), "kv_quality_ctx": 512}


@dataclass
class Inputs:
    """What there is to profile (any subset)."""

    gguf: Path | None = None  # the GGUF the llama.cpp backend measures
    hf: Path | None = None  # HF checkpoint for the torch backend
    onnx: Path | None = None  # onnxruntime-genai folder
    config: Path | None = None  # config.json when there are no weights
    files: dict = field(default_factory=dict)  # quant type → GGUF already made (by the exporter)
    source_note: str = ""  # e.g. "requantized from Q4_1", shown in the report
    cache_note: str = ""  # which files came from the cache (made before from the same weights), in the report


@dataclass
class ProfileArgs:
    """What `slm profile` does."""

    device: str = "host"  # 'host', a registry key, or 'jetson' (= Orin NX 16GB)
    # sweep types, 'q8_0,q4_k_m' or a tuple (empty: no sweep); with a config: the type to project
    quant: str | tuple = ()
    backends: str | tuple = BACKENDS  # run those whose input exists ('llama.cpp,torch' or a tuple)
    bench: BenchArgs = field(default_factory=BenchArgs)  # the protocol for the main backends
    # CPU threads for every backend (None: bench.threads, by default default_threads())
    threads: int | None = None
    # short tests: QUICK's protocol (pp64,256; tg32 @ d0,256; 2 reps), sweep and KV contexts
    quick: bool = False
    sweep_pp: int = 512  # prefill length in the sweep
    sweep_tg: int = 64  # decode length in the sweep
    sweep_reps: int = 2  # repetitions in the sweep
    ppl_chunks: int = 4  # perplexity chunks of 256 tokens
    kv_types: tuple = ("f16", "q8_0", "q4_0")  # llama.cpp cache types to measure and chart
    kv_contexts: tuple = (512, 2048, 8192)  # contexts at which llama.cpp's allocation is measured (≤ max)
    # the sweep's KV-cache quality: windows of this many tokens (≤ max context), this many of them, scored
    # with each kv_types cache against f16 on the sweep's reference weights (0 windows: not measured)
    kv_quality_ctx: int = 2048
    kv_quality_chunks: int = 2
    refresh_host: bool = False  # re-measure this host's bandwidth and compute
    # torch and onnxruntime-genai get a lighter protocol by default (the two shortest prompts and depths, tg ≤
    # 32, 2 repetitions): fp32 torch decodes ~10× slower than llama.cpp here and would dominate a 15-minute
    # profile
    full_all: bool = False  # run the full protocol on every backend
    engine: str = "llama.cpp"  # whose calibration projects onto the device: llama.cpp (CUDA) | mlc
    power_mode: str = ""  # the device's nvpmodel mode for the projection ("": MAXN)
    # `--ops`: after the timed tests, a diagnostic pass per backend timing its operators (slm.profiling.ops)
    ops: bool = False

    def __post_init__(self):
        # the sweep has no importance matrix: refuse now
        self.quant = parse_types(self.quant, have_imatrix=False)
        names = self.backends.split(",") if isinstance(self.backends, str) else self.backends
        self.backends = tuple(b.strip() for b in names if b.strip())
        for b in self.backends:
            if b not in BACKENDS:
                raise SlmError(f"unknown backend {b!r}: choose from {', '.join(BACKENDS)}")
        self.device = devices.get_device(self.device).key if self.device != "host" else "host"
        for t in self.kv_types:
            if t not in KV_CACHE_TYPES:
                raise SlmError(f"unknown KV cache type {t!r}: choose from {', '.join(KV_CACHE_TYPES)}")
        self.threads = self.threads or self.bench.threads
        from slm.profiling.calibration import engine_backend  # the calibration reads the device registry

        engine_backend(self.engine)
        if self.device != "host":
            devices.get_mode(self.device, self.power_mode)
        if self.quick:
            cap = (self.bench.time_cap_s if self.bench.time_cap_s != BenchArgs.time_cap_s
                   else QUICK["bench"]["time_cap_s"])
            if self.bench.max_reps < QUICK["bench"]["reps"]:
                raise SlmError(f"--max-reps {self.bench.max_reps} is below --quick's "
                               f"{QUICK['bench']['reps']} repetitions: raise --max-reps or drop --quick")
            quick = {k: v for k, v in QUICK["bench"].items() if k != "time_cap_s"}
            self.bench = BenchArgs(**quick, threads=self.threads, seed=self.bench.seed,
                                   target_ci=self.bench.target_ci, max_reps=self.bench.max_reps,
                                   time_cap_s=cap)  # the user's cap wins over quick's
            self.sweep_pp, self.sweep_tg, self.ppl_chunks = (QUICK["sweep_pp"], QUICK["sweep_tg"],
                                                             QUICK["ppl_chunks"])
            self.kv_contexts, self.kv_quality_ctx = QUICK["kv_contexts"], QUICK["kv_quality_ctx"]
        else:
            self.bench = replace(self.bench, threads=self.threads)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ProfileArgs:
        """The record `to_dict` wrote, as it was: --quick is already applied to its protocol, so it is not
        applied twice (a remote run receives exactly the protocol asked for here)."""
        if not isinstance(d, dict) or not isinstance(d.get("bench"), dict):
            raise SlmError("profile arguments must be a JSON object with a 'bench' object: re-run `slm "
                           "profile`")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise SlmError(f"unknown profile arguments {unknown}: the two slm versions differ; update slm "
                           "there")
        b = {k: tuple(v) if isinstance(v, list) else v for k, v in d["bench"].items()}
        rest = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k != "bench"}
        out = cls(**{**rest, "quick": False, "bench": BenchArgs(**b)})
        out.quick = bool(d.get("quick"))
        return out

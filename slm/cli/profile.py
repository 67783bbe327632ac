"""slm profile: prefill/decode speed, KV-cache share, quantization sweep, roofline, Jetson projection."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from slm.errors import SlmError
from slm.figure import text
from slm.profiling.api import ProfileArgs, RemoteArgs, profile_model
from slm.profiling.figures import profile_figures
from slm.profiling.protocol import BenchArgs


def _ints(s: str) -> tuple:
    return tuple(int(x) for x in s.split(",") if x.strip())


def register(sub) -> None:
    p = sub.add_parser("profile", help="speed, KV-cache memory and quantization effects, here / on a Jetson "
                                       "/ projected")
    p.add_argument("model", nargs="?", help="GGUF file, HF folder, ONNX folder or export folder, or a Hub id "
                                            "org/name[@rev] or org/name/FILE.gguf")
    p.add_argument("--config", help="config.json of an architecture with no weights (projection only)")
    p.add_argument("--device", help="host (default), jetson (= Orin NX 16GB) or a registry "
                                                    "key")
    p.add_argument("--host", help="profile on user@addr over SSH (slm must be installed there)")
    p.add_argument("--port", type=int, help="SSH port (default 22)")
    p.add_argument("--identity", help="SSH private key file")
    p.add_argument("--known-hosts", help="known_hosts file to check the host key against (default "
                                         "~/.ssh/known_hosts)")
    p.add_argument("--remote-slm", help="the slm command on the remote (default: slm)")
    p.add_argument("--remote-dir",
                   help="where the model is copied on the remote")
    p.add_argument("--runner", choices=["slm", "llama-bench"],
                   help="with --host: slm (default: `slm profile` on the device) or llama-bench (the "
                        "device's own llama.cpp llama-bench; a GGUF only)")
    p.add_argument("--llama-bench", help="the llama-bench command on the device (default: llama-bench)")
    p.add_argument("--tegrastats", help="the tegrastats command on the device, sampled for power (default: "
                                        "tegrastats)")
    p.add_argument("--ngl", type=int, help="llama-bench -ngl: layers offloaded to the GPU (default: all)")
    p.add_argument("--engine", help="whose calibration projects onto --device: llama.cpp (CUDA, default) or "
                                    "mlc")
    p.add_argument("--power-mode", help="the device's nvpmodel mode for the projection, e.g. 30W (default "
                                        "MAXN)")
    p.add_argument("--quant", help="comma list of GGUF types to sweep, e.g. f16,q8_0,q6_k,q4_k_m")
    p.add_argument("--backends", help="backends to run when their input exists (default: all three)")
    p.add_argument("--pp", type=_ints, help="prompt lengths (comma list; default 128,512,2048)")
    p.add_argument("--tg", type=int, help="tokens generated per decode test (default 128)")
    p.add_argument("--depths", type=_ints, help="decode depths (comma list; default 0,512,2048)")
    p.add_argument("--latency-prompt", type=int,
                   help="prompt tokens of the latency test (TTFT, inter-token latency p50/p90/p99); 0: none "
                        "(default: the longest --pp ≤ 512)")
    p.add_argument("--latency-tokens", type=int, help="tokens streamed per latency test (default 64)")
    p.add_argument("--reps", type=int, help="least timed repetitions per test (default 3)")
    p.add_argument("--target-ci", type=float,
                   help="repeat a test until its 95 %% interval is within ± this fraction of the mean "
                        "(default 0.03)")
    p.add_argument("--time-cap", type=float, help="seconds of timed runs after which a test "
                                                                "stops repeating")
    p.add_argument("--max-reps", type=int, help="most timed repetitions per test")
    p.add_argument("--ops", action="store_true",
                   help="also time each backend's operators (matmul, attention, norm, …) per phase in a "
                        "separate pass")
    p.add_argument("--threads", type=int,
                   help="CPU threads (default: all this process may use)")
    p.add_argument("--full-all", action="store_true", help="full protocol on torch/onnxruntime-genai too "
                                                           "(default: lighter)")
    p.add_argument("--quick", action="store_true", help="short tests (pp64,256; tg32 @ d0,256; 2 reps; small "
                                                        "sweep)")
    p.add_argument("--refresh-host", action="store_true", help="re-measure this host's bandwidth and compute")
    p.add_argument("--args-json", help=argparse.SUPPRESS)  # a remote run: the ProfileArgs record itself
    p.add_argument("-o", "--out", help="output folder (default reports/profile-<model>-<time>)")
    p.add_argument("--json", action="store_true", help="print the JSON result on stdout (progress goes to "
                                                       "stderr)")
    p.add_argument("--force", action="store_true", help="replace an existing output folder")
    p.set_defaults(func=cmd_profile, hub_models={"model": "weights"})


# CLI flag → field; a flag left out keeps the dataclass default (ProfileArgs / BenchArgs hold every default)
FLAGS = {"device": "device", "quant": "quant", "backends": "backends", "threads": "threads", "quick": "quick",
         "refresh_host": "refresh_host", "full_all": "full_all", "ops": "ops", "engine": "engine",
         "power_mode": "power_mode"}
BENCH_FLAGS = {"pp": "pp", "tg": "tg", "depths": "depths", "reps": "reps", "target_ci": "target_ci",
               "time_cap": "time_cap_s", "max_reps": "max_reps", "latency_prompt": "latency_prompt",
               "latency_tokens": "latency_tokens"}


def profile_args(args):
    """argparse → ProfileArgs: only the flags the user gave; the ProfileArgs record itself for a remote
    run."""

    if args.args_json:
        return ProfileArgs.from_dict(json.loads(args.args_json))
    given = {f: getattr(args, a) for a, f in FLAGS.items() if getattr(args, a) not in (None, False)}
    bench = {f: getattr(args, a) for a, f in BENCH_FLAGS.items() if getattr(args, a) is not None}
    return ProfileArgs(**given, bench=BenchArgs(**bench))


def cmd_profile(args) -> int:
    """argparse → ProfileArgs / RemoteArgs → profile_model → print."""

    pa = profile_args(args)
    remote = None
    lb_flags = [f for f in ("runner", "llama_bench", "tegrastats", "ngl") if getattr(args, f) is not None]
    if lb_flags and not args.host:
        raise SlmError(f"--{lb_flags[0].replace('_', '-')} is for a device over SSH: add --host user@device")
    if args.host:
        opts = {"port": args.port, "slm": args.remote_slm, "remote_dir": args.remote_dir,
                "identity": Path(args.identity) if args.identity else None,
                "known_hosts": Path(args.known_hosts) if args.known_hosts else None,
                "runner": args.runner, "llama_bench": args.llama_bench, "tegrastats": args.tegrastats,
                "ngl": args.ngl, "threads": args.threads}
        remote = RemoteArgs(args.host, **{k: v for k, v in opts.items() if v is not None})
    typed = getattr(args, "given", {}).get("model")  # a Hub id: name the folder after it, not its commit
    name = Path(typed or args.model or args.config or "model").name.replace(".gguf", "").split("@")[0]
    out = args.out or f"reports/profile-{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    res = profile_model(args.model, out, pa, config=args.config, remote=remote, force=args.force)
    if args.json:
        print(json.dumps(res, default=str))
    else:
        print(f"profile → {res['out']}/index.html", file=sys.stderr)
        for f in profile_figures(res):
            if f.key or f.setting:
                print(f"  {f.label}: {text(f)}", file=sys.stderr)
    return 0

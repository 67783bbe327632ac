"""slm profile: prefill/decode speed, KV-cache share, quantization sweep, roofline, Jetson projection."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def _ints(s: str) -> tuple:
    return tuple(int(x) for x in s.split(",") if x.strip())


def register(sub) -> None:
    p = sub.add_parser("profile", help="speed, KV-cache memory and quantization effects, here / on a Jetson / projected")
    p.add_argument("model", nargs="?", help="GGUF file, HF folder, ONNX folder or export folder")
    p.add_argument("--config", help="config.json of an architecture with no weights (projection only)")
    p.add_argument("--device", default="host", help="host (default), jetson (= Orin NX 16GB) or a registry key")
    p.add_argument("--host", help="profile on user@addr over SSH (slm must be installed there)")
    p.add_argument("--port", type=int, default=22, help="SSH port")
    p.add_argument("--identity", help="SSH private key file")
    p.add_argument("--known-hosts", help="known_hosts file to check the host key against (default ~/.ssh/known_hosts)")
    p.add_argument("--remote-slm", default="slm", help="the slm command on the remote")
    p.add_argument("--remote-dir", default=".cache/slm/remote", help="where the model is copied on the remote")
    p.add_argument("--quant", default="", help="comma list of GGUF types to sweep, e.g. f16,q8_0,q6_k,q4_k_m")
    p.add_argument("--backends", default="llama.cpp,torch,onnxruntime-genai", help="backends to run when their input exists")
    p.add_argument("--pp", type=_ints, default=(128, 512, 2048), help="prompt lengths (comma list)")
    p.add_argument("--tg", type=int, default=128, help="tokens generated per decode test")
    p.add_argument("--depths", type=_ints, default=(0, 512, 2048), help="decode depths (comma list)")
    p.add_argument("--reps", type=int, default=3, help="timed repetitions per test")
    p.add_argument("--target-ci", type=float, default=0.03,
                   help="repeat a test until its 95 %% interval is within ± this fraction of the mean (default 0.03)")
    p.add_argument("--time-cap", type=float, default=10.0, help="seconds of timed runs after which a test stops repeating")
    p.add_argument("--max-reps", type=int, default=30, help="most timed repetitions per test")
    p.add_argument("--ops", action="store_true",
                   help="also time each backend's operators (matmul, attention, norm, …) per phase in a separate pass")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: all this process may use)")
    p.add_argument("--full-all", action="store_true", help="full protocol on torch/onnxruntime-genai too (default: lighter)")
    p.add_argument("--quick", action="store_true", help="short tests (pp64,256; tg32 @ d0,256; 2 reps; small sweep)")
    p.add_argument("--refresh-host", action="store_true", help="re-measure this host's bandwidth and compute")
    p.add_argument("-o", "--out", help="output folder (default reports/profile-<model>-<time>)")
    p.add_argument("--json", action="store_true", help="print the JSON result on stdout (progress goes to stderr)")
    p.add_argument("--force", action="store_true", help="replace an existing output folder")
    p.set_defaults(func=cmd_profile)


def cmd_profile(args) -> int:
    """argparse → ProfileArgs / RemoteArgs → profile_model → print."""
    from slm.profiling.api import ProfileArgs, RemoteArgs, profile_model
    from slm.profiling.protocol import BenchArgs

    pa = ProfileArgs(device=args.device, quant=args.quant, backends=args.backends, threads=args.threads,
                     quick=args.quick, bench=BenchArgs(pp=args.pp, tg=args.tg, depths=args.depths, reps=args.reps,
                                     target_ci=args.target_ci, time_cap_s=args.time_cap, max_reps=args.max_reps),
                     refresh_host=args.refresh_host, full_all=args.full_all, ops=args.ops)
    remote = None
    if args.host:
        remote = RemoteArgs(args.host, args.port, Path(args.identity) if args.identity else None,
                            Path(args.known_hosts) if args.known_hosts else None, args.remote_slm, args.remote_dir)
    name = Path(args.model or args.config or "model").name.replace(".gguf", "")
    out = args.out or f"reports/profile-{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    res = profile_model(args.model, out, pa, config=args.config, remote=remote, force=args.force)
    if args.json:
        print(json.dumps(res, default=str))
    else:
        print(f"profile → {res['out']}/index.html", file=sys.stderr)
        for k, v in res["summary"].items():
            print(f"  {k}: {v}", file=sys.stderr)
    return 0

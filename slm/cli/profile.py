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
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: all this process may use)")
    p.add_argument("--full-all", action="store_true", help="full protocol on torch/onnxruntime-genai too (default: lighter)")
    p.add_argument("--quick", action="store_true", help="short tests (pp64,256; tg32 @ d0,256; 2 reps; small sweep)")
    p.add_argument("--refresh-host", action="store_true", help="re-measure this host's bandwidth and compute")
    p.add_argument("-o", "--out", help="output folder (default reports/profile-<model>-<time>)")
    p.add_argument("--json", action="store_true", help="print the JSON result on stdout (progress goes to stderr)")
    p.add_argument("--force", action="store_true", help="replace an existing output folder")
    p.set_defaults(func=cmd_profile)


def _export(hf: Path, out: Path, onnx: bool) -> dict:
    """HF folder → export folder with an f16 GGUF (and an int4 ONNX model) via the export package; only the CLI
    imports slm.quant."""
    from slm.quant.export import ExportArgs, export

    return export(hf, out, ExportArgs(gguf=["f16"], onnx=["int4"] if onnx else [], validate=False, force=True))


def profile_model(model: str | None, out: str, *options: str) -> dict:
    """`slm profile MODEL -o OUT [options…]` as a function (for `slm demo`): returns the result dict."""
    from slm.cli import build_parser

    args = build_parser().parse_args(["profile", *([model] if model else []), "-o", str(out), *options])
    return run(args)


def cmd_profile(args) -> int:
    res = run(args)
    if args.json:
        print(json.dumps(res, default=str))
    else:
        print(f"profile → {res['out']}/index.html", file=sys.stderr)
        for k, v in res["summary"].items():
            print(f"  {k}: {v}", file=sys.stderr)
    return 0


def run(args) -> dict:
    from slm.io import check_output
    from slm.profiling.protocol import BenchArgs, default_threads
    from slm.profiling.run import ProfileArgs

    log = (lambda m: print(m, file=sys.stderr, flush=True))
    quant = tuple(q.strip().lower() for q in args.quant.split(",") if q.strip())
    threads = args.threads or default_threads()
    bench = BenchArgs(pp=(64, 256), tg=32, depths=(0, 256), reps=2, threads=threads) if args.quick else \
        BenchArgs(pp=args.pp, tg=args.tg, depths=args.depths, reps=args.reps, threads=threads)
    pa = ProfileArgs(device=args.device, quant=quant, backends=tuple(args.backends.split(",")), bench=bench,
                     refresh_host=args.refresh_host, full_all=args.full_all,
                     **({"sweep_pp": 128, "sweep_tg": 16, "ppl_chunks": 2, "kv_contexts": (512, 2048)} if args.quick else {}))
    name = Path(args.model or args.config or "model").name.replace(".gguf", "")
    out = Path(args.out or f"reports/profile-{name}-{time.strftime('%Y%m%d-%H%M%S')}")
    check_output(out, args.force)  # before any long work
    if args.host:
        from slm.profiling.remote import RemoteArgs, profile_remote

        ra = RemoteArgs(args.host, args.port, Path(args.identity) if args.identity else None,
                        Path(args.known_hosts) if args.known_hosts else None, args.remote_slm, args.remote_dir)
        if not args.model:
            from slm.errors import SlmError

            raise SlmError("--host needs a MODEL to copy to the device")
        fwd = ["--threads", str(threads), "--backends", args.backends] + (["--quick"] if args.quick else [
            "--pp", ",".join(map(str, bench.pp)), "--tg", str(bench.tg), "--depths", ",".join(map(str, bench.depths)),
            "--reps", str(bench.reps)]) + (["--quant", ",".join(quant)] if quant else []) + [
            "-o", f"{args.remote_dir}/{Path(args.model).name}.profile", "--force"]
        res = profile_remote(Path(args.model), ra, fwd, log)
    else:
        from slm.profiling.inputs import resolve
        from slm.profiling.run import profile

        inputs = resolve(args.model, args.config, quant, threads, bench.max_context(), pa.backends, _export, log)
        res = profile(inputs, pa, out.parent, log)
    from slm.profiling.report import save

    save(res, out, vars(args), args.model or args.config, args.force)
    res["out"] = str(out)
    return res

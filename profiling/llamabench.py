"""`slm profile MODEL.gguf --host user@jetson --runner llama-bench`: the device's own llama-bench, over SSH.

Most Jetson images (jetson-containers, the JetPack guides) ship llama.cpp's `llama-bench` built for CUDA,
where slm and a CUDA build of llama-cpp-python are rare. This runner copies the GGUF (slm.profiling.remote),
reads the device's fingerprint (L4T release, nvpmodel mode, jetson_clocks, GPU/EMC clocks where readable),
then runs llama-bench once per test of the protocol — `-p N -n 0` for prefill, `-n TG -d D` for decode at
depth D, with `-o json`, `-r`, `-t` and `-ngl` stated — while `tegrastats` samples power where it exists.
Its JSON rows (fields as tools/llama-bench/llama-bench.cpp prints them: n_prompt, n_gen, n_depth, avg_ts,
stddev_ts, samples_ts, …) become the same rows, figures and report as a local profile. llama-bench's
repetition count is fixed (`-r`), so a row's interval is the Student-t interval of its samples and a wide
one is marked, not repeated.
"""

from __future__ import annotations

import json
import re
import shlex
import statistics
import time
from collections.abc import Callable
from pathlib import Path

from slm.errors import SlmError
from slm.profiling import kv
from slm.profiling.args import ProfileArgs
from slm.profiling.remote import RemoteArgs, copy_model, ssh
from slm.profiling.run import SCHEMA_VERSION
from slm.spec import spec_from_gguf
from slm.stats import ci95_of

# llama-bench's own default repetitions (cmd_params_defaults.reps); more when the protocol asks for more
MIN_REPS = 5
# tegrastats sampling interval (ms): its default is 1000, too coarse for sub-second tests
TEGRA_MS = 100
# one sh script prints the fingerprint, each part after an @@name line; every probe may fail (not a Jetson,
# not root) and then prints nothing
FINGERPRINT = r"""
echo @@l4t; cat /etc/nv_tegra_release 2>/dev/null
echo @@model; tr -d '\0' </proc/device-tree/model 2>/dev/null
echo @@nvpmodel; nvpmodel -q 2>/dev/null
echo @@jetson_clocks; jetson_clocks --show 2>/dev/null
echo @@devfreq
for f in /sys/class/devfreq/*; do [ -r "$f/cur_freq" ] && echo "${f##*/} $(cat $f/cur_freq)"; done
echo @@emc; cat /sys/kernel/debug/bpmp/debug/clk/emc/rate 2>/dev/null
echo @@kernel; uname -srm
echo @@cpu; grep -m1 -E 'model name|^Model' /proc/cpuinfo | cut -d: -f2
echo @@nproc; nproc
"""


def parse_fingerprint(text: str) -> dict:
    """The device fingerprint from FINGERPRINT's output: what was readable, None where it was not."""
    parts, key = {}, None
    for line in text.splitlines():
        if line.startswith("@@"):
            key = line[2:].strip()
            parts[key] = []
        elif key:
            parts[key].append(line.rstrip())
    get = {k: "\n".join(v).strip() or None for k, v in parts.items()}
    l4t = get.get("l4t")
    m = re.search(r"R(\d+)\s*\(release\),\s*REVISION:\s*([\d.]+)", l4t or "")
    mode = re.search(r"NV Power Mode:\s*(.+)", get.get("nvpmodel") or "")
    clocks = get.get("jetson_clocks")
    # jetson_clocks pins every clock's minimum to its maximum: "MinFreq=X MaxFreq=X" everywhere means it is on
    pairs = re.findall(r"MinFreq=(\d+)\s+MaxFreq=(\d+)", clocks or "")
    devfreq = {n: int(f) for n, f in (ln.split()[:2] for ln in (get.get("devfreq") or "").splitlines()
                                      if len(ln.split()) >= 2 and ln.split()[1].isdigit())}
    gpu = next((f for n, f in devfreq.items() if re.search(r"gpu|ga10b|gv11b|gp10b", n)), None)
    emc = get.get("emc")
    return {"jetson": l4t is not None, "l4t": f"R{m[1]}.{m[2]}" if m else l4t, "model": get.get("model"),
            "power_mode": mode[1].strip() if mode else None,
            "jetson_clocks": (None if not pairs else "on" if all(a == b for a, b in pairs) else "off"),
            "gpu_hz": gpu, "emc_hz": int(emc) if emc and emc.isdigit() else None, "devfreq": devfreq,
            "kernel": get.get("kernel"), "cpu": (get.get("cpu") or "").strip() or None,
            "cores": int(get["nproc"]) if (get.get("nproc") or "").isdigit() else None}


def fingerprint_text(fp: dict) -> str:
    """One line for the report's header."""
    if not fp["jetson"]:
        return (f"not a Jetson (no /etc/nv_tegra_release): {fp.get('cpu') or 'CPU unknown'}, "
                f"{fp.get('cores') or '?'} cores, {fp.get('kernel') or 'kernel unknown'}")
    def mhz(hz):
        return f"{hz / 1e6:.0f} MHz" if hz else "not readable"

    return (f"{fp.get('model') or 'Jetson'}, L4T {fp['l4t']}, power mode "
            f"{fp['power_mode'] or 'not readable'}, jetson_clocks "
            f"{fp['jetson_clocks'] or 'not readable (needs root)'}, GPU {mhz(fp['gpu_hz'])}, "
            f"EMC {mhz(fp['emc_hz'])}")


def parse_tegrastats(text: str) -> list[float]:
    """VDD_IN (the module's input rail: the total) in watts, one per tegrastats line (`VDD_IN 5123mW/...`;
    older releases name it POM_5V_IN)."""
    return [int(m[1]) / 1e3 for m in re.finditer(r"(?:VDD_IN|POM_5V_IN)\s+(\d+)mW", text)]


def tests(args: ProfileArgs) -> list[tuple[str, str, int, int, list[str]]]:
    """(test, kind, tokens, depth, llama-bench flags) of the protocol: each prefill from an empty cache, each
    decode at its depth."""
    b = args.bench
    out = [(f"pp{n}", "prefill", n, 0, ["-p", str(n), "-n", "0", "-d", "0"]) for n in b.pp]
    if b.tg:
        out += [(f"tg{b.tg}@d{d}", "decode", b.tg, d, ["-p", "0", "-n", str(b.tg), "-d", str(d)])
                for d in b.depths]
    return out


def row_of(lb: dict, test: str, kind: str, n: int, depth: int, target_ci: float, watts: list[float],
           how: str) -> dict:
    """A protocol row from one llama-bench JSON row (and the power tegrastats sampled meanwhile)."""
    ts = [float(x) for x in lb.get("samples_ts") or [lb["avg_ts"]]]
    ci = ci95_of(ts)
    mean = float(lb["avg_ts"])
    ci_rel = ci / mean if ci is not None and mean else None
    wide = ci_rel is None or ci_rel > target_ci
    flags = ["other processes' CPU not sampled on the device (llama-bench runner)"]
    if wide:
        flags.append(f"95 % interval ±{ci_rel:.1%} wider than ±{target_ci:.0%} (llama-bench's fixed -r)"
                     if ci_rel is not None else "one repetition: no interval")
    row = {"test": test, "kind": kind, "n_tokens": n, "depth": depth, "tok_s": mean,
           "tok_s_std": float(lb.get("stddev_ts") or 0.0), "reps": len(ts), "ci95": ci, "ci_rel": ci_rel,
           "stop": "llama-bench -r", "disturbed": False, "wide": wide, "flags": flags,
           "other_cpu_share": None, "samples_tok_s": ts, "how": how,
           "llama_bench": {k: lb.get(k) for k in ("build_commit", "backends", "gpu_info", "n_threads",
                                                  "n_gpu_layers", "n_batch", "n_ubatch", "type_k",
                                                  "flash_attn", "avg_ns", "test_time")}}
    if kind == "prefill":
        row["ttft_ms"] = float(lb["avg_ns"]) / 1e6
    else:
        row["ms_per_token"] = float(lb["avg_ns"]) / 1e6 / n
    if watts:
        # the mean input power over the whole invocation (model load included) × the time per token: an
        # upper estimate while loading draws less than running
        w = statistics.fmean(watts)
        row.update(j_per_token=w / mean, tok_per_j=mean / w, energy_source="tegrastats VDD_IN",
                   energy_how=f"tegrastats VDD_IN every {TEGRA_MS} ms over each llama-bench run "
                              f"({len(watts)} samples, mean {w:.2f} W) × its time per token")
    return row


def check_llama_bench(remote: RemoteArgs) -> str:
    """The device's llama-bench, or a one-line error naming the fix (before the model is copied)."""
    exe = shlex.quote(remote.llama_bench)
    cp = ssh(remote, f"command -v {exe} || {{ test -x {exe} && echo {exe}; }}",
             what="looking for llama-bench")
    if cp.returncode != 0 or not cp.stdout.strip():
        raise SlmError(f"no `{remote.llama_bench}` on {remote.host}: install llama.cpp there "
                       "(jetson-containers ships it) or pass --llama-bench /path/to/llama-bench, or use "
                       "--runner slm")
    return cp.stdout.strip().splitlines()[-1]


def profile_llama_bench(model: Path, args: ProfileArgs, remote: RemoteArgs,
                        progress: Callable[[str], None] = print) -> dict:
    """Run the protocol's tests with the device's llama-bench; return a profile result (schema 3)."""
    model = Path(model)
    if model.suffix != ".gguf" or not model.is_file():
        raise SlmError(f"--runner llama-bench profiles a GGUF file (got {model}): export one with "
                       "`slm export MODEL --gguf q4_k_m`")
    spec = spec_from_gguf(model)
    t0 = time.time()
    exe = check_llama_bench(remote)
    fp = parse_fingerprint(ssh(remote, FINGERPRINT, what="reading the device fingerprint").stdout)
    rpath = copy_model(model, remote, progress)
    threads = remote.threads or fp["cores"] or args.threads
    reps = max(args.bench.reps, MIN_REPS)
    how = f"measured over SSH on {remote.host} with its llama-bench"
    rows = []
    for test, kind, n, depth, flags in tests(args):
        progress(f"{remote.host}: llama-bench {test}")
        argv = [exe, "-m", rpath, "-o", "json", "-r", str(reps), "-t", str(threads), "-ngl",
                str(remote.ngl), *flags]
        lb, watts = _run_one(remote, argv, test)
        rows.append(row_of(lb, test, kind, n, depth, args.bench.target_ci, watts, how))
    weight_bytes = model.stat().st_size
    bench = {**args.bench.to_dict(), "reps": reps, "warmup": 1, "threads": threads}
    return {"schema_version": SCHEMA_VERSION, "how": how, "where": "measured over SSH",
            "runner": "llama-bench",
            "model": {**spec.summary(), "inputs": {"gguf": str(model)}},
            "args": {**args.to_dict(), "bench": bench}, "threads": threads,
            "notes": [f"device: {fingerprint_text(fp)}",
                      f"llama-bench {rows[0]['llama_bench'].get('build_commit') if rows else '?'} "
                      f"({rows[0]['llama_bench'].get('backends') if rows else '?'}) at {exe}: -r {reps} -t "
                      f"{threads} -ngl {remote.ngl}, one run per test; its warm-up run is its own"],
            "device_fingerprint": {**fp, "text": fingerprint_text(fp)},
            "host": {"cpu": fp.get("cpu"), "detected_device": None},
            "backends": {"llama.cpp": {"rows": rows, "memory": {}, "threads": threads, "protocol": bench,
                                       "weight_bytes": weight_bytes}},
            "kv": {"analytic": {t: kv.share_curve(spec, weight_bytes, t) for t in args.kv_types},
                   "measured": []},
            "elapsed_s": time.time() - t0}


def _run_one(remote: RemoteArgs, argv: list[str], test: str) -> tuple[dict, list[float]]:
    """One llama-bench invocation with tegrastats sampling beside it (where there is one); its JSON row and
    the watts sampled."""
    lb = " ".join(shlex.quote(a) for a in argv)
    tegra = shlex.quote(remote.tegrastats)
    script = (f"T=$(mktemp); if command -v {tegra} >/dev/null 2>&1; then {tegra} --interval {TEGRA_MS} "
              f"--logfile \"$T\" & P=$!; fi; {lb}; rc=$?; [ -n \"$P\" ] && kill $P 2>/dev/null; "
              f"[ -n \"$P\" ] && wait $P 2>/dev/null; echo @@tegrastats; cat \"$T\" 2>/dev/null; "
              "rm -f \"$T\"; exit $rc")
    cp = ssh(remote, script, timeout=remote.timeout, what=f"llama-bench {test}")
    out, _, tegra_text = cp.stdout.partition("@@tegrastats")
    if cp.returncode != 0:
        err = [ln for ln in cp.stderr.strip().splitlines() if ln.strip()]
        raise SlmError(f"llama-bench {test} on {remote.host} failed (exit {cp.returncode}): "
                       f"{err[-1] if err else 'no message'}")
    try:
        rows = json.loads(out)
    except json.JSONDecodeError:
        raise SlmError(f"llama-bench on {remote.host} printed no JSON for {test}: is it older than "
                       "`-o json`? update llama.cpp there") from None
    if not isinstance(rows, list) or len(rows) != 1 or "avg_ts" not in rows[0]:
        raise SlmError(f"llama-bench on {remote.host} returned {len(rows) if isinstance(rows, list) else 0} "
                       f"rows for {test}, expected one with avg_ts: update llama.cpp there")
    return rows[0], parse_tegrastats(tegra_text)

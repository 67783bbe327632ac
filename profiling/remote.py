"""Profile on a remote device over SSH: copy the model, run `slm profile --json` there (or, with
runner=llama-bench, the device's own llama-bench: slm.profiling.llamabench), bring the JSON back.

Host keys are always checked (StrictHostKeyChecking=yes against the known_hosts file given, or the user's);
BatchMode=yes so ssh never prompts. Each failure becomes one clear SlmError and nothing is written locally:
the caller only writes outputs after a complete, parsed result came back.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path

from slm.errors import SlmError
from slm.profiling.run import SCHEMA_VERSION

SSH_FAIL = 255  # ssh's own exit status for connection/authentication failures
RUNNERS = ("slm", "llama-bench")


@dataclass
class RemoteArgs:
    """Where and how to reach the device."""

    host: str  # user@addr (or a Host alias from ~/.ssh/config)
    port: int = 22  # sshd port
    identity: Path | None = None  # private key file (-i); None: ssh's defaults / agent
    # known_hosts file to check the host key against; None: ~/.ssh/known_hosts
    known_hosts: Path | None = None
    slm: str = "slm"  # the slm command on the remote (a path when it is not on the remote PATH)
    remote_dir: str = ".cache/slm/remote"  # where models are copied, relative to the remote home
    connect_timeout: int = 10  # seconds before an unreachable host is given up
    timeout: int = 3600  # seconds the remote profile may take
    runner: str = "slm"  # slm: `slm profile` on the device | llama-bench: the device's own llama-bench
    llama_bench: str = "llama-bench"  # the llama-bench command on the device (runner=llama-bench)
    tegrastats: str = "tegrastats"  # sampled for power during each llama-bench run, where it exists
    ngl: int = 999  # llama-bench -ngl: layers offloaded to the GPU (all, as one deploys on a Jetson)
    threads: int | None = None  # llama-bench -t (None: the device's cores)

    def __post_init__(self):
        if self.runner not in RUNNERS:
            raise SlmError(f"--runner {self.runner!r}: use one of {', '.join(RUNNERS)}")
        if self.ngl < 0 or (self.threads is not None and self.threads < 1):
            raise SlmError("--ngl must be ≥ 0 and --threads ≥ 1")
        if not re.fullmatch(r"[A-Za-z0-9._-]+@[A-Za-z0-9.:_\-\[\]]+|[A-Za-z0-9._-]+", self.host):
            raise SlmError(f"--host {self.host!r} is not user@address: e.g. --host nvidia@192.168.1.20")
        for f in (self.identity, self.known_hosts):
            if f is not None and not Path(f).is_file():
                raise SlmError(f"{f} not found: pass an existing key / known_hosts file")

    def ssh_options(self) -> list[str]:
        o = ["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes", "-o",
             f"ConnectTimeout={self.connect_timeout}", "-o", "LogLevel=ERROR"]
        if self.known_hosts:
            o += ["-o", f"UserKnownHostsFile={Path(self.known_hosts).resolve()}", "-o",
                  "GlobalKnownHostsFile=/dev/null"]
        if self.identity:
            o += ["-i", str(Path(self.identity).resolve()), "-o", "IdentitiesOnly=yes"]
        return o


def _explain(stderr: str, host: str) -> str:
    s = stderr.lower()
    if ("host key verification failed" in s or "no matching host key" in s
            or "remote host identification has changed" in s):
        return (f"host key of {host} is not in known_hosts (or changed): add it with ssh-keyscan after "
                "checking its fingerprint")
    if "permission denied" in s:
        return (f"{host} refused the key: install the public key in the remote ~/.ssh/authorized_keys or "
                "pass --identity")
    if ("could not resolve" in s or "connection refused" in s or "timed out" in s or "no route" in s
            or "unreachable" in s):
        return f"cannot reach {host}: check the address, --port and that sshd runs there"
    return f"ssh to {host} failed: {stderr.strip().splitlines()[-1] if stderr.strip() else 'no message'}"


def _run(cmd: list[str], args: RemoteArgs, timeout: int, what: str) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise SlmError(f"{what} on {args.host} took longer than {timeout} s: check the device or raise the "
                       "timeout") from None
    except FileNotFoundError:
        raise SlmError(f"{cmd[0]} is not installed here: install an OpenSSH client") from None


def ssh(args: RemoteArgs, command: str, timeout: int | None = None,
        what: str = "remote command") -> subprocess.CompletedProcess:
    cp = _run(["ssh", *args.ssh_options(), "-p", str(args.port), args.host, command], args,
              timeout or args.connect_timeout + 60, what)
    if cp.returncode == SSH_FAIL:
        raise SlmError(_explain(cp.stderr, args.host))
    return cp


def profile_remote(model: Path, args: RemoteArgs, profile_argv: list[str], progress=print) -> dict:
    """Run `slm profile <copied model> --json <profile_argv>` on args.host and return its parsed JSON
    result."""
    model = Path(model)
    progress(f"ssh {args.host}: checking for {args.slm}")
    cp = ssh(args, f"command -v {shlex.quote(args.slm)} && {shlex.quote(args.slm)} --version",
             what="checking slm")
    if cp.returncode != 0:
        raise SlmError(f"`{args.slm}` is not installed on {args.host} (or not on its PATH): `pip install "
                       "slm-lab` there, or pass --remote-slm /path/to/slm")
    rdir = copy_model(model, args, progress)
    progress(f"profiling on {args.host}")
    remote_cmd = " ".join(shlex.quote(a) for a in [args.slm, "profile", rdir, "--json", *profile_argv])
    cp = ssh(args, remote_cmd, timeout=args.timeout, what="the remote profile")
    if cp.returncode != 0:
        err = cp.stderr.strip().splitlines()
        raise SlmError(f"remote profile on {args.host} failed: "
                       f"{err[-1] if err else 'exit ' + str(cp.returncode)}")
    try:
        res = json.loads(cp.stdout)
    except json.JSONDecodeError:
        raise SlmError(f"the remote profile on {args.host} did not print JSON "
                       "(is its slm too old?)") from None
    if not isinstance(res, dict) or "schema_version" not in res:
        raise SlmError(f"the remote profile on {args.host} returned no schema_version: update slm-lab there")
    if res["schema_version"] != SCHEMA_VERSION:
        raise SlmError(f"the slm on {args.host} writes profile schema {res['schema_version']}, this one "
                       f"reads {SCHEMA_VERSION}: install the same slm-lab version there")
    relabel(res, f"measured over SSH on {args.host}")
    return res


def copy_model(model: Path, args: RemoteArgs, progress=print) -> str:
    """scp the model (file or folder) into args.remote_dir; returns its path there."""
    rdir = f"{args.remote_dir}/{model.name}"
    ssh(args, f"mkdir -p {shlex.quote(args.remote_dir)}", what="mkdir")
    progress(f"copying {model.name} to {args.host}:{rdir}")
    cp = _run(["scp", "-q", "-r", *args.ssh_options(), "-P", str(args.port), str(model),
               f"{args.host}:{args.remote_dir}/"], args, args.timeout, "copying the model")
    if cp.returncode != 0:
        raise SlmError(_explain(cp.stderr, args.host) if cp.returncode == SSH_FAIL else
                       f"copying {model.name} to {args.host} failed: {cp.stderr.strip()[-200:]}")
    return rdir


def relabel(res: dict, how: str) -> None:
    """Say on every measured figure that it came over SSH (projections stay 'projected')."""
    res["remote_how"] = res.get("how")
    res["how"], res["where"] = how, "measured over SSH"
    for b in res.get("backends", {}).values():
        for r in b.get("rows", []):
            r["how"] = how
    for r in res.get("sweep", {}).get("rows", []):
        r["how"] = how

"""Fixtures for the profiling tests: the bundled GGUF, an isolated cache, a local sshd."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def gguf() -> Path:
    from slm.gguf_import import default_gguf

    return default_gguf()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def sshd(tmp_path_factory):
    """An sshd on 127.0.0.1 with a generated host key, a user key in authorized_keys, and a known_hosts
    holding the host key. Yields a dict of paths and the port."""
    exe = shutil.which("sshd") or ("/usr/sbin/sshd" if Path("/usr/sbin/sshd").is_file() else None)
    if not exe or not shutil.which("ssh-keygen"):
        pytest.skip("openssh-server is not installed (apt-get install -y openssh-server): SSH tests need a "
                    "local sshd")
    d = tmp_path_factory.mktemp("sshd")
    for name in ("host_key", "id", "other_id"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / name)], check=True)
    (d / "authorized_keys").write_text((d / "id.pub").read_text())
    port = free_port()
    (d / "known_hosts").write_text(f"[127.0.0.1]:{port} " + (d / "host_key.pub").read_text())
    (d / "empty_known_hosts").write_text("")
    (d / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {d / 'host_key'}\nAuthorizedKeysFile "
        f"{d / 'authorized_keys'}\nPasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM "
        f"no\nStrictModes no\nPermitRootLogin prohibit-password\nPidFile {d / 'sshd.pid'}\nSubsystem sftp "
        "internal-sftp\n")
    try:
        os.makedirs("/run/sshd", exist_ok=True)  # privilege-separation directory sshd insists on
    except OSError as e:
        pytest.skip(f"cannot create /run/sshd ({e}): run the SSH tests as root or create it once")
    proc = subprocess.Popen([exe, "-D", "-e", "-f", str(d / "sshd_config")], stderr=open(d / "sshd.log", "w"))
    for _ in range(50):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.1)
    else:
        proc.kill()
        pytest.skip(f"sshd did not start: {(d / 'sshd.log').read_text()[-300:]}")
    yield {"dir": d, "port": port, "user": os.environ.get("USER") or "root"}
    proc.terminate()
    proc.wait(timeout=10)

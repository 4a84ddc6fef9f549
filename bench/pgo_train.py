#!/usr/bin/env python3
"""The training run for a profile-guided `dist` build (scripts/pgo.sh).

Runs an instrumented Warden (built with `-Cprofile-generate`) through the traffic it is
built for, so the compiler lays out and inlines for the paths that run hot there:
HTTP/1.1 keep-alive GETs with no policy, with the network-isolation chain, and with the
chain plus an injected secret; single-connection requests; POSTs with a body; h2c; and
TLS termination (h2 and HTTP/1.1, new connections and kept ones).
Each Warden is stopped with SIGTERM and waited for, so it drains and exits normally and
the profile runtime writes its counts (`LLVM_PROFILE_FILE`, set by the caller).

Loopback only; the same configs as bench/bench.py. Under a minute.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402


def h2load(*args: str) -> None:
    """h2load, which exits 0 even when requests fail: every one must succeed."""
    out = subprocess.run(["h2load", *args], check=True, capture_output=True, text=True).stdout
    m = re.search(r"requests: (\d+) total, \d+ started, \d+ done, (\d+) succeeded", out)
    if not m or m.group(1) != m.group(2):
        raise RuntimeError(f"h2load {' '.join(args)}: not every request succeeded\n{out}")


def drive(port: int) -> None:
    """The traffic one Warden sees."""
    url = f"http://127.0.0.1:{port}/"
    subprocess.run(["wrk", "-t1", "-c32", "-d4s", url], check=True, capture_output=True)
    subprocess.run(["wrk", "-t1", "-c1", "-d1s", url], check=True, capture_output=True)
    # Requests with a body go through hyper's client rather than the own HTTP/1.1 one.
    for _ in range(200):
        subprocess.run(
            ["curl", "-s", "-o", "/dev/null", "--data-binary", "x" * 512, url],
            check=True,
        )
    if shutil.which("h2load"):
        h2load("-n", "20000", "-c", "8", "-m", "4", url)


def tls_leg(tmp: Path, up: int, binary: Path) -> subprocess.Popen:
    """Warden terminating TLS with the chain and a secret (a certificate made here)."""
    cert, key = tmp / "gw.crt", tmp / "gw.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )
    port, admin = bench.free_ports(2)
    conf = bench.warden_conf(tmp, port, admin, up, policy=True, secret=True)
    listen = f'listen = "127.0.0.1:{port}"'
    conf = conf.replace(listen, f'{listen}\ntls = {{ cert_file = "{cert}", key_file = "{key}" }}', 1)
    cfg = tmp / "pgo-tls.toml"
    cfg.write_text(conf)
    env = dict(os.environ, RUST_LOG="warn")
    p = bench.spawn([str(binary), "run", "--config", str(cfg)], cpus=None, env=env)
    url = f"https://127.0.0.1:{port}/"
    for _ in range(300):
        if p.poll() is not None:
            raise RuntimeError(f"tls: Warden exited {p.returncode} during start-up")
        r = subprocess.run(["curl", "-sk", "-o", "/dev/null", "-w", "%{http_code}", url],
                           capture_output=True, text=True)
        if r.stdout == "200":
            break
        time.sleep(0.1)
    else:
        raise RuntimeError("tls: Warden not ready")
    if shutil.which("h2load"):
        # h2 over TLS (ALPN), then HTTP/1.1 over TLS; new connections each time, so the
        # handshake is trained as well as the records.
        h2load("-n", "20000", "-c", "8", "-m", "4", url)
        h2load("--h1", "-n", "20000", "-c", "8", url)
        h2load("--h1", "-n", "400", "-c", "400", url)
    for _ in range(100):
        subprocess.run(["curl", "-sk", "-o", "/dev/null", url], check=True)
    return p


def stop(name: str, p: subprocess.Popen, logf: Path | None) -> bool:
    """SIGTERM, and wait for a normal exit: the profile runtime writes the counts then."""
    p.send_signal(signal.SIGTERM)
    try:
        rc = p.wait(timeout=30)
    except subprocess.TimeoutExpired:
        bench.kill(p)
        print(f"{name}: Warden did not stop on SIGTERM; its counts are lost", file=sys.stderr)
        return False
    bench.CHILDREN.remove(p)
    if rc != 0:
        if logf:
            print(logf.read_text(errors="replace")[-2000:], file=sys.stderr)
        print(f"{name}: Warden exited with {rc}", file=sys.stderr)
        return False
    print(f"trained: {name}", file=sys.stderr)
    return True


def main() -> int:
    binary = Path(sys.argv[1])
    if not os.environ.get("LLVM_PROFILE_FILE"):
        print("LLVM_PROFILE_FILE is not set: the counts would land in the working directory",
              file=sys.stderr)
        return 1
    tmp = Path(tempfile.mkdtemp(prefix="warden-pgo-"))
    try:
        (tmp / "secrets").mkdir()
        (tmp / "secrets" / "key").write_text(bench.SECRET + "\n")
        (up,) = bench.free_ports(1)
        (tmp / "upstream.conf").write_text(bench.nginx_upstream_conf(tmp, up))
        upstream = bench.spawn(
            ["nginx", "-p", str(tmp), "-e", str(tmp / "upstream-error.log"),
             "-c", str(tmp / "upstream.conf")],
            cpus=None,
        )
        bench.wait_http(up, "/", upstream)
        for name, kw in (
            ("none", dict(policy=False)),
            ("chain", dict(policy=True)),
            ("secret", dict(policy=True, secret=True)),
        ):
            p, port, _admin, logf = bench.start_warden(
                tmp, f"pgo-{name}", up, cpus=None, binary=binary, **kw
            )
            try:
                drive(port)
            finally:
                ok = stop(name, p, logf)
            if not ok:
                return 1
        p = tls_leg(tmp, up, binary)
        return 0 if stop("tls", p, None) else 1
    finally:
        bench.kill_all()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

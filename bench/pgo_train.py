#!/usr/bin/env python3
"""The training run for a profile-guided `dist` build (scripts/pgo.sh).

Runs an instrumented Warden (built with `-Cprofile-generate`) through the traffic it is
built for, so the compiler lays out and inlines for the paths that run hot there:
HTTP/1.1 keep-alive GETs with no policy, with the network-isolation chain, and with the
chain plus an injected secret; single-connection requests; POSTs with a body (no policy:
the chain's rules admit GET and HEAD only); h2c; and TLS termination (h2 and HTTP/1.1 on
kept connections, and fresh handshakes). Every request must succeed, or the training
fails: a profile of error paths would lay the binary out for the wrong traffic.

Each Warden is stopped with SIGTERM and waited for, so it drains and exits normally and
the profile runtime writes its counts (`LLVM_PROFILE_FILE`, set by the caller).

Loopback only; the same configs as bench/bench.py. Needs nginx, wrk, curl, h2load and
openssl (scripts/setup.sh). Under a minute.
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

# No step of a healthy run takes a tenth of this; a wedged Warden must not hang the build.
STEP_TIMEOUT = 120
# Longer than Warden's default shutdown_grace (30 s): a SIGKILL before the normal exit
# would lose the counts.
EXIT_TIMEOUT = 45


def run(argv: list[str]) -> str:
    r = subprocess.run(argv, capture_output=True, text=True, timeout=STEP_TIMEOUT)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {r.returncode}\n{r.stdout}{r.stderr}")
    return r.stdout


def wrk(*args: str) -> None:
    out = run(["wrk", "-t1", *args])
    if "Non-2xx or 3xx responses" in out or "Socket errors" in out:
        raise RuntimeError(f"wrk {' '.join(args)}: not every request succeeded\n{out}")


def h2load(*args: str) -> None:
    """h2load, which exits 0 even when requests fail: every one must succeed."""
    out = run(["h2load", *args])
    m = re.search(r"requests: (\d+) total, \d+ started, \d+ done, (\d+) succeeded", out)
    if not m or m.group(1) != m.group(2):
        raise RuntimeError(f"h2load {' '.join(args)}: not every request succeeded\n{out}")


def curl_ok(*args: str) -> None:
    code = run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", *args])
    if code != "200":
        raise RuntimeError(f"curl {' '.join(args)}: answered {code}")


def drive(port: int, bodies: bool) -> None:
    """The traffic one plain-text Warden sees."""
    url = f"http://127.0.0.1:{port}/"
    wrk("-c32", "-d4s", url)
    wrk("-c1", "-d1s", url)
    if bodies:
        # Requests with a body go through hyper's client rather than the own HTTP/1.1 one.
        for _ in range(200):
            curl_ok("--data-binary", "x" * 512, url)
    h2load("-n", "20000", "-c", "8", "-m", "4", url)


def tls_leg(tmp: Path, up: int, binary: Path) -> tuple[subprocess.Popen, Path, str]:
    """Warden terminating TLS with the chain and a secret (a certificate made here)."""
    cert, key = tmp / "gw.crt", tmp / "gw.key"
    run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)])
    port, admin = bench.free_ports(2)
    cfg = tmp / "pgo-tls.toml"
    cfg.write_text(bench.warden_conf(tmp, port, admin, up, policy=True, secret=True, tls=(cert, key)))
    logf = tmp / "pgo-tls.log"
    env = dict(os.environ, RUST_LOG="warn")
    with open(logf, "wb") as f:
        p = bench.spawn([str(binary), "run", "--config", str(cfg)], cpus=None, env=env, stderr=f)
    return p, logf, f"https://127.0.0.1:{port}/"


def drive_tls(p: subprocess.Popen, url: str) -> None:
    for _ in range(300):
        if p.poll() is not None:
            raise RuntimeError(f"tls: Warden exited {p.returncode} during start-up")
        r = subprocess.run(["curl", "-sk", "-o", "/dev/null", "-w", "%{http_code}", url],
                           capture_output=True, text=True, timeout=STEP_TIMEOUT)
        if r.stdout == "200":
            break
        time.sleep(0.1)
    else:
        raise RuntimeError("tls: Warden not ready")
    # h2 over TLS (ALPN) and HTTP/1.1 over TLS on kept connections, then 400 connections of
    # one request each, so the handshake is trained as well as the records.
    h2load("-n", "20000", "-c", "8", "-m", "4", url)
    h2load("--h1", "-n", "20000", "-c", "8", url)
    h2load("--h1", "-n", "400", "-c", "400", url)
    for _ in range(100):
        curl_ok("-k", url)


def show_log(logf: Path) -> None:
    print(logf.read_text(errors="replace")[-2000:], file=sys.stderr)


def stop(name: str, p: subprocess.Popen, logf: Path) -> bool:
    """SIGTERM, and wait for a normal exit: the profile runtime writes the counts then."""
    p.send_signal(signal.SIGTERM)
    try:
        rc = p.wait(timeout=EXIT_TIMEOUT)
    except subprocess.TimeoutExpired:
        bench.kill(p)
        print(f"{name}: Warden did not stop on SIGTERM; its counts are lost", file=sys.stderr)
        return False
    bench.CHILDREN.remove(p)
    if rc != 0:
        show_log(logf)
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
    # Stopped from outside (timeout, ^C): still clean up the children and the directory.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
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
                drive(port, bodies=not kw["policy"])
            except Exception:
                show_log(logf)
                raise
            if not stop(name, p, logf):
                return 1
        p, logf, url = tls_leg(tmp, up, binary)
        try:
            drive_tls(p, url)
        except Exception:
            show_log(logf)
            raise
        return 0 if stop("tls", p, logf) else 1
    finally:
        bench.kill_all()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

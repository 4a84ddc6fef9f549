#!/usr/bin/env python3
"""User-space instructions per proxied request, counted by callgrind: a measure that does
not move with the machine's load, for A/B comparisons of builds on a noisy shared VM
(where CPU time per request moves by ±15 % between rounds of the same binary).

    python3 bench/instructions.py [--requests N] [--mode none|info|chain] BIN [BIN ...]

Each binary runs under `valgrind --tool=callgrind` in front of an nginx upstream on
127.0.0.1; h2load sends 500 warm-up requests over 8 keep-alive connections, the counters
are zeroed, N more requests are sent, and the counters dumped: instructions / N, every
thread of the process included. `chain` is the network-isolation ×20 rules chain plus one
injected secret, as in bench.py's `w-secret`; `info` is `none` with RUST_LOG=info (the
access log on, as in `w-none-info`), so `info` − `none` is the access log's cost. Under
valgrind the plugin pool is capped at 4 instances (valgrind cannot reserve the default
pool's address space).

What it counts is instructions, not time: it sees copies, allocation and parsing work, not
cache misses, system calls or scheduling (those need bench.py). Needs valgrind
(`apt-get install valgrind`), nginx and h2load.
"""

import argparse
import glob
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402


def count(binary: Path, mode: str, n: int, tmp: Path, up: int) -> tuple[float, int]:
    port, admin = bench.free_ports(2)
    conf = bench.warden_conf(
        tmp, port, admin, up, **(dict(policy=True, secret=True) if mode == "chain" else dict(policy=False))
    ).replace("[policy]\n", "[policy]\nmax_instances = 4\n")
    cfg = tmp / f"{binary.name}-{mode}.toml"
    cfg.write_text(conf)
    out = tmp / f"{binary.name}-{mode}.callgrind"
    with open(tmp / f"{binary.name}-{mode}.valgrind.log", "wb") as log:
        p = bench.spawn(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", str(binary), "run", "--config", str(cfg)],
            cpus=None, env=dict(os.environ, RUST_LOG="info" if mode == "info" else "warn"), stderr=log,
        )
    try:
        bench.wait_http(port, "/", p, timeout=180)
        if "not enough address space" in (tmp / f"{binary.name}-{mode}.valgrind.log").read_text(errors="replace"):
            # The engine fell back to bounds-checked plugin memories: not what runs outside.
            raise RuntimeError("valgrind could not reserve the plugin pool; lower max_instances")
        url = f"http://127.0.0.1:{port}/"
        subprocess.run(["h2load", "--h1", "-n", "500", "-c", "8", url], capture_output=True, check=True)
        subprocess.run(["callgrind_control", "-z", str(p.pid)], capture_output=True, check=True)
        r = subprocess.run(["h2load", "--h1", "-n", str(n), "-c", "8", url], capture_output=True, text=True, check=True)
        subprocess.run(["callgrind_control", "-d", str(p.pid)], capture_output=True, check=True)
        ok = re.search(r"(\d+) succeeded", r.stdout)
        done = int(ok.group(1)) if ok else 0
        # Only proxied 200s count: a policy error (say, a plugin pool too small for the
        # load) answers without the upstream and would make a request look cheap.
        two = re.search(r"status codes: (\d+) 2xx", r.stdout)
        if not two or int(two.group(1)) != n:
            raise RuntimeError(f"not every response was a 2xx:\n{r.stdout}")
        dumps: list[str] = []
        for _ in range(50):
            dumps = [f for f in glob.glob(str(out) + ".*")]
            if dumps:
                break
            time.sleep(0.1)
        time.sleep(0.5)
        total = 0
        for f in dumps:
            for line in open(f):
                if line.startswith("summary:"):
                    total += int(line.split()[1])
        return total / max(done, 1), done
    finally:
        bench.kill(p)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--mode", action="append", choices=["none", "info", "chain"],
                    help="default: none and chain")
    ap.add_argument("binaries", nargs="+", type=Path)
    args = ap.parse_args()
    for tool in ("valgrind", "callgrind_control", "nginx", "h2load"):
        if not bench.shutil.which(tool):
            print(f"missing tool: {tool}", file=sys.stderr)
            return 1
    tmp = Path(tempfile.mkdtemp(prefix="warden-instr-"))
    (tmp / "secrets").mkdir()
    (tmp / "secrets" / "key").write_text(bench.SECRET + "\n")
    (up,) = bench.free_ports(1)
    (tmp / "upstream.conf").write_text(bench.nginx_upstream_conf(tmp, up))
    upstream = bench.spawn(
        ["nginx", "-p", str(tmp), "-e", str(tmp / "upstream-error.log"), "-c", str(tmp / "upstream.conf")], cpus=None
    )
    try:
        bench.wait_http(up, "/", upstream)
        print("| binary | mode | requests | instructions / request |")
        print("|---|---|---:|---:|")
        for mode in args.mode or ["none", "chain"]:
            for b in args.binaries:
                per, done = count(b.resolve(), mode, args.requests, tmp, up)
                print(f"| {b} | {mode} | {done} | {per:,.0f} |", flush=True)
    finally:
        bench.kill(upstream)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    finally:
        bench.kill_all()

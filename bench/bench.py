#!/usr/bin/env python3
"""Side-by-side proxy benchmark: upstream direct vs nginx vs HAProxy vs Warden variants.

Driven by scripts/bench.sh (which builds the plugins and the `dist` binary first).
Plain stdlib. Everything listens on 127.0.0.1; every child is killed on exit (explicitly,
and by PR_SET_PDEATHSIG should this driver die).

Method (see /work/notes/bench-gateway.md):
  * upstream: nginx, 1 process, `return 200 "ok"`, pinned with the load generator;
  * each proxy gets one core of its own (1 worker / 1 thread), the load generator (wrk) and
    the upstream share the other core;
  * all proxies are started once; the ones not being measured are SIGSTOPped (no idle
    timers stealing the proxy core);
  * rounds are interleaved (round 1: every target, round 2: every target, ...) and the
    median per target is reported;
  * per run: `wrk -t1 -cC -dD --latency` (throughput + loaded latency), then `wrk -t1 -c1`
    (unloaded per-request latency), and the proxy's CPU time per request from
    /proc/PID/stat (less sensitive to a noisy neighbour than req/s).
  * scaling: nginx and Warden with 1 and with 2 workers, nothing pinned, `wrk -t2 -c64`
    (the load generator shares the cores: what a second worker buys on this box).
"""

from __future__ import annotations

import argparse
import ctypes
import os
import re
import json
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PGO = ROOT / "target" / "pgo" / "use"


def newest(*paths: Path) -> Path:
    """The most recently built of `paths` (a profile-guided build and a plain one can both
    be there, and the older one is stale), or the first when none exists."""
    built = [p for p in paths if p.exists()]
    return max(built, key=lambda p: p.stat().st_mtime) if built else paths[0]


# The `dist` build (fat LTO, one codegen unit, stripped; profile-guided when scripts/pgo.sh
# made it), else the release build; WARDEN_BIN names another.
DIST = (PGO / "x86_64-unknown-linux-gnu" / "dist" / "warden", ROOT / "target" / "dist" / "warden")
WARDEN = Path(os.environ.get("WARDEN_BIN") or (
    newest(*DIST) if any(p.exists() for p in DIST) else ROOT / "target" / "release" / "warden"))
RATE_LOAD = ROOT / "target" / "release" / "rate-load"
# The image's binary (scripts/image.sh, profile-guided or `--no-pgo`), when built: idle RSS
# is reported for it too.
IMAGE_BIN = newest(PGO / "x86_64-unknown-linux-musl" / "dist" / "warden",
                   ROOT / "target" / "x86_64-unknown-linux-musl" / "dist" / "warden")
RATE_TARGETS = ("direct", "nginx", "haproxy", "w-none", "w-pool", "w-secret")
PLUGIN = ROOT / "plugins" / "target" / "wasm32-unknown-unknown" / "release" / "network_isolation.wasm"
SECRET = "bench-secret-4f1c9a"
HZ = os.sysconf("SC_CLK_TCK")


def baseline_prefix(i: int) -> str:
    """Target-key prefix of the i-th `--baseline` binary: b, b2, b3, ..."""
    return "b" if i == 0 else f"b{i + 1}"


def is_baseline(key: str) -> bool:
    return re.fullmatch(r"b\d*", key.split("-")[0]) is not None

CHILDREN: list[subprocess.Popen] = []


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------
# processes


def _pdeathsig() -> None:
    # Die with the driver even if it is SIGKILLed (prctl(PR_SET_PDEATHSIG, SIGKILL)).
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)
    except OSError:
        pass


def spawn(argv, *, cpus: str | None, env=None, stdout=None, stderr=None) -> subprocess.Popen:
    if cpus is not None:
        argv = ["taskset", "-c", cpus, *argv]
    p = subprocess.Popen(
        argv,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=stdout if stdout is not None else subprocess.DEVNULL,
        stderr=stderr if stderr is not None else subprocess.DEVNULL,
        preexec_fn=_pdeathsig,
    )
    CHILDREN.append(p)
    return p


def kill(p: subprocess.Popen) -> None:
    if p.poll() is None:
        try:
            p.send_signal(signal.SIGCONT)
            p.kill()
        except ProcessLookupError:
            pass
    try:
        p.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass
    if p in CHILDREN:
        CHILDREN.remove(p)


def kill_all() -> None:
    for p in list(CHILDREN):
        kill(p)


def free_ports(n: int) -> list[int]:
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


def http_get(port: int, path: str = "/", timeout: float = 1.0) -> tuple[int, bytes]:
    """One HTTP/1.1 GET with Connection: close; returns (status, body)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(
            f"GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n".encode()
        )
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, body


def wait_http(port: int, path: str, proc: subprocess.Popen, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before serving :{port}")
        try:
            status, _ = http_get(port, path)
            if status == 200:
                return
            last = status
        except OSError as e:
            last = e
        time.sleep(0.01)
    raise RuntimeError(f"127.0.0.1:{port}{path} not ready in {timeout}s (last: {last})")


def cpu_ticks(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        rest = f.read().rsplit(")", 1)[1].split()
    # fields 14 (utime) and 15 (stime), 1-based, of the whole line; rest starts at field 3.
    return int(rest[11]) + int(rest[12])


def sys_ticks() -> tuple[int, int, int]:
    """(busy, steal, total) clock ticks of the whole machine, from /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + v[4]
    steal = v[7] if len(v) > 7 else 0
    total = sum(v[:8])
    return total - idle - steal, steal, total


def children_ticks() -> int:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return round((ru.ru_utime + ru.ru_stime) * HZ)


def idle_rss_three_plugins(tmp: Path, up: int, binary: Path | None = None) -> dict:
    """RSS of an idle Warden (default workers, unpinned) with the demo's three plugins
    (header-guard, network-isolation, api-key) precompiled in its cache: its resident
    memory in all, anonymous, and file-backed (the binary's pages start-up touched, and
    the mapped precompiled plugins). Each route is called once first, so every worker's
    warm instances exist as they would in service."""
    rel = PLUGIN.parent
    port, admin = free_ports(2)
    cfg = tmp / "idle-rss.toml"
    cfg.write_text("\n".join([
        "[gateway]", f'listen = "127.0.0.1:{port}"', "",
        "[admin]", f'listen = "127.0.0.1:{admin}"', "",
        "[policy]", f'cache_dir = "{tmp / "idle-rss-cache"}"', "",
        "[secrets.file]", 'type = "dir"', f'path = "{tmp / "secrets"}"', "",
        "[upstreams.up]", f'url = "http://127.0.0.1:{up}"', "",
        "[plugins.header-guard]", f'file = "{rel / "header_guard.wasm"}"', "",
        "[plugins.network-isolation]", f'file = "{rel / "network_isolation.wasm"}"', "",
        "[plugins.api-key]", f'file = "{rel / "api_key.wasm"}"', "",
        "[[routes]]", 'name = "api"', 'match = { path_prefix = "/api" }', 'upstream = "up"', "",
        "[[routes.policies]]", 'plugin = "header-guard"',
        'config = { strip = ["x-debug"], max_value_bytes = 8192 }', "",
        "[[routes.policies]]", 'plugin = "network-isolation"',
        'config = { rule_set = "api", allow = [ { cidr = "127.0.0.0/8" } ] }', "",
        "[[routes]]", 'name = "keyed"', 'match = { path_prefix = "/" }', 'upstream = "up"', "",
        "[[routes.policies]]", 'plugin = "api-key"', 'secrets = { client_key = "${file:key}" }',
        'config = { header = "x-api-key", secret = "client_key" }', "",
    ]))
    env = dict(os.environ, RUST_LOG="warn")
    runs: list[dict] = []
    # The first start fills the cache; the median of three more is reported (the pages a
    # start faults in vary by a few hundred KiB from one start to the next).
    for run in range(4):
        p = spawn([str(binary or WARDEN), "run", "--config", str(cfg)], cpus=None, env=env)
        try:
            wait_http(port, "/api/", p)
            for path in ("/api/", "/"):
                for _ in range(8):  # reach every worker
                    http_get(port, path)
            time.sleep(1.0)
            if run > 0:
                out: dict = {}
                with open(f"/proc/{p.pid}/status") as f:
                    for line in f:
                        k, _, v = line.partition(":")
                        if k in ("VmRSS", "RssAnon", "RssFile", "Threads"):
                            out[k] = int(v.split()[0])
                runs.append(out)
        finally:
            kill(p)
    runs.sort(key=lambda r: r.get("VmRSS", 0))
    return runs[len(runs) // 2]


def rss_kib(pid: int) -> tuple[int, int]:
    rss = hwm = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
            elif line.startswith("VmHWM:"):
                hwm = int(line.split()[1])
    return rss, hwm


# ---------------------------------------------------------------------------------------
# configs


def nginx_upstream_conf(tmp: Path, port: int) -> str:
    return f"""
daemon off;
master_process off;
worker_processes 1;
pid {tmp}/upstream.pid;
error_log {tmp}/upstream-error.log warn;
events {{ worker_connections 16384; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/ngx-body; proxy_temp_path {tmp}/ngx-proxy;
    fastcgi_temp_path {tmp}/ngx-fcgi; uwsgi_temp_path {tmp}/ngx-uwsgi; scgi_temp_path {tmp}/ngx-scgi;
    keepalive_requests 100000000;
    keepalive_timeout 300s;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        default_type text/plain;
        location / {{ return 200 "ok"; }}
        # Sanity check for secret injection (only used before the load).
        location = /__auth {{
            if ($http_authorization != "Bearer {SECRET}") {{ return 401; }}
            return 200 "auth-ok";
        }}
    }}
}}
"""


def nginx_proxy_conf(tmp: Path, port: int, up: int, workers: int = 1) -> str:
    # More than one worker needs the master process (it forks them).
    return f"""
daemon off;
master_process {"on" if workers > 1 else "off"};
worker_processes {workers};
pid {tmp}/nginx-proxy-{port}.pid;
error_log {tmp}/nginx-proxy-error.log warn;
events {{ worker_connections 16384; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/ngxp-body; proxy_temp_path {tmp}/ngxp-proxy;
    fastcgi_temp_path {tmp}/ngxp-fcgi; uwsgi_temp_path {tmp}/ngxp-uwsgi; scgi_temp_path {tmp}/ngxp-scgi;
    keepalive_requests 100000000;
    keepalive_timeout 300s;
    upstream up {{
        server 127.0.0.1:{up};
        keepalive 64;
        keepalive_requests 100000000;
    }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            proxy_pass http://up;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            # roughly what Warden does to every request
            proxy_set_header X-Forwarded-For $remote_addr;
            proxy_set_header X-Request-Id $request_id;
            add_header X-Request-Id $request_id;
        }}
    }}
}}
"""


def haproxy_conf(port: int, up: int) -> str:
    return f"""
global
    nbthread 1
    maxconn 8192
defaults
    mode http
    timeout connect 5s
    timeout client 300s
    timeout server 300s
    option http-keep-alive
    http-reuse always
frontend fe
    bind 127.0.0.1:{port}
    option forwardfor
    unique-id-format %{{+X}}o\\ %ci:%cp_%fi:%fp_%Ts_%rt:%pid
    unique-id-header X-Request-Id
    http-response set-header X-Request-Id %[unique-id]
    default_backend be
backend be
    server s1 127.0.0.1:{up}
"""


def isolation_rules() -> str:
    """20 rules; only the last one matches GET from 127.0.0.1. The first 19 fail at
    different conditions (cidr, path glob, identity) so the evaluation does real work."""
    rules = []
    for i in range(19):
        kind = i % 3
        if kind == 0:
            rules.append(f'{{ cidr = "10.{i}.0.0/16", methods = ["GET", "POST"] }}')
        elif kind == 1:
            rules.append(f'{{ path = "/internal/{i}/**", methods = ["GET"] }}')
        else:
            rules.append(f'{{ identity = "spiffe://bench/svc-{i}" }}')
    rules.append('{ cidr = "127.0.0.0/8", methods = ["GET", "HEAD"], path = "/**" }')
    return "[\n    " + ",\n    ".join(rules) + ",\n]"


def warden_conf(
    tmp: Path,
    port: int,
    admin: int,
    up: int,
    *,
    policy: bool,
    isolation: str = "pooled",
    secret: bool = False,
    workers: int | None = 1,
    cache_dir: Path | None = None,
    otlp: tuple[int, float] | None = None,
    tls: tuple[Path, Path] | None = None,
) -> str:
    out = ["[gateway]", f'listen = "127.0.0.1:{port}"']
    if tls:
        cert, key = tls
        out.append(f'tls = {{ cert_file = "{cert}", key_file = "{key}" }}')
    if workers:
        out.append(f"worker_threads = {workers}")
    out += ["", "[admin]", f'listen = "127.0.0.1:{admin}"', ""]
    out += ["[policy]", f'cache_dir = "{cache_dir or (tmp / "plugin-cache")}"', ""]
    if otlp:
        sink, ratio = otlp
        out += ["[telemetry]", f'otlp = {{ endpoint = "http://127.0.0.1:{sink}", sample_ratio = {ratio} }}', ""]
    if secret:
        out += ["[secrets.file]", 'type = "dir"', f'path = "{tmp / "secrets"}"', ""]
    out += ["[upstreams.up]", f'url = "http://127.0.0.1:{up}"', ""]
    if policy:
        out += [
            "[plugins.network-isolation]",
            f'file = "{PLUGIN}"',
            f'isolation = "{isolation}"',
            "",
        ]
    out += ["[[routes]]", 'name = "bench"', 'match = { path_prefix = "/" }', 'upstream = "up"']
    if secret:
        out.append('inject = { authorization = "Bearer ${file:key}" }')
    out.append("")
    if policy:
        out += [
            "[[routes.policies]]",
            'plugin = "network-isolation"',
            f'config = {{ rule_set = "bench", allow = {isolation_rules()} }}',
            "",
        ]
    return "\n".join(out)


# ---------------------------------------------------------------------------------------
# targets


@dataclass
class Target:
    key: str
    label: str
    port: int
    proc: subprocess.Popen | None = None  # the proxy (None: direct to upstream)
    admin: int | None = None  # Warden's admin listener (metrics)
    results: list[dict] = field(default_factory=list)
    rss: tuple[int, int] | None = None
    metrics: dict = field(default_factory=dict)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGSTOP)

    def cont(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)


class SpanSink:
    """An OTLP/HTTP endpoint that accepts every export and counts the bytes (the cost
    measured is Warden's: making, batching, encoding and sending spans)."""

    def __init__(self) -> None:
        import http.server
        import threading

        sink = self
        self.bytes = 0

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                n = int(self.headers.get("content-length", "0"))
                sink.bytes += len(self.rfile.read(n))
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *a) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def start_warden(
    tmp: Path, name: str, up: int, *, cpus: str | None, rust_log: str = "warn",
    binary: Path = WARDEN, **kw
) -> tuple[subprocess.Popen, int, Path]:
    port, admin = free_ports(2)
    cfg = tmp / f"{name}.toml"
    cfg.write_text(warden_conf(tmp, port, admin, up, **kw))
    logf = tmp / f"{name}.log"
    env = dict(os.environ, RUST_LOG=rust_log)
    with open(logf, "wb") as f:
        p = spawn([str(binary), "run", "--config", str(cfg)], cpus=cpus, env=env, stderr=f)
    try:
        wait_http(port, "/", p)
    except RuntimeError:
        log(logf.read_text(errors="replace")[-3000:])
        raise
    return p, port, admin, logf


# ---------------------------------------------------------------------------------------
# wrk

UNIT = {"us": 1.0, "ms": 1e3, "s": 1e6}


def parse_latency(s: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s)", s)
    if not m:
        raise ValueError(s)
    return float(m.group(1)) * UNIT[m.group(2)]


def wrk(port: int, conns: int, duration: str, cpus: str | None, path: str = "/") -> dict:
    argv = ["wrk", "-t1", f"-c{conns}", f"-d{duration}", "--latency", f"http://127.0.0.1:{port}{path}"]
    if cpus is not None:
        argv = ["taskset", "-c", cpus, *argv]
    out = subprocess.run(argv, capture_output=True, text=True, check=True, preexec_fn=_pdeathsig).stdout
    r: dict = {}
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    r["rps"] = float(m.group(1)) if m else 0.0
    m = re.search(r"(\d+) requests in", out)
    r["requests"] = int(m.group(1)) if m else 0
    for pct in ("50", "90", "99"):
        m = re.search(rf"^\s+{pct}%\s+(\S+)", out, re.M)
        r[f"p{pct}"] = parse_latency(m.group(1)) if m else float("nan")
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    r["non2xx"] = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: (.*)", out)
    r["sockerr"] = m.group(1) if m else ""
    r["raw"] = out
    return r


def ctx_switches(pid: int) -> int:
    """Context switches of every thread of `pid` so far (voluntary + involuntary)."""
    n = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            for line in (task / "status").read_text().splitlines():
                if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                    n += int(line.split()[1])
        except OSError:
            pass
    return n


def idle_conn_memory(proc: subprocess.Popen, port: int, n: int = 5000) -> float:
    """RSS growth per idle keep-alive connection: `n` connections opened one after another,
    each with one request answered, then all left open. One at a time, so the proxy's own
    upstream connections stay few and what grows is the cost of the client connections."""
    before = rss_kib(proc.pid)[0]
    socks = []
    try:
        req = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"
        for _ in range(n):
            c = socket.create_connection(("127.0.0.1", port), timeout=10)
            c.sendall(req)
            got = b""
            while not got.endswith(b"ok"):
                chunk = c.recv(65536)
                if not chunk:
                    return float("nan")
                got += chunk
            socks.append(c)
        time.sleep(0.5)
        after = rss_kib(proc.pid)[0]
        return (after - before) / n
    finally:
        for c in socks:
            c.close()


def rate_load(port: int, rate: int, cpu: str | None) -> dict:
    """Latency at a fixed request rate (10 keep-alive connections, 0.5 s warm-up, 3 s
    measured, latency counted from when each request was due): tests/src/bin/rate-load.rs.
    Each connection is a thread that sleeps to the microsecond its next request is due, so
    requests arrive evenly spaced, not in bursts of one timer tick."""
    cmd = [str(RATE_LOAD), f"http://127.0.0.1:{port}/", "--rate", str(rate), "--conns", "10",
           "--duration", "3", "--warmup", "0.5"]
    if cpu is not None:
        cmd = ["taskset", "-c", cpu] + cmd
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        log(f"!! rate-load on {port} failed: {out.stderr.strip()}")
        return {"errors": 1}
    return json.loads(out.stdout)


def scrape(admin: int) -> dict:
    """Sums of the Warden metrics the report uses (over the whole run, warm-up included)."""
    _, body = http_get(admin, "/metrics", timeout=5)
    want = {
        "warden_plugin_eval_duration_seconds_sum": "eval_sum",
        "warden_plugin_eval_duration_seconds_count": "eval_count",
        "warden_plugin_deadline_hits_total": "deadline",
        "warden_plugin_traps_total": "traps",
        "warden_requests_total": "requests",
    }
    out = {v: 0.0 for v in want.values()}
    for line in body.decode().splitlines():
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in want:
            out[want[name]] += float(line.rsplit(" ", 1)[1])
    return out


# ---------------------------------------------------------------------------------------
# main


def fmt_us(us: float) -> str:
    if us != us:  # nan
        return "–"
    return f"{us / 1000:.2f} ms" if us >= 1000 else f"{us:.0f} µs"


def median(xs):
    xs = [x for x in xs if x == x]
    return statistics.median(xs) if xs else float("nan")


def measure_startup(tmp: Path, up: int, reps_warm: int, reps_cold: int) -> dict:
    """exec → first proxied 200 (policy chain on, default worker threads, unpinned)."""
    res: dict = {}
    warm_cache = tmp / "startup-cache"

    def once(cache: Path, policy: bool) -> float:
        port, admin = free_ports(2)
        cfg = tmp / "startup.toml"
        cfg.write_text(
            warden_conf(tmp, port, admin, up, policy=policy, workers=None, cache_dir=cache)
        )
        env = dict(os.environ, RUST_LOG="warn")
        t0 = time.monotonic()
        p = spawn([str(WARDEN), "run", "--config", str(cfg)], cpus=None, env=env)
        try:
            while True:
                if p.poll() is not None:
                    raise RuntimeError(f"warden exited {p.returncode} during start-up")
                try:
                    if http_get(port, "/", timeout=2)[0] == 200:
                        break
                except OSError:
                    pass
                time.sleep(0.001)
            return time.monotonic() - t0
        finally:
            kill(p)

    once(warm_cache, True)  # populate the cache
    res["warm"] = [once(warm_cache, True) for _ in range(reps_warm)]
    res["cold"] = []
    for i in range(reps_cold):
        res["cold"].append(once(tmp / f"cold-cache-{i}", True))
    res["nopolicy"] = [once(warm_cache, False) for _ in range(reps_warm)]
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=int(os.environ.get("BENCH_ROUNDS", 3)))
    ap.add_argument("--duration", default=os.environ.get("BENCH_DURATION", "4s"))
    ap.add_argument("--lat-duration", default=os.environ.get("BENCH_LAT_DURATION", "2s"))
    ap.add_argument("--conns", type=int, default=int(os.environ.get("BENCH_CONNS", 32)))
    ap.add_argument("--no-pin", action="store_true", help="do not pin (proxy/wrk float on both cores)")
    ap.add_argument("--only", default="", help="comma-separated target keys (default: all)")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (configs, logs, raw wrk output)")
    ap.add_argument("--rate", type=int, default=int(os.environ.get("BENCH_RATE", 5000)),
                    help="fixed request rate for the latency-at-a-rate measure (0: skip it)")
    ap.add_argument("--no-conn-memory", action="store_true", help="skip the 5000 idle connections measure")
    ap.add_argument("--no-scaling", action="store_true", help="skip the 1 vs 2 workers measure")
    ap.add_argument("--baseline", action="append", default=[],
                    help="another warden binary to run as b-none/b-pool/b-secret (A/B); repeat for b2-, b3-, ...")
    args = ap.parse_args()

    for tool in ("nginx", "haproxy", "wrk", "taskset"):
        if not shutil.which(tool):
            log(f"missing tool: {tool}")
            return 1
    for f in (WARDEN, PLUGIN) + ((RATE_LOAD,) if args.rate else ()):
        if not f.exists():
            log(f"missing {f} (run scripts/bench.sh, which builds it)")
            return 1

    proxy_cpu = None if args.no_pin else "0"
    load_cpu = None if args.no_pin else "1"

    tmp = Path(tempfile.mkdtemp(prefix="warden-bench-"))
    (tmp / "secrets").mkdir()
    (tmp / "secrets" / "key").write_text(SECRET + "\n")
    t_start = time.monotonic()
    try:
        # upstream
        (up,) = free_ports(1)
        (tmp / "upstream.conf").write_text(nginx_upstream_conf(tmp, up))
        upstream = spawn(
            ["nginx", "-p", str(tmp), "-e", str(tmp / "upstream-error.log"), "-c", str(tmp / "upstream.conf")],
            cpus=load_cpu,
        )
        wait_http(up, "/", upstream)

        # start-up time (before the load, nothing else running but the upstream)
        log("==> start-up time")
        startup = measure_startup(tmp, up, reps_warm=5, reps_cold=3)
        log("==> idle RSS, three plugins")
        startup["idle_rss"] = idle_rss_three_plugins(tmp, up)
        if IMAGE_BIN.exists():
            # What the image ships: the same profile, static musl (scripts/image.sh).
            startup["idle_rss_image"] = idle_rss_three_plugins(tmp, up, IMAGE_BIN)

        targets: list[Target] = [Target("direct", "upstream direct (nginx `return 200`)", up)]

        (np,) = free_ports(1)
        (tmp / "nginx-proxy.conf").write_text(nginx_proxy_conf(tmp, np, up))
        p = spawn(
            ["nginx", "-p", str(tmp), "-e", str(tmp / "nginx-proxy-error.log"), "-c", str(tmp / "nginx-proxy.conf")],
            cpus=proxy_cpu,
        )
        wait_http(np, "/", p)
        targets.append(Target("nginx", "nginx 1.22 (1 worker, upstream keepalive)", np, p))

        (hp,) = free_ports(1)
        (tmp / "haproxy.cfg").write_text(haproxy_conf(hp, up))
        with open(tmp / "haproxy.log", "wb") as f:
            p = spawn(["haproxy", "-db", "-f", str(tmp / "haproxy.cfg")], cpus=proxy_cpu, stderr=f)
        wait_http(hp, "/", p)
        targets.append(Target("haproxy", "HAProxy 2.6 (nbthread 1, http-reuse always)", hp, p))

        sink = SpanSink()
        variants = [
            ("w-none", "Warden, no policy", dict(policy=False)),
            ("w-none-info", "Warden, no policy, RUST_LOG=info (access log on)", dict(policy=False, rust_log="info")),
            ("w-pool", "Warden, network-isolation ×20 rules, pooled", dict(policy=True)),
            ("w-perreq", "Warden, network-isolation ×20 rules, per-request", dict(policy=True, isolation="per-request")),
            ("w-secret", "Warden, pooled chain + secret injection (dir)", dict(policy=True, secret=True)),
            ("w-trace0", "Warden, pooled chain, tracing on, unsampled (sample_ratio 0)",
             dict(policy=True, otlp=(sink.port, 0.0))),
            ("w-trace1", "Warden, pooled chain, tracing on, every request sampled and exported",
             dict(policy=True, otlp=(sink.port, 1.0))),
        ]
        for i, path in enumerate(args.baseline):
            # A/B against other builds (the previous commit, another allocator), interleaved
            # with the rest so all see the same machine.
            base = Path(path).resolve()
            b = baseline_prefix(i)
            variants += [
                (f"{b}-none", f"baseline {base.name}, no policy", dict(policy=False, binary=base)),
                (f"{b}-pool", f"baseline {base.name}, network-isolation ×20 rules, pooled",
                 dict(policy=True, binary=base)),
                (f"{b}-secret", f"baseline {base.name}, pooled chain + secret injection (dir)",
                 dict(policy=True, secret=True, binary=base)),
            ]
        for key, label, kw in variants:
            p, port, admin, _ = start_warden(tmp, key, up, cpus=proxy_cpu, **kw)
            targets.append(Target(key, label, port, p, admin=admin))

        # sanity: every target answers 200 "ok"; injection reaches the upstream
        for t in targets:
            st, body = http_get(t.port, "/")
            assert st == 200 and body == b"ok", (t.key, st, body)
        for t in targets:
            if t.key.startswith("w-") or is_baseline(t.key):
                st, _ = http_get(t.port, "/__auth")
                want = 200 if t.key.endswith("-secret") else 401
                assert st == want, f"{t.key}: /__auth answered {st}, expected {want}"

        if args.only:
            keep = set(args.only.split(","))
            targets = [t for t in targets if t.key in keep or t.key == "direct"]

        for t in targets:
            t.stop()

        log(f"==> warm-up (1s each), then {args.rounds} interleaved rounds of "
            f"wrk -t1 -c{args.conns} -d{args.duration} + wrk -t1 -c1 -d{args.lat_duration}")
        for t in targets:
            t.cont()
            wrk(t.port, args.conns, "1s", load_cpu)
            t.stop()

        for rnd in range(args.rounds):
            for t in targets:
                t.cont()
                time.sleep(0.05)
                c0 = cpu_ticks(t.proc.pid) if t.proc else 0
                up0 = cpu_ticks(upstream.pid)
                s0, w0 = sys_ticks(), children_ticks()
                loaded = wrk(t.port, args.conns, args.duration, load_cpu)
                c1 = cpu_ticks(t.proc.pid) if t.proc else 0
                up1 = cpu_ticks(upstream.pid)
                s1, w1 = sys_ticks(), children_ticks()
                ours = (c1 - c0) + (up1 - up0) + (w1 - w0)
                window = max(s1[2] - s0[2], 1)  # all CPUs
                foreign = max(0, (s1[0] - s0[0]) - ours) / window * 100
                steal = (s1[1] - s0[1]) / window * 100
                single = wrk(t.port, 1, args.lat_duration, load_cpu)
                fixed = {}
                if args.rate and (t.key in RATE_TARGETS or is_baseline(t.key)):
                    x0 = ctx_switches(t.proc.pid) if t.proc else 0
                    fixed = rate_load(t.port, args.rate, load_cpu)
                    x1 = ctx_switches(t.proc.pid) if t.proc else 0
                    # Scheduler cost of the proxy: context switches per request at the fixed
                    # rate (warm-up included in both counts).
                    if t.proc and fixed.get("requests"):
                        fixed["ctx_per_req"] = (x1 - x0) / (fixed["requests"] * 3.5 / 3.0)
                if t.proc and rnd == args.rounds - 1:
                    t.rss = rss_kib(t.proc.pid)
                t.stop()
                res = {
                    "rps": loaded["rps"],
                    "p50": loaded["p50"],
                    "p99": loaded["p99"],
                    "c1_p50": single["p50"],
                    "c1_p99": single["p99"],
                    "c1_rps": single["rps"],
                    "cpu_us": ((c1 - c0) / HZ * 1e6 / loaded["requests"]) if t.proc and loaded["requests"] else float("nan"),
                    "up_cpu_us": (up1 - up0) / HZ * 1e6 / max(loaded["requests"], 1),
                    "foreign": foreign,
                    "steal": steal,
                    "errors": loaded["non2xx"] + single["non2xx"] + fixed.get("errors", 0),
                    "rate_p50": fixed.get("p50_us", float("nan")),
                    "rate_p99": fixed.get("p99_us", float("nan")),
                    "rate_achieved": fixed.get("rate", float("nan")),
                    "rate_ctx": fixed.get("ctx_per_req", float("nan")),
                }
                if res["errors"] or loaded["sockerr"] or single["sockerr"]:
                    log(f"!! {t.key}: non-2xx={res['errors']} socket errors: {loaded['sockerr']} {single['sockerr']}")
                t.results.append(res)
                (tmp / f"wrk-{t.key}-r{rnd}.txt").write_text(loaded["raw"] + "\n---- c1\n" + single["raw"])
                log(f"  round {rnd + 1} {t.key:12} {res['rps']:9.0f} req/s  p50 {fmt_us(res['p50']):>9}  "
                    f"p99 {fmt_us(res['p99']):>9}  c1 p50 {fmt_us(res['c1_p50']):>7}  cpu {res['cpu_us']:.1f} µs/req  "
                    f"(foreign load {foreign:.0f}%, steal {steal:.0f}%)")

        for t in targets:
            if t.admin:
                t.cont()
                t.metrics = scrape(t.admin)
                t.stop()

        conn_mem = {}
        if not args.no_conn_memory:
            log("==> idle keep-alive connections: 5000 each")
            for t in targets:
                if t.proc and (t.key in ("nginx", "haproxy", "w-none", "w-pool")
                               or (is_baseline(t.key) and t.key.endswith("-none"))):
                    t.cont()
                    conn_mem[t.key] = idle_conn_memory(t.proc, t.port)
                    t.stop()
        scale = {}
        if not args.no_scaling:
            for t in targets:
                t.stop()
            scale = scaling(tmp, up, args.rounds, args.duration)
        elapsed = time.monotonic() - t_start
        raw = {t.key: {"label": t.label, "results": t.results, "rss": t.rss, "metrics": t.metrics} for t in targets}
        (ROOT / "target" / "bench-last.json").write_text(json.dumps(
            {"targets": raw, "startup": startup, "args": vars(args), "elapsed": elapsed}, indent=1))
        report(targets, startup, args, elapsed, pinned=not args.no_pin)
        if conn_mem:
            print()
            print("Idle keep-alive connections (5000, one request each, then left open): RSS growth per connection:")
            print()
            for t in targets:
                if t.key in conn_mem:
                    print(f"- {t.label}: {conn_mem[t.key]:.1f} KiB")
        if scale:
            report_scaling(scale, args)
    finally:
        kill_all()
        if args.keep:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


def children(pid: int) -> list[int]:
    """The child processes of `pid` (nginx's workers under its master)."""
    try:
        return [int(k) for k in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def tree_ticks(pid: int) -> int:
    """CPU ticks of `pid` and its children that are still running."""
    total = cpu_ticks(pid)
    for k in children(pid):
        try:
            total += cpu_ticks(k)
        except OSError:
            pass
    return total


def scaling(tmp: Path, up: int, rounds: int, duration: str) -> dict:
    """1 vs 2 workers, nothing pinned: the proxy, wrk (2 threads, 64 connections) and the
    upstream share the machine's 2 cores, so this shows what a second worker buys when the
    load generator competes for the same cores, not linear scaling."""
    log("==> scaling: 1 vs 2 workers, unpinned, wrk -t2 -c64")
    scale: dict[str, dict] = {}
    procs = []
    for workers in (1, 2):
        (np,) = free_ports(1)
        conf = tmp / f"nginx-proxy-{workers}w.conf"
        conf.write_text(nginx_proxy_conf(tmp, np, up, workers))
        p = spawn(["nginx", "-p", str(tmp), "-e", str(tmp / f"nginx-proxy-{workers}w-error.log"), "-c", str(conf)],
                  cpus=None)
        wait_http(np, "/", p)
        procs.append((f"nginx-{workers}w", f"nginx, {workers} worker(s)", p, np))
        p, port, _, _ = start_warden(tmp, f"scale-{workers}w", up, cpus=None, policy=False, workers=workers)
        procs.append((f"warden-{workers}w", f"Warden, no policy, {workers} worker(s)", p, port))
    for _, _, p, _ in procs:
        p.send_signal(signal.SIGSTOP)
    # nginx's workers are its children: stop and continue the whole group.
    def sig(p, s):
        if p.poll() is not None:
            return
        for k in children(p.pid):
            os.kill(k, s)
        p.send_signal(s)
    try:
        for rnd in range(rounds):
            for key, label, p, port in procs:
                sig(p, signal.SIGCONT)
                time.sleep(0.05)
                c0 = tree_ticks(p.pid)
                argv = ["wrk", "-t2", "-c64", f"-d{duration}", "--latency", f"http://127.0.0.1:{port}/"]
                out = subprocess.run(argv, capture_output=True, text=True, check=True,
                                     preexec_fn=_pdeathsig).stdout
                c1 = tree_ticks(p.pid)
                sig(p, signal.SIGSTOP)
                rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
                n = int(re.search(r"(\d+) requests in", out).group(1))
                e = scale.setdefault(key, {"label": label, "rps": [], "cpu_us": []})
                e["rps"].append(rps)
                e["cpu_us"].append((c1 - c0) / HZ * 1e6 / max(n, 1))
                log(f"  round {rnd + 1} {key:10} {rps:9.0f} req/s  cpu {e['cpu_us'][-1]:.1f} µs/req")
    finally:
        # nginx's forked workers do not die with a SIGKILLed master: stop it gracefully.
        for key, _, p, _ in procs:
            sig(p, signal.SIGCONT)
            if key.startswith("nginx"):
                p.terminate()
                try:
                    p.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    pass
    return scale


def report_scaling(scale: dict, args) -> None:
    print()
    print(f"Scaling, 1 vs 2 workers: nothing pinned, `wrk -t2 -c64 -d{args.duration}` and the upstream on the "
          f"same 2 cores as the proxy, {args.rounds} interleaved rounds, median:")
    print()
    print("| target | req/s | 2 workers / 1 | proxy CPU µs/req |")
    print("|---|---:|---:|---:|")
    for key, e in scale.items():
        one = scale.get(key.replace("-2w", "-1w"))
        ratio = f"{median(e['rps']) / median(one['rps']):.2f}" if key.endswith("-2w") and one else "–"
        print(f"| {e['label']} | {median(e['rps']):.0f} | {ratio} | {median(e['cpu_us']):.1f} |")


def report(targets: list[Target], startup: dict, args, elapsed: float, pinned: bool) -> None:
    med = {t.key: {k: median([r[k] for r in t.results]) for k in t.results[0]} if t.results else {} for t in targets}
    d = med.get("direct", {}).get("rps", float("nan"))
    n = med.get("nginx", {}).get("rps", float("nan"))
    print()
    print(f"Load: `wrk -t1 -c{args.conns} -d{args.duration} --latency` (loaded) and `wrk -t1 -c1 -d{args.lat_duration}` "
          f"(unloaded), {args.rounds} interleaved rounds, median shown. "
          + ("Proxy pinned to CPU 0 (1 worker/thread), wrk + upstream pinned to CPU 1." if pinned else "Unpinned."))
    print()
    nc = med.get("nginx", {}).get("cpu_us", float("nan"))
    print("| target | req/s | × direct | × nginx | p50 | p99 | p50 @c1 | p99 @c1 | proxy CPU µs/req | CPU × nginx | RSS after load |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for t in targets:
        m = med[t.key]
        if not m:
            continue
        rss = f"{t.rss[0] / 1024:.1f} MiB" if t.rss else "–"
        errs = sum(r["errors"] for r in t.results)
        flag = f" ⚠ {errs} non-2xx" if errs else ""
        cpu = "–" if m["cpu_us"] != m["cpu_us"] else f"{m['cpu_us']:.1f}"
        cpux = "–" if m["cpu_us"] != m["cpu_us"] else f"{m['cpu_us'] / nc:.2f}"
        print(f"| {t.label}{flag} | {m['rps']:.0f} | {m['rps'] / d:.2f} | {m['rps'] / n:.2f} | {fmt_us(m['p50'])} | "
              f"{fmt_us(m['p99'])} | {fmt_us(m['c1_p50'])} | {fmt_us(m['c1_p99'])} | {cpu} | {cpux} | {rss} |")

    def over(a: str, b: str) -> str:
        if a not in med or b not in med or not med[a] or not med[b]:
            return "–"
        ma, mb = med[a], med[b]
        thr = (1 / ma["rps"] - 1 / mb["rps"]) * 1e6
        return (f"{thr:+.1f} µs (1/throughput) · {ma['cpu_us'] - mb['cpu_us']:+.1f} µs (proxy CPU) · "
                f"{ma['c1_p50'] - mb['c1_p50']:+.0f} µs (p50 @c1)")

    fg = [r["foreign"] for t in targets for r in t.results]
    st = [r["steal"] for t in targets for r in t.results]
    print()
    print(f"Noise: CPU used by other processes during the loaded runs: median {median(fg):.0f}%, max {max(fg):.0f}% "
          f"of the machine; steal median {median(st):.0f}%, max {max(st):.0f}%. "
          "Proxy CPU µs/req is the least noise-sensitive column.")
    print()
    if args.rate and "direct" in med and med["direct"].get("rate_p50") == med["direct"].get("rate_p50"):
        dr = med["direct"]
        print(f"Latency at a fixed rate: {args.rate} req/s over 10 keep-alive connections (`rate-load`, latency "
              "from when each request was due), 3 s per round, median of rounds; added = target − direct:")
        print()
        print("| target | achieved req/s | p50 | p99 | added p50 | added p99 | proxy context switches / request |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for t in targets:
            m = med.get(t.key) or {}
            if m.get("rate_p50", float("nan")) != m.get("rate_p50", float("nan")):
                continue
            print(f"| {t.label} | {m['rate_achieved']:.0f} | {fmt_us(m['rate_p50'])} | {fmt_us(m['rate_p99'])} | "
                  f"{m['rate_p50'] - dr['rate_p50']:+.0f} µs | {m['rate_p99'] - dr['rate_p99']:+.0f} µs | "
                  + ("–" if m["rate_ctx"] != m["rate_ctx"] else f"{m['rate_ctx']:.2f}") + " |")
        print()
    print("Per-request overhead (medians):")
    print()
    print(f"- policy chain, pooled vs no policy: {over('w-pool', 'w-none')}")
    print(f"- policy chain, per-request vs no policy: {over('w-perreq', 'w-none')}")
    print(f"- per-request vs pooled: {over('w-perreq', 'w-pool')}")
    print(f"- secret injection + chain vs chain: {over('w-secret', 'w-pool')}")
    print(f"- access log at info vs warn: {over('w-none-info', 'w-none')}")
    print(f"- tracing on, unsampled vs off (pooled chain): {over('w-trace0', 'w-pool')}")
    print(f"- tracing on, sampled and exported vs off (pooled chain): {over('w-trace1', 'w-pool')}")
    print(f"- Warden (no policy) vs nginx: {over('w-none', 'nginx')}")
    print(f"- Warden (no policy) vs HAProxy: {over('w-none', 'haproxy')}")
    for i, path in enumerate(args.baseline):
        b, name = baseline_prefix(i), Path(path).name
        print(f"- this build vs {name}, no policy: {over('w-none', f'{b}-none')}")
        print(f"- this build vs {name}, pooled chain: {over('w-pool', f'{b}-pool')}")
        print(f"- this build vs {name}, chain + secret: {over('w-secret', f'{b}-secret')}")
    print()
    print("Inside Warden (its own metrics, whole run): plugin evaluation time per request "
          "(`warden_plugin_eval_duration_seconds` sum/count; per-request includes instantiate + configure), "
          "deadline hits, traps:")
    print()
    for t in targets:
        m = t.metrics
        if m and m["eval_count"]:
            print(f"- {t.label}: {m['eval_sum'] / m['eval_count'] * 1e6:.1f} µs/evaluation over "
                  f"{m['eval_count']:.0f} evaluations; deadline hits {m['deadline']:.0f}, traps {m['traps']:.0f}")
    print()
    print("Start-up, exec → first proxied 200 (policy chain on, default workers, median of runs):")
    print()
    for k, label in (("nopolicy", "no plugins"), ("warm", "precompiled plugin in the cache"),
                     ("cold", "empty cache_dir (compiles the plugin)")):
        xs = startup[k]
        print(f"- {label}: {statistics.median(xs) * 1000:.0f} ms "
              f"(runs: {', '.join(f'{x * 1000:.0f}' for x in xs)} ms)")
    r = startup.get("idle_rss")
    if r:
        print()
        print(f"Idle RSS, three plugins precompiled (header-guard, network-isolation, api-key; "
              f"default workers, {r.get('Threads', 0)} threads): {r['VmRSS'] / 1024:.1f} MiB, of which "
              f"{r['RssAnon'] / 1024:.1f} MiB anonymous and {r['RssFile'] / 1024:.1f} MiB file-backed.")
    r = startup.get("idle_rss_image")
    if r:
        print(f"The same with the image's binary ({IMAGE_BIN.relative_to(ROOT)}, static musl): "
              f"{r['VmRSS'] / 1024:.1f} MiB, of which {r['RssAnon'] / 1024:.1f} MiB anonymous and "
              f"{r['RssFile'] / 1024:.1f} MiB file-backed.")
    size = WARDEN.stat().st_size
    with tempfile.TemporaryDirectory() as td:
        s = Path(td) / "warden"
        subprocess.run(["strip", "-o", str(s), str(WARDEN)], check=True)
        ssize = s.stat().st_size
    print()
    print(f"Binary: {WARDEN.relative_to(ROOT) if WARDEN.is_relative_to(ROOT) else WARDEN} "
          f"{size / 2**20:.1f} MiB as built, {ssize / 2**20:.1f} MiB stripped.")
    print(f"Harness wall time: {elapsed:.0f} s.")


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    signal.signal(signal.SIGINT, lambda *_: sys.exit(130))
    try:
        sys.exit(main())
    finally:
        kill_all()

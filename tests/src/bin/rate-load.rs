//! A fixed-rate HTTP/1.1 load generator for the benchmark's latency-at-a-rate measure.
//!
//! `rate-load URL --rate R --conns C --duration D [--warmup W]` keeps C keep-alive
//! connections and sends R requests per second in total, each connection on its own
//! schedule (request k of connection i is due at `(k * C + i) / R`). Latency is measured
//! from when a request was due, not from when it went out, so a proxy that stalls is
//! charged for the requests queued behind the stall (the coordinated-omission correction
//! of wrk2). Prints one JSON line: requests, errors, the achieved rate, and p50/p90/p99/max
//! in microseconds.
//!
//! Each connection is a thread that sleeps until its next request is due with the
//! process's timer slack set to 1 ns, so requests go out within microseconds of when they
//! are due. (An async runtime's timer has millisecond ticks: every request due within one
//! tick would go out together, as a burst, and the proxy would be measured on bursts.)
//!
//! Debian's h2load (1.52) has no fixed request rate and wrk2 is not packaged, hence this.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

struct Args {
    url: http::Uri,
    rate: f64,
    conns: usize,
    duration: Duration,
    warmup: Duration,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut url = None;
    let mut rate = 5000.0;
    let mut conns = 10;
    let mut duration = Duration::from_secs(5);
    let mut warmup = Duration::from_secs(1);
    let mut it = std::env::args().skip(1);
    let secs = |v: Option<String>| -> anyhow::Result<Duration> {
        let v = v.ok_or_else(|| anyhow::anyhow!("missing value"))?;
        Ok(Duration::from_secs_f64(v.trim_end_matches('s').parse()?))
    };
    while let Some(a) = it.next() {
        match a.as_str() {
            "--rate" => rate = it.next().unwrap_or_default().parse()?,
            "--conns" => conns = it.next().unwrap_or_default().parse()?,
            "--duration" => duration = secs(it.next())?,
            "--warmup" => warmup = secs(it.next())?,
            u if url.is_none() && !u.starts_with("--") => url = Some(u.parse()?),
            other => anyhow::bail!("unknown argument {other}"),
        }
    }
    let url = url.ok_or_else(|| {
        anyhow::anyhow!("usage: rate-load URL [--rate R] [--conns C] [--duration D] [--warmup W]")
    })?;
    anyhow::ensure!(rate > 0.0 && conns > 0, "rate and conns must be positive");
    Ok(Args {
        url,
        rate,
        conns,
        duration,
        warmup,
    })
}

/// One connection's run: latencies (µs) of the requests due after the warm-up, and errors.
fn connection(
    args: &Args,
    i: usize,
    start: Instant,
    measure_from: Instant,
    end: Instant,
) -> anyhow::Result<(Vec<u32>, u64)> {
    let authority = args
        .url
        .authority()
        .ok_or_else(|| anyhow::anyhow!("URL without host"))?
        .clone();
    let path = args.url.path_and_query().map_or("/", |p| p.as_str());
    let request = format!("GET {path} HTTP/1.1\r\nHost: {authority}\r\n\r\n").into_bytes();
    let connect = || -> anyhow::Result<TcpStream> {
        let s = TcpStream::connect(authority.as_str())?;
        s.set_nodelay(true)?;
        // A stall is latency, not an error, until it outlasts the whole run.
        s.set_read_timeout(Some(args.warmup + args.duration + Duration::from_secs(10)))?;
        Ok(s)
    };
    let mut stream = connect()?;
    let mut buf = Vec::with_capacity(4096);
    let period = Duration::from_secs_f64(args.conns as f64 / args.rate);
    let offset = Duration::from_secs_f64(i as f64 / args.rate);
    let mut lat = Vec::new();
    let mut errors = 0;
    for k in 0u32.. {
        let due = start + offset + period * k;
        if due >= end {
            break;
        }
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        let response = stream
            .write_all(&request)
            .map_err(anyhow::Error::from)
            .and_then(|()| read_response(&mut stream, &mut buf));
        let ok = response
            .as_ref()
            .is_ok_and(|r| (200..300).contains(&r.status));
        if due >= measure_from {
            if ok {
                lat.push(due.elapsed().as_micros().min(u32::MAX as u128) as u32);
            } else {
                errors += 1;
            }
        }
        if response.is_err() || response.is_ok_and(|r| r.close) {
            // The connection is closed, or in an unknown state: make a new one. One that
            // cannot be made counts against the next request, which fails and tries again.
            if let Ok(s) = connect() {
                stream = s;
            }
        }
    }
    Ok((lat, errors))
}

/// One response read whole: its status, and whether the server will close the connection.
struct Response {
    status: u16,
    close: bool,
}

/// Read one final response (1xx heads skipped; then a chunked, `Content-Length` or
/// close-delimited body). The generator never pipelines, so a byte beyond the response is
/// an error, not something to keep for the next one.
fn read_response(stream: &mut TcpStream, buf: &mut Vec<u8>) -> anyhow::Result<Response> {
    buf.clear();
    loop {
        let (status, close, head_len, body) = loop {
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut resp = httparse::Response::new(&mut headers);
            if let httparse::Status::Complete(n) = resp.parse(buf)? {
                let mut length = None;
                let mut chunked = false;
                let mut close = resp.version == Some(0);
                for h in resp.headers.iter() {
                    if h.name.eq_ignore_ascii_case("content-length") {
                        length = Some(std::str::from_utf8(h.value)?.trim().parse::<usize>()?);
                    } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                        chunked = h.value.eq_ignore_ascii_case(b"chunked");
                        anyhow::ensure!(chunked, "unsupported transfer-encoding");
                    } else if h.name.eq_ignore_ascii_case("connection") {
                        close = h.value.eq_ignore_ascii_case(b"close");
                    }
                }
                let code = resp.code.unwrap_or(0);
                // Transfer-Encoding wins over Content-Length (RFC 9112, 6.3).
                let body = match (code, chunked, length) {
                    (100..=199 | 204 | 304, _, _) => Body::Length(0),
                    (_, true, _) => Body::Chunked,
                    (_, false, Some(n)) => Body::Length(n),
                    (_, false, None) => Body::UntilClose,
                };
                let close = close || matches!(body, Body::UntilClose);
                break (code, close, n, body);
            }
            read_more(stream, buf)?;
        };
        let end = match body {
            Body::Length(len) => {
                while buf.len() < head_len + len {
                    read_more(stream, buf)?;
                }
                head_len + len
            }
            Body::Chunked => chunked_end(stream, buf, head_len)?,
            Body::UntilClose => {
                while read_more(stream, buf).is_ok() {}
                buf.len()
            }
        };
        if (100..200).contains(&status) {
            // An interim response: the final one follows.
            buf.drain(..end);
            continue;
        }
        anyhow::ensure!(buf.len() == end, "bytes after the response");
        return Ok(Response { status, close });
    }
}

/// Where a chunked body that starts at `at` in `buf` ends (after its trailers), reading
/// more as needed.
fn chunked_end(stream: &mut TcpStream, buf: &mut Vec<u8>, mut at: usize) -> anyhow::Result<usize> {
    loop {
        let (size_len, size) = loop {
            match httparse::parse_chunk_size(&buf[at..]) {
                Ok(httparse::Status::Complete(v)) => break v,
                Ok(httparse::Status::Partial) => read_more(stream, buf)?,
                Err(_) => anyhow::bail!("bad chunk size"),
            }
        };
        at += size_len;
        if size == 0 {
            // Trailer lines, then an empty line.
            loop {
                let Some(eol) = buf[at..].windows(2).position(|w| w == b"\r\n") else {
                    read_more(stream, buf)?;
                    continue;
                };
                at += eol + 2;
                if eol == 0 {
                    return Ok(at);
                }
            }
        }
        let next = at + usize::try_from(size)? + 2;
        while buf.len() < next {
            read_more(stream, buf)?;
        }
        at = next;
    }
}

enum Body {
    Length(usize),
    Chunked,
    UntilClose,
}

fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>) -> anyhow::Result<()> {
    let mut chunk = [0u8; 4096];
    let n = stream.read(&mut chunk)?;
    anyhow::ensure!(n > 0, "connection closed");
    buf.extend_from_slice(&chunk[..n]);
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args = std::sync::Arc::new(parse_args()?);
    // Threads take the timer slack of the thread that makes them: a 1 ns slack lets each
    // sleep end when the request is due instead of up to 50 µs later. The slack in effect
    // is part of the report.
    let _ = rustix::thread::set_current_timer_slack(std::num::NonZeroU64::new(1));
    let timer_slack_ns = rustix::thread::current_timer_slack().unwrap_or(0);
    let start = Instant::now() + Duration::from_millis(50);
    let measure_from = start + args.warmup;
    let end = measure_from + args.duration;
    let threads: Vec<_> = (0..args.conns)
        .map(|i| {
            let args = args.clone();
            std::thread::spawn(move || connection(&args, i, start, measure_from, end))
        })
        .collect();
    let mut lat = Vec::new();
    let mut errors = 0;
    for t in threads {
        let (l, e) = t
            .join()
            .map_err(|_| anyhow::anyhow!("a connection thread panicked"))??;
        lat.extend(l);
        errors += e;
    }
    lat.sort_unstable();
    let pct = |p: f64| -> u32 {
        if lat.is_empty() {
            return 0;
        }
        lat[((lat.len() as f64 * p).ceil() as usize).clamp(1, lat.len()) - 1]
    };
    let out = serde_json::json!({
        "requests": lat.len(),
        "errors": errors,
        "rate": lat.len() as f64 / args.duration.as_secs_f64(),
        "p50_us": pct(0.50),
        "p90_us": pct(0.90),
        "p99_us": pct(0.99),
        "max_us": lat.last().copied().unwrap_or(0),
        "timer_slack_ns": timer_slack_ns,
    });
    println!("{out}");
    Ok(())
}

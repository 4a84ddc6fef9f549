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
//! Debian's h2load (1.52) has no fixed request rate and wrk2 is not packaged, hence this.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;

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
async fn connection(
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
    let path = args
        .url
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    let stream = tokio::net::TcpStream::connect(authority.as_str()).await?;
    stream.set_nodelay(true)?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let period = Duration::from_secs_f64(args.conns as f64 / args.rate);
    let offset = Duration::from_secs_f64(i as f64 / args.rate);
    let mut lat = Vec::new();
    let mut errors = 0;
    for k in 0u32.. {
        let due = start + offset + period * k;
        if due >= end {
            break;
        }
        tokio::time::sleep_until(due.into()).await;
        let req = http::Request::get(path.as_str())
            .header(http::header::HOST, authority.as_str())
            .body(Empty::<Bytes>::new())?;
        let ok = match send.send_request(req).await {
            Ok(resp) => {
                let ok = resp.status().is_success();
                resp.into_body().collect().await.is_ok() && ok
            }
            Err(_) => false,
        };
        if due >= measure_from {
            if ok {
                lat.push(due.elapsed().as_micros().min(u32::MAX as u128) as u32);
            } else {
                errors += 1;
            }
        }
        if !ok {
            // A failed exchange may have closed the connection: make a new one.
            let stream = tokio::net::TcpStream::connect(authority.as_str()).await?;
            stream.set_nodelay(true)?;
            let (s, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
            tokio::spawn(conn);
            send = s;
        }
    }
    Ok((lat, errors))
}

fn main() -> anyhow::Result<()> {
    let args = std::sync::Arc::new(parse_args()?);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let start = Instant::now() + Duration::from_millis(50);
        let measure_from = start + args.warmup;
        let end = measure_from + args.duration;
        let tasks: Vec<_> = (0..args.conns)
            .map(|i| {
                let args = args.clone();
                tokio::spawn(async move { connection(&args, i, start, measure_from, end).await })
            })
            .collect();
        let mut lat = Vec::new();
        let mut errors = 0;
        for t in tasks {
            let (l, e) = t.await??;
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
        });
        println!("{out}");
        anyhow::Ok(())
    })
}

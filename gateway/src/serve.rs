//! The running process: bind the listeners (one proxy listener per worker, see
//! [`crate::worker`]), announce them, start the workers, install signal handlers, and shut
//! down in order — the proxy listeners close at once and drain, while the admin listener
//! stays up (readiness answers `draining`, metrics can still be scraped) until the drain
//! has ended.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::gateway::Gateway;

/// Options of `warden run` that are about the process, not the config.
#[derive(Debug, Default, Clone)]
pub struct ServeOptions {
    /// Once both listeners are bound, write their addresses here as JSON
    /// (`{"proxy": "127.0.0.1:8080", "admin": "127.0.0.1:9901"}`), atomically (written to a
    /// temporary file and renamed), so a supervisor or a test that asked for port 0 learns
    /// the real ports without parsing logs.
    pub ready_file: Option<PathBuf>,
}

/// The addresses the listeners are bound to.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
pub struct BoundAddrs {
    /// The proxy listener.
    pub proxy: SocketAddr,
    /// The admin listener.
    pub admin: SocketAddr,
}

/// Serve until SIGTERM or SIGINT, then drain.
pub async fn serve(gw: Arc<Gateway>, opts: ServeOptions) -> anyhow::Result<()> {
    let snap = gw.current();
    let workers = crate::worker::count().max(1);
    let proxies = crate::worker::listeners(snap.config.gateway.listen, workers)
        .with_context(|| format!("binding gateway.listen {}", snap.config.gateway.listen))?;
    let admin = tokio::net::TcpListener::bind(snap.config.admin.listen)
        .await
        .with_context(|| format!("binding admin.listen {}", snap.config.admin.listen))?;
    let bound = BoundAddrs {
        proxy: proxies[0].local_addr()?,
        admin: admin.local_addr()?,
    };
    info!(addr = %bound.admin, "admin listening");
    info!(addr = %bound.proxy, workers, tls = snap.tls.is_some(), routes = snap.routes.len(), "proxy listening");
    drop(snap);
    if let Some(path) = &opts.ready_file {
        write_ready_file(path, &bound)
            .with_context(|| format!("writing --ready-file {}", path.display()))?;
    }

    gw.spawn_reload_triggers();
    gw.spawn_injected_sweep();
    let shutdown: CancellationToken = gw.shutdown.clone();
    tokio::spawn({
        let shutdown = shutdown.clone();
        async move {
            use tokio::signal::unix::{SignalKind, signal};
            let (Ok(mut term), Ok(mut int)) = (
                signal(SignalKind::terminate()),
                signal(SignalKind::interrupt()),
            ) else {
                error!("cannot install signal handlers");
                return;
            };
            tokio::select! {
                _ = term.recv() => info!("SIGTERM: shutting down"),
                _ = int.recv() => info!("SIGINT: shutting down"),
            }
            shutdown.cancel();
        }
    });
    let drained = CancellationToken::new();
    let admin_task = tokio::spawn(crate::admin::serve(admin, gw.clone(), drained.clone()));
    let mut finished = Vec::with_capacity(workers);
    for (i, listener) in proxies.into_iter().enumerate() {
        finished.push(spawn_worker(i + 1, listener, gw.clone(), shutdown.clone())?);
    }
    for done in finished {
        let _ = done.await;
    }
    drained.cancel();
    let _ = admin_task.await;
    // Spans still buffered go out before the process ends.
    if let Some(t) = gw.current().tracing.clone() {
        let flushed = tokio::task::spawn_blocking(move || t.shutdown());
        if tokio::time::timeout(std::time::Duration::from_secs(5), flushed)
            .await
            .is_err()
        {
            warn!("trace export did not finish within 5s");
        }
    }
    info!("stopped");
    Ok(())
}

/// Start proxy worker `i` on its own thread and current-thread runtime. The returned
/// receiver completes when the worker has drained and flushed its access log.
fn spawn_worker(
    i: usize,
    listener: std::net::TcpListener,
    gw: Arc<Gateway>,
    shutdown: CancellationToken,
) -> anyhow::Result<tokio::sync::oneshot::Receiver<()>> {
    let (done, finished) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name(format!("warden-worker-{i}"))
        .spawn(move || {
            crate::worker::enter(i);
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            match rt {
                Ok(rt) => rt.block_on(async {
                    match tokio::net::TcpListener::from_std(listener) {
                        Ok(l) => crate::proxy::serve(l, gw, shutdown).await,
                        Err(e) => {
                            error!(worker = i, error = %e, "worker cannot use its listener; shutting down");
                            shutdown.cancel();
                        }
                    }
                }),
                Err(e) => {
                    error!(worker = i, error = %e, "cannot start a worker runtime; shutting down");
                    shutdown.cancel();
                }
            }
            crate::telemetry::flush_access_log();
            let _ = done.send(());
        })
        .context("starting a proxy worker thread")?;
    Ok(finished)
}

fn write_ready_file(path: &std::path::Path, bound: &BoundAddrs) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    std::fs::write(&tmp, serde_json::to_vec(bound)?)?;
    std::fs::rename(&tmp, path)
}

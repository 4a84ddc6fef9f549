//! Stand-in upstreams for the demo stack.
//!
//! - `sophia-api` on 127.0.0.1:8000: a small JSON API (plain HTTP).
//! - `ml-gateway` on 127.0.0.1:9443: an inference endpoint over TLS that requires the
//!   gateway's client certificate and streams tokens as server-sent events. It accepts
//!   only the API key from the demo's age-encrypted secrets, so a successful stream
//!   proves the gateway decrypted and injected it.
//!
//! Certificates are generated at start into `policies/demo/certs/` (git-ignored).

use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::json;
use tokio::net::TcpListener;
use warden_tests::certs::Ca;

type Body = BoxBody<Bytes, Infallible>;

fn json_resp(status: StatusCode, v: serde_json::Value) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(v.to_string() + "\n")).boxed());
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        "application/json".parse().unwrap(),
    );
    r
}

fn demo_secret(root: &std::path::Path, key: &str) -> anyhow::Result<String> {
    use std::str::FromStr;
    let ident_text = std::fs::read_to_string(root.join("policies/demo/secrets/demo.agekey"))?;
    let line = ident_text
        .lines()
        .find(|l| l.starts_with("AGE-SECRET-KEY-"))
        .ok_or_else(|| anyhow::anyhow!("no identity"))?;
    let identity = age::x25519::Identity::from_str(line).map_err(|e| anyhow::anyhow!("{e}"))?;
    let data = std::fs::read(root.join("policies/demo/secrets/demo.env.age"))?;
    let plain = age::decrypt(&identity, &data)?;
    let text = String::from_utf8(plain)?;
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")).map(str::to_string))
        .ok_or_else(|| anyhow::anyhow!("{key} missing from demo secrets"))
}

async fn sophia(req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let authed = req.headers().get("x-service-token").is_some();
    Ok(match (req.method().as_str(), req.uri().path()) {
        (_, "/api/health") => json_resp(
            StatusCode::OK,
            json!({"service": "sophia-api", "status": "ok"}),
        ),
        ("GET", "/api/v1/projects") => json_resp(
            StatusCode::OK,
            json!({"service": "sophia-api", "service_token_injected": authed,
                   "projects": [{"id": 1, "name": "atlas"}, {"id": 2, "name": "borealis"}]}),
        ),
        (m, p) => json_resp(
            StatusCode::OK,
            json!({"service": "sophia-api", "method": m, "path": p}),
        ),
    })
}

async fn ml(req: Request<Incoming>, key: Arc<String>) -> Result<Response<Body>, Infallible> {
    let expected = format!("Bearer {key}");
    if req
        .headers()
        .get(http::header::AUTHORIZATION)
        .map(|v| v.as_bytes())
        != Some(expected.as_bytes())
    {
        return Ok(json_resp(
            StatusCode::UNAUTHORIZED,
            json!({"service": "ml-gateway", "error": "missing or wrong API key"}),
        ));
    }
    if req.uri().path() != "/v1/infer" {
        return Ok(json_resp(
            StatusCode::OK,
            json!({"service": "ml-gateway", "path": req.uri().path()}),
        ));
    }
    let prompt = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let words: Vec<String> = format!("You said: {}", String::from_utf8_lossy(&prompt).trim())
        .split_whitespace()
        .map(str::to_string)
        .chain(["[DONE]".to_string()])
        .collect();
    let stream = futures_util::stream::unfold(0usize, move |i| {
        let words = words.clone();
        async move {
            let w = words.get(i)?.clone();
            tokio::time::sleep(Duration::from_millis(150)).await;
            let ev = format!("data: {}\n\n", json!({"token": w, "index": i}));
            Some((Ok::<_, Infallible>(Frame::data(Bytes::from(ev))), i + 1))
        }
    });
    let mut r = Response::new(StreamBody::new(stream).boxed());
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        "text/event-stream".parse().unwrap(),
    );
    Ok(r)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    warden_tests::init_crypto();
    let root = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(warden_tests::repo_root);
    let certs = root.join("policies/demo/certs");
    std::fs::create_dir_all(&certs)?;

    // ml-gateway's server certificate, and the client certificate the gateway presents.
    let ml_ca = Ca::new("demo ml-gateway CA");
    let clients_ca = Ca::new("demo clients CA");
    let ml_leaf = ml_ca.leaf(&["ml-gateway.internal"], &[]);
    clients_ca
        .leaf(&["mcp-gateway.internal"], &["spiffe://sophia/mcp-gateway"])
        .write(&certs, "gw");
    clients_ca
        .leaf(&["sophia-api.internal"], &["spiffe://sophia/sophia-api"])
        .write(&certs, "sophia-client");
    ml_ca.write(&certs, "ml-ca.crt");
    clients_ca.write(&certs, "clients-ca.crt");

    let key = Arc::new(demo_secret(&root, "ML_API_KEY")?);

    let sophia_l = TcpListener::bind("127.0.0.1:8000").await?;
    let ml_l = TcpListener::bind("127.0.0.1:9443").await?;
    let acceptor = {
        use rustls_pki_types::pem::PemObject;
        let (c, k) = ml_leaf.rustls();
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_pki_types::CertificateDer::pem_slice_iter(clients_ca.cert_pem.as_bytes())
        {
            roots.add(cert?)?;
        }
        let v = rustls::server::WebPkiClientVerifier::builder(Arc::new(roots)).build()?;
        let mut cfg = rustls::ServerConfig::builder()
            .with_client_cert_verifier(v)
            .with_single_cert(c, k)?;
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        tokio_rustls::TlsAcceptor::from(Arc::new(cfg))
    };
    // Marker file: the demo script waits for it before starting the gateway.
    std::fs::write(certs.join("ready"), "")?;
    eprintln!(
        "demo-upstreams: sophia-api on http://127.0.0.1:8000, ml-gateway on https://127.0.0.1:9443 (mTLS)"
    );

    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = sophia_l.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(s), hyper::service::service_fn(sophia))
                    .await;
            });
        }
    });
    loop {
        let Ok((s, _)) = ml_l.accept().await else {
            continue;
        };
        let acceptor = acceptor.clone();
        let key = key.clone();
        tokio::spawn(async move {
            let Ok(tls) = acceptor.accept(s).await else {
                return;
            };
            let svc = hyper::service::service_fn(move |r| ml(r, key.clone()));
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tls), svc)
                .await;
        });
    }
}

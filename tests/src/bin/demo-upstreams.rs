//! Stand-in upstreams for the demo stack.
//!
//! - `sophia-api` on 127.0.0.1:8000: a small JSON API (plain HTTP), and on `/mcp` its MCP
//!   server (streamable HTTP, JSON responses): the tools `search_projects`, `get_project`
//!   and `delete_project` over JSON-RPC 2.0, batches included.
//! - `ml-gateway` on 127.0.0.1:9443: an inference endpoint over TLS that requires the
//!   gateway's client certificate. `POST /v1/infer` takes an OpenAI-style chat body
//!   (`model`, `messages`, `max_tokens`, `stream`) and answers a chat completion, or with
//!   `"stream": true` tokens as server-sent events; a body that is not a JSON object is
//!   the prompt itself, answered as events. It accepts only the API key from the demo's
//!   age-encrypted secrets, so a successful answer proves the gateway decrypted and
//!   injected it.
//!
//! ```text
//! demo-upstreams [ROOT] [--sophia-api ADDR] [--ml-gateway ADDR]
//! ```
//!
//! Certificates are generated at start into `ROOT/policies/demo/certs/` (git-ignored).
//! Once both listeners are open, `certs/ready` is written (atomically) with their bound
//! addresses as JSON, `{"sophia-api": "127.0.0.1:8000", "ml-gateway": "127.0.0.1:9443"}`,
//! so the tests can run the demo on ports `127.0.0.1:0`.

use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use warden_tests::certs::Ca;

type Body = BoxBody<Bytes, Infallible>;

fn json_resp(status: StatusCode, v: Value) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(v.to_string() + "\n")).boxed());
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        "application/json".parse().unwrap(),
    );
    r
}

fn empty(status: StatusCode) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::new()).boxed());
    *r.status_mut() = status;
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

// ---- sophia-api ----------------------------------------------------------------------

/// Sophia's projects: (id, name, description).
const PROJECTS: [(u64, &str, &str); 2] = [
    (1, "atlas", "maps of the data platform"),
    (2, "borealis", "the northern inference cluster"),
];

async fn sophia(req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let authed = req.headers().get("x-service-token").is_some();
    if req.uri().path() == "/mcp" {
        return Ok(mcp(req).await);
    }
    Ok(match (req.method().as_str(), req.uri().path()) {
        (_, "/api/health") => json_resp(
            StatusCode::OK,
            json!({"service": "sophia-api", "status": "ok"}),
        ),
        ("GET", "/api/v1/projects") => json_resp(
            StatusCode::OK,
            json!({"service": "sophia-api", "service_token_injected": authed,
                   "projects": PROJECTS.map(|(id, name, _)| json!({"id": id, "name": name}))}),
        ),
        (m, p) => json_resp(
            StatusCode::OK,
            json!({"service": "sophia-api", "method": m, "path": p}),
        ),
    })
}

// ---- sophia-api's MCP server ---------------------------------------------------------

/// MCP protocol versions this server speaks; it answers the client's when it is one of
/// these, else the newest.
const MCP_VERSIONS: [&str; 3] = ["2025-06-18", "2025-03-26", "2024-11-05"];

/// Streamable HTTP with JSON responses: POST one JSON-RPC message or a batch; requests get
/// an `application/json` answer (an array for a batch), notifications and replies alone a
/// 202. No server-initiated event stream (GET is 405) and no sessions.
async fn mcp(req: Request<Incoming>) -> Response<Body> {
    if req.method() != Method::POST {
        let mut r = empty(StatusCode::METHOD_NOT_ALLOWED);
        r.headers_mut()
            .insert(http::header::ALLOW, "POST".parse().unwrap());
        return r;
    }
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let msg: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(_) => {
            return json_resp(
                StatusCode::BAD_REQUEST,
                rpc_error(Value::Null, -32700, "parse error"),
            );
        }
    };
    let answer = match msg {
        Value::Array(items) if items.is_empty() => Some(rpc_error(
            Value::Null,
            -32600,
            "invalid request: empty batch",
        )),
        Value::Array(items) => {
            let answers: Vec<Value> = items.iter().filter_map(mcp_message).collect();
            (!answers.is_empty()).then_some(Value::Array(answers))
        }
        one => mcp_message(&one),
    };
    match answer {
        Some(a) => json_resp(StatusCode::OK, a),
        None => empty(StatusCode::ACCEPTED),
    }
}

fn rpc_error(id: Value, code: i64, message: &str) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}})
}

/// The answer to one message: `None` for notifications and for replies to server requests.
fn mcp_message(msg: &Value) -> Option<Value> {
    let id = msg.get("id").cloned();
    let method = msg.get("method").and_then(Value::as_str);
    if msg.get("jsonrpc").and_then(Value::as_str) != Some("2.0")
        || (method.is_none() && msg.get("result").is_none() && msg.get("error").is_none())
    {
        return Some(rpc_error(
            id.unwrap_or(Value::Null),
            -32600,
            "invalid request",
        ));
    }
    let (method, id) = (method?, id?);
    let params = msg.get("params").cloned().unwrap_or_else(|| json!({}));
    let result = match method {
        "initialize" => {
            let asked = params.get("protocolVersion").and_then(Value::as_str);
            let version = asked
                .filter(|v| MCP_VERSIONS.contains(v))
                .unwrap_or(MCP_VERSIONS[0]);
            Ok(json!({
                "protocolVersion": version,
                "capabilities": {"tools": {"listChanged": false}},
                "serverInfo": {"name": "sophia-mcp", "title": "Sophia projects", "version": "0.1.0"},
                "instructions": "Search, read and delete Sophia projects.",
            }))
        }
        "ping" => Ok(json!({})),
        "tools/list" => Ok(json!({"tools": tools()})),
        "tools/call" => call_tool(&params),
        other => Err((-32601, format!("method not found: {other}"))),
    };
    Some(match result {
        Ok(result) => json!({"jsonrpc": "2.0", "id": id, "result": result}),
        Err((code, message)) => rpc_error(id, code, &message),
    })
}

fn tools() -> Value {
    let by_id = |what: &str| {
        json!({"type": "object",
               "properties": {"id": {"type": "integer", "description": format!("the id of the project to {what}")}},
               "required": ["id"]})
    };
    json!([
        {"name": "search_projects",
         "description": "Search Sophia projects by name.",
         "inputSchema": {"type": "object",
                         "properties": {"query": {"type": "string", "description": "part of a project name"}},
                         "required": ["query"]}},
        {"name": "get_project",
         "description": "Read one Sophia project.",
         "inputSchema": by_id("read")},
        {"name": "delete_project",
         "description": "Delete a Sophia project and everything in it.",
         "inputSchema": by_id("delete")},
    ])
}

fn text_result(text: String, is_error: bool) -> Value {
    json!({"content": [{"type": "text", "text": text}], "isError": is_error})
}

fn project_json(id: u64, name: &str, description: &str) -> Value {
    json!({"id": id, "name": name, "description": description})
}

fn call_tool(params: &Value) -> Result<Value, (i64, String)> {
    let invalid = |m: &str| (-32602, m.to_string());
    let name = params
        .get("name")
        .and_then(Value::as_str)
        .ok_or_else(|| invalid("tools/call needs a tool name"))?;
    let args = params
        .get("arguments")
        .cloned()
        .unwrap_or_else(|| json!({}));
    let id_arg = || {
        args.get("id")
            .and_then(Value::as_u64)
            .ok_or_else(|| invalid("id must be a non-negative integer"))
    };
    let find = |id: u64| PROJECTS.iter().find(|p| p.0 == id);
    Ok(match name {
        "search_projects" => {
            let query = args
                .get("query")
                .and_then(Value::as_str)
                .ok_or_else(|| invalid("query must be a string"))?
                .to_lowercase();
            let found: Vec<Value> = PROJECTS
                .iter()
                .filter(|(_, name, _)| name.contains(&query))
                .map(|&(id, name, d)| project_json(id, name, d))
                .collect();
            text_result(Value::Array(found).to_string(), false)
        }
        "get_project" => match find(id_arg()?) {
            Some(&(id, name, d)) => text_result(project_json(id, name, d).to_string(), false),
            None => text_result(format!("no project with id {}", id_arg()?), true),
        },
        "delete_project" => match find(id_arg()?) {
            // A stand-in: nothing is deleted, but a client that got here was allowed to.
            Some(&(id, name, _)) => text_result(format!("deleted project {id} ({name})"), false),
            None => text_result(format!("no project with id {}", id_arg()?), true),
        },
        other => return Err((-32602, format!("unknown tool: {other}"))),
    })
}

// ---- ml-gateway ----------------------------------------------------------------------

/// The models ml-gateway serves. The demo's gateway lets clients use only some of them.
const MODELS: [&str; 3] = ["sophia-small", "sophia-large", "sophia-experimental"];

fn openai_error(
    status: StatusCode,
    message: &str,
    kind: &str,
    code: Option<&str>,
) -> Response<Body> {
    json_resp(
        status,
        json!({"error": {"message": message, "type": kind, "code": code}}),
    )
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
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    Ok(match serde_json::from_slice::<Value>(&body) {
        Ok(chat @ Value::Object(_)) => completion(&chat),
        // Not an OpenAI-style body: the body is the prompt, answered as events.
        _ => token_stream(answer(&String::from_utf8_lossy(&body), None).0),
    })
}

/// The stand-in model's answer to `prompt`: its words, at most `max_tokens` of them, and
/// whether it was cut short.
fn answer(prompt: &str, max_tokens: Option<u64>) -> (Vec<String>, bool) {
    let mut words: Vec<String> = format!("You said: {}", prompt.trim())
        .split_whitespace()
        .map(str::to_string)
        .collect();
    let cut = max_tokens.is_some_and(|m| words.len() as u64 > m);
    if let Some(m) = max_tokens {
        words.truncate(m as usize);
    }
    (words, cut)
}

/// An OpenAI-style chat completion request.
fn completion(chat: &Value) -> Response<Body> {
    let bad = |m: &str| openai_error(StatusCode::BAD_REQUEST, m, "invalid_request_error", None);
    let Some(model) = chat.get("model").and_then(Value::as_str) else {
        return bad("model is required");
    };
    if !MODELS.contains(&model) {
        return openai_error(
            StatusCode::NOT_FOUND,
            &format!("the model {model:?} does not exist"),
            "invalid_request_error",
            Some("model_not_found"),
        );
    }
    let Some(messages) = chat.get("messages").and_then(Value::as_array) else {
        return bad("messages must be an array");
    };
    // The last user message: a string, or the text parts of a list of parts.
    let prompt = messages
        .iter()
        .rev()
        .find(|m| m.get("role").and_then(Value::as_str) == Some("user"))
        .and_then(|m| m.get("content"))
        .map(|c| match c {
            Value::String(s) => s.clone(),
            Value::Array(parts) => parts
                .iter()
                .filter_map(|p| p.get("text").and_then(Value::as_str))
                .collect::<Vec<_>>()
                .join(" "),
            _ => String::new(),
        })
        .unwrap_or_default();
    let max_tokens = chat
        .get("max_tokens")
        .or_else(|| chat.get("max_completion_tokens"))
        .and_then(Value::as_u64);
    let (words, cut) = answer(&prompt, max_tokens);
    if chat.get("stream").and_then(Value::as_bool) == Some(true) {
        return token_stream(words);
    }
    let created = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    let prompt_tokens = prompt.split_whitespace().count();
    json_resp(
        StatusCode::OK,
        json!({
            "id": format!("chatcmpl-demo-{created}"),
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": words.join(" ")},
                "finish_reason": if cut { "length" } else { "stop" },
            }],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": words.len(),
                      "total_tokens": prompt_tokens + words.len()},
        }),
    )
}

/// `words` then `[DONE]` as server-sent events, one every 150 ms:
/// `data: {"token":"You","index":0}`.
fn token_stream(words: Vec<String>) -> Response<Body> {
    let words: Vec<String> = words.into_iter().chain(["[DONE]".to_string()]).collect();
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
    r
}

// ---- main ----------------------------------------------------------------------------

struct Args {
    root: PathBuf,
    sophia_api: String,
    ml_gateway: String,
}

fn args() -> anyhow::Result<Args> {
    let mut a = Args {
        root: warden_tests::repo_root(),
        sophia_api: "127.0.0.1:8000".into(),
        ml_gateway: "127.0.0.1:9443".into(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || {
            it.next()
                .ok_or_else(|| anyhow::anyhow!("{arg} needs an address"))
        };
        match arg.as_str() {
            "--sophia-api" => a.sophia_api = value()?,
            "--ml-gateway" => a.ml_gateway = value()?,
            _ if arg.starts_with('-') => anyhow::bail!(
                "usage: demo-upstreams [ROOT] [--sophia-api ADDR] [--ml-gateway ADDR]"
            ),
            _ => a.root = PathBuf::from(arg),
        }
    }
    Ok(a)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    warden_tests::init_crypto();
    let args = args()?;
    let root = args.root;
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

    let sophia_l = TcpListener::bind(&args.sophia_api).await?;
    let ml_l = TcpListener::bind(&args.ml_gateway).await?;
    let (sophia_addr, ml_addr) = (sophia_l.local_addr()?, ml_l.local_addr()?);
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
    // Marker file: the demo script and the tests wait for it before starting the gateway.
    let bound = json!({"sophia-api": sophia_addr.to_string(), "ml-gateway": ml_addr.to_string()});
    std::fs::write(certs.join("ready.tmp"), bound.to_string())?;
    std::fs::rename(certs.join("ready.tmp"), certs.join("ready"))?;
    eprintln!(
        "demo-upstreams: sophia-api on http://{sophia_addr} (MCP on /mcp), ml-gateway on https://{ml_addr} (mTLS)"
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

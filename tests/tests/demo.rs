//! The demo stack end to end, as `scripts/demo.sh` runs it and the README shows it:
//! `policies/demo/warden.toml` (with `ai.toml` and `../sophia.toml`) in front of the
//! `demo-upstreams` binary, on ports of its own. The demo's files are copied into a
//! temporary tree (certificates are generated there) whose listeners and upstream
//! addresses are rewritten to the ports the processes bound; nothing else changes.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use warden_tests::{Gateway, client, repo_root, run_warden, target_dir};

/// The demo's client keys (in `policies/demo/secrets/demo.env.age`).
const CLIENT_KEY: &str = "demo-client-key-0b5e";
const BATCH_KEY: &str = "demo-batch-key-a41f";

/// A running demo: stand-in upstreams and the gateway on the demo config.
struct Demo {
    gw: Gateway,
    /// sophia-api as the demo upstreams bound it (to ask it directly).
    sophia: String,
    upstreams: Child,
    _dir: tempfile::TempDir,
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.upstreams.kill();
        let _ = self.upstreams.wait();
    }
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        // Certificates are the demo upstreams' output, made anew in the copy.
        if e.file_name() == "certs" {
            continue;
        }
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), dest).unwrap();
        }
    }
}

fn demo_upstreams_bin() -> PathBuf {
    let p = target_dir().join("release/demo-upstreams");
    assert!(
        p.exists(),
        "{} not found: run `cargo build --release -p warden -p warden-tests --bins`",
        p.display()
    );
    p
}

impl Demo {
    async fn start() -> Demo {
        let root = repo_root();
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        copy_tree(&root.join("policies/demo"), &d.join("policies/demo"));
        std::fs::copy(
            root.join("policies/sophia.toml"),
            d.join("policies/sophia.toml"),
        )
        .unwrap();
        std::fs::create_dir(d.join("plugins")).unwrap();
        std::os::unix::fs::symlink(root.join("plugins/target"), d.join("plugins/target")).unwrap();

        let mut upstreams = Command::new(demo_upstreams_bin())
            .arg(d)
            .args(["--sophia-api", "127.0.0.1:0", "--ml-gateway", "127.0.0.1:0"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn demo-upstreams");
        let ready = d.join("policies/demo/certs/ready");
        let deadline = Instant::now() + Duration::from_secs(30);
        let bound: Value = loop {
            if let Ok(text) = std::fs::read(&ready) {
                break serde_json::from_slice(&text).expect("the ready file is JSON");
            }
            if let Some(status) = upstreams.try_wait().unwrap() {
                panic!("demo-upstreams exited with {status}");
            }
            if Instant::now() > deadline {
                let _ = upstreams.kill();
                panic!("demo-upstreams not ready after 30 s");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let sophia = bound["sophia-api"].as_str().unwrap().to_string();
        let ml = bound["ml-gateway"].as_str().unwrap();

        let config = d.join("policies/demo/warden.toml");
        let mut text = std::fs::read_to_string(&config).unwrap();
        for (from, to) in [
            (
                "listen = \"127.0.0.1:8080\"",
                "listen = \"127.0.0.1:0\"".into(),
            ),
            (
                "listen = \"127.0.0.1:9901\"",
                "listen = \"127.0.0.1:0\"".into(),
            ),
            ("\"http://127.0.0.1:8000\"", format!("\"http://{sophia}\"")),
            ("\"https://127.0.0.1:9443\"", format!("\"https://{ml}\"")),
        ] {
            assert!(text.contains(from), "the demo config no longer has {from}");
            text = text.replace(from, &to);
        }
        std::fs::write(&config, text).unwrap();

        let (code, out, err) = run_warden(&["check", "--config", config.to_str().unwrap()]);
        assert_eq!(code, 0, "warden check on the demo config:\n{out}{err}");
        let gw = Gateway::spawn(&config, &[])
            .await
            .unwrap_or_else(|logs| panic!("the demo gateway did not start:\n{logs}"));
        Demo {
            gw,
            sophia,
            upstreams,
            _dir: dir,
        }
    }

    /// POST a JSON-RPC message (or batch) to the gateway's `/mcp`.
    async fn mcp(&self, msg: Value) -> (u16, Value) {
        post_json(&self.gw.url("/mcp"), msg).await
    }

    /// POST a chat completion request to `/v1/infer` with a client key.
    async fn infer(&self, key: &str, model: &str) -> reqwest::Response {
        client()
            .post(self.gw.url("/v1/infer"))
            .header("x-api-key", key)
            .json(&json!({"model": model, "max_tokens": 16,
                          "messages": [{"role": "user", "content": "hello warden"}]}))
            .send()
            .await
            .unwrap()
    }
}

/// POST a JSON-RPC message the way MCP clients do; the status and the JSON answer (`null`
/// for none).
async fn post_json(url: &str, msg: Value) -> (u16, Value) {
    let r = client()
        .post(url)
        .header("accept", "application/json, text/event-stream")
        .json(&msg)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    let body = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
    };
    (status, body)
}

fn tool_names(list_result: &Value) -> Vec<&str> {
    list_result["result"]["tools"]
        .as_array()
        .unwrap_or_else(|| panic!("no tools in {list_result}"))
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect()
}

/// What the demo showed before the AI routes still holds: the service token injected into
/// sophia-api, read-only local access, the ops-only admin path, and inference streamed as
/// events from ml-gateway over mTLS with the key decrypted from the age file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_reference_routes_secrets_and_token_stream() {
    let demo = Demo::start().await;
    let c = client();
    let r = c.get(demo.gw.url("/api/v1/projects")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["service_token_injected"], true, "{body}");
    assert_eq!(body["projects"][0]["name"], "atlas");
    let r = c
        .post(demo.gw.url("/api/v1/projects"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = c.get(demo.gw.url("/api/admin/users")).send().await.unwrap();
    assert_eq!(r.status(), 403);

    // `"stream": true`: tokens as server-sent events, ending with [DONE].
    let r = c
        .post(demo.gw.url("/v1/infer"))
        .header("x-api-key", CLIENT_KEY)
        .json(&json!({"model": "sophia-small", "stream": true,
                      "messages": [{"role": "user", "content": "hello warden"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    let text = r.text().await.unwrap();
    let tokens: Vec<String> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(|d| {
            serde_json::from_str::<Value>(d).unwrap()["token"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(
        tokens,
        ["You", "said:", "hello", "warden", "[DONE]"],
        "{text}"
    );

    // No client key: api-key refuses before anything reaches ml-gateway.
    let r = c
        .post(demo.gw.url("/v1/infer"))
        .json(&json!({"model": "sophia-small", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}

/// `/mcp` through mcp-guard: initialize and the read-only tools pass, `tools/list` is
/// filtered to them, `delete_project` is a 403 JSON-RPC error carrying the request id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_mcp_allows_read_tools_and_refuses_delete_project() {
    let demo = Demo::start().await;

    let (status, init) = demo
        .mcp(
            json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {},
            "clientInfo": {"name": "demo-test", "version": "1"}}}),
        )
        .await;
    assert_eq!(status, 200, "{init}");
    assert_eq!(init["id"], 1);
    assert_eq!(init["result"]["protocolVersion"], "2025-06-18");
    assert_eq!(init["result"]["serverInfo"]["name"], "sophia-mcp");
    assert!(
        init["result"]["capabilities"]["tools"].is_object(),
        "{init}"
    );
    let (status, _) = demo
        .mcp(json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))
        .await;
    assert_eq!(status, 202);

    // The server offers three tools; through the gateway a local caller sees two.
    let list = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"});
    let (status, direct) = post_json(&format!("http://{}/mcp", demo.sophia), list.clone()).await;
    assert_eq!(status, 200);
    assert_eq!(
        tool_names(&direct),
        ["search_projects", "get_project", "delete_project"]
    );
    let (status, listed) = demo.mcp(list).await;
    assert_eq!(status, 200, "{listed}");
    assert_eq!(listed["id"], 2);
    assert_eq!(tool_names(&listed), ["search_projects", "get_project"]);
    for tool in listed["result"]["tools"].as_array().unwrap() {
        assert!(tool["description"].is_string() && tool["inputSchema"].is_object());
    }

    let (status, got) = demo
        .mcp(json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call",
                    "params": {"name": "get_project", "arguments": {"id": 1}}}))
        .await;
    assert_eq!(status, 200, "{got}");
    assert_eq!(got["id"], 3);
    assert_eq!(got["result"]["isError"], false);
    let text = got["result"]["content"][0]["text"].as_str().unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(text).unwrap()["name"],
        "atlas"
    );

    let (status, refused) = demo
        .mcp(
            json!({"jsonrpc": "2.0", "id": "del-1", "method": "tools/call",
                    "params": {"name": "delete_project", "arguments": {"id": 1}}}),
        )
        .await;
    assert_eq!(status, 403, "{refused}");
    assert_eq!(refused["jsonrpc"], "2.0");
    assert_eq!(refused["id"], "del-1");
    assert_eq!(refused["error"]["code"], -32001);
    assert!(
        refused["error"]["message"]
            .as_str()
            .unwrap()
            .contains("delete_project"),
        "{refused}"
    );
    assert!(refused.get("result").is_none());

    // A batch hiding the delete is refused whole, one error per request id.
    let (status, batch) = demo
        .mcp(json!([
            {"jsonrpc": "2.0", "id": 7, "method": "tools/call",
             "params": {"name": "search_projects", "arguments": {"query": "a"}}},
            {"jsonrpc": "2.0", "id": 8, "method": "tools/call",
             "params": {"name": "delete_project", "arguments": {"id": 2}}},
        ]))
        .await;
    assert_eq!(status, 403, "{batch}");
    let ids: Vec<&Value> = batch.as_array().unwrap().iter().map(|e| &e["id"]).collect();
    assert_eq!(ids, [&json!(7), &json!(8)]);
}

/// `/v1/infer` with OpenAI-style bodies: sophia-small and sophia-large pass, other models
/// are 403 from model-guard (even one ml-gateway serves), and each client key gets 20
/// requests a minute: the 21st is 429 with `retry-after` while another key still passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_inference_allows_two_models_and_limits_each_key() {
    let demo = Demo::start().await;

    for model in ["sophia-small", "sophia-large"] {
        let r = demo.infer(CLIENT_KEY, model).await;
        assert_eq!(r.status(), 200, "{model}");
        assert_eq!(r.headers()["content-type"], "application/json");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["object"], "chat.completion");
        assert_eq!(body["model"], model);
        assert_eq!(
            body["choices"][0]["message"]["content"],
            "You said: hello warden"
        );
    }
    for model in ["gpt-4o", "sophia-experimental"] {
        let r = demo.infer(CLIENT_KEY, model).await;
        assert_eq!(r.status(), 403, "{model}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], "model_not_allowed", "{body}");
        assert_eq!(body["error"]["type"], "permission_error");
    }

    // The batch job's key: 20 requests pass, the 21st is refused. A token comes back every
    // 3 s, so the 21 requests must go out within that.
    let started = Instant::now();
    for i in 1..=20 {
        let r = demo.infer(BATCH_KEY, "sophia-small").await;
        assert_eq!(r.status(), 200, "request {i}");
        assert!(r.headers().contains_key("ratelimit"), "request {i}");
    }
    let r = demo.infer(BATCH_KEY, "sophia-small").await;
    assert_eq!(
        r.status(),
        429,
        "the 21st request, {:?} after the first",
        started.elapsed()
    );
    let retry_after: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=3).contains(&retry_after), "retry-after: {retry_after}");
    assert_eq!(r.headers()["ratelimit-policy"], "\"default\";q=20;w=60");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"], "rate limit exceeded");

    // The interactive client's bucket is its own.
    let r = demo.infer(CLIENT_KEY, "sophia-small").await;
    assert_eq!(r.status(), 200);
}

/// The commands of the README's Quickstart that talk to the demo gateway, each with the
/// answer written under it as `# …` lines (`…` stands for anything).
fn readme_demo_commands() -> Vec<(String, String)> {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).unwrap();
    let start = readme
        .find("\n## Quickstart")
        .expect("a Quickstart section")
        + 1;
    let rest = &readme[start..];
    let section = &rest[..rest[3..].find("\n## ").map_or(rest.len(), |i| i + 3)];
    let mut cases: Vec<(String, Vec<String>)> = Vec::new();
    let (mut in_sh, mut continued) = (false, false);
    for line in section.lines() {
        if line.starts_with("```") {
            in_sh = !in_sh && line.trim_end() == "```sh";
            continue;
        }
        if !in_sh {
            continue;
        }
        if continued {
            let (cmd, _) = cases.last_mut().unwrap();
            cmd.push('\n');
            cmd.push_str(line);
        } else if let Some(answer) = line.strip_prefix('#') {
            if let Some((_, lines)) = cases.last_mut() {
                lines.push(answer.strip_prefix(' ').unwrap_or(answer).to_string());
            }
        } else {
            cases.push((line.to_string(), Vec::new()));
        }
        continued = line.ends_with('\\');
    }
    cases
        .into_iter()
        .filter(|(cmd, _)| cmd.contains("127.0.0.1:8080"))
        .map(|(cmd, lines)| (cmd, lines.join("\n")))
        .collect()
}

/// Whether `actual` is `expected` with each `…` standing for any text; trailing spaces
/// and surrounding blank lines do not count.
fn answers_as_shown(actual: &str, expected: &str) -> bool {
    let norm = |s: &str| {
        s.lines()
            .map(str::trim_end)
            .collect::<Vec<_>>()
            .join("\n")
            .trim()
            .to_string()
    };
    let (actual, expected) = (norm(actual), norm(expected));
    let pieces: Vec<&str> = expected.split('…').collect();
    let Some(mut rest) = actual.strip_prefix(pieces[0]) else {
        return false;
    };
    let Some((last, middle)) = pieces[1..].split_last() else {
        return rest.is_empty();
    };
    for p in middle {
        let Some(at) = rest.find(p) else {
            return false;
        };
        rest = &rest[at + p.len()..];
    }
    rest.ends_with(last)
}

/// A shell command without its `# comments`, continuation lines joined, whitespace runs
/// collapsed: how the README and the demo script are compared.
fn command_text(text: &str) -> String {
    text.lines()
        .map(|l| l.split(" #").next().unwrap().trim_end_matches('\\'))
        .collect::<Vec<_>>()
        .join(" ")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// The README's demo commands, run in order against the demo as written (only the port
/// differs), answer what the README shows; `scripts/demo.sh` prints the same commands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readme_demo_commands_answer_as_shown() {
    let cases = readme_demo_commands();
    assert!(cases.len() >= 11, "{cases:#?}");
    let script =
        command_text(&std::fs::read_to_string(repo_root().join("scripts/demo.sh")).unwrap());
    for (cmd, _) in &cases {
        assert!(
            script.contains(&command_text(cmd)),
            "scripts/demo.sh does not print the README's\n{cmd}"
        );
    }
    let demo = Demo::start().await;
    for (cmd, expected) in &cases {
        assert!(
            !expected.is_empty(),
            "the README shows no answer for\n{cmd}"
        );
        let run = cmd.replace("127.0.0.1:8080", &demo.gw.addr.to_string());
        let out = tokio::process::Command::new("bash")
            .arg("-c")
            .arg(&run)
            .output()
            .await
            .expect("bash runs");
        let actual = String::from_utf8_lossy(&out.stdout);
        assert!(
            answers_as_shown(&actual, expected),
            "{cmd}\nanswered\n{actual}\nthe README shows\n{expected}"
        );
    }
}

use super::*;
use warden_sdk::serde_json::{Value, json};
use warden_sdk::testing::Harness;

fn config() -> Value {
    json!({ "callers": [
        { "spiffe": "spiffe://sophia/*",
          "methods": ["initialize", "notifications/*", "ping", "tools/list", "tools/call"],
          "tools": ["search_*", "get_project"] },
        { "cidr": "127.0.0.0/8", "methods": ["initialize", "tools/list"], "tools": ["search_*"] },
        { "api_key_secret": "mcp_key",
          "methods": ["*"], "tools": ["*"], "resources": ["file:///docs/*"], "prompts": ["summary"] },
    ] })
}

fn harness_with(config: Value) -> Harness<McpGuard> {
    Harness::builder()
        .route("mcp")
        .body_max(64 * 1024)
        .response_phase(true)
        .secret("mcp_key", "k-123")
        .configure(config)
        .expect("valid config")
}

fn harness() -> Harness<McpGuard> {
    harness_with(config())
}

/// A POST from a stranger address, to be given an identity.
fn post(body: &str) -> warden_sdk::RequestBuilder {
    Request::builder()
        .method("POST")
        .path("/mcp")
        .client_ip("192.0.2.7")
        .header("content-type", "application/json")
        .body(body)
}

fn sophia(body: &str) -> Request {
    post(body).uri_san("spiffe://sophia/agent").build()
}

fn call(id: Value, method: &str, params: Value) -> String {
    json!({ "jsonrpc": "2.0", "id": id, "method": method, "params": params }).to_string()
}

fn tool(id: Value, name: &str) -> String {
    call(id, "tools/call", json!({ "name": name, "arguments": {} }))
}

fn error_of(v: &Verdict) -> (u16, Value) {
    let b = v.body_json().expect("JSON-RPC error body");
    assert_eq!(
        v.response_header_str("content-type"),
        Some("application/json")
    );
    (v.status().unwrap(), b)
}

#[test]
fn needs_the_body_phase() {
    let e = Harness::<McpGuard>::builder()
        .secret("mcp_key", "k")
        .configure(config())
        .err()
        .unwrap();
    assert_eq!(e.0.len(), 1, "{e}");
    assert_eq!(e.0[0].key, "");
    assert!(e.0[0].reason.contains("body = { max ="), "{e}");
}

#[test]
fn allowed_tool_call_passes_and_others_are_refused_with_the_id() {
    let h = harness();
    assert!(
        h.evaluate(&sophia(&tool(json!(1), "search_docs")))
            .is_allow()
    );
    assert!(
        h.evaluate(&sophia(&tool(json!(2), "get_project")))
            .is_allow()
    );
    let v = h.evaluate(&sophia(&tool(json!("req-7"), "delete_project")));
    assert_eq!(
        error_of(&v),
        (
            403,
            json!({ "jsonrpc": "2.0", "id": "req-7",
                    "error": { "code": -32001, "message": "tool \"delete_project\" is not allowed" } })
        )
    );
    // Globs are anchored and case-sensitive.
    for name in [
        "Search_docs",
        "xsearch_docs",
        "get_projects",
        "get_project ",
        "",
    ] {
        assert_eq!(
            h.evaluate(&sophia(&tool(json!(3), name))).status(),
            Some(403),
            "{name:?}"
        );
    }
}

#[test]
fn method_names_are_exact() {
    let h = harness();
    assert!(
        h.evaluate(&sophia(&call(json!(1), "tools/list", json!({}))))
            .is_allow()
    );
    for m in [
        "Tools/Call",
        "TOOLS/CALL",
        " tools/call",
        "tools/call\t",
        "tools/Call",
    ] {
        let v = h.evaluate(&sophia(&call(json!(1), m, json!({ "name": "search_x" }))));
        assert_eq!(v.status(), Some(403), "{m:?}");
    }
    // Even a caller allowed every method cannot use a look-alike to skip the tool check.
    let key = |body: &str| post(body).header("x-api-key", "k-123").build();
    let v = h.evaluate(&key(&call(json!(1), "Tools/Call", json!({ "name": "x" }))));
    assert_eq!(v.status(), Some(403));
    assert!(
        v.body_json().unwrap()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("case-sensitive")
    );
}

#[test]
fn unlisted_methods() {
    let h = harness();
    // prompts/get is MCP but not listed for sophia.
    let v = h.evaluate(&sophia(&call(
        json!(5),
        "prompts/get",
        json!({ "name": "summary" }),
    )));
    assert_eq!(error_of(&v).1["id"], 5);
    assert_eq!(v.status(), Some(403));
    // A vendor method is refused by default...
    assert_eq!(
        h.evaluate(&sophia(&call(json!(6), "vendor/reindex", json!({}))))
            .status(),
        Some(403)
    );
    // ...and passes with unknown_methods = "allow", while MCP methods still need listing.
    let mut c = config();
    c["unknown_methods"] = json!("allow");
    let h = harness_with(c);
    assert!(
        h.evaluate(&sophia(&call(json!(6), "vendor/reindex", json!({}))))
            .is_allow()
    );
    assert_eq!(
        h.evaluate(&sophia(&call(
            json!(5),
            "prompts/get",
            json!({ "name": "summary" })
        )))
        .status(),
        Some(403)
    );
    assert_eq!(
        h.evaluate(&sophia(&call(
            json!(5),
            "Prompts/Get",
            json!({ "name": "summary" })
        )))
        .status(),
        Some(403)
    );
    // Method globs: notifications/* covers notifications.
    let note = json!({ "jsonrpc": "2.0", "method": "notifications/initialized" }).to_string();
    assert!(h.evaluate(&sophia(&note)).is_allow());
}

#[test]
fn callers_by_cidr_and_api_key_and_strangers() {
    let h = harness();
    let local = |body: &str| post(body).client_ip("127.0.0.1").build();
    assert!(
        h.evaluate(&local(&call(json!(1), "tools/list", json!({}))))
            .is_allow()
    );
    // First match wins: the loopback caller may not call tools, even search_*.
    assert_eq!(
        h.evaluate(&local(&tool(json!(1), "search_docs"))).status(),
        Some(403)
    );
    let key = |k: &str, body: &str| post(body).header("x-api-key", k).build();
    assert!(
        h.evaluate(&key("k-123", &tool(json!(1), "anything")))
            .is_allow()
    );
    assert!(
        h.evaluate(&key(
            "k-123",
            &call(
                json!(1),
                "resources/read",
                json!({ "uri": "file:///docs/a.md" })
            )
        ))
        .is_allow()
    );
    assert_eq!(
        h.evaluate(&key(
            "k-123",
            &call(
                json!(1),
                "resources/read",
                json!({ "uri": "file:///etc/passwd" })
            )
        ))
        .status(),
        Some(403)
    );
    assert_eq!(
        h.evaluate(&key(
            "k-123",
            &call(json!(1), "prompts/get", json!({ "name": "other" }))
        ))
        .status(),
        Some(403)
    );
    // Wrong key, look-alike trust domain, nothing at all: refused, id kept.
    for r in [
        key("k-12", &tool(json!(9), "x")),
        post(&tool(json!(9), "x"))
            .uri_san("spiffe://sophia-evil/agent")
            .build(),
        post(&tool(json!(9), "x")).build(),
    ] {
        let (status, b) = error_of(&h.evaluate(&r));
        assert_eq!(status, 403);
        assert_eq!(b["id"], 9);
        assert_eq!(b["error"]["message"], "forbidden");
    }
    // A stranger learns nothing about why, even for garbage.
    assert_eq!(error_of(&h.evaluate(&post("not json").build())).0, 403);
}

#[test]
fn batches_are_refused_whole() {
    let h = harness();
    let ok = format!(
        "[{},{}]",
        tool(json!(1), "search_a"),
        call(json!(2), "tools/list", json!({}))
    );
    assert!(h.evaluate(&sophia(&ok)).is_allow());
    let bad = format!(
        "[{},{},{}]",
        tool(json!(1), "search_a"),
        json!({ "jsonrpc": "2.0", "method": "notifications/initialized" }),
        tool(json!("b"), "drop_all")
    );
    let (status, b) = error_of(&h.evaluate(&sophia(&bad)));
    assert_eq!(status, 403);
    assert_eq!(
        b,
        json!([
            { "jsonrpc": "2.0", "id": 1, "error": { "code": -32001, "message": "batch refused: element 2 is not allowed" } },
            { "jsonrpc": "2.0", "id": "b", "error": { "code": -32001, "message": "tool \"drop_all\" is not allowed" } },
        ])
    );
}

#[test]
fn invalid_json_rpc_is_400() {
    let h = harness();
    for (body, code) in [
        ("[]", -32600),
        (r#"{"jsonrpc":"2.0","id":1}"#, -32600),
        (r#"{"jsonrpc":"2.0","id":1,"method":42}"#, -32600),
        (
            r#"{"jsonrpc":"2.0","id":1,"method":["tools/call"]}"#,
            -32600,
        ),
        (r#"{"id":1,"method":"tools/list"}"#, -32600),
        (
            r#"[{"jsonrpc":"2.0","id":1,"method":"tools/list"},"x"]"#,
            -32600,
        ),
        (
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/list","Method":"tools/call"}"#,
            -32600,
        ),
        ("", -32700),
        ("{", -32700),
        (
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/list","method":"tools/call","params":{"name":"drop"}}"#,
            -32700,
        ),
        (
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"search_a","Name":"drop"}}"#,
            -32602,
        ),
        (
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":{"x":1}}}"#,
            -32602,
        ),
        (r#"{"jsonrpc":"2.0","id":1,"method":"tools/call"}"#, -32602),
    ] {
        let (status, b) = error_of(&h.evaluate(&sophia(body)));
        assert_eq!(
            (status, b["error"]["code"].as_i64()),
            (400, Some(code)),
            "{body}: {b}"
        );
    }
    // The id is echoed when readable.
    let (_, b) = error_of(&h.evaluate(&sophia(r#"{"jsonrpc":"2.0","id":"q","method":7}"#)));
    assert_eq!(b["id"], "q");
}

#[test]
fn client_replies_need_opting_in() {
    let reply = r#"{"jsonrpc":"2.0","id":"s-1","result":{"role":"assistant"}}"#;
    let h = harness();
    let (status, b) = error_of(&h.evaluate(&sophia(reply)));
    assert_eq!((status, &b["id"]), (403, &json!("s-1")));
    let mut c = config();
    c["client_replies"] = json!("allow");
    assert!(harness_with(c).evaluate(&sophia(reply)).is_allow());
}

#[test]
fn http_methods() {
    let h = harness();
    let get = |b: warden_sdk::RequestBuilder| h.evaluate(&b.method("GET").build());
    assert!(get(Request::builder().uri_san("spiffe://sophia/a")).is_allow());
    assert_eq!(
        get(Request::builder().client_ip("192.0.2.1")).status(),
        Some(403)
    );
    // A body on GET could reach a lenient server as a call that was never checked.
    assert_eq!(
        get(Request::builder()
            .uri_san("spiffe://sophia/a")
            .body(tool(json!(1), "drop")))
        .status(),
        Some(400)
    );
    assert!(
        h.evaluate(
            &Request::builder()
                .method("DELETE")
                .uri_san("spiffe://sophia/a")
                .build()
        )
        .is_allow()
    );
    let v = h.evaluate(
        &post(&tool(json!(1), "search_a"))
            .method("PUT")
            .uri_san("spiffe://sophia/a")
            .build(),
    );
    assert_eq!(v.status(), Some(405));
    assert_eq!(v.response_header_str("allow"), Some("GET, POST, DELETE"));
    let v = h.evaluate(
        &post(&tool(json!(1), "search_a"))
            .method("post")
            .uri_san("spiffe://sophia/a")
            .build(),
    );
    assert_eq!(v.status(), Some(405), "methods are case-sensitive");
}

#[test]
fn tools_list_is_filtered_per_caller() {
    let h = harness();
    let list = call(json!(4), "tools/list", json!({}));
    let resp = Response::builder()
        .json(&json!({ "jsonrpc": "2.0", "id": 4, "result": { "tools": [
            { "name": "search_docs", "description": "d" },
            { "name": "get_project" },
            { "name": "delete_project" },
        ] } }))
        .build();
    let v = h.evaluate_response(&sophia(&list), &resp);
    let out = v.replaced_json().expect("filtered");
    let names: Vec<&str> = out["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["search_docs", "get_project"]);
    assert_eq!(out["result"]["tools"][0]["description"], "d");
    // The loopback caller sees fewer; the key holder sees all (unchanged).
    let local = post(&list).client_ip("127.0.0.1").build();
    let out = h.evaluate_response(&local, &resp).replaced_json().unwrap();
    assert_eq!(
        out["result"]["tools"],
        json!([{ "name": "search_docs", "description": "d" }])
    );
    let keyed = post(&list).header("x-api-key", "k-123").build();
    assert!(h.evaluate_response(&keyed, &resp).is_keep());
    // Other methods' responses are untouched; an unreadable tools/list fails closed.
    assert!(
        h.evaluate_response(&sophia(&tool(json!(1), "search_a")), &resp)
            .is_keep()
    );
    let broken = Response::builder()
        .body("{\"jsonrpc\":\"2.0\",\"id\":4,\"result\":{\"tools\":")
        .build();
    let out = h
        .evaluate_response(&sophia(&list), &broken)
        .replaced_json()
        .unwrap();
    assert_eq!(out["id"], 4);
    assert_eq!(out["error"]["code"], -32603);
}

#[test]
fn config_errors_name_their_keys() {
    let keys = |c: Value| -> Vec<String> {
        Harness::<McpGuard>::builder()
            .body_max(1024)
            .configure(c)
            .err()
            .expect("refused")
            .0
            .into_iter()
            .map(|e| e.key)
            .collect()
    };
    assert_eq!(keys(json!({ "callers": [] })), ["callers"]);
    assert_eq!(
        keys(json!({ "callers": [ { "cidr": "10.0.0.0/8", "methods": ["tools/call"] } ] })),
        ["callers[0].tools"]
    );
    assert_eq!(
        keys(json!({ "callers": [ { "cidr": "10.0.0.0/8", "methods": ["*"], "tools": ["*"] } ] })),
        ["callers[0].resources", "callers[0].prompts"]
    );
    assert_eq!(
        keys(json!({ "callers": [ { "cidr": "10.0.0.0/8", "methods": ["Tools/List"] } ] })),
        ["callers[0].methods[0]"]
    );
    assert_eq!(
        keys(json!({ "callers": [ { "spiffe": "spiffe://*", "methods": [] } ] })),
        ["callers[0].spiffe", "callers[0].methods"]
    );
    assert_eq!(
        keys(json!({ "callers": [ { "api_key_secret": "nope", "methods": ["ping"] } ] })),
        ["callers[0].api_key_secret"]
    );
    assert_eq!(
        keys(json!({ "callers": [ { "cidr": "10.0.0.0/8", "methods": ["ping"], "tool": [] } ] })),
        ["callers[0].tool"]
    );
    assert_eq!(
        keys(
            json!({ "callers": [ { "anyone": true, "methods": ["ping"] } ], "unknown_methods": "maybe" })
        ),
        ["unknown_methods"]
    );
}

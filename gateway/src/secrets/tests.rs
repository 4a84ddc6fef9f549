//! Unit tests of the secrets module: templates, redaction, the snapshot and the file-backed
//! providers (dir, age — with files from the `age` crate and from the real `age` CLI).
//! The Vault provider is tested against a real OpenBao in tests/tests/vault_provider.rs
//! (the store's own API) and tests/tests/secrets.rs (through the gateway).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use super::*;

const CANARY: &str = "canary-7f3a91c2-do-not-leak";

fn r(p: &str, n: &str) -> SecretRef {
    SecretRef::new(p, n)
}

fn providers(toml_text: &str) -> BTreeMap<String, ProviderConfig> {
    #[derive(serde::Deserialize)]
    struct W {
        secrets: BTreeMap<String, ProviderConfig>,
    }
    toml::from_str::<W>(toml_text)
        .expect("provider config")
        .secrets
}

fn snap(values: &[(&str, &str, &str)]) -> SecretSnapshot {
    SecretSnapshot::from_values(
        values
            .iter()
            .map(|(p, n, v)| (r(p, n), SecretBytes::new(v.as_bytes().to_vec()))),
    )
}

/// Poll `f` until it holds or `timeout` passes.
async fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    f()
}

fn value_of(store: &SecretStore, re: &SecretRef) -> Result<String, SecretsError> {
    let s = store.snapshot();
    s.get(re)
        .map(|v| String::from_utf8_lossy(v.expose()).into_owned())
}

/// Write via a temp file and rename, as deployment tools and editors do.
fn replace_file(path: &Path, content: &[u8]) {
    let tmp = path.with_extension("tmp-write");
    std::fs::write(&tmp, content).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

// ---------------------------------------------------------------------------------------
// Templates
// ---------------------------------------------------------------------------------------

#[test]
fn template_parses_literals_refs_and_escapes() {
    let t = Template::parse("Bearer ${vault:ml/inference#api_key}").unwrap();
    assert_eq!(t.refs(), vec![r("vault", "ml/inference#api_key")]);
    assert!(!t.is_literal());

    let t = Template::parse("a ${age:A} b ${file:tok} c").unwrap();
    assert_eq!(t.refs(), vec![r("age", "A"), r("file", "tok")]);

    let t = Template::parse("price: $$5 and $x {y}").unwrap();
    assert!(t.is_literal());
    let hv = t.render_header(&SecretSnapshot::empty()).unwrap();
    assert_eq!(hv, "price: $5 and $x {y}");
    assert!(!hv.is_sensitive());

    let t = Template::parse("$${not:a-ref}").unwrap();
    assert!(t.is_literal());
    assert_eq!(
        t.render(&SecretSnapshot::empty()).unwrap().expose(),
        b"${not:a-ref}"
    );

    assert!(Template::parse("").unwrap().is_literal());
}

#[test]
fn template_errors_are_clear_and_do_not_echo_the_template() {
    let cases = [
        ("Bearer sk-live-LITERAL ${vault:x#y", "unterminated ${"),
        ("sk-live-LITERAL ${}", "empty reference"),
        ("sk-live-LITERAL ${novault}", "has no provider"),
        ("sk-live-LITERAL ${:x}", "empty provider"),
        ("sk-live-LITERAL ${vault:}", "empty secret name"),
        ("sk-live-LITERAL ${va ult:x}", "may only contain"),
    ];
    for (text, want) in cases {
        let e = Template::parse(text).unwrap_err().to_string();
        assert!(e.contains(want), "{text:?}: {e}");
        assert!(
            !e.contains("sk-live-LITERAL"),
            "error echoes the template: {e}"
        );
    }
    assert!(
        Template::parse("Bearer ${vault:x#y")
            .unwrap_err()
            .to_string()
            .contains("byte 7")
    );
}

#[test]
fn template_renders_and_marks_sensitive() {
    let s = snap(&[
        ("vault", "ml/inference#api_key", CANARY),
        ("age", "K", "two"),
    ]);
    let t = Template::parse("Bearer ${vault:ml/inference#api_key}").unwrap();
    let hv = t.render_header(&s).unwrap();
    assert_eq!(hv.to_str().unwrap(), format!("Bearer {CANARY}"));
    assert!(hv.is_sensitive());
    assert!(
        !format!("{hv:?}").contains(CANARY),
        "HeaderValue Debug must hide sensitive values"
    );

    let single = Template::parse("${age:K}").unwrap();
    assert_eq!(single.render_header(&s).unwrap(), "two");
    assert!(single.render_header(&s).unwrap().is_sensitive());
    assert_eq!(single.render(&s).unwrap().expose(), b"two");

    let multi = Template::parse("${age:K}:${age:K}$$").unwrap();
    assert_eq!(multi.render(&s).unwrap().expose(), b"two:two$");

    let missing = Template::parse("${age:NOPE}").unwrap();
    let e = missing.render_header(&s).unwrap_err();
    assert_eq!(
        e,
        SecretsError::NotLoaded {
            reference: "${age:NOPE}".into()
        }
    );
}

#[test]
fn injected_headers_are_rendered_once_per_snapshot_and_replace_the_clients() {
    let injected = InjectedHeaders::new(vec![
        (
            http::HeaderName::from_static("authorization"),
            Template::parse("Bearer ${file:tok}").unwrap(),
        ),
        (
            http::HeaderName::from_static("x-key"),
            Template::parse("${file:key}").unwrap(),
        ),
    ]);
    let first = snap(&[("file", "tok", "t1"), ("file", "key", "k1")]);
    let mut a = http::HeaderMap::new();
    // A client's own values (and duplicates) under an injected name never survive.
    a.append("authorization", "Bearer forged".parse().unwrap());
    a.append("authorization", "Basic Zm9v".parse().unwrap());
    injected.apply(&first, &mut a).unwrap();
    assert_eq!(a.get_all("authorization").iter().count(), 1);
    assert_eq!(a["authorization"], "Bearer t1");
    assert_eq!(a["x-key"], "k1");
    assert!(a["authorization"].is_sensitive());

    // The same snapshot again: the very same buffers, not a new rendering.
    let mut b = http::HeaderMap::new();
    injected.apply(&first, &mut b).unwrap();
    assert_eq!(
        a["authorization"].as_bytes().as_ptr(),
        b["authorization"].as_bytes().as_ptr()
    );

    // A rotation is a new snapshot: its values, at once.
    let rotated = snap(&[("file", "tok", "t2"), ("file", "key", "k2")]);
    assert_ne!(first.generation(), rotated.generation());
    let mut c = http::HeaderMap::new();
    injected.apply(&rotated, &mut c).unwrap();
    assert_eq!(c["authorization"], "Bearer t2");
    assert_eq!(c["x-key"], "k2");

    // The sweep after a rotation drops values of any other snapshot (an idle route keeps
    // no rotated-out secret), and leaves the current snapshot's.
    injected.forget_unless(rotated.generation());
    let mut again = http::HeaderMap::new();
    injected.apply(&rotated, &mut again).unwrap();
    assert_eq!(
        again["authorization"].as_bytes().as_ptr(),
        c["authorization"].as_bytes().as_ptr(),
        "the current snapshot's values are kept"
    );
    injected.forget_unless(first.generation() + 1_000_000);
    let mut fresh = http::HeaderMap::new();
    injected.apply(&rotated, &mut fresh).unwrap();
    assert_eq!(fresh["authorization"], "Bearer t2");
    assert_ne!(
        fresh["authorization"].as_bytes().as_ptr(),
        c["authorization"].as_bytes().as_ptr(),
        "values of another generation are dropped and rendered again"
    );

    // A snapshot without one of the values: an error naming it, and nothing set.
    let partial = snap(&[("file", "tok", "t3")]);
    let mut d = http::HeaderMap::new();
    let e = injected.apply(&partial, &mut d).unwrap_err();
    assert!(e.to_string().contains("${file:key}"), "{e}");
    assert!(!e.to_string().contains("t3"));
    assert!(d.is_empty());
}

#[test]
fn redaction_in_debug_and_errors() {
    let v = SecretBytes::new(CANARY.as_bytes().to_vec());
    assert_eq!(format!("{v:?}"), "[redacted]");
    assert_eq!(format!("{:?}", Some(&v)), "Some([redacted])");
    let s = snap(&[("p", "n", CANARY)]);
    assert!(!format!("{s:?}").contains(CANARY));
    // A literal in a template may be a pasted credential: Debug shows its length only.
    let t = Template::parse(&format!("Bearer {CANARY} ${{p:n}}")).unwrap();
    assert!(!format!("{t:?}").contains(CANARY), "{t:?}");
}

#[test]
fn ct_eq_compares_whole_values() {
    let v = SecretBytes::new(b"abcdef".to_vec());
    assert!(v.ct_eq(b"abcdef"));
    assert!(!v.ct_eq(b"abcdeg"));
    assert!(!v.ct_eq(b"abcde"));
    assert!(!v.ct_eq(b"abcdefg"));
    assert!(!v.ct_eq(b""));
    assert!(SecretBytes::new(Vec::new()).ct_eq(b""));
}

#[test]
fn header_unsafe_values_are_detected() {
    assert_eq!(header_unsafe(b"ok value\twith tab"), None);
    assert!(header_unsafe(b"a\r\nX-Injected: 1").is_some());
    assert!(header_unsafe(b"a\nb").is_some());
    assert!(header_unsafe(b"a\0b").is_some());
    assert!(header_unsafe(b"a\x7fb").is_some());
    assert!(header_unsafe(b"a\x1bb").is_some());
    assert_eq!(header_unsafe("non-ascii é".as_bytes()), None);
}

// ---------------------------------------------------------------------------------------
// Config and validation
// ---------------------------------------------------------------------------------------

#[test]
fn provider_config_parses_and_is_strict() {
    let p = providers(
        r#"
        [secrets.vault]
        type = "vault"
        address = "http://127.0.0.1:8200"
        auth = { method = "token", token_file = "tok" }
        refresh = "2s"
        [secrets.v1]
        type = "vault"
        address = "https://vault.internal:8200"
        mount = "kv"
        kv_version = 1
        ca_file = "ca.pem"
        auth = { method = "approle", role_id_file = "r", secret_id_file = "s" }
        [secrets.age]
        type = "age"
        identity_file = "k"
        file = "f.age"
        [secrets.file]
        type = "dir"
        path = "/run/secrets"
        max_stale = "10m"
        "#,
    );
    let ProviderConfig::Vault(v) = &p["vault"] else {
        panic!()
    };
    assert_eq!((v.mount.as_str(), v.kv_version), ("secret", 2));
    assert_eq!(v.refresh, Duration::from_secs(2));
    assert_eq!(v.max_stale, Duration::from_secs(3600));
    let ProviderConfig::Vault(v1) = &p["v1"] else {
        panic!()
    };
    assert!(matches!(&v1.auth, VaultAuth::Approle { mount, .. } if mount == "approle"));
    assert_eq!(p["file"].max_stale(), Some(Duration::from_secs(600)));
    assert_eq!(p["age"].max_stale(), None);

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct W {
        secrets: BTreeMap<String, ProviderConfig>,
    }
    for bad in [
        "[secrets.x]\ntype = \"dir\"\npath = \"/\"\nbogus = 1",
        "[secrets.x]\ntype = \"vault\"\naddress = \"http://a\"\nauth = { method = \"token\", token_file = \"t\", extra = 1 }",
        "[secrets.x]\ntype = \"vault\"\naddress = \"http://a\"\nauth = { method = \"ldap\" }",
        "[secrets.x]\ntype = \"env\"",
        "[secrets.x]\ntype = \"vault\"\naddress = \"http://a\"\nauth = { method = \"token\", token_file = \"t\" }\nrefresh = \"soon\"",
    ] {
        assert!(toml::from_str::<W>(bad).is_err(), "accepted: {bad}");
    }
}

#[test]
fn resolve_paths_and_check_files() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = providers(
        r#"
        [secrets.vault]
        type = "vault"
        address = "ftp://x"
        kv_version = 3
        auth = { method = "token", token_file = "missing-token" }
        ca_file = "ca.pem"
        [secrets.age]
        type = "age"
        identity_file = "key.txt"
        file = "missing.age"
        [secrets.file]
        type = "dir"
        path = "nodir"
        "#,
    );
    std::fs::write(dir.path().join("ca.pem"), "not a pem").unwrap();
    std::fs::write(dir.path().join("key.txt"), format!("# comment\n{CANARY}\n")).unwrap();
    for v in p.values_mut() {
        v.resolve_paths(dir.path());
        v.resolve_paths(dir.path()); // idempotent
    }
    let ProviderConfig::Age(a) = &p["age"] else {
        panic!()
    };
    assert_eq!(a.file, dir.path().join("missing.age"));

    let keys = |name: &str| -> Vec<String> {
        let errs = p[name].check();
        for e in &errs {
            assert!(
                !e.reason.contains(CANARY),
                "file content echoed: {}",
                e.reason
            );
        }
        errs.into_iter().map(|e| e.key).collect()
    };
    assert_eq!(
        keys("vault"),
        vec!["address", "kv_version", "auth.token_file", "ca_file"]
    );
    assert_eq!(keys("age"), vec!["identity_file", "file"]);
    assert_eq!(keys("file"), vec!["path"]);
}

#[test]
fn validate_refs_checks_provider_and_name_syntax() {
    let p = providers(
        r#"
        [secrets.vault]
        type = "vault"
        address = "http://127.0.0.1:8200"
        auth = { method = "token", token_file = "t" }
        [secrets.age]
        type = "age"
        identity_file = "k"
        file = "f"
        [secrets.file]
        type = "dir"
        path = "/run/secrets"
        "#,
    );
    let good = [
        r("vault", "ml/inference#api_key"),
        r("age", "OPENAI_KEY"),
        r("file", "openai_key"),
    ];
    assert!(validate_refs(&p, &good).is_empty());
    let bad = [
        r("nope", "x"),
        r("vault", "ml/inference"),
        r("vault", "/abs#k"),
        r("vault", "a/../b#k"),
        r("vault", "p#"),
        r("age", "has space"),
        r("file", "../etc/passwd"),
        r("file", "..data"),
    ];
    let errs = validate_refs(&p, &bad);
    assert_eq!(errs.len(), bad.len(), "{errs:?}");
    assert!(
        errs[0]
            .to_string()
            .contains("unknown secret provider \"nope\" (configured: age, file, vault)"),
        "{}",
        errs[0]
    );
    assert!(
        errs[1]
            .to_string()
            .starts_with("${vault:ml/inference}: a vault secret name is path#key"),
        "{}",
        errs[1]
    );
}

// ---------------------------------------------------------------------------------------
// dir provider
// ---------------------------------------------------------------------------------------

fn dir_provider(path: &Path, extra: &str) -> BTreeMap<String, ProviderConfig> {
    providers(&format!(
        "[secrets.file]\ntype = \"dir\"\npath = {:?}\n{extra}",
        path.to_str().unwrap()
    ))
}

#[tokio::test]
async fn dir_reads_trims_one_newline_and_rotates_on_replace() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    std::fs::write(d.join("token"), "first\n").unwrap();
    std::fs::write(d.join("crlf"), "v\r\n").unwrap();
    let refs = vec![r("file", "token"), r("file", "crlf")];
    let store = SecretStore::start(&dir_provider(d, ""), Path::new("/"), refs, true)
        .await
        .unwrap();
    assert_eq!(value_of(&store, &r("file", "token")).unwrap(), "first");
    assert_eq!(value_of(&store, &r("file", "crlf")).unwrap(), "v");

    // A request holding the old snapshot keeps seeing the old value.
    let held = store.snapshot();
    // Docker-style: the file is replaced.
    replace_file(&d.join("token"), b"second\n");
    assert!(
        eventually(Duration::from_secs(5), || value_of(
            &store,
            &r("file", "token")
        )
        .unwrap()
            == "second")
        .await
    );
    assert_eq!(held.get(&r("file", "token")).unwrap().expose(), b"first");
    // In-place rewrite.
    std::fs::write(d.join("token"), "third").unwrap();
    assert!(
        eventually(Duration::from_secs(5), || value_of(
            &store,
            &r("file", "token")
        )
        .unwrap()
            == "third")
        .await
    );
}

#[tokio::test]
async fn dir_rotates_on_kubernetes_symlink_swap() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    // The layout kubelet's AtomicWriter produces.
    std::fs::create_dir(d.join("..2024_01_01_00_00_00.1")).unwrap();
    std::fs::write(d.join("..2024_01_01_00_00_00.1/api_key"), "k8s-one").unwrap();
    std::os::unix::fs::symlink("..2024_01_01_00_00_00.1", d.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/api_key", d.join("api_key")).unwrap();

    let store = SecretStore::start(
        &dir_provider(d, ""),
        Path::new("/"),
        vec![r("file", "api_key")],
        true,
    )
    .await
    .unwrap();
    assert_eq!(value_of(&store, &r("file", "api_key")).unwrap(), "k8s-one");

    // New timestamped dir, new ..data_tmp link, atomic rename over ..data, old dir removed.
    std::fs::create_dir(d.join("..2024_01_01_00_05_00.2")).unwrap();
    std::fs::write(d.join("..2024_01_01_00_05_00.2/api_key"), "k8s-two").unwrap();
    std::os::unix::fs::symlink("..2024_01_01_00_05_00.2", d.join("..data_tmp")).unwrap();
    std::fs::rename(d.join("..data_tmp"), d.join("..data")).unwrap();
    std::fs::remove_dir_all(d.join("..2024_01_01_00_00_00.1")).unwrap();
    assert!(
        eventually(Duration::from_secs(5), || value_of(
            &store,
            &r("file", "api_key")
        )
        .unwrap()
            == "k8s-two")
        .await
    );
}

#[tokio::test]
async fn dir_refuses_header_invalid_values_keeping_the_old_one() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    std::fs::write(d.join("bad"), format!("{CANARY}\r\nX-Evil: 1")).unwrap();
    let errs = SecretStore::start(
        &dir_provider(d, ""),
        Path::new("/"),
        vec![r("file", "bad")],
        false,
    )
    .await
    .unwrap_err();
    assert_eq!(errs.len(), 1);
    assert!(
        matches!(&errs[0], SecretsError::InvalidValue { reference, .. } if reference == "${file:bad}")
    );
    assert!(!errs[0].to_string().contains(CANARY));

    std::fs::write(d.join("empty"), "\n").unwrap();
    let errs = SecretStore::start(
        &dir_provider(d, ""),
        Path::new("/"),
        vec![r("file", "empty")],
        false,
    )
    .await
    .unwrap_err();
    assert_eq!(
        errs[0].to_string(),
        "${file:empty}: value refused because it is empty"
    );

    std::fs::write(d.join("tok"), "good").unwrap();
    let store = SecretStore::start(
        &dir_provider(d, ""),
        Path::new("/"),
        vec![r("file", "tok")],
        true,
    )
    .await
    .unwrap();
    replace_file(
        &d.join("tok"),
        format!("{CANARY}\nsecond-line\n").as_bytes(),
    );
    assert!(
        eventually(Duration::from_secs(5), || store.status()[0]
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("line feed")))
        .await
    );
    assert_eq!(value_of(&store, &r("file", "tok")).unwrap(), "good");
    let st = format!("{:?}", store.status());
    assert!(!st.contains(CANARY), "{st}");
    // A fixed file is picked up again.
    replace_file(&d.join("tok"), b"better\n");
    assert!(
        eventually(Duration::from_secs(5), || value_of(
            &store,
            &r("file", "tok")
        )
        .unwrap()
            == "better")
        .await
    );
    assert!(store.status()[0].last_error.is_none());
}

#[tokio::test]
async fn stale_after_max_stale_then_recovers() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("mount");
    std::fs::create_dir(&d).unwrap();
    std::fs::write(d.join("tok"), "v1").unwrap();
    let store = SecretStore::start(
        &dir_provider(&d, "max_stale = \"600ms\""),
        Path::new("/"),
        vec![r("file", "tok")],
        true,
    )
    .await
    .unwrap();
    let t = Template::parse("Bearer ${file:tok}").unwrap();
    assert_eq!(t.render_header(&store.snapshot()).unwrap(), "Bearer v1");
    assert!(store.is_ready());
    // The proxy's path: values rendered once and reused while the snapshot is current.
    let injected = InjectedHeaders::new(vec![(http::header::AUTHORIZATION, t.clone())]);
    let mut h = http::HeaderMap::new();
    injected.apply(&store.snapshot(), &mut h).unwrap();
    assert_eq!(h["authorization"], "Bearer v1");

    // The mount disappears: the last-known-good value serves until max_stale…
    std::fs::rename(&d, tmp.path().join("gone")).unwrap();
    let failing_at = Instant::now();
    assert!(
        eventually(Duration::from_secs(3), || store.status()[0]
            .last_error
            .is_some())
        .await
    );
    if failing_at.elapsed() < Duration::from_millis(500) {
        assert_eq!(t.render_header(&store.snapshot()).unwrap(), "Bearer v1");
    }
    // … then the reference is stale and rendering fails with a value-free error.
    assert!(
        eventually(Duration::from_secs(3), || t
            .render_header(&store.snapshot())
            .is_err())
        .await
    );
    let e = t.render_header(&store.snapshot()).unwrap_err();
    assert_eq!(
        e,
        SecretsError::Stale {
            reference: "${file:tok}".into()
        }
    );
    assert!(store.status()[0].stale);
    assert!(!store.is_ready());
    // No new snapshot was made (the value did not change), so the reused rendering is of
    // the current generation: it must still not outlive max_stale.
    let mut h = http::HeaderMap::new();
    assert_eq!(
        injected.apply(&store.snapshot(), &mut h).unwrap_err(),
        SecretsError::Stale {
            reference: "${file:tok}".into()
        }
    );
    assert!(h.is_empty(), "a failed injection sets nothing");

    // The mount comes back: fresh again.
    std::fs::rename(tmp.path().join("gone"), &d).unwrap();
    assert!(
        eventually(Duration::from_secs(3), || t
            .render_header(&store.snapshot())
            .is_ok())
        .await
    );
    assert!(store.is_ready());
}

#[tokio::test]
async fn missing_refs_fail_start_naming_each_reference() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("present"), CANARY).unwrap();
    let refs = vec![
        r("file", "present"),
        r("file", "absent"),
        r("file", "also-absent"),
        r("nope", "x"),
    ];
    let errs = SecretStore::start(&dir_provider(tmp.path(), ""), Path::new("/"), refs, false)
        .await
        .unwrap_err();
    let text: Vec<String> = errs.iter().map(ToString::to_string).collect();
    assert_eq!(text.len(), 3, "{text:?}");
    assert!(
        text.iter()
            .any(|t| t.starts_with("${file:absent} does not exist")),
        "{text:?}"
    );
    assert!(
        text.iter()
            .any(|t| t.starts_with("${file:also-absent} does not exist")),
        "{text:?}"
    );
    assert!(
        text.iter()
            .any(|t| t.starts_with("${nope:x}: unknown secret provider")),
        "{text:?}"
    );
    assert!(text.iter().all(|t| !t.contains(CANARY)));

    // `check` reports every reference instead of failing.
    let refs = vec![r("file", "present"), r("file", "absent"), r("nope", "x")];
    let st = SecretStore::check(&dir_provider(tmp.path(), ""), Path::new("/"), refs).await;
    let by: BTreeMap<&str, &RefStatus> = st.iter().map(|s| (s.reference.as_str(), s)).collect();
    assert!(by["${file:present}"].resolved);
    assert!(!by["${file:absent}"].resolved);
    assert!(by["${file:absent}"].last_error.is_some());
    assert!(!by["${nope:x}"].resolved);
    assert!(!format!("{st:?}").contains(CANARY));
}

#[tokio::test]
async fn refresh_counts_metrics_per_provider() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("tok"), "x").unwrap();
    let name = "metrics-test-provider";
    let p = providers(&format!(
        "[secrets.{name}]\ntype = \"dir\"\npath = {:?}\n",
        tmp.path().to_str().unwrap()
    ));
    let store = SecretStore::start(&p, Path::new("/"), vec![r(name, "tok")], false)
        .await
        .unwrap();
    store.refresh().await.unwrap();
    std::fs::remove_file(tmp.path().join("tok")).unwrap();
    let errs = store.refresh().await.unwrap_err();
    assert_eq!(errs.len(), 1);
    let text = crate::telemetry::metrics().encode();
    let line = |metric: &str| {
        text.lines()
            .find(|l| l.starts_with(metric) && l.contains(&format!("provider=\"{name}\"")))
            .unwrap_or_else(|| panic!("{metric} missing in\n{text}"))
            .to_string()
    };
    assert!(
        line("warden_secret_refresh_success_total").ends_with(" 2"),
        "{}",
        line("warden_secret_refresh_success_total")
    );
    // A missing file is a mistake, not an outage: its own label and its own message.
    let failure = line("warden_secret_refresh_failure_total");
    assert!(failure.contains("reason=\"not_found\""), "{failure}");
    assert!(failure.ends_with(" 1"), "{failure}");
    assert!(
        errs[0].to_string().contains("does not exist"),
        "{}",
        errs[0]
    );
    assert!(
        line("warden_secret_last_success_timestamp_seconds")
            .split(' ')
            .next_back()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            > 1_600_000_000
    );
    // The value is still served (no max_stale configured for the dir).
    assert_eq!(value_of(&store, &r(name, "tok")).unwrap(), "x");
    // The directory itself gone: the provider is unavailable, counted apart.
    std::fs::remove_dir_all(tmp.path()).unwrap();
    let errs = store.refresh().await.unwrap_err();
    assert!(
        errs[0].to_string().contains("cannot be resolved"),
        "{}",
        errs[0]
    );
    let text = crate::telemetry::metrics().encode();
    assert!(
        text.lines()
            .any(|l| l.starts_with("warden_secret_refresh_failure_total")
                && l.contains(&format!("provider=\"{name}\""))
                && l.contains("reason=\"unavailable\"")),
        "{text}"
    );
}

#[tokio::test]
async fn dropping_the_store_stops_background_tasks() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("tok"), "x").unwrap();
    let store = SecretStore::start(
        &dir_provider(tmp.path(), ""),
        Path::new("/"),
        vec![r("file", "tok")],
        true,
    )
    .await
    .unwrap();
    let weak = store.inner_weak();
    drop(store);
    assert!(
        eventually(Duration::from_secs(3), || weak.strong_count() == 0).await,
        "background task still holds the store"
    );
}

// ---------------------------------------------------------------------------------------
// age provider
// ---------------------------------------------------------------------------------------

#[test]
fn env_lines_parse_and_errors_do_not_echo() {
    let plain = format!("# comment\n\n  A = one \nB=two=three\r\nC=\nD={CANARY}\n");
    // (C= parses; the store refuses the empty value when it is referenced.)
    let v = agefile::parse_env(plain.as_bytes()).unwrap();
    let got: Vec<(&str, &[u8])> = v.iter().map(|(k, v)| (k.as_str(), v.expose())).collect();
    assert_eq!(
        got,
        vec![
            ("A", &b"one"[..]),
            ("B", b"two=three"),
            ("C", b""),
            ("D", CANARY.as_bytes())
        ]
    );
    for (bad, want) in [
        (format!("A=1\n{CANARY}\n"), "line 2: expected KEY=VALUE"),
        (format!("A=1\nbad key={CANARY}\n"), "line 2: invalid key"),
        (format!("A=1\nA={CANARY}\n"), "line 2: duplicate key A"),
    ] {
        let e = agefile::parse_env(bad.as_bytes()).unwrap_err();
        assert!(e.contains(want), "{e}");
        assert!(!e.contains(CANARY), "{e}");
    }
}

struct AgeFixture {
    _tmp: tempfile::TempDir,
    dir: std::path::PathBuf,
    identity: age::x25519::Identity,
}

impl AgeFixture {
    fn new() -> Self {
        use secrecy::ExposeSecret;
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let identity = age::x25519::Identity::generate();
        let key = format!(
            "# created: test\n# public key: {}\n{}\n",
            identity.to_public(),
            identity.to_string().expose_secret()
        );
        std::fs::write(dir.join("key.txt"), key).unwrap();
        AgeFixture {
            _tmp: tmp,
            dir,
            identity,
        }
    }

    fn encrypt(&self, plain: &str, armor: bool) -> Vec<u8> {
        let rcpt = self.identity.to_public();
        if armor {
            age::encrypt_and_armor(&rcpt, plain.as_bytes())
                .unwrap()
                .into_bytes()
        } else {
            age::encrypt(&rcpt, plain.as_bytes()).unwrap()
        }
    }

    fn providers(&self) -> BTreeMap<String, ProviderConfig> {
        providers(
            "[secrets.age]\ntype = \"age\"\nidentity_file = \"key.txt\"\nfile = \"prod.env.age\"\n",
        )
    }
}

#[tokio::test]
async fn age_crate_files_binary_and_armored_rotate_and_keep_old_on_corruption() {
    let fx = AgeFixture::new();
    let file = fx.dir.join("prod.env.age");
    std::fs::write(
        &file,
        fx.encrypt(&format!("OPENAI_KEY={CANARY}\nDB=pw1\n"), false),
    )
    .unwrap();
    let refs = vec![r("age", "OPENAI_KEY"), r("age", "DB")];
    let store = SecretStore::start(&fx.providers(), &fx.dir, refs, true)
        .await
        .unwrap();
    assert_eq!(value_of(&store, &r("age", "OPENAI_KEY")).unwrap(), CANARY);
    assert_eq!(value_of(&store, &r("age", "DB")).unwrap(), "pw1");

    // Hot rotation with an armored file.
    replace_file(&file, &fx.encrypt("OPENAI_KEY=rotated\nDB=pw2\n", true));
    assert!(
        eventually(Duration::from_secs(5), || value_of(&store, &r("age", "DB"))
            .unwrap()
            == "pw2")
        .await
    );
    assert_eq!(
        value_of(&store, &r("age", "OPENAI_KEY")).unwrap(),
        "rotated"
    );

    // Corrupt file: old values kept, clear error.
    replace_file(&file, b"age-encryption.org/v1\n-> garbage\n");
    assert!(
        eventually(Duration::from_secs(5), || store
            .status()
            .iter()
            .all(|s| s.last_error.is_some()))
        .await
    );
    let err = store.status()[0].last_error.clone().unwrap();
    assert!(
        err.contains("prod.env.age")
            && (err.contains("not a valid age file") || err.contains("cannot decrypt")),
        "{err}"
    );
    assert_eq!(value_of(&store, &r("age", "DB")).unwrap(), "pw2");

    // Encrypted to another key: old values kept, clear error.
    let other = age::x25519::Identity::generate();
    replace_file(
        &file,
        &age::encrypt(&other.to_public(), b"DB=intruder\n").unwrap(),
    );
    assert!(
        eventually(Duration::from_secs(5), || store.status()[0]
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("cannot decrypt")))
        .await,
        "{:?}",
        store.status()
    );
    assert_eq!(value_of(&store, &r("age", "DB")).unwrap(), "pw2");

    // Malformed plaintext: whole file refused, the line number named, the value not.
    replace_file(&file, &fx.encrypt(&format!("DB=pw3\n{CANARY}\n"), false));
    assert!(
        eventually(Duration::from_secs(5), || store.status()[0]
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("line 2")))
        .await
    );
    assert_eq!(value_of(&store, &r("age", "DB")).unwrap(), "pw2");
    assert!(!format!("{:?}", store.status()).contains(CANARY));

    // A key that disappears from the file: that reference fails, the other rotates.
    replace_file(&file, &fx.encrypt("DB=pw4\n", false));
    assert!(
        eventually(Duration::from_secs(5), || value_of(&store, &r("age", "DB"))
            .unwrap()
            == "pw4")
        .await
    );
    assert_eq!(
        value_of(&store, &r("age", "OPENAI_KEY")).unwrap(),
        "rotated"
    );
    let st = store.status();
    let ok = st
        .iter()
        .find(|s| s.reference == "${age:OPENAI_KEY}")
        .unwrap();
    assert!(
        ok.last_error
            .as_deref()
            .is_some_and(|e| e.contains("key OPENAI_KEY not found")),
        "{ok:?}"
    );
}

#[tokio::test]
async fn age_wrong_identity_fails_start_clearly() {
    let fx = AgeFixture::new();
    let other = age::x25519::Identity::generate();
    std::fs::write(
        fx.dir.join("prod.env.age"),
        age::encrypt(&other.to_public(), b"K=v\n").unwrap(),
    )
    .unwrap();
    let errs = SecretStore::start(&fx.providers(), &fx.dir, vec![r("age", "K")], false)
        .await
        .unwrap_err();
    assert_eq!(errs.len(), 1);
    let e = errs[0].to_string();
    assert!(
        e.starts_with("${age:K} cannot be resolved:") && e.contains("cannot decrypt"),
        "{e}"
    );
}

fn have(cmd: &str) -> bool {
    Command::new(cmd).arg("--version").output().is_ok()
}

#[tokio::test]
async fn age_cli_files_binary_and_armored() {
    assert!(
        have("age") && have("age-keygen"),
        "the real age CLI is required (scripts/setup.sh installs it)"
    );
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let out = Command::new("age-keygen")
        .arg("-o")
        .arg(d.join("key.txt"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new("age-keygen")
        .arg("-y")
        .arg(d.join("key.txt"))
        .output()
        .unwrap();
    let recipient = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(recipient.starts_with("age1"), "{recipient}");
    let encrypt = |plain: &str, armor: bool, out: &Path| {
        std::fs::write(d.join("plain.env"), plain).unwrap();
        let mut c = Command::new("age");
        c.arg("-r").arg(&recipient).arg("-o").arg(out);
        if armor {
            c.arg("-a");
        }
        let o = c.arg(d.join("plain.env")).output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        std::fs::remove_file(d.join("plain.env")).unwrap();
    };
    encrypt(
        "# from the age CLI\nAPI_KEY=cli-binary\n",
        false,
        &d.join("prod.env.age"),
    );
    let p = providers(
        "[secrets.age]\ntype = \"age\"\nidentity_file = \"key.txt\"\nfile = \"prod.env.age\"\n",
    );
    let store = SecretStore::start(&p, d, vec![r("age", "API_KEY")], true)
        .await
        .unwrap();
    assert_eq!(
        value_of(&store, &r("age", "API_KEY")).unwrap(),
        "cli-binary"
    );

    // Re-encrypt armored straight over the watched file (age writes in place).
    encrypt("API_KEY=cli-armored\n", true, &d.join("prod.env.age"));
    assert!(
        std::fs::read_to_string(d.join("prod.env.age"))
            .unwrap()
            .starts_with("-----BEGIN AGE ENCRYPTED FILE-----")
    );
    assert!(
        eventually(Duration::from_secs(5), || value_of(
            &store,
            &r("age", "API_KEY")
        )
        .unwrap()
            == "cli-armored")
        .await
    );
}

// ---------------------------------------------------------------------------------------
// Template parser properties
// ---------------------------------------------------------------------------------------

mod template_properties {
    use super::*;
    use proptest::prelude::*;

    #[derive(Clone, Debug)]
    enum Piece {
        Lit(String),
        Ref(String, String),
    }

    fn piece() -> impl Strategy<Value = Piece> {
        prop_oneof![
            "[ -~]{0,12}".prop_map(Piece::Lit),
            ("[A-Za-z0-9_-]{1,8}", "[a-zA-Z0-9/#._:-]{1,16}").prop_map(|(p, n)| Piece::Ref(p, n)),
        ]
    }

    fn source(pieces: &[Piece]) -> String {
        pieces
            .iter()
            .map(|p| match p {
                Piece::Lit(s) => s.replace('$', "$$"),
                Piece::Ref(p, n) => format!("${{{p}:{n}}}"),
            })
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2048, ..ProptestConfig::default() })]

        /// Whatever is written, parsing neither panics nor accepts a reference that does not
        /// print back to itself.
        #[test]
        fn parse_never_panics_and_refs_round_trip(s in "\\PC{0,48}") {
            if let Ok(t) = Template::parse(&s) {
                for r in t.refs() {
                    let again = Template::parse(&r.to_string()).unwrap();
                    prop_assert_eq!(again.refs(), vec![r]);
                }
            }
        }

        /// A template built from pieces parses back to the same references, and a
        /// literal-only one renders to its text with `$$` unescaped.
        #[test]
        fn built_templates_parse_back(pieces in prop::collection::vec(piece(), 0..6)) {
            let text = source(&pieces);
            let t = Template::parse(&text).unwrap();
            let want: Vec<SecretRef> = pieces
                .iter()
                .filter_map(|p| match p {
                    Piece::Ref(p, n) => Some(SecretRef::new(p, n)),
                    Piece::Lit(_) => None,
                })
                .collect();
            prop_assert_eq!(t.is_literal(), want.is_empty());
            prop_assert_eq!(t.refs(), want);
            if t.is_literal() {
                let lit: String = pieces
                    .iter()
                    .map(|p| match p {
                        Piece::Lit(s) => s.as_str(),
                        Piece::Ref(..) => "",
                    })
                    .collect();
                let rendered = t.render(&SecretSnapshot::empty()).unwrap();
                prop_assert_eq!(rendered.expose(), lit.as_bytes());
            }
        }

        /// Errors never echo literal text: it may be a pasted credential.
        #[test]
        fn errors_never_echo_literal_text(tail in "\\PC{0,24}") {
            let secret = "sk-live-0d2f9c1b";
            if let Err(e) = Template::parse(&format!("{secret} {tail}")) {
                prop_assert!(!e.to_string().contains(secret), "{}", e);
            }
        }
    }
}

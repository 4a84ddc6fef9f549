//! `warden plugin new`, `pin` and `keygen` as a plugin author meets them: the crate `new`
//! writes is built outside this repository with the commands its README gives, passes its
//! native tests and `warden plugin test`, and the table `pin` prints is accepted by
//! `warden check` as pasted, signed or not.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use warden_tests::{repo_root, run_warden, target_dir, warden_bin};

/// `warden ARGS…` in `dir`: (exit code, stdout, stderr).
fn warden_in(dir: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(warden_bin())
        .current_dir(dir)
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run warden");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The target dir of the generated crates: under the workspace's, and the same on every
/// run, so a rerun only rebuilds what changed. The crate itself does not depend on it.
fn scaffold_target() -> PathBuf {
    target_dir().join("scaffold-test")
}

/// `cargo ARGS…` in `dir`, as a plugin author's shell runs it; panics with the output on
/// failure.
fn cargo(dir: &Path, args: &[&str]) {
    let mut cmd = Command::new("cargo");
    cmd.current_dir(dir)
        .args(args)
        .env("CARGO_TARGET_DIR", scaffold_target());
    // Cargo describes *this* package's build to its test processes; none of that may
    // leak into the nested build. RUSTUP_TOOLCHAIN would override the crate's own
    // rust-toolchain.toml, which is part of what is under test.
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy();
        if k.starts_with("CARGO_PKG_")
            || [
                "CARGO",
                "CARGO_MANIFEST_DIR",
                "CARGO_MANIFEST_PATH",
                "CARGO_CRATE_NAME",
                "CARGO_BIN_NAME",
                "CARGO_PRIMARY_PACKAGE",
                "CARGO_TARGET_TMPDIR",
                "CARGO_BUILD_TARGET",
                "RUSTUP_TOOLCHAIN",
            ]
            .contains(&k.as_ref())
        {
            cmd.env_remove(k.as_ref());
        }
    }
    let out = cmd.output().expect("run cargo");
    assert!(
        out.status.success(),
        "cargo {} in {} failed:\n{}\n{}",
        args.join(" "),
        dir.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn sha256_of(file: &Path) -> String {
    let out = Command::new("sha256sum")
        .arg(file)
        .output()
        .expect("sha256sum");
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// A gateway config around a pasted `[plugins.*]` block, and what `warden check` says.
fn check_with(dir: &Path, policy_settings: &str, block: &str) -> (i32, String) {
    let cfg = format!(
        r#"
[gateway]
listen = "127.0.0.1:0"

[admin]
listen = "127.0.0.1:0"

{policy_settings}

[upstreams.api]
url = "http://127.0.0.1:9"

{block}

[[routes]]
name = "api"
match = {{ path_prefix = "/" }}
upstream = "api"

[[routes.policies]]
plugin = "demo-guard"
config = {{ require_header = "x-request-id", allow_paths = ["/v1"] }}
"#
    );
    let path = dir.join("warden.toml");
    std::fs::write(&path, cfg).unwrap();
    let (code, out, err) = run_warden(&["check", "--config", path.to_str().unwrap()]);
    (code, format!("{out}{err}"))
}

#[test]
fn a_new_plugin_builds_outside_the_repository_and_passes_its_tests_pin_and_check() {
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path().canonicalize().unwrap();
    assert!(
        !work.starts_with(repo_root()),
        "the crate must be built outside any workspace"
    );

    let (code, out, err) = warden_in(&work, &["plugin", "new", "demo-guard"]);
    assert_eq!(code, 0, "{out}{err}");
    let wasm_rel = "target/wasm32-unknown-unknown/release/demo_guard.wasm";
    for next in [
        "cd demo-guard",
        "cargo build --release --target wasm32-unknown-unknown",
        &format!("warden plugin test {wasm_rel} cases.toml"),
    ] {
        assert!(
            out.contains(next),
            "{next:?} not among the next steps:\n{out}"
        );
    }
    let krate = work.join("demo-guard");
    for f in [
        "Cargo.toml",
        "rust-toolchain.toml",
        "src/lib.rs",
        "cases.toml",
        "README.md",
    ] {
        assert!(krate.join(f).is_file(), "{f} missing");
    }
    let toolchain: toml::Table =
        toml::from_str(&std::fs::read_to_string(krate.join("rust-toolchain.toml")).unwrap())
            .unwrap();
    let ours: toml::Table =
        toml::from_str(&std::fs::read_to_string(repo_root().join("rust-toolchain.toml")).unwrap())
            .unwrap();
    assert_eq!(
        toolchain["toolchain"]["channel"],
        ours["toolchain"]["channel"]
    );
    let readme = std::fs::read_to_string(krate.join("README.md")).unwrap();
    assert!(readme.contains(&format!("warden plugin test {wasm_rel} cases.toml")));

    // Exactly what the README tells the author to run.
    cargo(
        &krate,
        &["build", "--release", "--target", "wasm32-unknown-unknown"],
    );
    cargo(&krate, &["test", "--release"]);
    let wasm = scaffold_target().join("wasm32-unknown-unknown/release/demo_guard.wasm");
    assert!(wasm.is_file(), "{} not built", wasm.display());
    let wasm_s = wasm.to_str().unwrap();

    let (code, out, err) = warden_in(&krate, &["plugin", "test", wasm_s, "cases.toml"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(" 0 failed") && !out.contains("FAIL"), "{out}");
    assert!(out.contains("config: a typo is an unknown key"), "{out}");

    // `pin`: stdout is the table alone, as TOML, with the file's hash.
    let (code, block, err) = run_warden(&["plugin", "pin", wasm_s]);
    assert_eq!(code, 0, "{block}{err}");
    let t: toml::Table = toml::from_str(&block).unwrap_or_else(|e| panic!("{e}:\n{block}"));
    let p = &t["plugins"]["demo-guard"];
    assert_eq!(p["file"].as_str(), Some(wasm_s));
    assert_eq!(p["sha256"].as_str(), Some(sha256_of(&wasm).as_str()));
    assert!(p.get("signature").is_none(), "{block}");
    let (code, out) = check_with(&work, "", &block);
    assert_eq!(code, 0, "{out}");

    // `--name` overrides the table name.
    let (code, named, _) = run_warden(&["plugin", "pin", "--name", "edge guard", wasm_s]);
    assert_eq!(code, 0);
    let t: toml::Table = toml::from_str(&named).unwrap();
    assert!(t["plugins"].get("edge guard").is_some(), "{named}");

    // `pin --sign`: writes FILE.sig, which `verify` and a signature-requiring gateway accept.
    let keys = tempfile::tempdir().unwrap();
    let key = keys.path().join("team.key");
    let (code, _, err) = run_warden(&["plugin", "keygen", "--out", key.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let public = std::fs::read_to_string(keys.path().join("team.key.pub")).unwrap();
    let public = public.trim();
    let sig = PathBuf::from(format!("{wasm_s}.sig"));
    let _ = std::fs::remove_file(&sig);
    let (code, signed, err) =
        run_warden(&["plugin", "pin", "--sign", key.to_str().unwrap(), wasm_s]);
    assert_eq!(code, 0, "{signed}{err}");
    assert!(sig.is_file());
    assert!(
        signed.contains(&format!("trusted_keys = [\"{public}\"]")),
        "{signed}"
    );
    let t: toml::Table = toml::from_str(&signed).unwrap_or_else(|e| panic!("{e}:\n{signed}"));
    let p = &t["plugins"]["demo-guard"];
    assert_eq!(p["signature"].as_str(), sig.to_str());
    assert_eq!(p["sha256"].as_str(), Some(sha256_of(&wasm).as_str()));
    let (code, out, _) = run_warden(&["plugin", "verify", "--public-key", public, wasm_s]);
    assert_eq!(code, 0, "{out}");
    let trusted = format!("[policy]\ntrusted_keys = [\"{public}\"]\nrequire_signatures = true");
    let (code, out) = check_with(&work, &trusted, &signed);
    assert_eq!(code, 0, "{out}");
    // The unsigned table works too: the gateway picks up FILE.sig by itself.
    let (code, out) = check_with(&work, &trusted, &block);
    assert_eq!(code, 0, "{out}");
    // And a key it does not trust is refused.
    let other = format!("[policy]\ntrusted_keys = [\"{}\"]", "11".repeat(32));
    let (code, out) = check_with(&work, &other, &signed);
    assert_ne!(code, 0, "{out}");
    std::fs::remove_file(&sig).unwrap();
}

#[test]
fn new_refuses_bad_names_occupied_directories_and_a_missing_sdk() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    for bad in ["9lives", "my policy", "../escape", "fn", "warden-sdk", ""] {
        let (code, out, err) = warden_in(dir, &["plugin", "new", bad]);
        assert_eq!(code, 1, "{bad:?}: {out}{err}");
        assert!(
            err.contains("not a valid plugin crate name"),
            "{bad:?}: {err}"
        );
    }
    assert_eq!(
        std::fs::read_dir(dir).unwrap().count(),
        0,
        "nothing written"
    );

    std::fs::create_dir(dir.join("taken")).unwrap();
    std::fs::write(dir.join("taken/notes.txt"), "mine").unwrap();
    let (code, _, err) = warden_in(dir, &["plugin", "new", "taken"]);
    assert_eq!(code, 1);
    assert!(err.contains("not an empty directory"), "{err}");
    assert_eq!(
        std::fs::read_to_string(dir.join("taken/notes.txt")).unwrap(),
        "mine"
    );

    // An empty directory is fine, and so is --dir to a directory that does not exist yet.
    std::fs::create_dir(dir.join("empty")).unwrap();
    let (code, out, err) = warden_in(dir, &["plugin", "new", "empty"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(dir.join("empty/cases.toml").is_file());
    let (code, out, err) = warden_in(dir, &["plugin", "new", "nested", "--dir", "a/b"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("cd a/b/nested"), "{out}");
    let cargo_toml = std::fs::read_to_string(dir.join("a/b/nested/Cargo.toml")).unwrap();
    let t: toml::Table = toml::from_str(&cargo_toml).unwrap();
    let sdk = repo_root().join("sdk").canonicalize().unwrap();
    assert_eq!(
        t["dependencies"]["warden-sdk"]["path"].as_str(),
        sdk.to_str()
    );

    let (code, _, err) = warden_in(dir, &["plugin", "new", "x", "--sdk", "/nonexistent/sdk"]);
    assert_eq!(code, 1);
    assert!(err.contains("--sdk /nonexistent/sdk"), "{err}");
    let (code, _, err) = warden_in(dir, &["plugin", "new", "y", "--sdk", "."]);
    assert_eq!(code, 1);
    assert!(err.contains("is not the warden-sdk crate"), "{err}");
    assert!(!dir.join("x").exists() && !dir.join("y").exists());
}

#[test]
fn keygen_writes_the_public_key_beside_the_private_one() {
    let tmp = tempfile::tempdir().unwrap();
    let key = tmp.path().join("team.key");
    let (code, public, err) = run_warden(&["plugin", "keygen", "--out", key.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let public = public.trim();
    assert!(
        public.len() == 64 && public.bytes().all(|b| b.is_ascii_hexdigit()),
        "{public}"
    );
    let pub_file = tmp.path().join("team.key.pub");
    assert_eq!(
        std::fs::read_to_string(&pub_file).unwrap(),
        format!("{public}\n")
    );
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&key), 0o600);
    assert_eq!(mode(&pub_file), 0o644);

    // Never overwritten.
    let (code, _, _) = run_warden(&["plugin", "keygen", "--out", key.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert_eq!(
        std::fs::read_to_string(&pub_file).unwrap(),
        format!("{public}\n")
    );
    // A stray .pub stops keygen before it writes a private key without its public half.
    let lone = tmp.path().join("lone.key");
    std::fs::write(tmp.path().join("lone.key.pub"), "x").unwrap();
    let (code, _, err) = run_warden(&["plugin", "keygen", "--out", lone.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(err.contains("lone.key.pub already exists"), "{err}");
    assert!(!lone.exists());
}

#[test]
fn pin_refuses_what_the_gateway_would_refuse() {
    let tmp = tempfile::tempdir().unwrap();
    let junk = tmp.path().join("junk.wasm");
    std::fs::write(&junk, b"not wasm").unwrap();
    // An empty core module: valid wasm, but no policy world.
    let empty = tmp.path().join("empty.wasm");
    std::fs::write(&empty, b"\0asm\x01\0\0\0").unwrap();
    for f in [&junk, &empty, &tmp.path().join("missing.wasm")] {
        let (code, out, err) = run_warden(&["plugin", "pin", f.to_str().unwrap()]);
        assert_eq!(code, 1, "{}: {out}{err}", f.display());
        assert!(out.is_empty(), "no table for a refused file: {out}");
        assert!(err.contains(f.to_str().unwrap()), "{err}");
    }
}

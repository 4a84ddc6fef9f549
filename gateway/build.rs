//! Names the wit-component release this build links, for the plugin cache's keys: a
//! component cached by one encoder is not loaded by a build with another.

use std::path::Path;

fn main() {
    let lock = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.lock");
    let version = match std::fs::read_to_string(&lock) {
        Ok(text) => {
            println!("cargo:rerun-if-changed={}", lock.display());
            encoder_version(&text)
        }
        Err(_) => None,
    };
    let version = version.unwrap_or_else(|| {
        // Built outside this workspace: entries are keyed by Warden's version alone.
        println!(
            "cargo:warning=no wit-component version in {}; plugin cache entries are keyed by Warden's version only",
            lock.display()
        );
        "unknown".into()
    });
    println!("cargo:rustc-env=WARDEN_WIT_COMPONENT_VERSION={version}");
}

/// The version of wit-component that the `warden` package depends on, as the lock file
/// records it. A lock holding several wit-component versions (other crates depend on
/// other ones) names the one meant in warden's dependency list: `"wit-component 0.254.2"`.
fn encoder_version(lock: &str) -> Option<String> {
    let packages: Vec<&str> = lock.split("[[package]]").skip(1).collect();
    let field = |block: &str, key: &str| -> Option<String> {
        block.lines().find_map(|l| {
            let v = l.trim().strip_prefix(key)?.trim().strip_prefix('=')?.trim();
            Some(v.trim_matches('"').to_string())
        })
    };
    let warden = packages
        .iter()
        .find(|b| field(b, "name").as_deref() == Some("warden"))?;
    let dep = warden
        .lines()
        .map(|l| l.trim().trim_end_matches(',').trim_matches('"'))
        .find(|d| *d == "wit-component" || d.starts_with("wit-component "))?;
    if let Some(v) = dep.strip_prefix("wit-component ") {
        return Some(v.split_whitespace().next()?.to_string());
    }
    // Named without a version: the lock holds only one.
    packages
        .iter()
        .find(|b| field(b, "name").as_deref() == Some("wit-component"))
        .and_then(|b| field(b, "version"))
}

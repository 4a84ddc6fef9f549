//! Names the wit-component release this build links, for the plugin cache's keys: a
//! component cached by one encoder is not loaded by a build with another.

fn main() {
    let lock = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.lock");
    println!("cargo:rerun-if-changed={}", lock.display());
    let version = std::fs::read_to_string(&lock)
        .ok()
        .and_then(|text| {
            let mut lines = text.lines();
            lines.find(|l| l.trim() == "name = \"wit-component\"")?;
            let v = lines.next()?.trim().strip_prefix("version = \"")?;
            Some(v.trim_end_matches('"').to_string())
        })
        // Built outside this workspace (no lock file): the crate version alone keys entries.
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=WARDEN_WIT_COMPONENT_VERSION={version}");
}

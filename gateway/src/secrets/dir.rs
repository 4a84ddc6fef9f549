//! `type = "dir"`: one secret per file (Docker `/run/secrets`, Kubernetes secret volumes).
//!
//! A name is a plain file name in the directory. Reads follow symlinks, so a Kubernetes
//! mount (`name -> ..data/name`, `..data -> ..2024_…`) resolves through the current
//! `..data` and an atomic swap of that link is an atomic rotation of every file.

use std::io::Read;

use super::store::{FetchAll, Fetched, ReadError};
use super::{DirConfig, SecretBytes};

/// Largest secret file read (a guard against pointing `path` at the wrong directory).
const MAX_FILE: u64 = 1 << 20;

pub(super) struct DirProvider {
    cfg: DirConfig,
}

/// A secret name: a plain file name (letters, digits, `_`, `-`, `.`), not hidden.
pub(super) fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 255 {
        return Err("a dir secret name must be a file name of 1 to 255 characters".into());
    }
    if name.starts_with('.') {
        return Err(
            "a dir secret name must not start with '.' (hidden and ..data entries are not secrets)"
                .into(),
        );
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
    {
        return Err(
            "a dir secret name may only contain letters, digits, '_', '-' and '.' (no '/')".into(),
        );
    }
    Ok(())
}

impl DirProvider {
    pub(super) fn new(cfg: DirConfig) -> Self {
        DirProvider { cfg }
    }

    pub(super) fn fetch(&self, names: &[String]) -> FetchAll {
        let dir = &self.cfg.path;
        match std::fs::metadata(dir) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Err(format!("{} is not a directory", dir.display())),
            Err(e) => return Err(format!("cannot read directory {}: {e}", dir.display())),
        }
        Ok(names
            .iter()
            .map(|n| (n.clone(), self.read_one(n)))
            .collect())
    }

    fn read_one(&self, name: &str) -> Result<Fetched, ReadError> {
        let path = self.cfg.path.join(name);
        let file = std::fs::File::open(&path).map_err(|e| {
            let reason = format!("cannot read {}: {e}", path.display());
            if e.kind() == std::io::ErrorKind::NotFound {
                ReadError::NotFound(reason)
            } else {
                ReadError::Unavailable(reason)
            }
        })?;
        let len = file.metadata().map(|m| m.len()).unwrap_or(0);
        if len > MAX_FILE {
            return Err(ReadError::Unavailable(format!(
                "{} is larger than {MAX_FILE} bytes",
                path.display()
            )));
        }
        // Exact capacity (+1 to see growth) so the buffer does not reallocate and leave an
        // un-zeroized copy behind; it is owned by `SecretBytes` before any error return.
        let mut v = Vec::with_capacity(len as usize + 1);
        let read = (&file).take(MAX_FILE + 1).read_to_end(&mut v);
        let mut value = SecretBytes::new(v);
        read.map_err(|e| ReadError::Unavailable(format!("cannot read {}: {e}", path.display())))?;
        if value.len() as u64 > MAX_FILE {
            return Err(ReadError::Unavailable(format!(
                "{} is larger than {MAX_FILE} bytes",
                path.display()
            )));
        }
        trim_newline(&mut value);
        Ok(Fetched {
            value,
            version: None,
            ttl: None,
        })
    }
}

/// Drop one trailing newline (`\n` or `\r\n`): `echo value > file` and most editors add one.
fn trim_newline(v: &mut SecretBytes) {
    let b = v.expose();
    let cut = if b.ends_with(b"\r\n") {
        2
    } else if b.ends_with(b"\n") {
        1
    } else {
        0
    };
    let keep = b.len() - cut;
    v.truncate(keep);
}

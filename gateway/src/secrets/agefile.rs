//! `type = "age"`: an age-encrypted file (binary or ASCII-armored, as written by the `age`
//! CLI or the `age` crate) that decrypts to `KEY=VALUE` lines.
//!
//! Format: one `KEY=VALUE` per line; blank lines and lines starting with `#` are ignored;
//! whitespace around the key and the value is trimmed; the value is everything after the
//! first `=`. A malformed line fails the whole file (the old values keep serving) with an
//! error naming the line number, never its content.

use std::io::Read;

use zeroize::Zeroizing;

use super::store::{FetchAll, Fetched, ReadError};
use super::{AgeConfig, SecretBytes};

/// Largest encrypted file read.
const MAX_FILE: u64 = 4 << 20;

pub(super) struct AgeProvider {
    cfg: AgeConfig,
}

/// A key name in the decrypted file.
pub(super) fn check_key(name: &str) -> Result<(), String> {
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
    {
        return Err("an age secret name is a KEY of the decrypted KEY=VALUE file (letters, digits, '_', '-', '.')".into());
    }
    Ok(())
}

/// Parse an identity file (`age-keygen` output: comments and `AGE-SECRET-KEY-1…` lines).
pub(super) fn parse_identities(bytes: &[u8]) -> Result<Vec<Box<dyn age::Identity>>, String> {
    // The age crate reports bad lines by number only and zeroizes what it read.
    let file =
        age::IdentityFile::from_buffer(bytes).map_err(|e| format!("invalid identity file: {e}"))?;
    let ids = file
        .into_identities()
        .map_err(|e| format!("invalid identity file: {e}"))?;
    if ids.is_empty() {
        return Err("identity file holds no identity (expected an AGE-SECRET-KEY-1… line)".into());
    }
    Ok(ids)
}

/// Decrypt binary or armored age ciphertext.
pub(super) fn decrypt(
    ids: &[Box<dyn age::Identity>],
    ciphertext: &[u8],
) -> Result<Zeroizing<Vec<u8>>, String> {
    let decryptor = age::Decryptor::new_buffered(age::armor::ArmoredReader::new(ciphertext))
        .map_err(|e| format!("not a valid age file: {e}"))?;
    let mut reader = decryptor
        .decrypt(ids.iter().map(|i| i.as_ref() as &dyn age::Identity))
        .map_err(|e| format!("cannot decrypt: {e}"))?;
    // The plaintext is shorter than the ciphertext: this capacity never reallocates.
    let mut out = Zeroizing::new(Vec::with_capacity(ciphertext.len()));
    reader
        .read_to_end(&mut out)
        .map_err(|e| format!("cannot decrypt: {e}"))?;
    Ok(out)
}

/// Parse decrypted `KEY=VALUE` lines.
pub(super) fn parse_env(plain: &[u8]) -> Result<Vec<(String, SecretBytes)>, String> {
    let mut out: Vec<(String, SecretBytes)> = Vec::new();
    for (i, line) in plain.split(|&b| b == b'\n').enumerate() {
        let n = i + 1;
        let line = line.trim_ascii();
        if line.is_empty() || line.starts_with(b"#") {
            continue;
        }
        let Some(eq) = line.iter().position(|&b| b == b'=') else {
            return Err(format!("line {n}: expected KEY=VALUE"));
        };
        let key = std::str::from_utf8(line[..eq].trim_ascii())
            .ok()
            .filter(|k| check_key(k).is_ok())
            .ok_or_else(|| format!("line {n}: invalid key (use letters, digits, '_', '-', '.')"))?;
        if out.iter().any(|(k, _)| k == key) {
            return Err(format!("line {n}: duplicate key {key}"));
        }
        out.push((
            key.to_string(),
            SecretBytes::new(line[eq + 1..].trim_ascii().to_vec()),
        ));
    }
    Ok(out)
}

impl AgeProvider {
    pub(super) fn new(cfg: AgeConfig) -> Self {
        AgeProvider { cfg }
    }

    pub(super) fn fetch(&self, names: &[String]) -> FetchAll {
        // The identity is re-read every time: rotating the key file (and re-encrypting) is
        // then just two file writes.
        let id_path = &self.cfg.identity_file;
        let id_bytes = Zeroizing::new(
            std::fs::read(id_path)
                .map_err(|e| format!("cannot read identity file {}: {e}", id_path.display()))?,
        );
        let ids = parse_identities(&id_bytes).map_err(|e| format!("{}: {e}", id_path.display()))?;
        let path = &self.cfg.file;
        let file = std::fs::File::open(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let mut ciphertext = Vec::new();
        file.take(MAX_FILE + 1)
            .read_to_end(&mut ciphertext)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        if ciphertext.len() as u64 > MAX_FILE {
            return Err(format!(
                "{} is larger than {MAX_FILE} bytes",
                path.display()
            ));
        }
        let plain = decrypt(&ids, &ciphertext).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut values = parse_env(&plain).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(names
            .iter()
            .map(|n| {
                let res = match values.iter().position(|(k, _)| k == n) {
                    Some(i) => Ok(Fetched {
                        value: values.swap_remove(i).1,
                        version: None,
                        ttl: None,
                    }),
                    None => Err(ReadError::NotFound(format!(
                        "key {n} not found in {}",
                        path.display()
                    ))),
                };
                (n.clone(), res)
            })
            .collect())
    }
}

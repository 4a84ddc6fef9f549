//! Located config errors and the serde helpers every config section uses. A leaf: the
//! domain modules (secrets, policy, upstreams) report their own fields' problems as
//! [`FieldError`]s without depending on the rest of the config.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

/// A problem found in a config item, with a key path relative to that item.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    /// Dotted key path relative to the item being validated (`""` for the item itself).
    pub key: String,
    /// What is wrong, in words an operator can act on. Never contains a secret value.
    pub reason: String,
}

impl FieldError {
    /// A new field error.
    pub fn new(key: impl Into<String>, reason: impl Into<String>) -> Self {
        FieldError {
            key: key.into(),
            reason: reason.into(),
        }
    }

    /// This error seen from the enclosing item: `prefix.key` (or `prefix`).
    pub fn prefixed(self, prefix: &str) -> Self {
        let key = if self.key.is_empty() {
            prefix.to_string()
        } else {
            format!("{prefix}.{}", self.key)
        };
        FieldError { key, ..self }
    }
}

/// A config error with its location.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// File the error is in.
    pub file: PathBuf,
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// Full dotted key path (`routes[2].match.methods`).
    pub key: String,
    /// What is wrong.
    pub reason: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if !self.key.is_empty() {
            write!(f, ": {}", self.key)?;
        }
        write!(f, ": {}", self.reason)
    }
}

impl std::error::Error for ConfigError {}

/// A list of config errors, displayed one per line.
#[derive(Debug, Clone)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// A duration written as `"5s"`, `"250ms"`, `"1h"`. At most 100 years: deadlines are
/// clock readings plus a duration, and a longer one would overflow the clock.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    const MAX: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
    let d = humantime::parse_duration(s)
        .map_err(|e| format!("invalid duration {s:?}: {e} (write e.g. \"5s\", \"250ms\")"))?;
    if d > MAX {
        return Err(format!("duration {s:?} is longer than 100 years"));
    }
    Ok(d)
}

/// A size written as `"16MiB"`, `"64KiB"`, `"1024"`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    s.parse::<bytesize::ByteSize>()
        .map(|b| b.as_u64())
        .map_err(|e| format!("invalid size {s:?}: {e} (write e.g. \"16MiB\", \"64KiB\")"))
}

/// serde helpers for durations and sizes as strings.
pub mod de {
    use super::{parse_duration, parse_size};
    use serde::Deserialize;
    use serde::Deserializer;
    use std::time::Duration;

    /// `"5s"` → `Duration`.
    pub fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        parse_duration(&s).map_err(serde::de::Error::custom)
    }

    /// Optional `"5s"` → `Option<Duration>`.
    pub fn opt_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let s = Option::<String>::deserialize(d)?;
        s.map(|s| parse_duration(&s).map_err(serde::de::Error::custom))
            .transpose()
    }

    /// `"16MiB"` → bytes.
    pub fn size<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum S {
            N(u64),
            S(String),
        }
        match S::deserialize(d)? {
            S::N(n) => Ok(n),
            S::S(s) => parse_size(&s).map_err(serde::de::Error::custom),
        }
    }

    /// Optional `"16MiB"` → bytes.
    pub fn opt_size<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        #[derive(Deserialize)]
        struct W(#[serde(deserialize_with = "size")] u64);
        Ok(Option::<W>::deserialize(d)?.map(|w| w.0))
    }
}

#[cfg(test)]
mod tests {
    use super::parse_duration;
    use std::time::Duration;

    #[test]
    fn durations_parse_and_absurd_ones_are_refused() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        // A deadline is a clock reading plus the duration: one that would overflow the
        // clock is refused when the config is read, not a panic on a request.
        let e = parse_duration("500000000years").unwrap_err();
        assert!(e.contains("longer than 100 years"), "{e}");
        assert!(parse_duration("99years").is_ok());
        assert!(parse_duration("soon").is_err());
    }
}

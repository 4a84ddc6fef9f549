//! Configuration-time types.

use std::fmt;
use std::time::Duration;

/// What the gateway tells a policy when configuring it for one route.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Setup {
    /// Name of the route this policy instance serves.
    pub route: String,
    /// Secret names the route grants; only these may be passed to
    /// [`secret_matches`](crate::secret_matches).
    pub secrets: Vec<String>,
    /// Sensitive header names (lower case) the route lets this policy see.
    pub granted_headers: Vec<String>,
    /// The body phase's size limit (`body = { max = ... }`) when this policy has it:
    /// only then does [`Request::body`](crate::Request::body) carry the body. A policy
    /// that needs the body should refuse its configuration when this is `None`.
    pub body_max: Option<u64>,
    /// True when this policy has the response phase (`response_body = { max = ... }`), so
    /// [`Policy::evaluate_response`](crate::Policy::evaluate_response) will be called.
    pub response_phase: bool,
}

impl Setup {
    /// True when the route grants the secret `name`.
    pub fn has_secret(&self, name: &str) -> bool {
        self.secrets.iter().any(|s| s == name)
    }

    /// True when the policy will see header `name`: either it is not one of the sensitive
    /// headers the gateway withholds by default, or the route grants it.
    pub fn sees_header(&self, name: &str) -> bool {
        !crate::request::SENSITIVE_HEADERS
            .iter()
            .any(|s| s.eq_ignore_ascii_case(name))
            || self
                .granted_headers
                .iter()
                .any(|h| h.eq_ignore_ascii_case(name))
    }
}

/// One problem with a policy's configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// Dotted key path relative to the policy's `config` table (e.g. `allow[1].cidr`);
    /// empty for the table as a whole.
    pub key: String,
    /// What is wrong, for the operator.
    pub reason: String,
}

impl ConfigError {
    /// A problem at `key`.
    pub fn new(key: impl Into<String>, reason: impl Into<String>) -> Self {
        ConfigError {
            key: key.into(),
            reason: reason.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}", self.reason)
        } else {
            write!(f, "{}: {}", self.key, self.reason)
        }
    }
}

/// Every problem found in a configuration.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl ConfigErrors {
    /// No errors yet.
    pub fn new() -> Self {
        ConfigErrors(Vec::new())
    }

    /// Record a problem at `key`.
    pub fn push(&mut self, key: impl Into<String>, reason: impl Into<String>) {
        self.0.push(ConfigError::new(key, reason));
    }

    /// True when nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `Ok(value)` when nothing was recorded, else `Err(self)`.
    pub fn into_result<T>(self, value: T) -> Result<T, ConfigErrors> {
        if self.0.is_empty() {
            Ok(value)
        } else {
            Err(self)
        }
    }
}

impl From<ConfigError> for ConfigErrors {
    fn from(e: ConfigError) -> Self {
        ConfigErrors(vec![e])
    }
}

impl IntoIterator for ConfigErrors {
    type Item = ConfigError;
    type IntoIter = std::vec::IntoIter<ConfigError>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

/// Parse a duration the way the gateway's config writes them: a whole number and a unit,
/// `ms`, `s`, `m`, `h` or `d` (`"500ms"`, `"30s"`, `"1m"`, `"24h"`). For a policy's own
/// config fields, so operators write durations the same way everywhere.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let err = || format!("{s:?} is not a duration like \"500ms\", \"30s\", \"1m\" or \"1h\"");
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return Err(err());
    }
    let n: u64 = s[..digits].parse().map_err(|_| err())?;
    let unit_ms: u64 = match &s[digits..] {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(err()),
    };
    n.checked_mul(unit_ms)
        .map(Duration::from_millis)
        .ok_or_else(|| format!("{s:?} is too long"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("1d"), Ok(Duration::from_secs(86400)));
        for bad in [
            "",
            "m",
            "1",
            "1 m",
            "-1s",
            "1.5s",
            "1M",
            "99999999999999999999d",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sensitive_headers_need_a_grant() {
        let mut s = Setup::default();
        assert!(s.sees_header("x-api-key"));
        assert!(!s.sees_header("Authorization"));
        s.granted_headers.push("authorization".into());
        assert!(s.sees_header("Authorization"));
    }
}

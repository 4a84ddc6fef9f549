//! Configuration-time types.

use std::fmt;

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
}

impl Setup {
    /// True when the route grants the secret `name`.
    pub fn has_secret(&self, name: &str) -> bool {
        self.secrets.iter().any(|s| s == name)
    }

    /// True when the policy will see header `name`: either it is not one of the sensitive
    /// headers the gateway withholds by default, or the route grants it.
    pub fn sees_header(&self, name: &str) -> bool {
        let name = name.to_ascii_lowercase();
        !crate::request::SENSITIVE_HEADERS.contains(&name.as_str())
            || self
                .granted_headers
                .iter()
                .any(|h| h.eq_ignore_ascii_case(&name))
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

//! `type = "vault"`: HashiCorp Vault or OpenBao, KV v2 or v1, via `vaultrs`.
//!
//! * Auth: a token file, or AppRole (role_id / secret_id files). The token is looked up
//!   (or taken from the login) to learn its TTL; it is renewed at ~2/3 of the TTL, and when
//!   renewal fails — or no longer extends the token meaningfully — we log in again
//!   (AppRole) or re-read the token file (whoever rotates it, e.g. Vault Agent).
//! * A read answered 403 triggers one re-login and one retry (revoked or expired token).
//! * Every client setting is explicit: `vaultrs` would otherwise read `VAULT_ADDR`,
//!   `VAULT_TOKEN`, `VAULT_CACERT`, `VAULT_SKIP_VERIFY` … from the environment, and secrets
//!   never come from the environment here.
//! * Errors are rebuilt from the parts of `vaultrs` errors that cannot hold response
//!   bodies: a parse error's message may quote the body, i.e. a secret.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use vaultrs::client::{Client, VaultClient, VaultClientSettingsBuilder};
use vaultrs::error::ClientError;
use zeroize::{Zeroize, Zeroizing};

use super::store::{FetchAll, Fetched, ReadError};
use super::{SecretBytes, VaultAuth, VaultConfig};

/// `path#key` → (`path`, `key`).
pub(super) fn parse_name(name: &str) -> Result<(&str, &str), String> {
    let Some((path, key)) = name.split_once('#') else {
        return Err("a vault secret name is path#key, e.g. ${vault:ml/inference#api_key}".into());
    };
    if path.is_empty() || key.is_empty() {
        return Err("a vault secret name is path#key with a non-empty path and key".into());
    }
    if path.starts_with('/') || path.ends_with('/') {
        return Err(
            "the vault path must not start or end with '/' (the mount is configured separately)"
                .into(),
        );
    }
    if path
        .split('/')
        .any(|seg| seg.is_empty() || seg == "." || seg == "..")
    {
        return Err("the vault path has an empty, '.' or '..' segment".into());
    }
    if path
        .chars()
        .chain(key.chars())
        .any(|c| c.is_whitespace() || c.is_control() || c == '?' || c == '#')
    {
        return Err(
            "the vault path and key must not contain whitespace, '?' or a second '#'".into(),
        );
    }
    Ok((path, key))
}

/// Certificates in a PEM bundle (at least one), for config checks.
pub(super) fn parse_ca_pem(pem: &[u8]) -> Result<usize, String> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let n = CertificateDer::pem_slice_iter(pem)
        .filter(Result::is_ok)
        .count();
    if n == 0 {
        Err("no PEM certificate".into())
    } else {
        Ok(n)
    }
}

/// A value-free description of a vaultrs error.
fn describe(e: &ClientError) -> String {
    match e {
        ClientError::APIError { code, errors } if errors.is_empty() => {
            format!("Vault answered HTTP {code}")
        }
        ClientError::APIError { code, errors } => {
            format!("Vault answered HTTP {code}: {}", errors.join("; "))
        }
        ClientError::RestClientError { source } => {
            let top = source.to_string();
            // Only transport errors are worth their cause chain (connection refused, TLS
            // verification …); parse errors may quote the response body.
            if top.starts_with("Error sending HTTP request")
                || top.starts_with("Error retrieving HTTP response")
            {
                let mut msg = String::from("request failed");
                let mut cur: Option<&dyn std::error::Error> = std::error::Error::source(source);
                while let Some(c) = cur {
                    msg.push_str(": ");
                    msg.push_str(&c.to_string());
                    cur = c.source();
                }
                msg
            } else {
                format!("unexpected response from Vault ({top})")
            }
        }
        ClientError::JsonParseError { .. } => {
            "unexpected response from Vault (not the expected JSON)".into()
        }
        ClientError::ResponseEmptyError | ClientError::ResponseDataEmptyError => {
            "Vault returned an empty response".into()
        }
        ClientError::FileReadError { path, .. } => format!("cannot read {path}"),
        ClientError::ParseCertificateError { path, .. } => {
            format!("cannot parse CA certificate {path}")
        }
        ClientError::RestClientBuildError { source } => {
            format!("cannot build the HTTP client: {source}")
        }
        // The remaining variants have fixed messages.
        other => other.to_string(),
    }
}

fn is_forbidden(e: &ClientError) -> bool {
    matches!(e, ClientError::APIError { code: 403, .. })
}

fn read_trimmed(what: &str, p: &Path) -> Result<Zeroizing<String>, String> {
    let raw = Zeroizing::new(
        std::fs::read(p).map_err(|e| format!("cannot read {what} file {}: {e}", p.display()))?,
    );
    let s = std::str::from_utf8(&raw)
        .map_err(|_| format!("{what} file {} is not UTF-8", p.display()))?;
    let t = s.trim();
    if t.is_empty() {
        return Err(format!("{what} file {} is empty", p.display()));
    }
    Ok(Zeroizing::new(t.to_string()))
}

struct Token {
    /// When to renew (~2/3 of the TTL); `None` for tokens that do not expire.
    renew_at: Option<Instant>,
    expires_at: Option<Instant>,
    /// TTL right after login, to tell a meaningful renewal from one capped by max TTL.
    login_ttl: Duration,
    renewable: bool,
}

impl Token {
    fn new(ttl_secs: u64, renewable: bool) -> Token {
        let now = Instant::now();
        let ttl = Duration::from_secs(ttl_secs);
        if ttl.is_zero() {
            return Token {
                renew_at: None,
                expires_at: None,
                login_ttl: ttl,
                renewable,
            };
        }
        Token {
            renew_at: Some(now + ttl.mul_f64(2.0 / 3.0)),
            expires_at: Some(now + ttl),
            login_ttl: ttl,
            renewable,
        }
    }

    fn expired(&self) -> bool {
        self.expires_at.is_some_and(|e| Instant::now() >= e)
    }
}

struct Session {
    client: VaultClient,
    token: Token,
}

pub(super) struct VaultProvider {
    name: String,
    cfg: VaultConfig,
    session: tokio::sync::Mutex<Option<Session>>,
}

impl VaultProvider {
    pub(super) fn new(name: &str, cfg: VaultConfig) -> Result<Self, String> {
        // Fail early on what `check` would report, so start-up says why.
        match reqwest::Url::parse(&cfg.address) {
            Ok(u) if u.scheme() == "http" || u.scheme() == "https" => {}
            _ => {
                return Err(format!(
                    "invalid address {:?} (expected http(s)://host:port)",
                    cfg.address
                ));
            }
        }
        if cfg.kv_version != 1 && cfg.kv_version != 2 {
            return Err("kv_version must be 1 or 2".into());
        }
        Ok(VaultProvider {
            name: name.to_string(),
            cfg,
            session: tokio::sync::Mutex::new(None),
        })
    }

    fn client(&self, token: &str) -> Result<VaultClient, String> {
        let mut b = VaultClientSettingsBuilder::default();
        b.address(&self.cfg.address)
            .token(token)
            .ca_certs(
                self.cfg
                    .ca_file
                    .iter()
                    .map(|p| p.to_string_lossy().into_owned())
                    .collect::<Vec<_>>(),
            )
            .identity(None)
            .verify(true)
            .timeout(Some(self.cfg.timeout))
            .namespace(self.cfg.namespace.clone())
            .version(1u8)
            .wrapping(false);
        let settings = b
            .build()
            .map_err(|e| format!("invalid Vault client settings: {e}"))?;
        VaultClient::new(settings).map_err(|e| describe(&e))
    }

    /// Log in (or load the token file) and learn the token's TTL.
    async fn login(&self) -> Result<Session, String> {
        match &self.cfg.auth {
            VaultAuth::Token { token_file } => {
                let token = read_trimmed("token", token_file)?;
                let client = self.client(&token)?;
                let info = vaultrs::token::lookup_self(&client)
                    .await
                    .map_err(|e| format!("token lookup failed: {}", describe(&e)))?;
                Ok(Session {
                    client,
                    token: Token::new(info.ttl, info.renewable.unwrap_or(false)),
                })
            }
            VaultAuth::Approle {
                role_id_file,
                secret_id_file,
                mount,
            } => {
                let role_id = read_trimmed("role_id", role_id_file)?;
                let secret_id = read_trimmed("secret_id", secret_id_file)?;
                let mut client = self.client("")?;
                let mut auth = vaultrs::auth::approle::login(&client, mount, &role_id, &secret_id)
                    .await
                    .map_err(|e| format!("AppRole login failed: {}", describe(&e)))?;
                client.set_token(&auth.client_token);
                auth.client_token.zeroize();
                Ok(Session {
                    client,
                    token: Token::new(auth.lease_duration, auth.renewable),
                })
            }
            VaultAuth::Jwt {
                role,
                jwt_file,
                mount,
            } => {
                // Re-read at every login: a projected service-account token rotates, and
                // the one read at start-up may have expired by the next login.
                let jwt = read_trimmed("jwt", jwt_file)?;
                let mut client = self.client("")?;
                let mut auth = vaultrs::auth::oidc::login(&client, mount, &jwt, Some(role.clone()))
                    .await
                    .map_err(|e| format!("JWT login failed: {}", describe(&e)))?;
                client.set_token(&auth.client_token);
                auth.client_token.zeroize();
                Ok(Session {
                    client,
                    token: Token::new(auth.lease_duration, auth.renewable),
                })
            }
        }
    }

    /// When the token should next be renewed, if it expires at all.
    pub(super) async fn renew_at(&self) -> Option<Instant> {
        self.session
            .lock()
            .await
            .as_ref()
            .and_then(|s| s.token.renew_at)
    }

    /// Renew the token if due; log in again when renewal fails or no longer extends it.
    pub(super) async fn maintain_token(&self) -> Result<(), String> {
        let mut guard = self.session.lock().await;
        self.maintain(&mut guard).await
    }

    async fn maintain(&self, session: &mut Option<Session>) -> Result<(), String> {
        let due = match session {
            None => true,
            Some(s) => s.token.renew_at.is_some_and(|r| Instant::now() >= r),
        };
        if !due {
            return Ok(());
        }
        if let Some(s) = session.as_mut()
            && s.token.renewable
        {
            match vaultrs::token::renew_self(&s.client, None).await {
                Ok(mut auth) => {
                    auth.client_token.zeroize();
                    let ttl = Duration::from_secs(auth.lease_duration);
                    // Near its max TTL a renewal succeeds but barely extends the token:
                    // log in again instead of renewing ever more often.
                    if ttl >= s.token.login_ttl / 3 && !ttl.is_zero() {
                        let login_ttl = s.token.login_ttl;
                        s.token = Token::new(auth.lease_duration, true);
                        s.token.login_ttl = login_ttl;
                        tracing::debug!(provider = %self.name, ttl = ?ttl, "vault token renewed");
                        return Ok(());
                    }
                    tracing::info!(provider = %self.name, "vault token near its max TTL; logging in again");
                }
                Err(e) => {
                    tracing::warn!(provider = %self.name, error = %describe(&e), "vault token renewal failed; logging in again");
                }
            }
        }
        match self.login().await {
            Ok(s) => {
                *session = Some(s);
                Ok(())
            }
            Err(e) => {
                // Keep the old token while it lasts; retry the login soon.
                if let Some(s) = session.as_mut() {
                    let retry = Instant::now() + Duration::from_secs(2);
                    s.token.renew_at = Some(s.token.expires_at.map_or(retry, |x| retry.min(x)));
                }
                Err(e)
            }
        }
    }

    /// Read every referenced `path#key`, one request per path.
    pub(super) async fn fetch(&self, names: &[String]) -> FetchAll {
        let mut guard = self.session.lock().await;
        if let Err(e) = self.maintain(&mut guard).await {
            match guard.as_ref() {
                Some(s) if !s.token.expired() => {
                    tracing::warn!(provider = %self.name, error = %e, "vault login failed; using the current token while it lasts");
                }
                _ => return Err(e),
            }
        }
        let mut by_path: BTreeMap<&str, Vec<(&String, &str)>> = BTreeMap::new();
        for n in names {
            let (path, key) = parse_name(n)?;
            by_path.entry(path).or_default().push((n, key));
        }
        let mut out = Vec::with_capacity(names.len());
        for (path, keys) in by_path {
            let session = guard.as_ref().ok_or("not logged in")?;
            let mut res = self.read(&session.client, path).await;
            if let Err(e) = &res
                && is_forbidden(e)
            {
                // Revoked or expired token: log in once more and retry.
                tracing::info!(provider = %self.name, "vault answered 403; logging in again");
                match self.login().await {
                    Ok(s) => {
                        *guard = Some(s);
                        let session = guard.as_ref().ok_or("not logged in")?;
                        res = self.read(&session.client, path).await;
                    }
                    Err(e) => {
                        tracing::warn!(provider = %self.name, error = %e, "vault re-login failed")
                    }
                }
            }
            match res {
                Err(e) => {
                    let reason = format!("reading {}/{path}: {}", self.cfg.mount, describe(&e));
                    let not_found = matches!(e, ClientError::APIError { code: 404, .. });
                    out.extend(keys.into_iter().map(|(n, _)| {
                        let err = if not_found {
                            ReadError::NotFound(reason.clone())
                        } else {
                            ReadError::Unavailable(reason.clone())
                        };
                        (n.clone(), Err(err))
                    }));
                }
                Ok(mut data) => {
                    for (n, key) in keys {
                        let r = match data.values.remove(key) {
                            Some(serde_json::Value::String(s)) => Ok(Fetched {
                                value: SecretBytes::new(s.into_bytes()),
                                version: data.version,
                                ttl: data.ttl,
                            }),
                            Some(mut other) => {
                                zeroize_json(&mut other);
                                Err(ReadError::NotFound(format!(
                                    "key {key} at {}/{path} is not a string",
                                    self.cfg.mount
                                )))
                            }
                            None => Err(ReadError::NotFound(format!(
                                "key {key} not found at {}/{path}",
                                self.cfg.mount
                            ))),
                        };
                        out.push((n.clone(), r));
                    }
                }
            }
        }
        Ok(out)
    }

    async fn read(&self, client: &VaultClient, path: &str) -> Result<KvData, ClientError> {
        let mount = self.cfg.mount.trim_matches('/');
        if self.cfg.kv_version == 1 {
            let resp = vaultrs::kv1::get_raw(client, mount, path).await?;
            let ttl =
                (resp.lease_duration > 0).then(|| Duration::from_secs(resp.lease_duration as u64));
            Ok(KvData::new(resp.data, None, ttl))
        } else {
            let endpoint = vaultrs::api::kv2::requests::ReadSecretRequest::builder()
                .mount(mount)
                .path(path)
                .build()
                .map_err(|_| ClientError::ResponseEmptyError)?;
            let resp = vaultrs::api::exec_with_result(client, endpoint).await?;
            Ok(KvData::new(resp.data, Some(resp.metadata.version), None))
        }
    }
}

/// The key/value map of one secret path; string values not taken are zeroized on drop.
struct KvData {
    values: serde_json::Map<String, serde_json::Value>,
    version: Option<u64>,
    ttl: Option<Duration>,
}

impl KvData {
    fn new(data: serde_json::Value, version: Option<u64>, ttl: Option<Duration>) -> Self {
        let values = match data {
            serde_json::Value::Object(m) => m,
            mut other => {
                zeroize_json(&mut other);
                serde_json::Map::new()
            }
        };
        KvData {
            values,
            version,
            ttl,
        }
    }
}

impl Drop for KvData {
    fn drop(&mut self) {
        for v in self.values.values_mut() {
            zeroize_json(v);
        }
    }
}

fn zeroize_json(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::String(s) => s.zeroize(),
        serde_json::Value::Array(a) => a.iter_mut().for_each(zeroize_json),
        serde_json::Value::Object(m) => m.values_mut().for_each(zeroize_json),
        _ => {}
    }
}

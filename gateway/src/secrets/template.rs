//! `"Bearer ${vault:ml/inference#api_key}"`: literal text and references.

use arc_swap::ArcSwapOption;
use http::{HeaderMap, HeaderName, HeaderValue};

use super::store::{NEVER, mono_ms};
use super::{SecretBytes, SecretRef, SecretSnapshot, SecretsError, header_unsafe};

/// A string made of literal text and `${provider:name}` references; `$$` is a literal `$`.
///
/// Parsing never echoes the template (it may contain literal credentials): errors name the
/// offending reference or a byte offset.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
}

#[derive(Clone, PartialEq, Eq)]
enum Part {
    Lit(String),
    Ref(SecretRef),
}

impl std::fmt::Debug for Part {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            // Literal text may itself be a credential someone pasted into the config.
            Part::Lit(s) => write!(f, "Lit([{} bytes])", s.len()),
            Part::Ref(r) => write!(f, "Ref({r})"),
        }
    }
}

/// Provider names are TOML keys of `[secrets.NAME]`.
fn valid_provider(p: &str) -> bool {
    !p.is_empty()
        && p.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Parse the inside of `${…}`.
pub(super) fn parse_ref(inner: &str) -> Result<SecretRef, SecretsError> {
    let bad = |reason: String| SecretsError::Template { reason };
    if inner.is_empty() {
        return Err(bad("empty reference ${}; write ${provider:name}".into()));
    }
    let Some((provider, name)) = inner.split_once(':') else {
        return Err(bad(format!(
            "reference ${{{inner}}} has no provider; write ${{provider:name}}"
        )));
    };
    if provider.is_empty() {
        return Err(bad(format!(
            "reference ${{{inner}}} has an empty provider name"
        )));
    }
    if !valid_provider(provider) {
        return Err(bad(format!(
            "reference ${{{inner}}}: provider name {provider:?} may only contain letters, digits, '_' and '-'"
        )));
    }
    if name.is_empty() {
        return Err(bad(format!(
            "reference ${{{inner}}} has an empty secret name"
        )));
    }
    if name.chars().any(|c| c.is_control() || c == '$' || c == '{') {
        return Err(bad(format!(
            "reference ${{{provider}:…}}: the name contains a control character, '$' or '{{'"
        )));
    }
    Ok(SecretRef {
        provider: provider.to_string(),
        name: name.to_string(),
    })
}

impl Template {
    /// Parse a template. Errors: an unterminated `${`, an empty reference or name, a
    /// reference without `provider:`, a provider name with invalid characters.
    pub fn parse(s: &str) -> Result<Template, SecretsError> {
        let mut parts = Vec::new();
        let mut lit = String::new();
        let mut rest = s;
        while let Some(i) = rest.find('$') {
            lit.push_str(&rest[..i]);
            let after = &rest[i + 1..];
            if let Some(tail) = after.strip_prefix('$') {
                lit.push('$');
                rest = tail;
            } else if let Some(body) = after.strip_prefix('{') {
                let Some(end) = body.find('}') else {
                    let offset = s.len() - rest.len() + i;
                    return Err(SecretsError::Template {
                        reason: format!(
                            "unterminated ${{ at byte {offset} (missing '}}'); write $$ for a literal $"
                        ),
                    });
                };
                let r = parse_ref(&body[..end])?;
                if !lit.is_empty() {
                    parts.push(Part::Lit(std::mem::take(&mut lit)));
                }
                parts.push(Part::Ref(r));
                rest = &body[end + 1..];
            } else {
                // A lone `$` (e.g. "costs $5") is literal.
                lit.push('$');
                rest = after;
            }
        }
        lit.push_str(rest);
        if !lit.is_empty() {
            parts.push(Part::Lit(lit));
        }
        Ok(Template { parts })
    }

    /// The references in this template, in order (duplicates kept).
    pub fn refs(&self) -> Vec<SecretRef> {
        self.ref_iter().cloned().collect()
    }

    /// The references in the template, borrowed.
    fn ref_iter(&self) -> impl Iterator<Item = &SecretRef> {
        self.parts.iter().filter_map(|p| match p {
            Part::Ref(r) => Some(r),
            Part::Lit(_) => None,
        })
    }

    /// Whether the template has no references.
    pub fn is_literal(&self) -> bool {
        self.parts.iter().all(|p| matches!(p, Part::Lit(_)))
    }

    /// Render into secret bytes (for compare-only use, e.g. a plugin checking a presented
    /// API key, or the admin token). Fails when a reference is stale or not loaded.
    pub fn render(&self, snap: &SecretSnapshot) -> Result<SecretBytes, SecretsError> {
        // Single reference, no literal text: the common `token = "${file:x}"` case.
        if let [Part::Ref(r)] = self.parts.as_slice() {
            return Ok(snap.get(r)?.clone());
        }
        // Size exactly first, so the buffer never reallocates (a reallocation would leave an
        // un-zeroized copy behind).
        let mut len = 0;
        for p in &self.parts {
            len += match p {
                Part::Lit(s) => s.len(),
                Part::Ref(r) => snap.get(r)?.len(),
            };
        }
        let mut out = Vec::with_capacity(len);
        for p in &self.parts {
            match p {
                Part::Lit(s) => out.extend_from_slice(s.as_bytes()),
                Part::Ref(r) => out.extend_from_slice(snap.get(r)?.expose()),
            }
        }
        Ok(SecretBytes::new(out))
    }

    /// Render as a header value, marked sensitive (never indexed by HPACK, redacted by
    /// `HeaderValue`'s `Debug`) when it contains a secret.
    pub fn render_header(&self, snap: &SecretSnapshot) -> Result<HeaderValue, SecretsError> {
        let mut hv = match self.parts.as_slice() {
            [] => HeaderValue::from_static(""),
            [Part::Lit(s)] => return literal_header(s),
            [Part::Ref(r)] => header_from(r, snap.get(r)?.expose())?,
            _ => {
                let bytes = self.render(snap)?;
                let r = self
                    .refs()
                    .into_iter()
                    .next()
                    .unwrap_or_else(|| SecretRef::new("", ""));
                header_from(&r, bytes.expose())?
            }
        };
        hv.set_sensitive(!self.is_literal());
        Ok(hv)
    }
}

/// A route's injected headers: templates, and their values as last rendered.
///
/// Rendering (a lookup per reference, a copy, a validation) happens once per secret
/// snapshot: requests that see the same snapshot reuse the values, which are shared
/// buffers, not copies. A value whose reference has a `max_stale` limit is reused only
/// until the moment it could turn stale; after that it is rendered again, which is where
/// staleness is judged. `HeaderValue`s are not zeroized, so values of a replaced snapshot
/// are dropped by [`InjectedHeaders::forget_unless`] rather than kept until the route's
/// next request.
#[derive(Debug, Default)]
pub struct InjectedHeaders {
    templates: Vec<(HeaderName, Template)>,
    last: ArcSwapOption<Rendered>,
}

#[derive(Debug)]
struct Rendered {
    generation: u64,
    /// `mono_ms()` after which the values must be rendered again (`NEVER`: not before
    /// the next snapshot).
    fresh_until: u64,
    values: Vec<HeaderValue>,
}

impl InjectedHeaders {
    /// Headers to inject, each rendered from its template.
    pub fn new(templates: Vec<(HeaderName, Template)>) -> Self {
        InjectedHeaders {
            templates,
            last: ArcSwapOption::empty(),
        }
    }

    /// Whether there is nothing to inject.
    pub fn is_empty(&self) -> bool {
        self.templates.is_empty()
    }

    /// The header names (never the values).
    pub fn names(&self) -> impl Iterator<Item = &HeaderName> {
        self.templates.iter().map(|(n, _)| n)
    }

    /// Drop the values last rendered unless they came from snapshot `generation` (the
    /// current one): after a rotation, a route that sees no request does not keep the
    /// previous values.
    pub fn forget_unless(&self, generation: u64) {
        let last = self.last.load();
        if last.as_deref().is_some_and(|r| r.generation != generation) {
            // Only what was looked at: a rendering stored meanwhile is of a newer snapshot.
            self.last.compare_and_swap(&*last, None);
        }
    }

    /// Set every injected header in `headers` (replacing what was there) from `snap`'s
    /// values. Fails, changing nothing, when a reference is stale or not loaded.
    pub fn apply(
        &self,
        snap: &SecretSnapshot,
        headers: &mut HeaderMap,
    ) -> Result<(), SecretsError> {
        let last = self.last.load();
        if let Some(r) = last.as_deref()
            && r.generation == snap.generation()
            && (r.fresh_until == NEVER || mono_ms() <= r.fresh_until)
        {
            for ((name, _), v) in self.templates.iter().zip(&r.values) {
                headers.insert(name.clone(), v.clone());
            }
            return Ok(());
        }
        drop(last);
        let values = self
            .templates
            .iter()
            .map(|(_, t)| t.render_header(snap))
            .collect::<Result<Vec<_>, _>>()?;
        let fresh_until = snap.fresh_until(self.templates.iter().flat_map(|(_, t)| t.ref_iter()));
        for ((name, _), v) in self.templates.iter().zip(&values) {
            headers.insert(name.clone(), v.clone());
        }
        self.last.store(Some(std::sync::Arc::new(Rendered {
            generation: snap.generation(),
            fresh_until,
            values,
        })));
        Ok(())
    }
}

fn literal_header(s: &str) -> Result<HeaderValue, SecretsError> {
    HeaderValue::from_str(s).map_err(|_| SecretsError::Template {
        reason: "literal text is not a valid header value (control characters?)".into(),
    })
}

fn header_from(r: &SecretRef, bytes: &[u8]) -> Result<HeaderValue, SecretsError> {
    // Values are checked when they enter the snapshot; `from_bytes` validates again (and
    // covers literal text around references). Only on failure is the reason worked out.
    HeaderValue::from_bytes(bytes).map_err(|_| SecretsError::InvalidValue {
        reference: r.to_string(),
        reason: header_unsafe(bytes)
            .unwrap_or("it is not a valid header value")
            .into(),
    })
}

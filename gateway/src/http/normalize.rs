//! One canonical form of the request target, computed once, before routing.
//!
//! A policy gateway is only as good as its agreement with the upstream about *which*
//! request it authorized. Upstream frameworks decode percent-encoded characters, merge
//! slashes, treat `\` as `/` or strip `;` parameters before they route; if the gateway
//! matched and authorized the raw bytes instead, `/api/adm%69n` would pass a policy written
//! for `/api/admin` and still reach the admin handler. So the path is rewritten once into a
//! form that every reasonable upstream reads the same way, anything that has no such form
//! is refused, and that one result is what the router matches, every policy sees, the access
//! log records and the upstream receives.
//!
//! The path rules (RFC 3986 §6.2.2 plus the refusals that close known bypass classes):
//!
//! - percent-encoded unreserved characters (`ALPHA DIGIT - . _ ~`) are decoded, and the hex
//!   of every escape that remains is upper-cased;
//! - an invalid escape (`%zz`, `%u0061`, a truncated `%4`) is refused;
//! - repeated slashes are merged (unless `merge_slashes = false`);
//! - `%2F` and `%5C` are refused (or kept as they are with `escaped_slashes = "keep"`);
//! - a raw `\`, a control character raw or encoded (`%00`–`%1F`, `%7F`), and escapes or raw
//!   bytes that are not valid UTF-8 (overlong `%C0%AF`, surrogates, truncated sequences) are
//!   refused; valid non-ASCII is kept percent-encoded;
//! - `.` and `..` segments, raw or encoded, are refused rather than resolved;
//! - a `;` (path parameter) is refused unless `path_params = "keep"`.
//!
//! The query string is not touched: it is forwarded byte for byte.

use std::borrow::Cow;

use serde::Deserialize;

/// What to do with `%2F` and `%5C` in a path.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EscapedSlashes {
    /// Refuse the request with 400 (default): upstreams disagree on whether `%2F` separates
    /// segments, so no route decision about it can be trusted.
    #[default]
    Reject,
    /// Forward the escape as it is (upper-cased), for APIs that put slashes in a segment.
    Keep,
}

/// What to do with `;` path parameters (`/a;jsessionid=1/b`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PathParams {
    /// Refuse the request with 400 (default): Java upstreams strip `;…` before routing, so
    /// `/api/admin;x/users` would reach `/api/admin/users` past a route for it.
    #[default]
    Reject,
    /// Forward `;` as it is, for APIs that use matrix parameters.
    Keep,
}

/// The path settings of `[gateway]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PathRules {
    /// Merge repeated slashes.
    pub merge_slashes: bool,
    /// `%2F` / `%5C`.
    pub escaped_slashes: EscapedSlashes,
    /// `;` in a segment.
    pub path_params: PathParams,
}

impl Default for PathRules {
    fn default() -> Self {
        PathRules {
            merge_slashes: true,
            escaped_slashes: EscapedSlashes::Reject,
            path_params: PathParams::Reject,
        }
    }
}

/// Why a path was refused. Each reason is its own 400 detail.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// The target is not an absolute path (`*`, empty).
    #[error("path must start with '/'")]
    NotAbsolute,
    /// `%` not followed by two hex digits.
    #[error("path has an invalid percent-encoding")]
    InvalidEscape,
    /// `%2F` or `%5C` with `escaped_slashes = "reject"`.
    #[error("path has an escaped slash (%2F or %5C)")]
    EscapedSlash,
    /// A raw `\`.
    #[error("path has a backslash")]
    Backslash,
    /// A control character, raw or encoded.
    #[error("path has a control character")]
    ControlCharacter,
    /// Bytes that are not valid UTF-8 (overlong forms, surrogates, truncated sequences).
    #[error("path has invalid or overlong UTF-8")]
    InvalidUtf8,
    /// A `.` or `..` segment, raw or encoded.
    #[error("path has dot segments")]
    DotSegment,
    /// A `;` with `path_params = "reject"`.
    #[error("path has a path parameter (';')")]
    PathParameter,
}

impl PathError {
    /// The reason as a static string, for the error body.
    pub fn as_str(&self) -> &'static str {
        match self {
            PathError::NotAbsolute => "path must start with '/'",
            PathError::InvalidEscape => "path has an invalid percent-encoding",
            PathError::EscapedSlash => "path has an escaped slash (%2F or %5C)",
            PathError::Backslash => "path has a backslash",
            PathError::ControlCharacter => "path has a control character",
            PathError::InvalidUtf8 => "path has invalid or overlong UTF-8",
            PathError::DotSegment => "path has dot segments",
            PathError::PathParameter => "path has a path parameter (';')",
        }
    }
}

/// RFC 3986 unreserved characters: their escapes mean exactly the character.
pub fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Characters a route pattern may contain besides unreserved ones and `/`: the
/// sub-delimiters, `:` and `@`. They are kept encoded by normalization (decoding them is
/// not an equivalence under RFC 3986, and would break request signatures), so the router
/// matches a pattern's `:` against a request's `%3A` as well.
pub fn is_pattern_delim(b: u8) -> bool {
    matches!(
        b,
        b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b'=' | b':' | b'@'
    )
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Decode the escape at `s[i]` (`%XY`), if it is one.
pub fn decode_escape(s: &[u8], i: usize) -> Option<u8> {
    if s.get(i) != Some(&b'%') {
        return None;
    }
    Some(hex_val(*s.get(i + 1)?)? << 4 | hex_val(*s.get(i + 2)?)?)
}

fn push_escape(out: &mut String, b: u8) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.push('%');
    out.push(HEX[(b >> 4) as usize] as char);
    out.push(HEX[(b & 0xf) as usize] as char);
}

/// Whether `path` may be returned as it is: no byte that any rule would change or refuse,
/// so the common request costs one scan and no allocation.
fn is_plain(path: &[u8]) -> bool {
    let mut prev = 0u8;
    for &b in path {
        if matches!(b, b'%' | b'\\' | b';')
            || !(0x20..0x7f).contains(&b)
            || (b == b'/' && prev == b'/')
        {
            return false;
        }
        prev = b;
    }
    true
}

fn has_dot_segment(path: &str, rules: &PathRules) -> bool {
    path.split('/').any(|seg| {
        // With path parameters kept, `..;x` is still `..` to a servlet container.
        let seg = match rules.path_params {
            PathParams::Keep => seg.split(';').next().unwrap_or(seg),
            PathParams::Reject => seg,
        };
        seg == "." || seg == ".."
    })
}

/// Normalize a request path (without its query). Returns the canonical path, or why the
/// request must be refused. Normalizing a normalized path returns it unchanged.
pub fn normalize_path<'a>(path: &'a str, rules: &PathRules) -> Result<Cow<'a, str>, PathError> {
    let b = path.as_bytes();
    if b.first() != Some(&b'/') {
        return Err(PathError::NotAbsolute);
    }
    if is_plain(b) {
        if has_dot_segment(path, rules) {
            return Err(PathError::DotSegment);
        }
        return Ok(Cow::Borrowed(path));
    }

    let mut out = String::with_capacity(b.len());
    // Bytes >= 0x80 (raw or escaped) collect here until the run ends, then must form
    // whole, valid UTF-8 characters: overlong forms such as %C0%AF ('/') are refused.
    let mut high: Vec<u8> = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let (byte, escaped, len) = if b[i] == b'%' {
            match decode_escape(b, i) {
                Some(v) => (v, true, 3),
                None => return Err(PathError::InvalidEscape),
            }
        } else {
            (b[i], false, 1)
        };
        i += len;
        if byte >= 0x80 {
            high.push(byte);
            continue;
        }
        flush_high(&mut high, &mut out)?;
        match (byte, escaped) {
            (0x00..=0x1f | 0x7f, _) => return Err(PathError::ControlCharacter),
            (b'/', false) => {
                if !(rules.merge_slashes && out.ends_with('/')) {
                    out.push('/');
                }
            }
            (b'/' | b'\\', true) => match rules.escaped_slashes {
                EscapedSlashes::Reject => return Err(PathError::EscapedSlash),
                EscapedSlashes::Keep => push_escape(&mut out, byte),
            },
            (b'\\', false) => return Err(PathError::Backslash),
            (b';', false) => match rules.path_params {
                PathParams::Reject => return Err(PathError::PathParameter),
                PathParams::Keep => out.push(';'),
            },
            (c, true) if is_unreserved(c) => out.push(c as char),
            (c, true) => push_escape(&mut out, c),
            (c, false) => out.push(c as char),
        }
    }
    flush_high(&mut high, &mut out)?;
    if has_dot_segment(&out, rules) {
        return Err(PathError::DotSegment);
    }
    Ok(Cow::Owned(out))
}

fn flush_high(high: &mut Vec<u8>, out: &mut String) -> Result<(), PathError> {
    if high.is_empty() {
        return Ok(());
    }
    if std::str::from_utf8(high).is_err() {
        return Err(PathError::InvalidUtf8);
    }
    for &b in high.iter() {
        push_escape(out, b);
    }
    high.clear();
    Ok(())
}

/// Why a host was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid host")]
pub struct HostError;

/// The host used for routing: lower case, without port, without one trailing dot
/// (`Admin.Internal.:8080` → `admin.internal`). Anything that is not a plain DNS name or an
/// IP literal (user info, percent escapes, empty labels, other characters) is refused, so
/// no spelling of a host can skip the routes bound to it.
pub fn normalize_host(authority: &str) -> Result<String, HostError> {
    if authority.as_bytes().contains(&b'@') {
        return Err(HostError);
    }
    let host = host_without_port(authority)?;
    if let Some(inner) = host.strip_prefix('[') {
        let inner = inner.strip_suffix(']').ok_or(HostError)?;
        let ip: std::net::Ipv6Addr = inner.parse().map_err(|_| HostError)?;
        return Ok(format!("[{ip}]"));
    }
    let host = host.strip_suffix('.').unwrap_or(host);
    // One pass: labels of 1 to 63 letters, digits, `-` or `_`, between single dots.
    let mut label = 0usize;
    for &b in host.as_bytes() {
        if b == b'.' {
            if label == 0 {
                return Err(HostError);
            }
            label = 0;
        } else if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
            label += 1;
            if label > 63 {
                return Err(HostError);
            }
        } else {
            return Err(HostError);
        }
    }
    if label == 0 {
        return Err(HostError);
    }
    Ok(host.to_ascii_lowercase())
}

/// Split off a `:port` (digits only), keeping an IPv6 literal's brackets.
fn host_without_port(authority: &str) -> Result<&str, HostError> {
    let (host, port) = if authority.starts_with('[') {
        match authority.find(']') {
            Some(end) => (&authority[..=end], &authority[end + 1..]),
            None => return Err(HostError),
        }
    } else {
        match authority.bytes().rposition(|b| b == b':') {
            Some(colon) => (&authority[..colon], &authority[colon..]),
            None => (authority, ""),
        }
    };
    match port.strip_prefix(':') {
        None if port.is_empty() => Ok(host),
        Some(p) if p.bytes().all(|b| b.is_ascii_digit()) => Ok(host),
        _ => Err(HostError),
    }
}

/// Match a route pattern (unreserved characters, `/`, sub-delimiters, `:` and `@`) against
/// the start of a normalized path. A pattern's sub-delimiter also matches its escape, since
/// upstreams decode both to the same character. Returns the number of path bytes matched.
pub fn match_pattern(pattern: &str, path: &str) -> Option<usize> {
    let (p, s) = (pattern.as_bytes(), path.as_bytes());
    let mut j = 0;
    for &c in p {
        if s.get(j) == Some(&c) {
            j += 1;
        } else if is_pattern_delim(c) && decode_escape(s, j) == Some(c) {
            j += 3;
        } else {
            return None;
        }
    }
    Some(j)
}

/// Whether a route pattern is one the router can compare safely: an absolute path in
/// normalized form made of unreserved characters, `/`, sub-delimiters, `:` and `@` only.
pub fn check_pattern(pattern: &str) -> Result<(), String> {
    if !pattern.starts_with('/') {
        return Err(format!("{pattern:?} must start with '/'"));
    }
    if let Some(c) = pattern
        .bytes()
        .find(|&b| !(is_unreserved(b) || b == b'/' || is_pattern_delim(b)))
    {
        return Err(format!(
            "{pattern:?} has {:?}: a route path may contain only letters, digits, `-._~`, `/`, `!$&'()*+,=:@` (write characters themselves, not escapes)",
            c as char
        ));
    }
    if pattern.contains("//") {
        return Err(format!("{pattern:?} has an empty segment (//)"));
    }
    if has_dot_segment(pattern, &PathRules::default()) {
        return Err(format!("{pattern:?} has a dot segment"));
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests;

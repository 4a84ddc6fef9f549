//! The gate in front of a body policy. A route's policy can opt in to a body phase
//! (`body = { max = "64KiB" }`): the proxy buffers the request body and a Wasm plugin
//! inspects it. A verdict on a body is only as good as the plugin's agreement with the
//! upstream's parser, so before any plugin sees a body this module refuses whatever two
//! parsers could read differently: duplicated or odd `content-type` headers, charsets
//! other than UTF-8, unknown or stacked-too-deep content codings, trailing bytes after a
//! compressed stream, and, for JSON, duplicate keys, lone surrogates, a BOM, trailing
//! documents, integers a double cannot hold and deep nesting.
//!
//! The request path is [`BodyRules::check_head`] (headers only, before the body is read),
//! then [`BodyRules::decode`] and [`BodyRules::validate`] on the buffered body. Every
//! refusal is a [`Refusal`]: 413, 415 or 400, with a reason safe to send to the client.
//! Memory is bounded by the configured limits: the proxy buffers at most
//! [`BodyRules::max`] bytes and decoders stop after `decoded_max + 1` bytes of output.

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt;
use std::io::Read;

use bytes::Bytes;
use http::{HeaderMap, StatusCode, header};
use serde::Deserialize;
use serde::de::{self as sde, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

use crate::config::field::{FieldError, de};

/// Largest `max` and `decoded_max`: bodies are buffered whole, in memory.
const MAX_BODY: u64 = 64 << 20;
/// Below this many decoded bytes the compression ratio is not checked: tiny bodies
/// compress well (a 20-byte gzip header of a 1 KiB run of spaces is legitimate).
const RATIO_FLOOR: u64 = 1024;
/// Most content codings one body may stack. Clients send one; each extra layer
/// multiplies decoding work and has no use but to confuse parsers.
const MAX_CODINGS: usize = 2;
/// Deepest `max_depth`. serde_json refuses the 128th nested array or object on its own
/// (its recursion limit, which keeps the parser off the end of the stack); lifting it
/// needs its `unbounded_depth` feature and a stack to match, so the configured depth
/// stays under it. At 127, serde_json's refusal is the one that fires, and is reported
/// as [`Refusal::TooDeep`] all the same.
const MAX_JSON_DEPTH: u32 = 127;
/// I-JSON (RFC 7493 §2.2): larger integers lose precision in a double, so a JavaScript
/// or double-based parser and an arbitrary-precision one disagree on them.
const MAX_SAFE_INTEGER: u64 = (1 << 53) - 1;
/// Most parameters one `content-type` may carry (each is checked against the others for
/// duplicates).
const MAX_PARAMS: usize = 8;
/// zstd windows are capped at 8 MiB, the most an HTTP recipient must support (RFC 9659),
/// instead of the library's 128 MiB: the decoder reserves the window a frame declares.
/// (Not lower: streaming encoders declare 2 MiB or more whatever the body's size, and
/// only the pages the output reaches, at most `decoded_max`, are ever touched.)
const ZSTD_MAX_WINDOW_LOG: u32 = 23;
/// Media types a browser sends cross-origin without a preflight, and that a JSON policy
/// cannot read: they match only a range naming them exactly, never `type/*`.
const SIMPLE_TYPES: [(&str, &str); 3] = [
    ("multipart", "form-data"),
    ("application", "x-www-form-urlencoded"),
    ("text", "plain"),
];

/// `body = { … }` on a route's policy entry: buffer the request body and check it before
/// the policy sees it.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct BodyConfig {
    /// Largest body accepted as sent (still encoded), e.g. `"64KiB"`.
    #[serde(deserialize_with = "de::size")]
    pub max: u64,
    /// Largest body after undoing its content codings; defaults to `max`.
    #[serde(default, deserialize_with = "de::opt_size")]
    pub decoded_max: Option<u64>,
    /// Refuse a decoded/encoded size ratio above this (compression bombs), once the
    /// decoded body exceeds 1 KiB.
    #[serde(default = "default_ratio")]
    pub max_ratio: u32,
    /// Media ranges accepted: `type/subtype`, `type/*` or `type/*+suffix`.
    #[serde(default = "default_content_types")]
    pub content_types: Vec<String>,
    /// Refuse JSON bodies that parsers could read differently (see [`BodyRules::validate`]).
    #[serde(default = "default_true")]
    pub strict_json: bool,
    /// Deepest nesting of JSON arrays and objects (1 to 127).
    #[serde(default = "default_depth")]
    pub max_depth: u32,
}

fn default_ratio() -> u32 {
    100
}

fn default_content_types() -> Vec<String> {
    vec!["application/json".into(), "application/*+json".into()]
}

fn default_true() -> bool {
    true
}

fn default_depth() -> u32 {
    64
}

impl BodyConfig {
    /// `decoded_max`, or `max` when unset.
    pub fn decoded_max(&self) -> u64 {
        self.decoded_max.unwrap_or(self.max)
    }

    /// Static checks; keys are relative to the `body` table.
    pub fn check(&self) -> Vec<FieldError> {
        let mut errs = check_sizes(self.max, self.decoded_max);
        if self.max_ratio == 0 {
            errs.push(FieldError::new("max_ratio", "must be at least 1"));
        }
        if !(1..=MAX_JSON_DEPTH).contains(&self.max_depth) {
            errs.push(FieldError::new(
                "max_depth",
                format!("must be between 1 and {MAX_JSON_DEPTH} (the JSON parser's own limit)"),
            ));
        }
        if self.content_types.is_empty() {
            errs.push(FieldError::new(
                "content_types",
                "must list at least one media range",
            ));
        }
        for (i, range) in self.content_types.iter().enumerate() {
            if let Err(e) = MediaRange::parse(range) {
                errs.push(FieldError::new(format!("content_types[{i}]"), e));
            }
        }
        errs
    }
}

/// `response_body = { … }` on a route's policy entry: buffer the response body for the
/// policy.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ResponseBodyConfig {
    /// Largest response body accepted as sent (still encoded), e.g. `"256KiB"`.
    #[serde(deserialize_with = "de::size")]
    pub max: u64,
    /// Largest response body after undoing its content codings; defaults to `max`.
    #[serde(default, deserialize_with = "de::opt_size")]
    pub decoded_max: Option<u64>,
}

impl ResponseBodyConfig {
    /// Static checks; keys are relative to the `response_body` table.
    pub fn check(&self) -> Vec<FieldError> {
        check_sizes(self.max, self.decoded_max)
    }

    /// Limits for [`decode_codings`]. No ratio check: the upstream is not the attacker a
    /// compression bomb comes from, and `decoded_max` still bounds memory.
    pub fn limits(&self) -> Limits {
        Limits {
            max: self.max,
            decoded_max: self.decoded_max.unwrap_or(self.max),
            max_ratio: None,
        }
    }
}

fn check_sizes(max: u64, decoded_max: Option<u64>) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let too_big = || {
        format!(
            "must be at most {}MiB: bodies are buffered in memory",
            MAX_BODY >> 20
        )
    };
    if max == 0 {
        errs.push(FieldError::new("max", "must be greater than zero"));
    } else if max > MAX_BODY {
        errs.push(FieldError::new("max", too_big()));
    }
    match decoded_max {
        Some(0) => errs.push(FieldError::new("decoded_max", "must be at least 1 byte")),
        Some(d) if d > MAX_BODY => errs.push(FieldError::new("decoded_max", too_big())),
        _ => {}
    }
    errs
}

/// Size limits for decoding a body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest body as sent.
    pub max: u64,
    /// Largest body after decoding.
    pub decoded_max: u64,
    /// Largest decoded/encoded ratio once past 1 KiB decoded; `None` for no check.
    pub max_ratio: Option<u32>,
}

/// A content coding this module can undo.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Coding {
    /// `gzip` (or its alias `x-gzip`), one or more members.
    Gzip,
    /// `deflate`: zlib-wrapped (RFC 9110), raw deflate accepted when the zlib header is
    /// not there.
    Deflate,
    /// `br` (RFC 7932; large-window streams refused).
    Br,
    /// `zstd` (RFC 8878), window at most 8 MiB (RFC 9659).
    Zstd,
}

impl Coding {
    /// `Ok(None)` for `identity`, `Err` for a coding we cannot undo.
    fn parse(token: &str) -> Result<Option<Coding>, ()> {
        let is = |name: &str| token.eq_ignore_ascii_case(name);
        Ok(Some(if is("gzip") || is("x-gzip") {
            Coding::Gzip
        } else if is("deflate") {
            Coding::Deflate
        } else if is("br") {
            Coding::Br
        } else if is("zstd") {
            Coding::Zstd
        } else if is("identity") {
            return Ok(None);
        } else {
            return Err(());
        }))
    }
}

/// Why a body was refused. Reasons are fixed strings: they never echo the body or its
/// headers, so they are safe to send to the client and to log.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// 413: the body, or its declared `content-length`, exceeds `max`.
    TooLarge,
    /// 413: the decoded body exceeds `decoded_max`.
    DecodedTooLarge,
    /// 413: the body decodes to more than `max_ratio` times its encoded size.
    RatioExceeded,
    /// 415: no `content-type`.
    MissingContentType,
    /// 415: a media type the route does not accept.
    ContentTypeNotAllowed,
    /// 415: a JSON body with a charset other than UTF-8.
    Charset,
    /// 415: a content coding we cannot undo.
    UnknownCoding,
    /// 415: more stacked content codings than any client sends.
    TooManyCodings,
    /// 400: more than one `content-type` header: parsers pick different ones.
    DuplicateContentType,
    /// 400: a `content-type` that does not parse, or repeats a parameter.
    MalformedContentType,
    /// 400: a `content-length` that is not a number, or several that disagree.
    BadContentLength,
    /// 400: compressed data that does not decode.
    CorruptEncoding,
    /// 400: bytes after the end of a compressed stream.
    TrailingEncodedData,
    /// 400: a JSON body with nothing in it.
    EmptyBody,
    /// 400: a JSON body starting with a byte order mark.
    ByteOrderMark,
    /// 400: not JSON: a syntax error, invalid UTF-8, a lone surrogate escape.
    MalformedJson,
    /// 400: an object with the same key twice (after decoding escapes and folding case).
    DuplicateKey,
    /// 400: an integer beyond ±(2^53−1), or a number beyond the double range.
    NumberOutOfRange,
    /// 400: arrays and objects nested deeper than `max_depth`.
    TooDeep,
    /// 400: data after the JSON document.
    TrailingData,
}

impl Refusal {
    /// The response status.
    pub fn status(self) -> StatusCode {
        use Refusal::*;
        match self {
            TooLarge | DecodedTooLarge | RatioExceeded => StatusCode::PAYLOAD_TOO_LARGE,
            MissingContentType
            | ContentTypeNotAllowed
            | Charset
            | UnknownCoding
            | TooManyCodings => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            DuplicateContentType | MalformedContentType | BadContentLength | CorruptEncoding
            | TrailingEncodedData | EmptyBody | ByteOrderMark | MalformedJson | DuplicateKey
            | NumberOutOfRange | TooDeep | TrailingData => StatusCode::BAD_REQUEST,
        }
    }

    /// A short reason, safe to send to the client.
    pub fn reason(self) -> &'static str {
        use Refusal::*;
        match self {
            TooLarge => "request body too large",
            DecodedTooLarge => "decoded request body too large",
            RatioExceeded => "request body compression ratio too high",
            MissingContentType => "content-type required",
            ContentTypeNotAllowed => "content-type not accepted",
            Charset => "only utf-8 is accepted for json",
            UnknownCoding => "unsupported content-encoding",
            TooManyCodings => "too many content-encodings",
            DuplicateContentType => "more than one content-type",
            MalformedContentType => "malformed content-type",
            BadContentLength => "malformed content-length",
            CorruptEncoding => "request body does not match its content-encoding",
            TrailingEncodedData => "data after the end of the compressed body",
            EmptyBody => "empty json body",
            ByteOrderMark => "json body starts with a byte order mark",
            MalformedJson => "malformed json",
            DuplicateKey => "duplicate key in json object (keys are compared case-folded)",
            NumberOutOfRange => "json number out of interoperable range",
            TooDeep => "json nested too deeply",
            TrailingData => "data after the json document",
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.reason(), self.status().as_u16())
    }
}

impl std::error::Error for Refusal {}

/// What [`BodyRules::check_head`] learned from the headers, for the body checks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Head {
    /// `application/json` or `*/*+json`: [`BodyRules::validate`] parses it.
    pub json: bool,
    /// Content codings in the order they were applied (header order); `identity` left
    /// out. [`BodyRules::decode`] undoes them last first.
    pub codings: Vec<Coding>,
    /// The declared `content-length`, when there is one.
    pub content_length: Option<u64>,
}

/// An accepted media range, lower-cased.
#[derive(Clone, Debug, PartialEq, Eq)]
enum MediaRange {
    /// `type/subtype`
    Exact(String, String),
    /// `type/*`
    AnySubtype(String),
    /// `type/*+suffix`; the suffix is kept with its `+`.
    Suffix(String, String),
}

impl MediaRange {
    fn parse(text: &str) -> Result<MediaRange, String> {
        let lower = text.trim().to_ascii_lowercase();
        if lower.contains(';') {
            return Err(format!(
                "{text:?}: parameters are not supported in a media range"
            ));
        }
        let Some((ty, sub)) = lower.split_once('/') else {
            return Err(format!(
                "{text:?} is not a media range (write e.g. \"application/json\", \"application/*+json\")"
            ));
        };
        let plain = |s: &str| is_token(s) && !s.contains('*');
        if !plain(ty) {
            return Err(format!(
                "{text:?}: the type must be named (\"*/*\" would accept any body)"
            ));
        }
        if sub == "*" {
            Ok(MediaRange::AnySubtype(ty.into()))
        } else if let Some(suffix) = sub.strip_prefix("*+") {
            if plain(suffix) {
                Ok(MediaRange::Suffix(ty.into(), format!("+{suffix}")))
            } else {
                Err(format!("{text:?}: invalid structured syntax suffix"))
            }
        } else if plain(sub) {
            Ok(MediaRange::Exact(ty.into(), sub.into()))
        } else {
            Err(format!(
                "{text:?}: the subtype must be a name, \"*\" or \"*+suffix\""
            ))
        }
    }

    /// Whether `ty/sub` (as received, any case) is in this range.
    fn matches(&self, ty: &str, sub: &str) -> bool {
        match self {
            MediaRange::Exact(t, s) => ty.eq_ignore_ascii_case(t) && sub.eq_ignore_ascii_case(s),
            MediaRange::AnySubtype(t) => ty.eq_ignore_ascii_case(t),
            MediaRange::Suffix(t, suffix) => {
                ty.eq_ignore_ascii_case(t) && has_suffix(sub, suffix) && sub.len() > suffix.len()
            }
        }
    }
}

/// Case-insensitive `ends_with`, without slicing inside a character.
fn has_suffix(s: &str, suffix: &str) -> bool {
    let (s, suffix) = (s.as_bytes(), suffix.as_bytes());
    s.len() >= suffix.len() && s[s.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
}

/// RFC 9110 `token`.
fn is_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(is_tchar)
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// `check` compiled for the request path.
#[derive(Clone, Debug)]
pub struct BodyRules {
    limits: Limits,
    content_types: Vec<MediaRange>,
    strict_json: bool,
    max_depth: u32,
}

impl BodyRules {
    /// Compile a config, refusing it with [`BodyConfig::check`]'s errors.
    pub fn new(config: &BodyConfig) -> Result<BodyRules, Vec<FieldError>> {
        let errs = config.check();
        if !errs.is_empty() {
            return Err(errs);
        }
        let content_types = config
            .content_types
            .iter()
            .map(|t| MediaRange::parse(t))
            .collect::<Result<_, _>>()
            .map_err(|e| vec![FieldError::new("content_types", e)])?;
        Ok(BodyRules {
            limits: Limits {
                max: config.max,
                decoded_max: config.decoded_max(),
                max_ratio: Some(config.max_ratio),
            },
            content_types,
            strict_json: config.strict_json,
            max_depth: config.max_depth,
        })
    }

    /// The most body bytes to buffer: read at most `max() + 1` and refuse with
    /// [`Refusal::TooLarge`] on the extra byte (or let [`BodyRules::decode`] do it).
    pub fn max(&self) -> u64 {
        self.limits.max
    }

    /// The size limits.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Check the headers of a request that has a body, before reading it. (A request
    /// without one, such as a bodiless GET, has nothing to inspect: it would be refused
    /// here for its missing `content-type`.)
    ///
    /// - `content-length` must be digits, the same in every header, and at most `max`
    ///   (413 at once, so the proxy need not read the body);
    /// - exactly one `content-type` (none: 415; several: 400, since parsers differ on
    ///   which one counts), well-formed (else 400: RFC 9110 syntax, no parameter twice),
    ///   in `content_types` (else 415). `multipart/form-data`,
    ///   `application/x-www-form-urlencoded` and `text/plain` must be listed exactly: a
    ///   `type/*` range does not admit them;
    /// - a JSON type's `charset`, if any, must be `utf-8` (else 415);
    /// - every `content-encoding` token must be one we can undo (else 415), two at most.
    pub fn check_head(&self, headers: &HeaderMap) -> Result<Head, Refusal> {
        let content_length = content_length(headers)?;
        if content_length.is_some_and(|n| n > self.limits.max) {
            return Err(Refusal::TooLarge);
        }

        let mut values = headers.get_all(header::CONTENT_TYPE).iter();
        let value = values.next().ok_or(Refusal::MissingContentType)?;
        if values.next().is_some() {
            return Err(Refusal::DuplicateContentType);
        }
        let value = value.to_str().map_err(|_| Refusal::MalformedContentType)?;
        if value.trim_matches([' ', '\t']).is_empty() {
            return Err(Refusal::MissingContentType);
        }
        let media = MediaType::parse(value).ok_or(Refusal::MalformedContentType)?;
        if !self.accepts(media.ty, media.sub) {
            return Err(Refusal::ContentTypeNotAllowed);
        }
        let json = (media.ty.eq_ignore_ascii_case("application")
            && media.sub.eq_ignore_ascii_case("json"))
            || (has_suffix(media.sub, "+json") && media.sub.len() > "+json".len());
        if json
            && let Some(charset) = media.charset
            && !charset.eq_ignore_ascii_case("utf-8")
        {
            return Err(Refusal::Charset);
        }

        Ok(Head {
            json,
            codings: content_codings(headers)?,
            content_length,
        })
    }

    fn accepts(&self, ty: &str, sub: &str) -> bool {
        // A type with a `*` in it is a range, not something a body can be.
        if ty.contains('*') || sub.contains('*') {
            return false;
        }
        let simple = SIMPLE_TYPES
            .iter()
            .any(|(t, s)| ty.eq_ignore_ascii_case(t) && sub.eq_ignore_ascii_case(s));
        self.content_types
            .iter()
            .filter(|r| !simple || matches!(r, MediaRange::Exact(..)))
            .any(|r| r.matches(ty, sub))
    }

    /// Undo the content codings in `head` (last applied first). Refuses a body over `max`
    /// (413), output over `decoded_max` or over `max_ratio` times the body's size (413,
    /// decoding stops there), data that does not decode (400) and bytes after a
    /// compressed stream (400). Without codings the body is returned as is (still held
    /// to `decoded_max`).
    pub fn decode(&self, head: &Head, body: Bytes) -> Result<Bytes, Refusal> {
        decode_codings(&head.codings, body, &self.limits)
    }

    /// With `strict_json` and a JSON `head`, refuse (400) a body that JSON parsers could
    /// read differently: empty, a UTF-8 byte order mark, invalid JSON or UTF-8, a lone
    /// surrogate escape, an object key twice in one object (compared after decoding
    /// escapes and folding case), an integer (no fraction, no exponent) beyond ±(2^53−1), a number beyond
    /// the double range, nesting deeper than `max_depth`, anything after the document.
    /// Other bodies pass. Runs in time linear in the body; recursion stops one level past
    /// `max_depth`, so no input can exhaust the stack.
    pub fn validate(&self, head: &Head, body: &[u8]) -> Result<(), Refusal> {
        if head.json && self.strict_json {
            validate_json(body, self.max_depth)
        } else {
            Ok(())
        }
    }

    /// [`BodyRules::decode`] then [`BodyRules::validate`]: the body a policy may see.
    pub fn check_body(&self, head: &Head, body: Bytes) -> Result<Bytes, Refusal> {
        let body = self.decode(head, body)?;
        self.validate(head, &body)?;
        Ok(body)
    }
}

fn content_length(headers: &HeaderMap) -> Result<Option<u64>, Refusal> {
    let mut length = None;
    for value in headers.get_all(header::CONTENT_LENGTH) {
        let bytes = value.as_bytes();
        if bytes.is_empty() || !bytes.iter().all(u8::is_ascii_digit) {
            return Err(Refusal::BadContentLength);
        }
        // Digits only, so the one failure left is overflow: far over any `max`.
        let n = value
            .to_str()
            .ok()
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(u64::MAX);
        if length.is_some_and(|l| l != n) {
            return Err(Refusal::BadContentLength);
        }
        length = Some(n);
    }
    Ok(length)
}

/// The content codings of `headers`, in the order they were applied: every
/// `content-encoding` header's comma-separated tokens, trimmed, case-insensitive,
/// `identity` and empty list elements left out. 415 for a coding we cannot undo or more
/// than two.
pub fn content_codings(headers: &HeaderMap) -> Result<Vec<Coding>, Refusal> {
    let mut codings = Vec::new();
    for value in headers.get_all(header::CONTENT_ENCODING) {
        let value = value.to_str().map_err(|_| Refusal::UnknownCoding)?;
        for token in value.split(',').map(|t| t.trim_matches([' ', '\t'])) {
            if token.is_empty() {
                continue;
            }
            if let Some(coding) = Coding::parse(token).map_err(|()| Refusal::UnknownCoding)? {
                if codings.len() == MAX_CODINGS {
                    return Err(Refusal::TooManyCodings);
                }
                codings.push(coding);
            }
        }
    }
    Ok(codings)
}

/// A parsed `content-type`: RFC 9110 `media-type`, borrowed from the header.
struct MediaType<'a> {
    ty: &'a str,
    sub: &'a str,
    /// The `charset` parameter's value, unquoted.
    charset: Option<Cow<'a, str>>,
}

impl<'a> MediaType<'a> {
    /// `None` for anything that is not exactly `type "/" subtype *( OWS ";" OWS
    /// [ name "=" ( token / quoted-string ) ] )`, or names a parameter twice: lenient
    /// parsers disagree on such headers (e.g. which of two `charset`s counts).
    fn parse(s: &'a str) -> Option<MediaType<'a>> {
        let b = s.as_bytes();
        let mut i = skip_ows(b, 0);
        let ty = token(s, &mut i)?;
        (b.get(i) == Some(&b'/')).then_some(())?;
        i += 1;
        let sub = token(s, &mut i)?;
        let mut charset = None;
        let mut names: [&str; MAX_PARAMS] = [""; MAX_PARAMS];
        let mut n = 0;
        loop {
            i = skip_ows(b, i);
            match b.get(i) {
                None => break,
                Some(b';') => i = skip_ows(b, i + 1),
                Some(_) => return None,
            }
            // An empty parameter (`;;`, or a trailing `;`) is allowed and means nothing.
            if matches!(b.get(i), None | Some(b';')) {
                continue;
            }
            let name = token(s, &mut i)?;
            (b.get(i) == Some(&b'=')).then_some(())?;
            i += 1;
            let value = if b.get(i) == Some(&b'"') {
                quoted_string(s, &mut i)?
            } else {
                Cow::Borrowed(token(s, &mut i)?)
            };
            if n == MAX_PARAMS || names[..n].iter().any(|m| m.eq_ignore_ascii_case(name)) {
                return None;
            }
            names[n] = name;
            n += 1;
            if name.eq_ignore_ascii_case("charset") {
                charset = Some(value);
            }
        }
        Some(MediaType { ty, sub, charset })
    }
}

fn skip_ows(b: &[u8], mut i: usize) -> usize {
    while matches!(b.get(i), Some(b' ' | b'\t')) {
        i += 1;
    }
    i
}

/// The token at `*i` (non-empty), advancing past it.
fn token<'a>(s: &'a str, i: &mut usize) -> Option<&'a str> {
    let start = *i;
    let len = s.as_bytes()[start.min(s.len())..]
        .iter()
        .take_while(|&&b| is_tchar(b))
        .count();
    *i += len;
    (len > 0).then(|| &s[start..start + len])
}

/// The quoted-string at `*i` (which is `"`), unescaped, advancing past it. Only visible
/// ASCII, space and tab reach here (`HeaderValue::to_str`).
fn quoted_string<'a>(s: &'a str, i: &mut usize) -> Option<Cow<'a, str>> {
    let b = s.as_bytes();
    let start = *i + 1;
    let mut j = start;
    let mut escaped = false;
    loop {
        match *b.get(j)? {
            b'"' => break,
            b'\\' => {
                // quoted-pair: any visible character, space or tab may follow.
                b.get(j + 1)?;
                escaped = true;
                j += 2;
            }
            _ => j += 1,
        }
    }
    *i = j + 1;
    let raw = &s[start..j];
    if !escaped {
        return Some(Cow::Borrowed(raw));
    }
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        out.push(if c == '\\' { chars.next()? } else { c });
    }
    Some(Cow::Owned(out))
}

/// Undo `codings` (in the order they were applied, so the last first) within `limits`.
/// See [`BodyRules::decode`]; for a response, map the refusals to 502.
pub fn decode_codings(codings: &[Coding], body: Bytes, limits: &Limits) -> Result<Bytes, Refusal> {
    let sent = body.len() as u64;
    if sent > limits.max {
        return Err(Refusal::TooLarge);
    }
    if codings.is_empty() {
        return if sent > limits.decoded_max {
            Err(Refusal::DecodedTooLarge)
        } else {
            Ok(body)
        };
    }
    if codings.len() > MAX_CODINGS {
        return Err(Refusal::TooManyCodings);
    }
    // Every layer's output is held to the same cap, measured against the body as sent:
    // an inner layer is no bigger than the final body in any honest request.
    let ratio_cap = limits.max_ratio.map_or(u64::MAX, |r| {
        sent.saturating_mul(u64::from(r)).max(RATIO_FLOOR)
    });
    let cap = limits.decoded_max.min(ratio_cap);
    let mut data = body;
    for coding in codings.iter().rev() {
        // No coding's stream is empty: a decoder that reads "" as "" would disagree with
        // one that refuses it.
        if data.is_empty() {
            return Err(Refusal::CorruptEncoding);
        }
        let out = match coding {
            Coding::Gzip => {
                let mut d = flate2::bufread::MultiGzDecoder::new(&data[..]);
                read_capped(&mut d, cap, data.len())?.finished(d.into_inner())
            }
            Coding::Deflate if zlib_header(&data) => {
                let mut d = flate2::bufread::ZlibDecoder::new(&data[..]);
                read_capped(&mut d, cap, data.len())?.finished(d.into_inner())
            }
            Coding::Deflate => {
                let mut d = flate2::bufread::DeflateDecoder::new(&data[..]);
                read_capped(&mut d, cap, data.len())?.finished(d.into_inner())
            }
            Coding::Br => brotli(&data, cap),
            Coding::Zstd => {
                let mut d = zstd::stream::read::Decoder::with_buffer(&data[..])
                    .map_err(|_| Refusal::CorruptEncoding)?;
                d.window_log_max(ZSTD_MAX_WINDOW_LOG)
                    .map_err(|_| Refusal::CorruptEncoding)?;
                read_capped(&mut d, cap, data.len())?.finished(d.finish())
            }
        }?;
        if out.len() as u64 > cap {
            return Err(if out.len() as u64 > limits.decoded_max {
                Refusal::DecodedTooLarge
            } else {
                Refusal::RatioExceeded
            });
        }
        data = Bytes::from(out);
    }
    Ok(data)
}

/// A decoder's output, at most `cap + 1` bytes.
struct Capped(Vec<u8>, u64);

impl Capped {
    /// The output, or a refusal if the decoder stopped short of the input's end. Output
    /// over the cap is returned as is (the caller refuses it as too large): decoding
    /// stopped there, so the rest of the input was never looked at.
    fn finished(self, rest: &[u8]) -> Result<Vec<u8>, Refusal> {
        if self.0.len() as u64 <= self.1 && !rest.is_empty() {
            return Err(Refusal::TrailingEncodedData);
        }
        Ok(self.0)
    }
}

/// Read a decoder to its end, or until it has produced `cap + 1` bytes.
fn read_capped(decoder: &mut impl Read, cap: u64, sent: usize) -> Result<Capped, Refusal> {
    // Room for a typical ratio to start with; growing past it doubles as usual.
    let hint = (sent as u64).saturating_mul(4).min(cap.saturating_add(1));
    let mut out = Vec::with_capacity(usize::try_from(hint).unwrap_or(0));
    decoder
        .take(cap.saturating_add(1))
        .read_to_end(&mut out)
        .map_err(|_| Refusal::CorruptEncoding)?;
    Ok(Capped(out, cap))
}

/// A zlib header (RFC 1950): deflate method, window ≤ 32 KiB, check bits. A preset
/// dictionary passes here and then fails to decode, as it should.
fn zlib_header(data: &[u8]) -> bool {
    match data {
        [cmf, flg, ..] => {
            cmf & 0x0f == 8 && cmf >> 4 <= 7 && (u16::from(*cmf) << 8 | u16::from(*flg)) % 31 == 0
        }
        _ => false,
    }
}

/// Brotli through the streaming API rather than `brotli_decompressor::Decompressor`: the
/// reader ignores bytes after the end of the stream, and we want to see them.
fn brotli(data: &[u8], cap: u64) -> Result<Vec<u8>, Refusal> {
    use brotli_decompressor::{BrotliDecompressStream, BrotliResult, BrotliState, StandardAlloc};

    // `new_strict`: RFC 7932 only, no large-window streams (up to 1 GiB of window, and
    // not what `br` means in HTTP).
    let mut state = BrotliState::new_strict(
        StandardAlloc::default(),
        StandardAlloc::default(),
        StandardAlloc::default(),
    );
    let limit = cap.saturating_add(1);
    let mut out = Vec::new();
    let mut chunk = [0u8; 8192];
    let (mut avail_in, mut in_offset, mut total_out) = (data.len(), 0, 0);
    loop {
        let (mut avail_out, mut out_offset) = (chunk.len(), 0);
        let result = BrotliDecompressStream(
            &mut avail_in,
            &mut in_offset,
            data,
            &mut avail_out,
            &mut out_offset,
            &mut chunk,
            &mut total_out,
            &mut state,
        );
        let room = usize::try_from(limit - out.len() as u64).unwrap_or(usize::MAX);
        out.extend_from_slice(&chunk[..out_offset.min(room)]);
        if out.len() as u64 == limit {
            return Ok(out);
        }
        match result {
            BrotliResult::NeedsMoreOutput => {}
            BrotliResult::ResultSuccess if avail_in == 0 => return Ok(out),
            BrotliResult::ResultSuccess => return Err(Refusal::TrailingEncodedData),
            // The whole body was given: wanting more means it was cut short.
            BrotliResult::NeedsMoreInput | BrotliResult::ResultFailure => {
                return Err(Refusal::CorruptEncoding);
            }
        }
    }
}

/// The strict JSON check behind [`BodyRules::validate`].
fn validate_json(body: &[u8], max_depth: u32) -> Result<(), Refusal> {
    // serde_json refuses a BOM too, but as a syntax error; say what it is.
    if body.starts_with(b"\xEF\xBB\xBF") {
        return Err(Refusal::ByteOrderMark);
    }
    if body
        .iter()
        .all(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
    {
        return Err(Refusal::EmptyBody);
    }
    let mut walk = Walk {
        max_depth,
        spare: Vec::new(),
        big_float: false,
        refusal: None,
    };
    let mut parser = serde_json::Deserializer::from_slice(body);
    Node {
        walk: &mut walk,
        depth: 0,
    }
    .deserialize(&mut parser)
    .map_err(|e| {
        walk.refusal.unwrap_or_else(|| {
            // The one parser error that is ours to name: with `max_depth` at 127,
            // serde_json's limit on the 128th level fires before our check can.
            if e.to_string().starts_with("recursion limit exceeded") {
                Refusal::TooDeep
            } else {
                Refusal::MalformedJson
            }
        })
    })?;
    parser.end().map_err(|_| Refusal::TrailingData)?;
    if walk.big_float && has_unsafe_integer(body) {
        return Err(Refusal::NumberOutOfRange);
    }
    Ok(())
}

/// State of one walk over a document.
struct Walk<'de> {
    max_depth: u32,
    /// Key sets of finished objects, emptied, kept to reuse their allocations: at most
    /// one per level of nesting is live.
    spare: Vec<HashSet<Cow<'de, str>>>,
    /// A number of magnitude ≥ 2^53 arrived as a float. serde_json hands integers beyond
    /// u64/i64 over as floats too, so only its text can tell whether it was written as
    /// an integer; [`has_unsafe_integer`] looks, once the document is known to be valid.
    big_float: bool,
    /// Why the walk stopped, when it was us and not the parser.
    refusal: Option<Refusal>,
}

impl Walk<'_> {
    fn refuse<E: sde::Error>(&mut self, refusal: Refusal) -> E {
        self.refusal = Some(refusal);
        E::custom(refusal.reason())
    }
}

/// A value `depth` arrays and objects deep. Strings arrive through `visit_str` and
/// friends, which serde_json calls only after decoding escapes and checking UTF-8 and
/// surrogate pairs; nothing is skipped with `IgnoredAny`, whose string scanning checks
/// less.
struct Node<'w, 'de> {
    walk: &'w mut Walk<'de>,
    depth: u32,
}

impl Node<'_, '_> {
    /// The depth of a container starting here, or a refusal.
    fn enter<E: sde::Error>(&mut self) -> Result<u32, E> {
        let depth = self.depth + 1;
        if depth > self.walk.max_depth {
            return Err(self.walk.refuse(Refusal::TooDeep));
        }
        Ok(depth)
    }
}

impl<'de> DeserializeSeed<'de> for Node<'_, 'de> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Node<'_, 'de> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_unit<E: sde::Error>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_bool<E: sde::Error>(self, _: bool) -> Result<(), E> {
        Ok(())
    }

    fn visit_str<E: sde::Error>(self, _: &str) -> Result<(), E> {
        Ok(())
    }

    fn visit_u64<E: sde::Error>(self, v: u64) -> Result<(), E> {
        if v > MAX_SAFE_INTEGER {
            return Err(self.walk.refuse(Refusal::NumberOutOfRange));
        }
        Ok(())
    }

    fn visit_i64<E: sde::Error>(self, v: i64) -> Result<(), E> {
        if v.unsigned_abs() > MAX_SAFE_INTEGER {
            return Err(self.walk.refuse(Refusal::NumberOutOfRange));
        }
        Ok(())
    }

    fn visit_f64<E: sde::Error>(self, v: f64) -> Result<(), E> {
        // serde_json refuses overflowing literals itself; this is the backstop.
        if !v.is_finite() {
            return Err(self.walk.refuse(Refusal::NumberOutOfRange));
        }
        if v.abs() >= (MAX_SAFE_INTEGER + 1) as f64 {
            self.walk.big_float = true;
        }
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(mut self, mut seq: A) -> Result<(), A::Error> {
        let depth = self.enter()?;
        while seq
            .next_element_seed(Node {
                walk: &mut *self.walk,
                depth,
            })?
            .is_some()
        {}
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(mut self, mut map: A) -> Result<(), A::Error> {
        let depth = self.enter()?;
        let mut keys = self.walk.spare.pop().unwrap_or_default();
        while let Some(key) = map.next_key_seed(Key)? {
            // Keys are compared case-folded: decoders that match fields without regard to
            // case (Go's encoding/json, which also folds `ſ` into `s` and the Kelvin sign
            // into `k`) would read `"MODEL"` as `"model"`.
            if !keys.insert(fold(key)) {
                return Err(self.walk.refuse(Refusal::DuplicateKey));
            }
            map.next_value_seed(Node {
                walk: &mut *self.walk,
                depth,
            })?;
        }
        keys.clear();
        self.walk.spare.push(keys);
        Ok(())
    }
}

/// `key` with every character case-folded (upper-cased, then lower-cased, so that
/// characters whose upper case is shared fold together), borrowed when nothing changes.
fn fold(key: Cow<'_, str>) -> Cow<'_, str> {
    if key.is_ascii() {
        if key.bytes().any(|b| b.is_ascii_uppercase()) {
            return Cow::Owned(key.to_ascii_lowercase());
        }
        return key;
    }
    Cow::Owned(
        key.chars()
            .flat_map(char::to_uppercase)
            .flat_map(char::to_lowercase)
            .collect(),
    )
}

/// An object key, decoded: borrowed from the body unless it had escapes.
struct Key;

impl<'de> DeserializeSeed<'de> for Key {
    type Value = Cow<'de, str>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for Key {
    type Value = Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object key")
    }

    fn visit_borrowed_str<E: sde::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(v))
    }

    fn visit_str<E: sde::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v.to_owned()))
    }
}

/// Whether valid JSON `body` has an integer literal (no fraction, no exponent) beyond
/// ±(2^53−1). A lexical scan: outside strings, a number starts at `-` or a digit.
fn has_unsafe_integer(body: &[u8]) -> bool {
    const LIMIT: &[u8] = b"9007199254740991";
    let mut i = 0;
    while let Some(&b) = body.get(i) {
        match b {
            b'"' => {
                i += 1;
                while let Some(&c) = body.get(i) {
                    i += if c == b'\\' { 2 } else { 1 };
                    if c == b'"' {
                        break;
                    }
                }
            }
            b'-' | b'0'..=b'9' => {
                let start = i;
                while matches!(
                    body.get(i),
                    Some(b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E')
                ) {
                    i += 1;
                }
                let literal = &body[start..i];
                if !literal.iter().any(|c| matches!(c, b'.' | b'e' | b'E')) {
                    // JSON has no leading zeros, so more digits is a bigger number.
                    let digits = literal.strip_prefix(b"-").unwrap_or(literal);
                    if digits.len() > LIMIT.len() || (digits.len() == LIMIT.len() && digits > LIMIT)
                    {
                        return true;
                    }
                }
            }
            _ => i += 1,
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    use http::HeaderValue;

    const PLAIN: &str =
        r#"{"model":"warden","messages":[{"role":"user","content":"hello hello hello hello"}]}"#;
    /// `brotli -q 11` of `PLAIN` (brotli CLI 1.0.9).
    const PLAIN_BR: &[u8] = &[
        0xa1, 0x90, 0x02, 0x00, 0xe7, 0x3c, 0xb0, 0x63, 0x13, 0x24, 0xca, 0xcc, 0x4c, 0xb5, 0xc9,
        0x73, 0x36, 0x42, 0xa5, 0xb7, 0x48, 0xd9, 0xd6, 0xde, 0x7a, 0x93, 0x6b, 0x1d, 0x96, 0xae,
        0xbe, 0x29, 0xc2, 0xe6, 0xe6, 0x18, 0x27, 0x02, 0xdb, 0xb7, 0x9c, 0x2f, 0x30, 0xe3, 0x01,
        0xea, 0x83, 0x47, 0x84, 0x82, 0x13, 0x08, 0xda, 0x96, 0xbc, 0xcb, 0xae, 0x42, 0xb2, 0x08,
        0xc2, 0x04, 0x37, 0xf1, 0x1d,
    ];
    /// `gzip -n | brotli -q 11` of `PLAIN`: `content-encoding: gzip, br`.
    const PLAIN_GZIP_BR: &[u8] = &[
        0x8f, 0x29, 0x80, 0x1f, 0x8b, 0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x03, 0xab, 0x56,
        0xca, 0xcd, 0x4f, 0x49, 0xcd, 0x51, 0xb2, 0x52, 0x2a, 0x4f, 0x2c, 0x4a, 0x49, 0xcd, 0x53,
        0xd2, 0x51, 0xca, 0x4d, 0x2d, 0x2e, 0x4e, 0x4c, 0x4f, 0x2d, 0x56, 0xb2, 0x8a, 0xae, 0x56,
        0x2a, 0xca, 0xcf, 0x49, 0x05, 0x4a, 0x96, 0x16, 0xa7, 0x16, 0x01, 0xa5, 0x92, 0xf3, 0xf3,
        0x4a, 0x52, 0xf3, 0x4a, 0x80, 0x02, 0x19, 0xa9, 0x39, 0x39, 0xf9, 0x0a, 0x18, 0xa4, 0x52,
        0x6d, 0x6c, 0x2d, 0x00, 0x4b, 0xcb, 0xf8, 0xc8, 0x53, 0x00, 0x00, 0x00, 0x03,
    ];
    /// `brotli -q 11 --large_window=25` of `PLAIN`: not RFC 7932.
    const PLAIN_BR_LARGE_WINDOW: &[u8] = &[
        0x11, 0x59, 0x48, 0x01, 0x80, 0x73, 0x1e, 0xd8, 0xb1, 0x09, 0x12, 0x65, 0x66, 0xa6, 0xda,
        0xe4, 0x39, 0x1b, 0xa1, 0xd2, 0x5b, 0xa4, 0x6c, 0x6b, 0x6f, 0xbd, 0xc9, 0xb5, 0x0e, 0x4b,
        0x57, 0xdf, 0x14, 0x61, 0x73, 0x73, 0x8c, 0x13, 0x81, 0xed, 0x5b, 0xce, 0x17, 0x98, 0xf1,
        0x00, 0xe9, 0x03, 0x0f, 0x11, 0x14, 0x38, 0x81, 0xa0, 0x6d, 0xc9, 0xbb, 0xec, 0x2a, 0x24,
        0x8b, 0x20, 0x4c, 0x70, 0x13, 0xdf, 0x01,
    ];
    /// `brotli -q 11` of 1 MiB of zero bytes.
    const ZEROS_BR: &[u8] = &[
        0x5f, 0xff, 0xff, 0x8f, 0x7f, 0x02, 0x20, 0x1e, 0x0b, 0x04, 0x72, 0xef, 0x1f, 0x00,
    ];

    fn config(toml_text: &str) -> BodyConfig {
        toml::from_str(toml_text).expect("config parses")
    }

    fn rules(toml_text: &str) -> BodyRules {
        BodyRules::new(&config(toml_text)).expect("config is valid")
    }

    fn default_rules() -> BodyRules {
        rules(r#"max = "64KiB""#)
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        map
    }

    fn head_of(r: &BodyRules, pairs: &[(&str, &str)]) -> Result<Head, Refusal> {
        r.check_head(&headers(pairs))
    }

    fn status(r: Result<impl fmt::Debug, Refusal>) -> u16 {
        r.expect_err("refused").status().as_u16()
    }

    fn json_head() -> Head {
        Head {
            json: true,
            codings: Vec::new(),
            content_length: None,
        }
    }

    fn coded(codings: &[Coding]) -> Head {
        Head {
            codings: codings.to_vec(),
            ..json_head()
        }
    }

    fn json(body: &str) -> Result<(), Refusal> {
        validate_json(body.as_bytes(), 64)
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn zlib(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn raw_deflate(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn zstd(data: &[u8]) -> Vec<u8> {
        zstd::encode_all(data, 3).unwrap()
    }

    fn decode(r: &BodyRules, codings: &[Coding], body: impl Into<Bytes>) -> Result<Bytes, Refusal> {
        r.decode(&coded(codings), body.into())
    }

    // ---- config ----

    #[test]
    fn config_defaults() {
        let c = config(r#"max = "64KiB""#);
        assert_eq!(c.max, 64 * 1024);
        assert_eq!(c.decoded_max(), 64 * 1024);
        assert_eq!(c.max_ratio, 100);
        assert_eq!(c.content_types, ["application/json", "application/*+json"]);
        assert!(c.strict_json);
        assert_eq!(c.max_depth, 64);
        assert!(c.check().is_empty());
    }

    #[test]
    fn config_fields() {
        let c = config(
            r#"max = "1MiB"
            decoded_max = "4MiB"
            max_ratio = 20
            content_types = ["Application/JSON", "text/*", "application/*+xml"]
            strict_json = false
            max_depth = 127"#,
        );
        assert_eq!(c.decoded_max(), 4 << 20);
        assert!(c.check().is_empty(), "{:?}", c.check());
        assert!(
            toml::from_str::<BodyConfig>(
                r#"max = "1KiB"
            maximum = 3"#
            )
            .is_err()
        );
        assert!(toml::from_str::<BodyConfig>("decoded_max = 3").is_err());
    }

    #[test]
    fn config_check() {
        let keys = |text: &str| -> Vec<String> {
            config(text).check().into_iter().map(|e| e.key).collect()
        };
        assert_eq!(keys("max = 0"), ["max"]);
        assert_eq!(keys(r#"max = "65MiB""#), ["max"]);
        assert_eq!(keys(r#"max = "64MiB""#), Vec::<String>::new());
        assert_eq!(keys("max = 10\ndecoded_max = 0"), ["decoded_max"]);
        assert_eq!(keys("max = 10\nmax_ratio = 0"), ["max_ratio"]);
        assert_eq!(keys("max = 10\nmax_depth = 0"), ["max_depth"]);
        assert_eq!(keys("max = 10\nmax_depth = 128"), ["max_depth"]);
        assert_eq!(keys("max = 10\ncontent_types = []"), ["content_types"]);
        assert_eq!(
            keys(
                r#"max = 10
                content_types = ["application/json", "*/*", "application/json; charset=utf-8",
                    "json", "application/*json", "application/*+", "text/*", "a/b/c", "*/*+json"]"#
            ),
            [
                "content_types[1]",
                "content_types[2]",
                "content_types[3]",
                "content_types[4]",
                "content_types[5]",
                "content_types[7]",
                "content_types[8]"
            ]
        );
        let errs = BodyRules::new(&config("max = 0")).unwrap_err();
        assert_eq!(errs[0].key, "max");
    }

    #[test]
    fn response_config() {
        let c: ResponseBodyConfig = toml::from_str(r#"max = "256KiB""#).unwrap();
        assert!(c.check().is_empty());
        assert_eq!(
            c.limits(),
            Limits {
                max: 256 * 1024,
                decoded_max: 256 * 1024,
                max_ratio: None
            }
        );
        let c: ResponseBodyConfig = toml::from_str("max = 0\ndecoded_max = 0").unwrap();
        let keys: Vec<_> = c.check().into_iter().map(|e| e.key).collect();
        assert_eq!(keys, ["max", "decoded_max"]);
        assert!(toml::from_str::<ResponseBodyConfig>("max = 1\nstrict_json = true").is_err());
    }

    // ---- head ----

    #[test]
    fn json_content_types_accepted() {
        let r = default_rules();
        for ct in [
            "application/json",
            "Application/JSON",
            "application/json; charset=utf-8",
            "application/json;charset=UTF-8",
            "application/json; charset=\"utf-8\"",
            "application/json ; charset=\"utf\\-8\" ; ",
            "application/json;;",
            "application/vnd.api+json",
            "application/problem+JSON; profile=\"https://example.com/x;y\"",
        ] {
            let head = head_of(&r, &[("content-type", ct)]).unwrap_or_else(|e| panic!("{ct}: {e}"));
            assert!(head.json, "{ct}");
            assert!(head.codings.is_empty());
            assert_eq!(head.content_length, None);
        }
    }

    #[test]
    fn content_types_refused() {
        let r = default_rules();
        for (ct, code) in [
            ("text/plain", 415),
            ("text/json", 415),
            ("multipart/form-data; boundary=x", 415),
            ("application/x-www-form-urlencoded", 415),
            ("application/xml", 415),
            ("application/+json", 415),
            ("application/*", 415),
            ("*/*", 415),
            ("application/json; charset=utf-16", 415),
            ("application/json; charset=\"latin1\"", 415),
            ("application/json; charset=utf8", 415),
            ("", 415),
            ("  ", 415),
            ("application/json; charset=utf-8; charset=latin1", 400),
            ("application/json; Charset=utf-8; charset=utf-8", 400),
            ("application/json; charset = utf-8", 400),
            ("application/json; charset", 400),
            ("application/json; charset=\"utf-8", 400),
            ("application/json, text/plain", 400),
            ("application/json text", 400),
            ("application", 400),
            ("application/", 400),
            ("/json", 400),
            (
                "application/json; a=1; b=2; c=3; d=4; e=5; f=6; g=7; h=8; i=9",
                400,
            ),
        ] {
            assert_eq!(status(head_of(&r, &[("content-type", ct)])), code, "{ct:?}");
        }
        assert_eq!(head_of(&r, &[]), Err(Refusal::MissingContentType));
        let dup = [
            ("content-type", "application/json"),
            ("content-type", "application/json"),
        ];
        assert_eq!(head_of(&r, &dup), Err(Refusal::DuplicateContentType));
        assert_eq!(status(head_of(&r, &dup)), 400);
        let mut map = headers(&[]);
        map.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_bytes(b"application/json; charset=\"\xff\"").unwrap(),
        );
        assert_eq!(r.check_head(&map), Err(Refusal::MalformedContentType));
    }

    #[test]
    fn simple_types_need_an_exact_range() {
        let wild = rules(
            r#"max = 10
            content_types = ["text/*", "application/*", "multipart/*"]"#,
        );
        for ct in [
            "text/plain",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=b",
        ] {
            assert_eq!(status(head_of(&wild, &[("content-type", ct)])), 415, "{ct}");
        }
        let head = head_of(&wild, &[("content-type", "text/csv")]).unwrap();
        assert!(!head.json);
        assert!(
            head_of(&wild, &[("content-type", "application/json")])
                .unwrap()
                .json
        );

        let exact = rules(
            r#"max = 10
            content_types = ["Text/Plain", "multipart/form-data", "application/x-www-form-urlencoded"]"#,
        );
        for ct in [
            "text/plain; charset=latin1",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=b",
        ] {
            let head = head_of(&exact, &[("content-type", ct)]).unwrap();
            assert!(!head.json, "{ct}");
        }
        // Repeating `boundary` is what makes two multipart parsers split differently.
        assert_eq!(
            head_of(
                &exact,
                &[(
                    "content-type",
                    "multipart/form-data; boundary=a; boundary=b"
                )]
            ),
            Err(Refusal::MalformedContentType)
        );
        assert_eq!(
            status(head_of(&exact, &[("content-type", "application/json")])),
            415
        );
    }

    #[test]
    fn content_length() {
        let r = rules(r#"max = 100"#);
        let ct = ("content-type", "application/json");
        let head = head_of(&r, &[ct, ("content-length", "100")]).unwrap();
        assert_eq!(head.content_length, Some(100));
        assert_eq!(
            head_of(&r, &[ct, ("content-length", "101")]),
            Err(Refusal::TooLarge)
        );
        assert_eq!(status(head_of(&r, &[ct, ("content-length", "101")])), 413);
        // Too large wins over a wrong content type: refuse before reading.
        assert_eq!(
            head_of(&r, &[("content-length", "999999999999999999999999")]),
            Err(Refusal::TooLarge)
        );
        for bad in ["", "-1", "+5", "1 0", "0x10", "10,10"] {
            assert_eq!(
                head_of(&r, &[ct, ("content-length", bad)]),
                Err(Refusal::BadContentLength),
                "{bad:?}"
            );
        }
        let two = [ct, ("content-length", "5"), ("content-length", "6")];
        assert_eq!(status(head_of(&r, &two)), 400);
        let same = [ct, ("content-length", "5"), ("content-length", "5")];
        assert_eq!(head_of(&r, &same).unwrap().content_length, Some(5));
    }

    #[test]
    fn content_encodings() {
        let r = default_rules();
        let ct = ("content-type", "application/json");
        let codings = |values: &[&str]| {
            let mut pairs = vec![ct];
            pairs.extend(values.iter().map(|v| ("content-encoding", *v)));
            head_of(&r, &pairs).map(|h| h.codings)
        };
        use Coding::*;
        assert_eq!(codings(&["gzip"]), Ok(vec![Gzip]));
        assert_eq!(codings(&["X-GZIP"]), Ok(vec![Gzip]));
        assert_eq!(codings(&[" Deflate "]), Ok(vec![Deflate]));
        assert_eq!(codings(&["identity"]), Ok(vec![]));
        assert_eq!(codings(&["gzip, br"]), Ok(vec![Gzip, Br]));
        assert_eq!(codings(&["zstd", "identity,\tBR"]), Ok(vec![Zstd, Br]));
        assert_eq!(codings(&[",gzip,,"]), Ok(vec![Gzip]));
        assert_eq!(codings(&[""]), Ok(vec![]));
        for bad in [
            "compress",
            "gzip, foo",
            "gzip;q=1",
            "*",
            "x-compress",
            "bzip2",
        ] {
            assert_eq!(codings(&[bad]), Err(Refusal::UnknownCoding), "{bad}");
            assert_eq!(status(codings(&[bad])), 415);
        }
        assert_eq!(codings(&["gzip, gzip, gzip"]), Err(Refusal::TooManyCodings));
        assert_eq!(
            codings(&["gzip", "br", "zstd"]),
            Err(Refusal::TooManyCodings)
        );
        assert_eq!(status(codings(&["gzip, br, zstd"])), 415);
    }

    // ---- decoding ----

    #[test]
    fn identity_passes_through() {
        let r = rules("max = 10\ndecoded_max = 8");
        let body = Bytes::from_static(b"12345678");
        let out = decode(&r, &[], body.clone()).unwrap();
        assert_eq!(out.as_ptr(), body.as_ptr(), "no copy");
        assert_eq!(
            decode(&r, &[], &b"123456789"[..]),
            Err(Refusal::DecodedTooLarge)
        );
        assert_eq!(decode(&r, &[], &b"12345678901"[..]), Err(Refusal::TooLarge));
        assert_eq!(status(decode(&r, &[], &b"12345678901"[..])), 413);
    }

    #[test]
    fn every_coding_round_trips() {
        let r = default_rules();
        let plain = PLAIN.as_bytes();
        let cases: Vec<(Vec<Coding>, Vec<u8>)> = vec![
            (vec![Coding::Gzip], gzip(plain)),
            (vec![Coding::Deflate], zlib(plain)),
            (vec![Coding::Deflate], raw_deflate(plain)),
            (vec![Coding::Br], PLAIN_BR.to_vec()),
            (vec![Coding::Zstd], zstd(plain)),
            (vec![Coding::Gzip, Coding::Br], PLAIN_GZIP_BR.to_vec()),
            (vec![Coding::Br, Coding::Gzip], gzip(PLAIN_BR)),
            (vec![Coding::Zstd, Coding::Deflate], zlib(&zstd(plain))),
            // Multi-member gzip and multi-frame zstd are each one body.
            (
                vec![Coding::Gzip],
                [gzip(&plain[..10]), gzip(&plain[10..])].concat(),
            ),
            (
                vec![Coding::Zstd],
                [zstd(&plain[..10]), zstd(&plain[10..])].concat(),
            ),
        ];
        for (codings, body) in cases {
            let out = decode(&r, &codings, body).unwrap_or_else(|e| panic!("{codings:?}: {e}"));
            assert_eq!(out, plain, "{codings:?}");
            r.validate(&coded(&codings), &out).unwrap();
        }
        // Through the headers, end to end.
        let head = head_of(
            &r,
            &[
                ("content-type", "application/json"),
                ("content-encoding", "gzip, br"),
            ],
        )
        .unwrap();
        assert_eq!(
            r.check_body(&head, Bytes::from_static(PLAIN_GZIP_BR))
                .unwrap(),
            plain
        );
    }

    #[test]
    fn trailing_data_after_a_stream() {
        let r = default_rules();
        let plain = PLAIN.as_bytes();
        let cases: Vec<(Coding, Vec<u8>)> = vec![
            (Coding::Gzip, gzip(plain)),
            (Coding::Deflate, zlib(plain)),
            (Coding::Deflate, raw_deflate(plain)),
            (Coding::Br, PLAIN_BR.to_vec()),
            (Coding::Zstd, zstd(plain)),
        ];
        for (coding, body) in cases {
            for tail in [
                &b"x"[..],
                b"\0",
                b"\0\0\0\0\0\0\0\0",
                b"{\"a\":1}",
                b"\x1f\x8b",
            ] {
                let got = decode(&r, &[coding], [&body[..], tail].concat());
                assert_eq!(status(got), 400, "{coding:?} + {tail:?}");
            }
        }
    }

    #[test]
    fn corrupt_and_truncated_streams() {
        let r = default_rules();
        let plain = PLAIN.as_bytes();
        let cases: Vec<(Coding, Vec<u8>)> = vec![
            (Coding::Gzip, gzip(plain)),
            (Coding::Deflate, zlib(plain)),
            (Coding::Deflate, raw_deflate(plain)),
            (Coding::Br, PLAIN_BR.to_vec()),
            (Coding::Zstd, zstd(plain)),
        ];
        for (coding, body) in &cases {
            for cut in [1, body.len() / 2, body.len() - 1] {
                let got = decode(&r, &[*coding], body[..cut].to_vec());
                assert_eq!(
                    got,
                    Err(Refusal::CorruptEncoding),
                    "{coding:?} cut at {cut}"
                );
            }
            assert_eq!(
                decode(&r, &[*coding], Vec::new()),
                Err(Refusal::CorruptEncoding),
                "{coding:?} empty"
            );
            assert_eq!(
                status(decode(&r, &[*coding], &b"{\"not\":\"compressed\"}"[..])),
                400,
                "{coding:?}"
            );
        }
        // A flipped bit in gzip's CRC and in zlib's Adler-32 checksum.
        for (coding, mut body) in [(Coding::Gzip, gzip(plain)), (Coding::Deflate, zlib(plain))] {
            let n = body.len();
            body[n - 5] ^= 1;
            assert_eq!(
                status(decode(&r, &[coding], body)),
                400,
                "{coding:?} checksum"
            );
        }
        assert_eq!(
            decode(&r, &[Coding::Br], PLAIN_BR_LARGE_WINDOW),
            Err(Refusal::CorruptEncoding)
        );
    }

    #[test]
    fn gzip_bomb() {
        let zeros = vec![0u8; 10 << 20];
        let bomb = gzip(&zeros);
        assert!(bomb.len() < 64 << 10);
        // By ratio: decoding stops at 100× the body.
        let r = rules(
            r#"max = "64KiB"
            decoded_max = "64MiB""#,
        );
        assert_eq!(
            decode(&r, &[Coding::Gzip], bomb.clone()),
            Err(Refusal::RatioExceeded)
        );
        assert_eq!(status(decode(&r, &[Coding::Gzip], bomb.clone())), 413);
        // By decoded_max.
        let r = rules(
            r#"max = "64KiB"
            decoded_max = "1MiB"
            max_ratio = 1000000"#,
        );
        assert_eq!(
            decode(&r, &[Coding::Gzip], bomb.clone()),
            Err(Refusal::DecodedTooLarge)
        );
        // Nested: gzip of the gzip bomb is refused before the inner layer is decoded whole.
        assert_eq!(
            decode(&r, &[Coding::Gzip, Coding::Gzip], gzip(&bomb)),
            Err(Refusal::DecodedTooLarge)
        );
        // Allowed when both allow it.
        let r = rules(
            r#"max = "64KiB"
            decoded_max = "10MiB"
            max_ratio = 10000"#,
        );
        assert_eq!(decode(&r, &[Coding::Gzip], bomb).unwrap().len(), 10 << 20);
    }

    #[test]
    fn other_bombs() {
        let zeros = vec![0u8; 1 << 20];
        // Deflate tops out near 1000:1, so its 1 MiB bomb is ~1 KiB: over 64 KiB at 100:1.
        let r = rules("max = 65536\ndecoded_max = \"64MiB\"");
        assert_eq!(
            decode(&r, &[Coding::Br], ZEROS_BR),
            Err(Refusal::RatioExceeded)
        );
        assert_eq!(
            decode(&r, &[Coding::Zstd], zstd(&zeros)),
            Err(Refusal::RatioExceeded)
        );
        assert_eq!(
            decode(&r, &[Coding::Deflate], zlib(&zeros)),
            Err(Refusal::RatioExceeded)
        );
        let r = rules("max = 65536\ndecoded_max = 65536\nmax_ratio = 1000000");
        for (coding, body) in [
            (Coding::Br, ZEROS_BR.to_vec()),
            (Coding::Zstd, zstd(&zeros)),
            (Coding::Deflate, raw_deflate(&zeros)),
        ] {
            assert_eq!(
                decode(&r, &[coding], body),
                Err(Refusal::DecodedTooLarge),
                "{coding:?}"
            );
        }
        let r = rules("max = 65536\ndecoded_max = \"1MiB\"\nmax_ratio = 1000000");
        assert_eq!(decode(&r, &[Coding::Br], ZEROS_BR).unwrap().len(), 1 << 20);
    }

    #[test]
    fn ratio_floor_and_exact_limits() {
        // 1 KiB of spaces compresses ~50× past the ratio, but is under the floor.
        let r = rules("max = 65536\nmax_ratio = 2");
        let spaces = vec![b' '; 1024];
        assert_eq!(
            decode(&r, &[Coding::Gzip], gzip(&spaces)).unwrap().len(),
            1024
        );
        let spaces = vec![b' '; 1025];
        assert_eq!(
            decode(&r, &[Coding::Gzip], gzip(&spaces)),
            Err(Refusal::RatioExceeded)
        );
        // decoded_max is inclusive.
        let r = rules("max = 65536\ndecoded_max = 5000\nmax_ratio = 1000000");
        assert_eq!(
            decode(&r, &[Coding::Zstd], zstd(&[7; 5000])).unwrap().len(),
            5000
        );
        assert_eq!(
            decode(&r, &[Coding::Zstd], zstd(&[7; 5001])),
            Err(Refusal::DecodedTooLarge)
        );
        assert_eq!(
            decode(&r, &[Coding::Br], ZEROS_BR),
            Err(Refusal::DecodedTooLarge)
        );
    }

    #[test]
    fn zstd_window_is_capped() {
        // Streamed frames (no content size) declaring an 8 MiB and a 16 MiB window.
        let frame = |log| {
            let mut e = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
            e.window_log(log).unwrap();
            e.include_contentsize(false).unwrap();
            e.write_all(&[b'a'; 100]).unwrap();
            e.finish().unwrap()
        };
        let r = default_rules();
        assert_eq!(decode(&r, &[Coding::Zstd], frame(23)).unwrap().len(), 100);
        assert_eq!(
            decode(&r, &[Coding::Zstd], frame(24)),
            Err(Refusal::CorruptEncoding)
        );
    }

    // ---- JSON ----

    #[test]
    fn json_accepted() {
        for body in [
            "{}",
            "[]",
            " \r\n\t{} \n",
            "0",
            "\"x\"",
            "null",
            "true",
            r#"{"a":[1,2,{"b":{"c":[[],[{}]]}}],"d":null,"e":false}"#,
            r#"{"a":{"x":1},"b":{"x":1},"c":[{"x":1},{"x":2}]}"#,
            r#"{"s":"\ud83d\ude00 \u00e9 \n \" \\ \/ \u0000"}"#,
            r#"{"\ud83d\ude00":1,"😀x":2}"#,
            "[1e10, -0, 0.5, -1.5e-300, 1e308, 1E+2, 9007199254740991, -9007199254740991]",
            "[9007199254740993.0, 1e20, 123456789012345678901234567890.5, 1e-400]",
            r#"["日本語", "9007199254740993"]"#,
            r#"{"a":1,"b":2,"a ":3}"#,
        ] {
            json(body).unwrap_or_else(|e| panic!("{body}: {e}"));
        }
    }

    #[test]
    fn json_refused() {
        use Refusal::*;
        for (body, why) in [
            ("", EmptyBody),
            (" \n\t ", EmptyBody),
            ("\u{feff}{}", ByteOrderMark),
            (r#"{"model":1,"model":2}"#, DuplicateKey),
            (r#"{"model":1,"mod\u0065l":2}"#, DuplicateKey),
            (r#"{"a\/b":1,"a/b":2}"#, DuplicateKey),
            (r#"{"\ud83d\ude00":1,"😀":2}"#, DuplicateKey),
            (r#"[{"x":{"k":1,"y":[{"k":1,"k":2}]}}]"#, DuplicateKey),
            (r#"{"a":{"b":1},"a":{"c":2}}"#, DuplicateKey),
            // Equal once case-folded, as case-insensitive decoders match fields.
            (r#"{"model":"a","MODEL":"b"}"#, DuplicateKey),
            (r#"{"name":"a","NaMe":"b"}"#, DuplicateKey),
            (r#"{"arguments":{},"argumentſ":{}}"#, DuplicateKey),
            (r#"{"key":1,"Key":2}"#, DuplicateKey),
            (r#"["\ud800"]"#, MalformedJson),
            (r#"["\udc00x"]"#, MalformedJson),
            (r#"["\ud800\u0041"]"#, MalformedJson),
            (r#"["\ud800\ud800"]"#, MalformedJson),
            (r#"{"\udfff":1}"#, MalformedJson),
            ("{} {}", TrailingData),
            ("{}x", TrailingData),
            ("[1] 2", TrailingData),
            ("{}\0", TrailingData),
            ("9007199254740992", NumberOutOfRange),
            ("-9007199254740992", NumberOutOfRange),
            ("[18446744073709551615]", NumberOutOfRange),
            ("[18446744073709551616]", NumberOutOfRange),
            ("[-92233720368547758080]", NumberOutOfRange),
            (r#"{"n":100000000000000000000000000000}"#, NumberOutOfRange),
            (r#"{"n":1e400}"#, MalformedJson),
            (r#"{"n":-1e400}"#, MalformedJson),
            ("[1,]", MalformedJson),
            ("{'a':1}", MalformedJson),
            ("[NaN]", MalformedJson),
            ("[01]", MalformedJson),
            ("{\"a\":\"\t\"}", MalformedJson),
            ("/* */ {}", MalformedJson),
        ] {
            assert_eq!(json(body), Err(why), "{body:?}");
            assert_eq!(why.status(), StatusCode::BAD_REQUEST);
        }
        // Invalid UTF-8, inside a string and out.
        for body in [
            &b"[\"\xff\"]"[..],
            b"[\"\xc3\"]",
            b"[\"\xed\xa0\x80\"]",
            b"\xff",
        ] {
            assert_eq!(validate_json(body, 64), Err(MalformedJson), "{body:?}");
        }
    }

    #[test]
    fn json_depth() {
        let nest = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        assert_eq!(validate_json(nest(64).as_bytes(), 64), Ok(()));
        assert_eq!(
            validate_json(nest(65).as_bytes(), 64),
            Err(Refusal::TooDeep)
        );
        assert_eq!(validate_json(nest(127).as_bytes(), 127), Ok(()));
        assert_eq!(
            validate_json(nest(128).as_bytes(), 127),
            Err(Refusal::TooDeep)
        );
        assert_eq!(validate_json(b"[[1]]", 1), Err(Refusal::TooDeep));
        assert_eq!(validate_json(b"[1]", 1), Ok(()));
        let objects = |n: usize| format!("{}1{}", r#"{"a":"#.repeat(n), "}".repeat(n));
        assert_eq!(validate_json(objects(64).as_bytes(), 64), Ok(()));
        assert_eq!(
            validate_json(objects(65).as_bytes(), 64),
            Err(Refusal::TooDeep)
        );
        // Unclosed and huge: refused at the limit, without touching the rest.
        let brackets = vec![b'['; 1 << 20];
        assert_eq!(validate_json(&brackets, 127), Err(Refusal::TooDeep));
        let objects = r#"{"a":"#.repeat(200_000);
        assert_eq!(
            validate_json(objects.as_bytes(), 127),
            Err(Refusal::TooDeep)
        );
        let mixed = r#"[{"a":"#.repeat(100_000);
        assert_eq!(validate_json(mixed.as_bytes(), 127), Err(Refusal::TooDeep));
    }

    #[test]
    fn json_scales_linearly() {
        // One object with 100k distinct keys, an array of 100k small objects.
        let mut wide = String::from("{");
        for i in 0..100_000 {
            wide.push_str(&format!("\"k{i}\":{i},"));
        }
        wide.push_str("\"end\":0}");
        assert_eq!(json(&wide), Ok(()));
        let many = format!(
            "[{}{{\"a\":1,\"b\":2}}]",
            r#"{"a":1,"b":2},"#.repeat(100_000)
        );
        assert_eq!(json(&many), Ok(()));
        let dup = format!("{}\"k99999\":1}}", &wide[..wide.len() - "\"end\":0}".len()]);
        assert_eq!(json(&dup), Err(Refusal::DuplicateKey));
    }

    #[test]
    fn unsafe_integer_scan() {
        assert!(!has_unsafe_integer(
            br#"{"a":"12345678901234567890","b":1e300}"#
        ));
        assert!(!has_unsafe_integer(
            br#"["\"", 9007199254740991, "\\", -9007199254740991]"#
        ));
        assert!(has_unsafe_integer(br#"["\"\\", 9007199254740992]"#));
        assert!(has_unsafe_integer(b"[1.5, -12345678901234567]"));
        assert!(!has_unsafe_integer(
            b"[12345678901234567.0, 12345678901234567e0]"
        ));
        // Never panics, valid JSON or not.
        assert!(!has_unsafe_integer(b"\"\\"));
    }

    #[test]
    fn validate_only_strict_json() {
        let r = default_rules();
        let text = Head {
            json: false,
            ..json_head()
        };
        assert_eq!(r.validate(&text, b"{\"a\":1,\"a\":2}"), Ok(()));
        assert_eq!(
            r.validate(&json_head(), b"{\"a\":1,\"a\":2}"),
            Err(Refusal::DuplicateKey)
        );
        let lax = rules("max = 100\nstrict_json = false");
        assert_eq!(lax.validate(&json_head(), b"{\"a\":1,\"a\":2}"), Ok(()));
        let deep = rules("max = 100\nmax_depth = 2");
        assert_eq!(
            deep.validate(&json_head(), b"[[[]]]"),
            Err(Refusal::TooDeep)
        );
    }

    /// Mutated inputs, for no panics (outcomes vary).
    #[test]
    fn never_panics() {
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let r = default_rules();
        let samples: Vec<(Vec<Coding>, Vec<u8>)> = vec![
            (
                vec![],
                br#"{"a":[1,2.5e3,"x\u00e9\ud83d\ude00",{"b":null}],"c":-0}"#.to_vec(),
            ),
            (vec![Coding::Gzip], gzip(PLAIN.as_bytes())),
            (vec![Coding::Deflate], zlib(PLAIN.as_bytes())),
            (vec![Coding::Br], PLAIN_BR.to_vec()),
            (vec![Coding::Zstd], zstd(PLAIN.as_bytes())),
        ];
        for (codings, sample) in &samples {
            for _ in 0..2000 {
                let mut body = sample.clone();
                for _ in 0..1 + next() % 4 {
                    let i = (next() % body.len() as u64) as usize;
                    body[i] = next() as u8;
                }
                if let Ok(out) = decode(&r, codings, body.clone()) {
                    let _ = validate_json(&out, 8);
                }
                let _ = validate_json(&body, 8);
                let _ = has_unsafe_integer(&body);
            }
        }
        let ct = b"application/vnd.x+json; a=\"b\\\"c\"; charset=utf-8";
        for _ in 0..5000 {
            let mut v = ct.to_vec();
            v.truncate((next() % (v.len() as u64 + 1)) as usize);
            if !v.is_empty() {
                let i = (next() % v.len() as u64) as usize;
                let pool = b" \t;=\"\\/+*aJ";
                v[i] = pool[(next() % pool.len() as u64) as usize];
            }
            if let Ok(value) = HeaderValue::from_bytes(&v) {
                let mut map = HeaderMap::new();
                map.insert(header::CONTENT_TYPE, value);
                let _ = r.check_head(&map);
            }
        }
    }

    #[test]
    fn refusals_have_statuses_and_reasons() {
        assert_eq!(Refusal::TooLarge.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(
            Refusal::Charset.status(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE
        );
        assert_eq!(Refusal::DuplicateKey.status(), StatusCode::BAD_REQUEST);
        assert_eq!(
            Refusal::DuplicateKey.to_string(),
            "duplicate key in json object (keys are compared case-folded) (400)"
        );
    }
}

//! JSON bodies: typed parsing with a clear error, and a strict parser for documents a
//! policy inspects generically.

use std::fmt;

use serde::de::{self, DeserializeOwned, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

/// Why a body could not be read as the expected JSON.
#[derive(Debug)]
pub enum JsonError {
    /// There is no body, or it is empty.
    NoBody,
    /// The body is not JSON at all.
    NotJson(serde_json::Error),
    /// The body is JSON but not of the expected shape (missing field, wrong type, ...).
    Shape(serde_json::Error),
}

impl fmt::Display for JsonError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JsonError::NoBody => f.write_str("no body"),
            JsonError::NotJson(e) => write!(f, "body is not JSON: {e}"),
            JsonError::Shape(e) => write!(f, "body is not the expected JSON: {e}"),
        }
    }
}

impl std::error::Error for JsonError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            JsonError::NoBody => None,
            JsonError::NotJson(e) | JsonError::Shape(e) => Some(e),
        }
    }
}

impl JsonError {
    fn from_serde(e: serde_json::Error) -> Self {
        if e.is_data() {
            JsonError::Shape(e)
        } else {
            JsonError::NotJson(e)
        }
    }
}

pub(crate) fn from_body<T: DeserializeOwned>(body: Option<&[u8]>) -> Result<T, JsonError> {
    match body {
        None | Some([]) => Err(JsonError::NoBody),
        Some(b) => serde_json::from_slice(b).map_err(JsonError::from_serde),
    }
}

/// Parse `bytes` into a [`Value`], refusing duplicate object keys.
///
/// `serde_json` keeps the last of two equal keys while other parsers keep the first, so a
/// policy reading `{"method":"a","method":"b"}` could decide on a different value than the
/// upstream acts on. The gateway refuses such documents for JSON content types; this
/// closes the gap on routes that also accept other types, at no extra cost (one pass).
/// Trailing data after the document is an error too.
pub fn parse_strict(bytes: &[u8]) -> Result<Value, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let v = Strict.deserialize(&mut de)?;
    de.end()?;
    Ok(v)
}

struct Strict;

impl<'de> DeserializeSeed<'de> for Strict {
    type Value = Value;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Strict {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut v = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
        while let Some(e) = seq.next_element_seed(Strict)? {
            v.push(e);
        }
        Ok(Value::Array(v))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut m = Map::new();
        while let Some(k) = map.next_key::<String>()? {
            if m.contains_key(&k) {
                return Err(de::Error::custom(format_args!("duplicate key {k:?}")));
            }
            let v = map.next_value_seed(Strict)?;
            m.insert(k, v);
        }
        Ok(Value::Object(m))
    }
}

/// True when `s` case-folds to the ASCII word `word` the way lenient JSON decoders fold
/// field names (ASCII case, plus the Kelvin sign and long s that Unicode simple folding
/// maps to `k` and `s`), ignoring surrounding whitespace.
pub(crate) fn folds_to(s: &str, word: &str) -> bool {
    let mut a = s.trim().chars().map(|c| match c {
        '\u{212A}' => 'k',
        '\u{017F}' => 's',
        c => c.to_ascii_lowercase(),
    });
    let mut b = word.chars().map(|c| c.to_ascii_lowercase());
    loop {
        match (a.next(), b.next()) {
            (None, None) => return true,
            (Some(x), Some(y)) if x == y => {}
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn strict_refuses_duplicates_at_any_depth_and_trailing_data() {
        assert_eq!(
            parse_strict(br#"{"a":[1,{"b":null}],"c":1.5,"d":-2}"#).unwrap(),
            json!({ "a": [1, { "b": null }], "c": 1.5, "d": -2 })
        );
        assert!(parse_strict(br#"{"a":1,"a":2}"#).is_err());
        assert!(
            parse_strict(br#"{"a":1,"\u0061":2}"#).is_err(),
            "escaped twin"
        );
        assert!(parse_strict(br#"[{"x":{"a":1,"a":1}}]"#).is_err());
        assert!(parse_strict(br#"{"a":1} {"a":2}"#).is_err());
        assert!(parse_strict(b"\xef\xbb\xbf{}").is_err(), "BOM");
        assert!(
            parse_strict(br#"{"a":1,"A":2}"#).is_ok(),
            "keys are case-sensitive"
        );
    }
}

//! Headers as the gateway packs them: `name, 0, value, 0, ...` in one byte list.
//!
//! They stay packed: a policy usually looks at two or three headers, so scanning the list
//! on each lookup is cheaper than building a map (or a `String` per header) on every
//! request.

use std::fmt;

/// A packed header list, as received. Names are lower case (the gateway normalises them);
/// neither names nor values contain a 0 byte.
#[derive(Clone, Default, PartialEq, Eq)]
pub(crate) struct Headers(pub(crate) Vec<u8>);

impl Headers {
    pub(crate) fn iter(&self) -> HeaderIter<'_> {
        HeaderIter { rest: &self.0 }
    }

    pub(crate) fn get(&self, name: &str) -> Option<&[u8]> {
        let name = name.as_bytes();
        self.iter_raw()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }

    pub(crate) fn get_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        let name = name.as_bytes();
        self.iter_raw()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }

    fn iter_raw(&self) -> RawIter<'_> {
        RawIter { rest: &self.0 }
    }

    /// Append a header. A 0 byte cannot be packed, and the gateway never sends one, so a
    /// test that tries is told so rather than silently testing something impossible.
    pub(crate) fn push(&mut self, name: &str, value: &[u8]) {
        assert!(
            !name.as_bytes().contains(&0) && !value.contains(&0),
            "header {name:?}: the gateway never passes a 0 byte in a header name or value"
        );
        self.0.reserve(name.len() + value.len() + 2);
        self.0
            .extend(name.as_bytes().iter().map(u8::to_ascii_lowercase));
        self.0.push(0);
        self.0.extend_from_slice(value);
        self.0.push(0);
    }

    #[cfg_attr(target_arch = "wasm32", allow(dead_code))]
    pub(crate) fn retain(&mut self, mut keep: impl FnMut(&str) -> bool) {
        let mut out = Headers(Vec::with_capacity(self.0.len()));
        for (n, v) in self.iter() {
            if keep(n) {
                out.push(n, v);
            }
        }
        *self = out;
    }
}

impl fmt::Debug for Headers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(
                self.iter()
                    .map(|(n, v)| (n, String::from_utf8_lossy(v).into_owned())),
            )
            .finish()
    }
}

struct RawIter<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for RawIter<'a> {
    type Item = (&'a [u8], &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        // A name without its terminator can only come from a broken host; stop there
        // rather than guess.
        let n = self.rest.iter().position(|&b| b == 0)?;
        let name = &self.rest[..n];
        let after = &self.rest[n + 1..];
        let (value, rest) = match after.iter().position(|&b| b == 0) {
            Some(v) => (&after[..v], &after[v + 1..]),
            None => (after, &after[after.len()..]),
        };
        self.rest = rest;
        Some((name, value))
    }
}

/// Iterator over packed headers: `(lower-case name, raw value)` in received order.
#[derive(Clone, Debug)]
pub struct HeaderIter<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for HeaderIter<'a> {
    type Item = (&'a str, &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        let mut raw = RawIter { rest: self.rest };
        let (name, value) = raw.next()?;
        self.rest = raw.rest;
        // Names are ASCII tokens checked by the gateway. Should one ever not be UTF-8,
        // yield it with an empty name instead of skipping it, so a policy scanning every
        // value (for CR/LF, say) still sees the value.
        Some((std::str::from_utf8(name).unwrap_or(""), value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packs_and_iterates_in_order() {
        let mut h = Headers::default();
        h.push("X-A", b"1");
        h.push("x-b", b"");
        h.push("x-a", b"2");
        assert_eq!(h.0, b"x-a\x001\x00x-b\x00\x00x-a\x002\x00");
        let all: Vec<_> = h.iter().collect();
        assert_eq!(all, [("x-a", &b"1"[..]), ("x-b", b""), ("x-a", b"2")]);
        assert_eq!(h.get("X-A"), Some(&b"1"[..]));
        assert_eq!(h.get("x-b"), Some(&b""[..]));
        assert_eq!(h.get("x-c"), None);
        assert_eq!(h.get_all("x-a").collect::<Vec<_>>(), [b"1", b"2"]);
        h.retain(|n| n != "x-a");
        assert_eq!(h.0, b"x-b\x00\x00");
    }

    #[test]
    fn tolerates_a_missing_final_terminator_and_stops_at_a_dangling_name() {
        let h = Headers(b"a\x001\x00b\x002".to_vec());
        assert_eq!(h.iter().count(), 2);
        assert_eq!(h.get("b"), Some(&b"2"[..]));
        let h = Headers(b"a\x001\x00dangling".to_vec());
        assert_eq!(h.iter().count(), 1);
        assert_eq!(Headers::default().iter().count(), 0);
    }

    #[test]
    #[should_panic(expected = "0 byte")]
    fn refuses_nul_in_values() {
        Headers::default().push("x", b"a\0b");
    }
}

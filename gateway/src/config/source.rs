//! Key path → line lookup for one TOML file, from the parser's spans.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use toml::de::{DeTable, DeValue};

use super::ConfigError;

/// The text of one config file and the line of every key in it.
#[derive(Debug)]
pub struct SourceMap {
    /// The file.
    pub path: PathBuf,
    /// Its text (hashed for `/config`, kept for error lines).
    pub text: String,
    lines: HashMap<String, usize>,
}

impl SourceMap {
    /// Parse `text`: the source map, and the document as a table (or a syntax error with
    /// its line).
    pub fn parse(path: &Path, text: String) -> (SourceMap, Result<toml::Table, ConfigError>) {
        let mut lines = HashMap::new();
        let parsed = match DeTable::parse(&text) {
            Ok(doc) => {
                walk_table(&text, "", doc.get_ref(), &mut lines);
                toml::from_str::<toml::Table>(&text).map_err(|e| syntax_error(path, &text, &e))
            }
            Err(e) => Err(syntax_error(path, &text, &e)),
        };
        (
            SourceMap {
                path: path.to_path_buf(),
                text,
                lines,
            },
            parsed,
        )
    }

    /// The line of `key`, or of its nearest enclosing key that has one.
    pub fn line_of(&self, key: &str) -> Option<usize> {
        let mut k = key;
        loop {
            if let Some(l) = self.lines.get(k) {
                return Some(*l);
            }
            let cut = k.rfind(['.', '['])?;
            k = &k[..cut];
        }
    }

    /// A located error for `key` in this file.
    pub fn error(&self, key: &str, reason: String) -> ConfigError {
        ConfigError {
            file: self.path.clone(),
            line: self.line_of(key),
            key: key.to_string(),
            reason,
        }
    }
}

fn syntax_error(path: &Path, text: &str, e: &toml::de::Error) -> ConfigError {
    ConfigError {
        file: path.to_path_buf(),
        line: e.span().map(|s| line_at(text, s.start)),
        key: String::new(),
        reason: format!("invalid TOML: {}", e.message().trim()),
    }
}

fn line_at(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

fn walk_table(text: &str, prefix: &str, table: &DeTable<'_>, out: &mut HashMap<String, usize>) {
    for (k, v) in table {
        let key = if prefix.is_empty() {
            k.get_ref().to_string()
        } else {
            format!("{prefix}.{}", k.get_ref())
        };
        out.insert(key.clone(), line_at(text, k.span().start));
        walk_value(text, &key, v.get_ref(), out);
    }
}

fn walk_value(text: &str, key: &str, v: &DeValue<'_>, out: &mut HashMap<String, usize>) {
    match v {
        DeValue::Table(t) => walk_table(text, key, t, out),
        DeValue::Array(a) => {
            for (i, item) in a.iter().enumerate() {
                let k = format!("{key}[{i}]");
                out.insert(k.clone(), line_at(text, item.span().start));
                walk_value(text, &k, item.get_ref(), out);
            }
        }
        _ => {}
    }
}

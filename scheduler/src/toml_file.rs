//! Reading TOML files whose errors name the line and the key.
//!
//! Both `pcq`'s configuration and `pcq-sim`'s scenarios are TOML with
//! unknown keys refused. serde reports what is wrong; this module adds where:
//! the 1-based line and the dotted key (`masters[1].gate.max_concurrency`),
//! for parse errors and for the checks that run after parsing. One error
//! type, [`FileError`], says it for every file either program reads.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

/// A TOML file that cannot be used: which file, and where in it.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// The file could not be read.
    #[error("{file}: {source}")]
    Read {
        /// The file.
        file: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Bad syntax, an unknown key, a value of the wrong type or range.
    #[error("{file}:{line}: {key}: {message}")]
    Invalid {
        /// The file.
        file: PathBuf,
        /// 1-based line (0 when unknown).
        line: usize,
        /// Dotted key (`herds[1].count`), or what serde named.
        key: String,
        /// What is wrong.
        message: String,
    },
}

/// Reads a whole file, naming it in the error.
pub fn read(path: &Path) -> Result<String, FileError> {
    std::fs::read_to_string(path).map_err(|source| FileError::Read {
        file: path.to_owned(),
        source,
    })
}

/// Parses `text` (the contents of `file`) into `T`, then runs `check`,
/// which names a dotted key and what is wrong with its value; either
/// failure comes back located at its line.
pub fn load<T: DeserializeOwned>(
    text: &str,
    file: &Path,
    check: impl FnOnce(&mut T) -> Result<(), (String, String)>,
) -> Result<T, FileError> {
    let invalid = |e: TomlError| FileError::Invalid {
        file: file.to_owned(),
        line: e.line,
        key: e.key,
        message: e.message,
    };
    let mut value: T = parse(text).map_err(invalid)?;
    check(&mut value).map_err(|(key, message)| invalid(at_key(text, key, message)))?;
    Ok(value)
}

/// What is wrong and where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TomlError {
    /// 1-based line; 0 when unknown.
    pub line: usize,
    /// The key, dotted (`herds[1].count`) or as serde named it.
    pub key: String,
    /// What is wrong.
    pub message: String,
}

/// Parses `text` into `T`; on error, says where.
pub fn parse<T: DeserializeOwned>(text: &str) -> Result<T, TomlError> {
    toml::from_str(text).map_err(|e| {
        let message = e.message().to_string();
        let span = e.span();
        let start = span.as_ref().map_or(0, |s| s.start);
        // A bad value inside a table that serde reports by its header (an
        // internally tagged table): find the value itself.
        let offset = quoted_value(&message)
            .and_then(|v| {
                let after = text.get(start..)?;
                Some(start + after.find(&format!("\"{v}\""))?)
            })
            .unwrap_or(start);
        let line = if span.is_some() {
            line_at(text, offset)
        } else {
            0
        };
        let key = between_backticks(&message).unwrap_or_else(|| key_at_line(text, line));
        TomlError { line, key, message }
    })
}

/// Locates a check's complaint about dotted `key` in `text`.
pub fn at_key(text: &str, key: String, message: String) -> TomlError {
    TomlError {
        line: line_of(text, &key),
        key,
        message,
    }
}

/// The 1-based line of byte `offset` in `text`.
pub fn line_at(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// The line where a dotted key such as `herds[1].count` is written; the
/// closest enclosing table when the key itself is absent (a default that
/// failed a check); 0 when nothing matches.
pub fn line_of(text: &str, key: &str) -> usize {
    let Ok(doc) = text.parse::<toml_edit::Document<String>>() else {
        return 0;
    };
    let mut span = None;
    let mut table: &dyn toml_edit::TableLike = doc.as_table();
    for part in key.split('.') {
        let (name, index) = match part.split_once('[') {
            Some((n, rest)) => (n, rest.trim_end_matches(']').parse::<usize>().ok()),
            None => (part, None),
        };
        let Some((k, v)) = table.get_key_value(name) else {
            break;
        };
        span = k.span().or(span);
        match (v, index) {
            (toml_edit::Item::ArrayOfTables(a), Some(i)) => match a.get(i) {
                Some(t) => {
                    span = t.span().or(span);
                    table = t;
                }
                None => break,
            },
            (v, _) => match v.as_table_like() {
                Some(t) => table = t,
                None => break,
            },
        }
    }
    span.map(|s| line_at(text, s.start)).unwrap_or(0)
}

/// The key named in a serde message such as "unknown field `x`".
fn between_backticks(message: &str) -> Option<String> {
    let start = message.find('`')? + 1;
    let len = message[start..].find('`')?;
    Some(message[start..start + len].to_string())
}

/// The string value a serde message quotes: `invalid value: string "x"`.
fn quoted_value(message: &str) -> Option<&str> {
    let start = message.find("string \"")? + "string \"".len();
    let len = message[start..].find('"')?;
    Some(&message[start..start + len])
}

/// The key written at a line, for errors that name none.
fn key_at_line(text: &str, line: usize) -> String {
    text.lines()
        .nth(line.saturating_sub(1))
        .and_then(|l| l.split('=').next())
        .map(|k| k.trim().trim_matches(['[', ']']).to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct T {
        a: u32,
        #[serde(default)]
        sub: Vec<Sub>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Sub {
        b: u32,
    }

    #[test]
    fn errors_say_line_and_key() {
        let e = parse::<T>("a = 1\n[[sub]]\nb = 2\n[[sub]]\nc = 3\n").expect_err("unknown key");
        assert_eq!((e.line, e.key.as_str()), (5, "c"));
        let e = parse::<T>("a = -1\n").expect_err("negative");
        assert_eq!(e.line, 1);
        let text = "a = 1\n[[sub]]\nb = 2\n[[sub]]\nb = 3\n";
        assert_eq!(line_of(text, "sub[1].b"), 5);
        assert_eq!(line_of(text, "sub[0]"), 2);
        assert_eq!(line_of(text, "nothing"), 0);
    }
}

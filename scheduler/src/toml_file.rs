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
    #[error("{file}: {why}")]
    Read {
        /// The file.
        file: PathBuf,
        /// Why (not a `source`: said once, here).
        why: std::io::Error,
    },
    /// Bad syntax, an unknown key, a value of the wrong type or range.
    #[error("{file}:{line}: {key}: {message}{example}")]
    Invalid {
        /// The file.
        file: PathBuf,
        /// 1-based line (0 when unknown).
        line: usize,
        /// Dotted key (`herds[1].count`), or what serde named.
        key: String,
        /// What is wrong.
        message: String,
        /// The key's line in the documented example file (`; for example:
        /// ...`), or nothing.
        example: String,
    },
}

/// Reads a whole file, naming it in the error.
pub fn read(path: &Path) -> Result<String, FileError> {
    std::fs::read_to_string(path).map_err(|why| FileError::Read {
        file: path.to_owned(),
        why,
    })
}

/// Parses `text` (the contents of `file`) into `T`, then runs `check`,
/// which names a dotted key and what is wrong with its value; either
/// failure comes back located at its line, with the key's line in
/// `example` (the documented example file) when it has one.
pub fn load<T: DeserializeOwned>(
    text: &str,
    file: &Path,
    example: &str,
    check: impl FnOnce(&mut T) -> Result<(), (String, String)>,
) -> Result<T, FileError> {
    let invalid = |e: TomlError| FileError::Invalid {
        file: file.to_owned(),
        line: e.line,
        example: example_of(example, &e.key)
            .map(|line| format!("; for example: {line}"))
            .unwrap_or_default(),
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
        let value = bad_value(&message);
        let offset = value
            .as_ref()
            .and_then(|v| value_offset(text, start, v))
            .unwrap_or(start);
        let line = if span.is_some() {
            line_at(text, offset)
        } else {
            0
        };
        // "unknown field `x`" names the key; "invalid type: integer `8140`"
        // names a value, and the key is the one written at its line
        let named = match value {
            None => between_backticks(&message),
            Some(_) => None,
        };
        let key = match named {
            // reported at a table's header: the header is the key ("unknown
            // field `notfy`" at `[notfy]`)
            Some(k)
                if header_at_line(text, line)
                    .is_some_and(|h| h.rsplit('.').next() == Some(k.as_str())) =>
            {
                key_at_line(text, line)
            }
            Some(k) => match table_at_line(text, line) {
                t if t.is_empty() => k,
                t => format!("{t}.{k}"),
            },
            None => key_at_line(text, line),
        };
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

/// The value a serde message complains about: `string "x"` (as written,
/// quoted) or `` integer `8140` `` (bare).
fn bad_value(message: &str) -> Option<String> {
    if let Some(start) = message.find("string \"").map(|i| i + "string \"".len()) {
        let len = message[start..].find('"')?;
        return Some(format!("\"{}\"", &message[start..start + len]));
    }
    if message.starts_with("invalid type") || message.starts_with("invalid value") {
        return between_backticks(message);
    }
    None
}

/// Where `value` is written as a whole value (after `=`, `[` or `,`) in
/// `text`, at or after byte `start`.
fn value_offset(text: &str, start: usize, value: &str) -> Option<usize> {
    let mut from = start;
    while let Some(i) = text.get(from..)?.find(value) {
        let at = from + i;
        let before = text[..at].trim_end_matches([' ', '\t']);
        let next = text[at + value.len()..].chars().next();
        let whole = !next.is_some_and(|c| c.is_alphanumeric() || c == '.' || c == '_');
        if whole && (before.ends_with('=') || before.ends_with('[') || before.ends_with(',')) {
            return Some(at);
        }
        from = at + value.len().max(1);
    }
    None
}

/// The table a header line names (`[a.b]` or `[[a]]`), if the line is one.
fn header_at_line(text: &str, line: usize) -> Option<String> {
    let written = text.lines().nth(line.checked_sub(1)?)?.trim();
    written
        .starts_with('[')
        .then(|| written.trim_matches(['[', ']']).trim().to_string())
}

/// The dotted name of the table a line is in (`masters[1]`, `core.gate`;
/// empty at the top level).
fn table_at_line(text: &str, line: usize) -> String {
    let mut table = String::new();
    let mut arrays: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    for l in text.lines().take(line) {
        let l = l.trim();
        if let Some(name) = l.strip_prefix("[[").and_then(|r| r.split("]]").next()) {
            let name = name.trim().to_string();
            let n = arrays.entry(name.clone()).or_insert(0);
            table = format!("{name}[{n}]");
            *n += 1;
        } else if let Some(name) = l.strip_prefix('[').and_then(|r| r.split(']').next()) {
            table = name.trim().to_string();
        }
    }
    table
}

/// The dotted key written at a line, for errors that name none.
fn key_at_line(text: &str, line: usize) -> String {
    let Some(written) = text.lines().nth(line.saturating_sub(1)) else {
        return String::new();
    };
    let written = written.trim();
    if written.starts_with('[') {
        return written.trim_matches(['[', ']']).trim().to_string();
    }
    let key = written.split('=').next().unwrap_or("").trim();
    match table_at_line(text, line) {
        t if t.is_empty() => key.to_string(),
        t => format!("{t}.{key}"),
    }
}

/// The line for dotted `key` in an example file (`pcq.example.toml`), to
/// show with an error: `url = "https://puppet.example.com:8140"`.
pub fn example_of(example: &str, key: &str) -> Option<String> {
    // indexes of arrays of tables are the example's own: look at the first
    let plain: String = key
        .split('.')
        .map(|p| p.split('[').next().unwrap_or(p))
        .collect::<Vec<_>>()
        .join(".");
    let (table, name) = match plain.rsplit_once('.') {
        Some((t, n)) => (t.to_string(), n.to_string()),
        None => (String::new(), plain.clone()),
    };
    let mut current = String::new();
    for l in example.lines() {
        let t = l.trim();
        if t.starts_with('[') {
            current = t.trim_matches(['[', ']']).trim().to_string();
            continue;
        }
        // commented-out examples count too
        let t = t.trim_start_matches('#').trim();
        if current == table && t.split('=').next().map(str::trim) == Some(name.as_str()) {
            return Some(t.to_string());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[test]
    fn examples_are_found_by_dotted_key() {
        let example = "top = 1\n[backend]\nurl = \"https://x:8140\"\n[api]\n# admin_listen = \"127.0.0.1:8144\"\n";
        assert_eq!(
            example_of(example, "backend.url").as_deref(),
            Some("url = \"https://x:8140\"")
        );
        assert_eq!(
            example_of(example, "api.admin_listen").as_deref(),
            Some("admin_listen = \"127.0.0.1:8144\"")
        );
        assert_eq!(example_of(example, "top").as_deref(), Some("top = 1"));
        assert_eq!(example_of(example, "backend.nothing"), None);
    }

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
        assert_eq!((e.line, e.key.as_str()), (5, "sub[1].c"));
        let e = parse::<T>("a = -1\n").expect_err("negative");
        assert_eq!(e.line, 1);
        let e = parse::<T>("a = 1\n[[sub]]\nb = 2\n[[sub]]\nb = \"x\"\n").expect_err("type");
        assert_eq!((e.line, e.key.as_str()), (5, "sub[1].b"), "{}", e.message);
        let e = parse::<T>("a = true\n").expect_err("type");
        assert_eq!((e.line, e.key.as_str()), (1, "a"), "{}", e.message);
        // the value's own line, not a later one with the same value
        let e = parse::<T>("a = \"30\"\n[[sub]]\nb = 30\n").expect_err("type");
        assert_eq!((e.line, e.key.as_str()), (1, "a"), "{}", e.message);
        // a typo in a table's header names the header once
        let e = parse::<T>("a = 1\n[subb]\nb = 1\n").expect_err("unknown table");
        assert_eq!((e.line, e.key.as_str()), (2, "subb"), "{}", e.message);
        let text = "a = 1\n[[sub]]\nb = 2\n[[sub]]\nb = 3\n";
        assert_eq!(line_of(text, "sub[1].b"), 5);
        assert_eq!(line_of(text, "sub[0]"), 2);
        assert_eq!(line_of(text, "nothing"), 0);
    }
}

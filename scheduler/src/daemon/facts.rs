//! Facts uploads: Puppet's own body shape, and the "did anything that
//! matters change" decision.
//!
//! Nodes upload facts with `PUT /puppet/v3/facts/:certname` exactly as
//! `puppet facts upload` sends them (`{name, values, timestamp,
//! expiration}`). Volatile facts (uptime, free memory, load averages) change
//! on every upload; pcq compares a hash of the facts *without* those, so only
//! a real change bumps the node.

use std::collections::HashSet;

use globset::{Glob, GlobSet, GlobSetBuilder};
use serde::Deserialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

/// Checks that `values` (JSON text) would parse into a tree, without
/// building one: numbers in range, escapes valid, nesting within serde_json's
/// limit. A standby hands uploads in unparsed, and must not acknowledge one
/// the leader will refuse.
pub fn check_values(values: &[u8]) -> Result<(), serde_json::Error> {
    serde_json::from_slice::<Checked>(values).map(drop)
}

/// Any JSON value, visited and dropped.
struct Checked;

impl<'de> Deserialize<'de> for Checked {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Checked, D::Error> {
        d.deserialize_any(CheckedVisitor)
    }
}

struct CheckedVisitor;

impl<'de> serde::de::Visitor<'de> for CheckedVisitor {
    type Value = Checked;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_str<E>(self, _: &str) -> Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_unit<E>(self) -> Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Checked, A::Error> {
        while seq.next_element::<Checked>()?.is_some() {}
        Ok(Checked)
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Checked, A::Error> {
        while map.next_entry::<Checked, Checked>()?.is_some() {}
        Ok(Checked)
    }
}

/// The body of a facts upload as the API first reads it: well-formed
/// JSON, with `name` and `values` found but `values` not built into a tree.
/// A standby hands the bytes on as they came; the leader builds the tree
/// to hash the facts.
#[derive(Debug, Deserialize)]
pub struct Upload<'a> {
    /// The certname the facts are for.
    pub name: String,
    /// The facts, as sent.
    #[serde(borrow)]
    pub values: &'a serde_json::value::RawValue,
}

impl Upload<'_> {
    /// `values`, if it is a JSON object (its bytes, as sent).
    pub fn object(&self) -> Option<&[u8]> {
        let text = self.values.get();
        text.trim_start()
            .starts_with('{')
            .then_some(text.as_bytes())
    }
}

/// Fact paths that never count as a change.
#[derive(Clone, Debug)]
pub struct Ignore {
    set: GlobSet,
    /// The top-level facts the patterns can match, when every pattern
    /// starts with a literal name: paths under any other fact skip the
    /// glob match (most of an upload).
    heads: Option<HashSet<String>>,
}

impl Ignore {
    /// Builds the matcher from glob patterns on dotted fact paths.
    pub fn new(patterns: &[String]) -> Result<Ignore, globset::Error> {
        let mut b = GlobSetBuilder::new();
        let mut heads = Some(HashSet::new());
        for p in patterns {
            b.add(Glob::new(p)?);
            let head = p.split('.').next().unwrap_or_default();
            if head.contains(['*', '?', '[', '{', '\\']) {
                heads = None;
            } else if let Some(h) = heads.as_mut() {
                h.insert(head.to_string());
            }
        }
        Ok(Ignore {
            set: b.build()?,
            heads,
        })
    }

    /// Whether changes at `path` never count.
    pub fn ignores(&self, path: &str) -> bool {
        let head = path.split('.').next().unwrap_or_default();
        self.may_match_below(head) && self.set.is_match(path)
    }

    /// SHA-256 over the facts without the ignored paths, in a canonical
    /// form (object keys sorted, so the order nodes send them in does not
    /// matter; every string and key length-prefixed, so no two fact sets
    /// share an encoding).
    ///
    /// It streams: no copy of the facts is built, one path buffer is
    /// reused for the ignore checks (an upload has about a thousand paths).
    pub fn relevant_hash(&self, values: &serde_json::Map<String, Value>) -> String {
        let mut hasher = Sha256::new();
        let mut path = String::with_capacity(128);
        self.feed_object(values, &mut path, None, &mut hasher);
        hex::encode(hasher.finalize())
    }

    /// `check`: whether paths below may match a pattern (`None` at the top
    /// level, where each fact's name decides it).
    fn feed_object(
        &self,
        map: &serde_json::Map<String, Value>,
        path: &mut String,
        check: Option<bool>,
        h: &mut Sha256,
    ) {
        let mut entries: Vec<(&String, &Value)> = map.iter().collect();
        entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
        h.update(b"{");
        for (k, v) in entries {
            let len = path.len();
            if len > 0 {
                path.push('.');
            }
            path.push_str(k);
            let check = check.unwrap_or_else(|| self.may_match_below(k));
            if !(check && self.set.is_match(path.as_str())) {
                h.update(b"k");
                feed_str(k, h);
                match v {
                    Value::Object(inner) => self.feed_object(inner, path, Some(check), h),
                    // Values inside arrays are hashed whole: ignore
                    // patterns name object paths only.
                    other => feed_whole(other, h),
                }
            }
            path.truncate(len);
        }
        h.update(b"}");
    }

    /// Whether a pattern can match the top-level fact `name` or a path
    /// under it.
    fn may_match_below(&self, name: &str) -> bool {
        self.heads.as_ref().is_none_or(|heads| heads.contains(name))
    }
}

fn feed_whole(value: &Value, h: &mut Sha256) {
    match value {
        Value::Null => h.update(b"n"),
        Value::Bool(true) => h.update(b"t"),
        Value::Bool(false) => h.update(b"f"),
        Value::Number(n) => {
            h.update(b"#");
            feed_str(&n.to_string(), h);
        }
        Value::String(s) => {
            h.update(b"s");
            feed_str(s, h);
        }
        Value::Array(items) => {
            h.update(b"[");
            h.update((items.len() as u64).to_le_bytes());
            for v in items {
                feed_whole(v, h);
            }
        }
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort_unstable();
            h.update(b"{");
            h.update((keys.len() as u64).to_le_bytes());
            for k in keys {
                feed_str(k, h);
                if let Some(v) = map.get(k.as_str()) {
                    feed_whole(v, h);
                }
            }
        }
    }
}

fn feed_str(s: &str, h: &mut Sha256) {
    h.update((s.len() as u64).to_le_bytes());
    h.update(s.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::config::Facts;

    #[test]
    fn values_a_tree_would_refuse_are_refused_unbuilt() {
        for good in [
            r#"{"x": [1, -2, 3.5, "\u00e9", null, true, {"y": {}}]}"#,
            "{}",
        ] {
            assert!(check_values(good.as_bytes()).is_ok(), "{good}");
            assert!(serde_json::from_str::<Value>(good).is_ok(), "{good}");
        }
        let deep = format!("{}1{}", "[".repeat(200), "]".repeat(200));
        for bad in [r#"{"x": 1e400}"#, r#"{"x": "\ud800"}"#, deep.as_str()] {
            assert!(
                serde_json::from_str::<Value>(bad).is_err(),
                "a tree takes {bad}"
            );
            assert!(check_values(bad.as_bytes()).is_err(), "{bad}");
        }
    }

    #[test]
    fn an_upload_is_checked_but_its_values_are_kept_as_sent() {
        let body = br#"{"name": "a.example.com", "values": { "x" : [1, 2] }, "timestamp": "t"}"#;
        let upload: Upload = serde_json::from_slice(body).expect("an upload");
        assert_eq!(upload.name, "a.example.com");
        assert_eq!(upload.object(), Some(&br#"{ "x" : [1, 2] }"#[..]));
        for not_an_object in [r#"[1]"#, r#""x""#, "null", "1"] {
            let body = format!(r#"{{"name": "a", "values": {not_an_object}}}"#);
            let upload: Upload = serde_json::from_str(&body).expect("well-formed");
            assert_eq!(upload.object(), None, "{not_an_object}");
        }
        for bad in [
            r#"{"name": "a", "values": {"x": }}"#,
            r#"{"name": "a"}"#,
            r#"{"values": {}}"#,
        ] {
            assert!(serde_json::from_str::<Upload>(bad).is_err(), "{bad}");
        }
    }

    fn values(json: &str) -> serde_json::Map<String, Value> {
        match serde_json::from_str(json) {
            Ok(Value::Object(m)) => m,
            other => panic!("not an object: {other:?}"),
        }
    }

    #[test]
    fn volatile_facts_do_not_change_the_hash() {
        let ignore = Ignore::new(&Facts::default().ignore).expect("valid globs");
        let a = values(
            r#"{"os":{"family":"Debian"},"uptime_seconds":10,"memory":{"system":{"available_bytes":5,"total_bytes":9}},"load_averages":{"1m":0.5}}"#,
        );
        let b = values(
            r#"{"load_averages":{"1m":2.5},"memory":{"system":{"total_bytes":9,"available_bytes":7}},"uptime_seconds":99,"os":{"family":"Debian"}}"#,
        );
        assert_eq!(ignore.relevant_hash(&a), ignore.relevant_hash(&b));
        let c = values(
            r#"{"os":{"family":"RedHat"},"uptime_seconds":10,"memory":{"system":{"available_bytes":5,"total_bytes":9}}}"#,
        );
        assert_ne!(ignore.relevant_hash(&a), ignore.relevant_hash(&c));
        let d = values(
            r#"{"os":{"family":"Debian"},"uptime_seconds":10,"memory":{"system":{"available_bytes":5,"total_bytes":10}}}"#,
        );
        assert_ne!(
            ignore.relevant_hash(&a),
            ignore.relevant_hash(&d),
            "total memory is not volatile"
        );
    }

    #[test]
    fn patterns_starting_with_a_wildcard_still_match_every_fact() {
        let ignore = Ignore::new(&["*_free".to_string(), "os.release.minor".to_string()])
            .expect("valid globs");
        assert!(ignore.ignores("swap_free"));
        assert!(ignore.ignores("memory.swap_free"));
        assert!(ignore.ignores("os.release.minor"));
        assert!(!ignore.ignores("os.release.major"));
        let literal = Ignore::new(&["os.release.minor".to_string()]).expect("valid globs");
        assert!(literal.ignores("os.release.minor"));
        assert!(!literal.ignores("swap_free"));
    }

    #[test]
    fn the_encoding_tells_apart_what_json_would_not_confuse() {
        let ignore = Ignore::new(&[]).expect("valid globs");
        let pairs = [
            (r#"{"a":"1"}"#, r#"{"a":1}"#),
            (r#"{"a":["x","y"]}"#, r#"{"a":["xy"]}"#),
            (r#"{"a":{"b":1},"c":2}"#, r#"{"a":{"b":1,"c":2}}"#),
            (r#"{"a":null}"#, r#"{"a":false}"#),
            (r#"{"ab":"c"}"#, r#"{"a":"bc"}"#),
            (r#"{"a":[{"b":1}]}"#, r#"{"a":[{"b":2}]}"#),
        ];
        for (x, y) in pairs {
            assert_ne!(
                ignore.relevant_hash(&values(x)),
                ignore.relevant_hash(&values(y)),
                "{x} vs {y}"
            );
        }
        assert_eq!(
            ignore.relevant_hash(&values(r#"{"a":[{"b":1,"c":2}],"d":3}"#)),
            ignore.relevant_hash(&values(r#"{"d":3,"a":[{"c":2,"b":1}]}"#)),
        );
    }
}

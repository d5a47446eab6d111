//! The facts a node's catalog can read, and the hash of just those.
//!
//! A [`UsedFacts`] is a tree of fact path segments (`os` -> `family`); a
//! leaf means "this value, whole"; `all` means "any fact" (the analysis had
//! to widen). [`UsedFacts::hash`] hashes only the values at the used paths
//! of an upload, so two uploads that differ only in facts the catalog never
//! reads hash the same, and the node is not recompiled. This is the check
//! every facts upload pays, so it walks the tree against the parsed JSON
//! without copying values.

use std::collections::BTreeMap;
use std::hash::Hasher;

use serde_json::{Map, Value};

use crate::daemon::facts::Ignore;

/// A set of fact paths.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UsedFacts {
    /// Any fact may be read.
    pub all: bool,
    root: Node,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Node {
    /// The value here is read whole.
    whole: bool,
    children: BTreeMap<String, Node>,
}

impl UsedFacts {
    /// Every fact.
    pub fn everything() -> UsedFacts {
        UsedFacts {
            all: true,
            root: Node::default(),
        }
    }

    /// Adds a dotted path (`os.family`).
    pub fn insert(&mut self, path: &str) {
        let mut node = &mut self.root;
        for part in path.split('.').filter(|p| !p.is_empty()) {
            if node.whole {
                return; // an ancestor is read whole already
            }
            node = node.children.entry(part.to_string()).or_default();
        }
        node.whole = true;
        node.children.clear();
    }

    /// Adds every path of `other`.
    pub fn extend(&mut self, other: &UsedFacts) {
        self.all |= other.all;
        for path in other.paths() {
            self.insert(&path);
        }
    }

    /// The dotted paths, sorted.
    pub fn paths(&self) -> Vec<String> {
        let mut out = Vec::new();
        fn walk(n: &Node, prefix: &str, out: &mut Vec<String>) {
            for (k, c) in &n.children {
                let p = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                if c.whole {
                    out.push(p);
                } else {
                    walk(c, &p, out);
                }
            }
        }
        walk(&self.root, "", &mut out);
        out
    }

    /// Builds the set from dotted paths.
    pub fn from_paths<S: AsRef<str>>(paths: &[S]) -> UsedFacts {
        let mut set = UsedFacts::default();
        for p in paths {
            set.insert(p.as_ref());
        }
        set
    }

    /// A 64-bit identity of the set: equal sets, equal fingerprints.
    pub fn fingerprint(&self) -> u64 {
        let mut h = Fnv::default();
        h.write_u8(u8::from(self.all));
        for p in self.paths() {
            h.write(p.as_bytes());
            h.write_u8(0);
        }
        h.finish()
    }

    /// The set without the paths `ignore` matches.
    pub fn without(&self, ignore: &Ignore) -> UsedFacts {
        let mut out = UsedFacts {
            all: self.all,
            root: Node::default(),
        };
        for p in self.paths() {
            if !ignore.ignores(&p) {
                out.insert(&p);
            }
        }
        out
    }

    /// Does a change at `path` touch a used fact?
    pub fn touches(&self, path: &str) -> bool {
        if self.all {
            return true;
        }
        let mut node = &self.root;
        for part in path.split('.') {
            if node.whole {
                return true;
            }
            match node.children.get(part) {
                Some(c) => node = c,
                None => return false,
            }
        }
        true // a prefix of a used path: the change may reach it
    }

    /// What [`UsedFacts::hash`] gives for a set with `all`, from the
    /// ignore-list hash the caller already has.
    pub fn hash_relevant(relevant: &str) -> u64 {
        let mut h = Fnv::default();
        h.write(relevant.as_bytes());
        h.finish()
    }

    /// A 64-bit hash of the values at the used paths of `facts` (a used
    /// fact appearing or disappearing changes it too); with `all`, of
    /// every fact but the ignored.
    ///
    /// The top level walks the upload's facts (a hundred or so) and looks
    /// each up in the set, rather than the set's paths (which may be a
    /// thousand template variables, most not facts at all); per-fact
    /// hashes are summed, so the upload's key order does not matter.
    pub fn hash(&self, facts: &Map<String, Value>, ignore: &Ignore) -> u64 {
        if self.all {
            return UsedFacts::hash_relevant(&ignore.relevant_hash(facts));
        }
        fn walk(n: &Node, value: Option<&Value>, h: &mut Fnv) {
            for (k, c) in &n.children {
                h.write(k.as_bytes());
                h.write_u8(0xff);
                let v = match value {
                    Some(Value::Object(m)) => m.get(k),
                    _ => None,
                };
                if c.whole {
                    match v {
                        Some(v) => hash_value(v, h),
                        None => h.write_u8(0xfe),
                    }
                } else {
                    walk(c, v, h);
                }
            }
        }
        let mut sum = 0u64;
        for (k, v) in facts {
            let Some(c) = self.root.children.get(k) else {
                continue;
            };
            let mut h = Fnv::default();
            h.write(k.as_bytes());
            h.write_u8(0xff);
            if c.whole {
                hash_value(v, &mut h);
            } else {
                walk(c, Some(v), &mut h);
            }
            sum = sum.wrapping_add(h.finish());
        }
        sum
    }
}

/// Hashes a JSON value structurally (objects in key order, which
/// serde_json keeps sorted).
fn hash_value(v: &Value, h: &mut Fnv) {
    match v {
        Value::Null => h.write_u8(0),
        Value::Bool(b) => h.write_u8(if *b { 1 } else { 2 }),
        Value::Number(n) => {
            h.write_u8(3);
            h.write(n.to_string().as_bytes());
        }
        Value::String(s) => {
            h.write_u8(4);
            h.write(s.as_bytes());
            h.write_u8(0);
        }
        Value::Array(a) => {
            h.write_u8(5);
            for x in a {
                hash_value(x, h);
            }
            h.write_u8(6);
        }
        Value::Object(m) => {
            h.write_u8(7);
            for (k, x) in m {
                h.write(k.as_bytes());
                h.write_u8(0);
                hash_value(x, h);
            }
            h.write_u8(8);
        }
    }
}

/// FNV-1a, 64 bit: deterministic across runs and machines (the hash is
/// stored), and fast on the short strings facts are made of.
struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::config::Facts;
    use serde_json::json;

    fn facts(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => Map::new(),
        }
    }

    #[test]
    fn only_used_paths_count() {
        let ignore = Ignore::new(&Facts::default().ignore).expect("globs");
        let mut used = UsedFacts::default();
        used.insert("os.family");
        used.insert("pcq_role");
        let a = facts(
            json!({"os": {"family": "Debian", "release": {"full": "12.1"}}, "pcq_role": "web", "uptime_seconds": 5, "kernel": "Linux"}),
        );
        let b = facts(
            json!({"os": {"family": "Debian", "release": {"full": "12.2"}}, "pcq_role": "web", "uptime_seconds": 9, "kernel": "SunOS"}),
        );
        assert_eq!(used.hash(&a, &ignore), used.hash(&b, &ignore));
        let c = facts(json!({"os": {"family": "RedHat"}, "pcq_role": "web"}));
        assert_ne!(used.hash(&a, &ignore), used.hash(&c, &ignore));
        let d = facts(json!({"os": {"family": "Debian"}}));
        assert_ne!(
            used.hash(&a, &ignore),
            used.hash(&d, &ignore),
            "a used fact disappearing is a change"
        );
        assert!(
            used.touches("os.family") && used.touches("os") && !used.touches("os.release.full")
        );
        assert!(!used.touches("kernel"));
        assert_eq!(used.paths(), vec!["os.family", "pcq_role"]);
    }

    #[test]
    fn a_whole_value_covers_its_children() {
        let mut used = UsedFacts::default();
        used.insert("os.family");
        used.insert("os");
        used.insert("os.release.major");
        assert_eq!(used.paths(), vec!["os"]);
        assert!(used.touches("os.release.full"));
        let all = UsedFacts::everything();
        assert!(all.touches("uptime_seconds"));
    }
}

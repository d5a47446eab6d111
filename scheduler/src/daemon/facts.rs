//! Facts uploads: Puppet's own body shape, and the "did anything that
//! matters change" decision.
//!
//! Nodes upload facts with `PUT /puppet/v3/facts/:certname` exactly as
//! `puppet facts upload` sends them (`{name, values, timestamp,
//! expiration}`). Volatile facts (uptime, free memory, load averages) change
//! on every upload; pcq compares a hash of the facts *without* those, so only
//! a real change bumps the node.

use std::collections::BTreeMap;

use globset::{Glob, GlobSet, GlobSetBuilder};
use serde::Deserialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

/// The body of a facts upload.
#[derive(Debug, Deserialize)]
pub struct Upload {
    /// The certname the facts are for.
    pub name: String,
    /// The facts.
    pub values: serde_json::Map<String, Value>,
    /// When facter ran (kept as sent).
    #[serde(default)]
    pub timestamp: Option<Value>,
    /// Until when Puppet considers the facts fresh (kept as sent).
    #[serde(default)]
    pub expiration: Option<Value>,
}

/// Fact paths that never count as a change.
#[derive(Clone, Debug)]
pub struct Ignore {
    set: GlobSet,
}

impl Ignore {
    /// Builds the matcher from glob patterns on dotted fact paths.
    pub fn new(patterns: &[String]) -> Result<Ignore, globset::Error> {
        let mut b = GlobSetBuilder::new();
        for p in patterns {
            b.add(Glob::new(p)?);
        }
        Ok(Ignore { set: b.build()? })
    }

    /// Whether changes at `path` never count.
    pub fn ignores(&self, path: &str) -> bool {
        self.set.is_match(path)
    }

    /// SHA-256 over the facts without the ignored paths, in a canonical
    /// form (object keys sorted, so the order nodes send them in does not
    /// matter).
    pub fn relevant_hash(&self, values: &serde_json::Map<String, Value>) -> String {
        let mut kept = BTreeMap::new();
        for (k, v) in values {
            if let Some(v) = self.filter(k, v) {
                kept.insert(k.as_str(), v);
            }
        }
        let canonical = serde_json::to_vec(&kept).unwrap_or_default();
        hex::encode(Sha256::digest(&canonical))
    }

    fn filter(&self, path: &str, value: &Value) -> Option<Value> {
        if self.ignores(path) {
            return None;
        }
        match value {
            Value::Object(map) => {
                let mut out = serde_json::Map::new();
                for (k, v) in map {
                    if let Some(v) = self.filter(&format!("{path}.{k}"), v) {
                        out.insert(k.clone(), v);
                    }
                }
                Some(Value::Object(out))
            }
            other => Some(other.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::config::Facts;

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
}

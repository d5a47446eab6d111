//! Collector queries, and which exported resources they collect.
//!
//! `File <<| tag == 'backend' and title != 'x' |>>`: equality on `tag`,
//! `title` or a parameter against a literal is evaluated; anything else
//! (a variable on the right, other operators) matches conservatively.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A collector's query, as the analyzer reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Query {
    /// `<<| |>>`: everything.
    All {
        /// Always true.
        all: bool,
    },
    /// `attr == value` or `attr != value`.
    Compare {
        /// `==` or `!=`.
        op: String,
        /// `tag`, `title` or a parameter name.
        attr: String,
        /// A literal.
        value: String,
    },
    /// Both.
    And {
        /// Left and right.
        and: Vec<Query>,
    },
    /// Either.
    Or {
        /// Left and right.
        or: Vec<Query>,
    },
    /// Not evaluated statically: matches anything.
    Unknown {
        /// Always true.
        unknown: bool,
    },
}

/// An exported resource as a query sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct Resource<'a> {
    /// Title.
    pub title: &'a str,
    /// Tags.
    pub tags: &'a [String],
    /// Parameters.
    pub parameters: &'a serde_json::Map<String, Value>,
}

impl Query {
    /// Does this query collect `r`? (Unknown parts say yes.)
    pub fn matches(&self, r: &Resource) -> bool {
        match self {
            Query::All { .. } | Query::Unknown { .. } => true,
            Query::And { and } => and.iter().all(|q| q.matches(r)),
            Query::Or { or } => or.iter().any(|q| q.matches(r)),
            Query::Compare { op, attr, value } => {
                let equal = match attr.as_str() {
                    "tag" => r.tags.iter().any(|t| t.eq_ignore_ascii_case(value)),
                    "title" => r.title == value,
                    param => match r.parameters.get(param) {
                        Some(Value::String(s)) => s == value,
                        Some(Value::Array(a)) => a.iter().any(|v| v.as_str() == Some(value)),
                        Some(Value::Number(n)) => n.to_string() == *value,
                        Some(Value::Bool(b)) => b.to_string() == *value,
                        _ => false,
                    },
                };
                match op.as_str() {
                    "==" => equal,
                    "!=" => !equal,
                    _ => true,
                }
            }
        }
    }
}

impl fmt::Display for Query {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Query::All { .. } => f.write_str("anything"),
            Query::Unknown { .. } => f.write_str("<evaluated at run time: anything>"),
            Query::Compare { op, attr, value } => write!(f, "{attr} {op} '{value}'"),
            Query::And { and } => write!(
                f,
                "({})",
                and.iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(" and ")
            ),
            Query::Or { or } => write!(
                f,
                "({})",
                or.iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(" or ")
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn q(v: Value) -> Query {
        serde_json::from_value(v).expect("query")
    }

    #[test]
    fn evaluates_tags_titles_and_parameters() {
        let params = match json!({"listening_service": "web", "ports": ["80", "443"]}) {
            Value::Object(m) => m,
            _ => serde_json::Map::new(),
        };
        let tags = vec!["backend".to_string(), "file".to_string()];
        let r = Resource {
            title: "/tmp/b1",
            tags: &tags,
            parameters: &params,
        };
        assert!(q(json!({"op": "==", "attr": "tag", "value": "Backend"})).matches(&r));
        assert!(!q(json!({"op": "==", "attr": "tag", "value": "frontend"})).matches(&r));
        assert!(q(json!({"op": "!=", "attr": "title", "value": "/tmp/x"})).matches(&r));
        assert!(q(json!({"op": "==", "attr": "ports", "value": "443"})).matches(&r));
        assert!(q(json!({"and": [{"op": "==", "attr": "tag", "value": "backend"}, {"op": "==", "attr": "listening_service", "value": "web"}]})).matches(&r));
        assert!(!q(json!({"and": [{"op": "==", "attr": "tag", "value": "backend"}, {"op": "==", "attr": "listening_service", "value": "db"}]})).matches(&r));
        assert!(
            q(json!({"or": [{"op": "==", "attr": "tag", "value": "x"}, {"unknown": true}]}))
                .matches(&r)
        );
        assert!(q(json!({"all": true})).matches(&r));
    }
}

//! Certnames as they reach pcq from the network.
//!
//! A certname names files (the stored catalog) and goes into commands
//! (notifications) and URLs, so pcq accepts only what Puppet's own
//! certnames look like in practice: letters, digits, `.`, `-`, `_`, starting
//! with a letter or digit, at most 255 bytes. `../../etc/passwd` is refused
//! before it reaches anything.

use std::fmt;

/// A certname that passed [`Certname::parse`].
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Certname(String);

/// Why a certname was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid certname {shown:?}: {why}")]
pub struct BadCertname {
    shown: String,
    why: &'static str,
}

impl Certname {
    /// Checks `name`.
    pub fn parse(name: &str) -> Result<Certname, BadCertname> {
        let bad = |why| BadCertname {
            shown: name.chars().take(80).collect(),
            why,
        };
        if name.is_empty() {
            return Err(bad("empty"));
        }
        if name.len() > 255 {
            return Err(bad("longer than 255 bytes"));
        }
        if !name.as_bytes()[0].is_ascii_alphanumeric() {
            return Err(bad("must start with a letter or digit"));
        }
        if !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_')
        {
            return Err(bad("only letters, digits, '.', '-' and '_' are allowed"));
        }
        Ok(Certname(name.to_owned()))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Certname {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_real_certnames() {
        for n in [
            "web01.example.com",
            "node_1",
            "a",
            "db-2.prod.example.org",
            "VM",
        ] {
            assert!(Certname::parse(n).is_ok(), "{n}");
        }
    }

    #[test]
    fn refuses_hostile_ones() {
        for n in [
            "../../etc/passwd",
            "..",
            ".hidden",
            "a/b",
            "",
            "node 1",
            "node;rm -rf",
            "nöde",
            "a\0b",
            "-flag",
        ] {
            assert!(Certname::parse(n).is_err(), "{n:?}");
        }
        assert!(Certname::parse(&"a".repeat(256)).is_err());
    }
}

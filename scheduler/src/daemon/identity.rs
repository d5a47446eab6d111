//! Who is calling: identity from Puppet's client certificates.
//!
//! Catalogs hold secrets, so the API trusts no name a request carries, only
//! the certificate the TLS handshake verified against Puppet's CA (and its
//! CRL). The certificate's common name is the caller's certname. A node may
//! act only for itself; certnames on `api.admins` may do anything (bumps,
//! deploys, the queue, any node's catalog: the master holds every secret
//! already). The local admin channel ([`super::admin`]: the Unix socket,
//! or the loopback listener with its token) acts as admin.

use std::fmt;

use super::certname::Certname;

/// The caller of an API request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Caller {
    /// A node, by its verified certificate.
    Node(Certname),
    /// An administrator: a certificate on `api.admins`, or the loopback
    /// admin listener.
    Admin(String),
}

impl Caller {
    /// May this caller act for `node` (its catalog, status, facts)?
    pub fn may_act_for(&self, node: &Certname) -> bool {
        match self {
            Caller::Node(me) => me == node,
            Caller::Admin(_) => true,
        }
    }

    /// Is this caller an administrator?
    pub fn is_admin(&self) -> bool {
        matches!(self, Caller::Admin(_))
    }
}

impl fmt::Display for Caller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Caller::Node(c) => write!(f, "node {c}"),
            Caller::Admin(a) => write!(f, "admin {a}"),
        }
    }
}

/// The common name of a DER certificate (Puppet puts the certname there).
pub fn common_name(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let cn = cert.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_string)
}

/// The caller a verified certificate makes.
pub fn caller_of(der: &[u8], admins: &[String]) -> Option<Caller> {
    let cn = common_name(der)?;
    if admins.contains(&cn) {
        return Some(Caller::Admin(cn));
    }
    Certname::parse(&cn).ok().map(Caller::Node)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_act_only_for_themselves() {
        let a = Certname::parse("a.example.com").expect("certname");
        let b = Certname::parse("b.example.com").expect("certname");
        assert!(Caller::Node(a.clone()).may_act_for(&a));
        assert!(!Caller::Node(a.clone()).may_act_for(&b));
        assert!(Caller::Admin("ops".into()).may_act_for(&b));
        assert!(!Caller::Node(a).is_admin());
    }

    #[test]
    fn reads_the_common_name_of_puppets_certificates() {
        let path = std::path::Path::new("/var/lib/puppet/ssl/certs");
        let Ok(entries) = std::fs::read_dir(path) else {
            return; // no Puppet CA on this machine: covered by the e2e suite
        };
        for e in entries.flatten() {
            let name = e
                .file_name()
                .to_string_lossy()
                .trim_end_matches(".pem")
                .to_string();
            if name == "ca" {
                continue;
            }
            let pem = std::fs::read(e.path()).expect("cert");
            let der = rustls_pemfile::certs(&mut &pem[..])
                .next()
                .expect("one cert")
                .expect("pem");
            assert_eq!(common_name(&der).as_deref(), Some(name.as_str()));
        }
    }
}

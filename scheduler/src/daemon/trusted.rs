//! Trusted facts: the `$trusted` hash Puppet Server would build from the
//! node's own certificate.
//!
//! When an agent asks for its catalog, Puppet Server fills `$trusted` from
//! the client certificate of the connection: certname, hostname, domain and
//! the certificate's Puppet extensions (`pp_role`, `pp_environment`, ...,
//! set in `csr_attributes.yaml` and signed by the CA). pcq compiles with
//! its own certificate, so it must pass them in `trusted_facts`, or code
//! that classifies by `$trusted['extensions']['pp_role']` compiles a
//! different catalog than the agent would get. The backend reads the
//! node's certificate from the CA (`GET /puppet-ca/v1/certificate/NAME`)
//! for each compile; this file turns it into Puppet's shape.
//!
//! Puppet's rules (`Puppet::SSL::Certificate#custom_extensions`): only
//! extensions under `ppRegCertExt` (1.3.6.1.4.1.34380.1.1), `ppPrivCertExt`
//! (.1.2) and `ppAuthCertExt` (.1.3) count; registered ones are named by
//! their short name (`pp_role`), the others by their dotted OID; the value
//! is the DER string inside the extension, or the raw bytes when it is not
//! DER (certificates signed before PUP-3560).

use serde_json::{json, Map, Value};

use super::certname::Certname;

/// Puppet's registered extension OIDs, below 1.3.6.1.4.1.34380.1, and their
/// short names (puppet/ssl/oids.rb).
const NAMES: &[(&str, &str)] = &[
    ("1.1", "pp_uuid"),
    ("1.2", "pp_instance_id"),
    ("1.3", "pp_image_name"),
    ("1.4", "pp_preshared_key"),
    ("1.5", "pp_cost_center"),
    ("1.6", "pp_product"),
    ("1.7", "pp_project"),
    ("1.8", "pp_application"),
    ("1.9", "pp_service"),
    ("1.10", "pp_employee"),
    ("1.11", "pp_created_by"),
    ("1.12", "pp_environment"),
    ("1.13", "pp_role"),
    ("1.14", "pp_software_version"),
    ("1.15", "pp_department"),
    ("1.16", "pp_cluster"),
    ("1.17", "pp_provisioner"),
    ("1.18", "pp_region"),
    ("1.19", "pp_datacenter"),
    ("1.20", "pp_zone"),
    ("1.21", "pp_network"),
    ("1.22", "pp_securitypolicy"),
    ("1.23", "pp_cloudplatform"),
    ("1.24", "pp_apptier"),
    ("1.25", "pp_hostname"),
    ("1.26", "pp_owner"),
    ("3.1", "pp_authorization"),
    ("3.13", "pp_auth_role"),
];

const PUPPET_ARC: &str = "1.3.6.1.4.1.34380.1.";

/// The `trusted_facts.values` of a compile request for `certname`, whose
/// certificate (PEM) the CA returned; `None`: the CA has no certificate by
/// that name, so there are no extensions.
pub fn trusted_facts(certname: &Certname, pem: Option<&[u8]>) -> Result<Value, String> {
    let extensions = match pem {
        Some(pem) => extensions(pem)?,
        None => Map::new(),
    };
    let name = certname.as_str();
    let (hostname, domain) = name.split_once('.').unwrap_or((name, ""));
    Ok(json!({
        "authenticated": "remote",
        "certname": name,
        "hostname": hostname,
        "domain": domain,
        "extensions": extensions,
    }))
}

/// The Puppet extensions of a certificate (PEM), named as Puppet names
/// them.
pub fn extensions(pem: &[u8]) -> Result<Map<String, Value>, String> {
    let (_, block) = x509_parser::pem::parse_x509_pem(pem)
        .map_err(|e| format!("the CA's answer is not a PEM certificate: {e}"))?;
    let cert = block
        .parse_x509()
        .map_err(|e| format!("the CA's certificate does not parse: {e}"))?;
    let mut out = Map::new();
    for ext in cert.extensions() {
        let oid = ext.oid.to_id_string();
        let Some(below) = oid.strip_prefix(PUPPET_ARC) else {
            continue;
        };
        if !["1.", "2.", "3."].iter().any(|arc| below.starts_with(arc)) {
            continue;
        }
        let name = NAMES
            .iter()
            .find(|(arc, _)| *arc == below)
            .map_or(oid.clone(), |(_, n)| (*n).to_string());
        out.insert(name, Value::String(der_string(ext.value)));
    }
    Ok(out)
}

/// The string inside a DER string value (UTF8String, PrintableString,
/// IA5String, OCTET STRING), or the bytes themselves when they are not one.
fn der_string(value: &[u8]) -> String {
    let raw = || String::from_utf8_lossy(value).into_owned();
    let [tag, first, rest @ ..] = value else {
        return raw();
    };
    if ![0x0c, 0x13, 0x16, 0x04].contains(tag) {
        return raw();
    }
    let (len, body) = if first & 0x80 == 0 {
        (usize::from(*first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return raw();
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, &rest[n..])
    };
    if body.len() != len {
        return raw();
    }
    String::from_utf8_lossy(body).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn der_strings_are_unwrapped_and_anything_else_kept() {
        assert_eq!(der_string(b"\x0c\x03web"), "web");
        assert_eq!(der_string(b"\x13\x02db"), "db");
        let long = "x".repeat(200);
        let mut der = vec![0x0c, 0x81, 200];
        der.extend_from_slice(long.as_bytes());
        assert_eq!(der_string(&der), long);
        // not DER (old certificates): the bytes as they are
        assert_eq!(der_string(b"web"), "web");
        assert_eq!(der_string(b"\x0c\x09web"), "\u{c}\tweb", "length mismatch");
        assert_eq!(der_string(b""), "");
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(extensions(b"not a certificate").is_err());
        assert!(
            extensions(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n").is_err()
        );
    }

    #[test]
    fn a_node_without_a_certificate_has_no_extensions() {
        let n = Certname::parse("web01.example.com").expect("certname");
        let t = trusted_facts(&n, None).expect("trusted");
        assert_eq!(t["hostname"], "web01");
        assert_eq!(t["domain"], "example.com");
        assert_eq!(t["extensions"], json!({}));
    }

    #[test]
    fn a_certificate_signed_by_puppets_ca_gives_its_extensions() {
        // `puppet ssl submit_request` with csr_attributes.yaml
        // {pp_role: pcq_trusted, 1.3.6.1.4.1.34380.1.2.1: private-value},
        // signed by `puppetserver ca sign`
        let pem = include_bytes!("testdata/extensions.pem");
        let ext = extensions(pem).expect("extensions");
        assert_eq!(ext.get("pp_role"), Some(&json!("pcq_trusted")));
        assert_eq!(
            ext.get("1.3.6.1.4.1.34380.1.2.1"),
            Some(&json!("private-value"))
        );
        assert_eq!(ext.len(), 2, "{ext:?}");
    }
}

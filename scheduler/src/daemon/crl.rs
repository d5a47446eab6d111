//! Revocation: the CRL the API checks client certificates against, kept
//! fresh and never replaced by a worse one.
//!
//! Catalogs hold secrets, so a revoked node must lose access soon after the
//! CA revokes it, and nothing an attacker or a confused CA answer sends may
//! switch revocation checking off. pcq refreshes the CRL on its own
//! interval (`ca.crl_refresh_interval`, whether or not the CA is polled for
//! nodes) from the CA (`puppetserver` backend) or from Puppet's `crl.pem`
//! (`command` backend). An answer replaces the CRL in force only if it
//! parses, holds a CRL from every issuer the one in force has, each signed
//! by a certificate of Puppet's CA, and none older than the one it
//! replaces; anything else is logged, counted
//! (`pcq_crl_refreshes_total`) and ignored. A new CRL closes the API's
//! open connections ([`Acceptor::replace`]), so a revoked certificate keeps
//! no connection. A CRL past its next update refuses every client (the
//! verifier enforces expiry): pcq cannot tell who was revoked since.
//! Staleness is a metric (`pcq_crl_age_seconds`, the time since the CRL in
//! force was last confirmed current) and a warning.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::{CertificateDer, CertificateRevocationListDer};

use super::backend::puppetserver::PuppetServer;
use super::metrics::Metrics;
use super::tls::{parse_crls, Acceptor, PuppetSsl};

/// A CRL checked against Puppet's CA.
#[derive(Clone, Debug)]
pub struct Crl {
    pem: Vec<u8>,
    ders: Vec<CertificateRevocationListDer<'static>>,
    /// Per issuer (DER of its name): when its CRL was issued, and its CRL
    /// number.
    issued: Vec<(Vec<u8>, i64, Option<Vec<u8>>)>,
    /// The earliest next update of them, seconds since the epoch.
    next_update: Option<i64>,
}

impl Crl {
    /// `pem` as a CRL, if it parses and every CRL in it is signed by one of
    /// `ca` (Puppet's CA chain).
    pub fn validate(pem: &[u8], ca: &[CertificateDer<'_>]) -> Result<Crl, String> {
        let ders = parse_crls(pem).map_err(|e| e.to_string())?;
        if ders.is_empty() {
            return Err("no CRL in it".into());
        }
        let mut cas = Vec::new();
        for der in ca {
            let (_, cert) = x509_parser::parse_x509_certificate(der)
                .map_err(|e| format!("Puppet's CA certificate: {e}"))?;
            cas.push(cert);
        }
        let mut issued: Vec<(Vec<u8>, i64, Option<Vec<u8>>)> = Vec::new();
        let mut next_update: Option<i64> = None;
        for der in &ders {
            let (_, crl) =
                x509_parser::parse_x509_crl(der).map_err(|e| format!("not a CRL: {e}"))?;
            let issuer = crl.issuer();
            let signer = cas
                .iter()
                .find(|c| c.subject().as_raw() == issuer.as_raw())
                .ok_or_else(|| format!("issued by {issuer}, not by Puppet's CA"))?;
            crl.verify_signature(signer.public_key())
                .map_err(|e| format!("the signature of {issuer}'s CRL does not verify: {e}"))?;
            let number = crl.crl_number().map(|n| n.to_bytes_be());
            if issued.iter().any(|(i, ..)| i == issuer.as_raw()) {
                // the verifier would use the first and might take the older
                return Err(format!("two CRLs from {issuer}"));
            }
            issued.push((
                issuer.as_raw().to_vec(),
                crl.last_update().timestamp(),
                number,
            ));
            if let Some(next) = crl.next_update() {
                let t = next.timestamp();
                next_update = Some(next_update.map_or(t, |n| n.min(t)));
            }
        }
        Ok(Crl {
            pem: pem.to_vec(),
            ders,
            issued,
            next_update,
        })
    }

    /// Why this CRL may not replace `current`, if it may not: it lacks an
    /// issuer `current` has, or one of its CRLs is older.
    pub fn older_than(&self, current: &Crl) -> Option<String> {
        for (issuer, at, number) in &current.issued {
            let Some((_, new_at, new_number)) = self.issued.iter().find(|(i, ..)| i == issuer)
            else {
                return Some("it lacks the CRL of an issuer the CRL in force has".into());
            };
            // the CRL number where both have one (a CA whose clock was
            // corrected still counts up), the issue time otherwise
            let by_number = match (new_number, number) {
                // big-endian magnitudes: longer is larger, then bytewise
                (Some(n), Some(old)) => Some((n.len(), n).cmp(&(old.len(), old))),
                _ => None,
            };
            if by_number == Some(std::cmp::Ordering::Less) {
                return Some("its CRL number is below the CRL in force's".into());
            }
            if by_number != Some(std::cmp::Ordering::Greater) && new_at < at {
                return Some(format!(
                    "it was issued at {new_at}, before the CRL in force ({at}; seconds since the epoch)"
                ));
            }
        }
        None
    }

    /// The CRLs, for the verifier.
    pub fn ders(&self) -> Vec<CertificateRevocationListDer<'static>> {
        self.ders.clone()
    }

    /// Seconds from `now` (since the epoch) to the earliest next update
    /// (negative: expired).
    pub fn expires_in(&self, now: i64) -> Option<i64> {
        self.next_update.map(|t| t - now)
    }
}

/// Where fresh CRLs come from.
pub enum Source {
    /// The CA's `certificate_revocation_list/ca` endpoint.
    Ca(PuppetServer),
    /// A file Puppet keeps current (`crl.pem` in the SSL directory).
    File(PathBuf),
}

impl Source {
    async fn fetch(&self) -> Result<Vec<u8>, String> {
        match self {
            Source::Ca(server) => super::ca::crl(server).await,
            Source::File(path) => tokio::fs::read(path)
                .await
                .map_err(|e| format!("{}: {e}", path.display())),
        }
    }
}

/// Reads the CRL pcq starts with from `path` (none if the file is missing:
/// revocation is checked once the first refresh brings one). A file that
/// is there but not a valid CRL stops the start.
pub fn initial(path: &std::path::Path, ssl: &PuppetSsl) -> Result<Option<Crl>, String> {
    match std::fs::read(path) {
        Ok(pem) => Crl::validate(&pem, &ssl.ca_certs().map_err(|e| e.to_string())?)
            .map(Some)
            .map_err(|e| format!("{}: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            tracing::warn!(
                "{}: not there; revoked certificates are refused only once a CRL is fetched",
                path.display()
            );
            Ok(None)
        }
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

fn epoch_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Refreshes the CRL every `every` forever, replacing the API's TLS
/// configuration when a valid newer one arrives.
pub async fn refresh(
    source: Source,
    every: Duration,
    mut current: Option<Crl>,
    acceptor: Arc<Acceptor>,
    ssl: PuppetSsl,
    metrics: Arc<Metrics>,
) {
    let mut confirmed = None;
    let started = Instant::now();
    let mut first = true;
    loop {
        // the first refresh at once: the file pcq started with may be
        // missing or behind the CA
        if !std::mem::take(&mut first) {
            tokio::time::sleep(every).await;
        }
        let result = match source.fetch().await {
            Err(e) => Err(("failed", e)),
            Ok(pem) if current.as_ref().is_some_and(|c| c.pem == pem) => Ok(None),
            Ok(pem) => match ssl.ca_certs() {
                Err(e) => Err(("failed", e.to_string())),
                Ok(ca) => match Crl::validate(&pem, &ca) {
                    Err(e) => Err(("invalid", e)),
                    Ok(new) => match current.as_ref().and_then(|c| new.older_than(c)) {
                        Some(why) => Err(("older", why)),
                        None => Ok(Some(new)),
                    },
                },
            },
        };
        match result {
            Ok(None) => {
                Metrics::count(&metrics.crl_refreshes, "unchanged");
                confirmed = Some(Instant::now());
            }
            Ok(Some(new)) => match ssl.mutual_server_config(new.ders()) {
                Ok(config) => {
                    acceptor.replace(config);
                    tracing::info!("API: a new CRL is in force; open connections close");
                    Metrics::count(&metrics.crl_refreshes, "loaded");
                    current = Some(new);
                    confirmed = Some(Instant::now());
                }
                Err(e) => {
                    tracing::warn!("CRL refresh: the new CRL is not usable: {e}");
                    Metrics::count(&metrics.crl_refreshes, "invalid");
                }
            },
            Err((result, why)) => {
                tracing::warn!("CRL refresh: {why}; the CRL in force stays");
                Metrics::count(&metrics.crl_refreshes, result);
            }
        }
        let age = confirmed.map_or(started.elapsed(), |t| t.elapsed());
        metrics.crl_age.set(age.as_secs_f64());
        if let Some(left) = current.as_ref().and_then(|c| c.expires_in(epoch_now())) {
            metrics.crl_expires_in.set(left as f64);
            if left < 0 {
                tracing::error!(
                    "the CRL in force expired {}s ago: every client is refused until a current one is fetched",
                    -left
                );
            }
        }
        if age > every * 3 {
            tracing::warn!(
                "the CRL in force was last confirmed current {}s ago (ca.crl_refresh_interval = {every:?})",
                age.as_secs()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SSL: &str = "/var/lib/puppet/ssl";

    fn puppet_crl() -> Option<(Vec<u8>, Vec<CertificateDer<'static>>)> {
        let pem = std::fs::read(format!("{SSL}/crl.pem")).ok()?;
        let ssl = PuppetSsl::new(std::path::Path::new(SSL), "none");
        Some((pem, ssl.ca_certs().ok()?))
    }

    #[test]
    fn garbage_and_empty_answers_are_not_crls() {
        assert!(Crl::validate(b"", &[]).is_err());
        assert!(Crl::validate(b"<html>502 Bad Gateway</html>", &[]).is_err());
        let broken = b"-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n";
        assert!(Crl::validate(broken, &[]).is_err());
    }

    #[test]
    fn puppets_crl_validates_and_a_forged_signature_does_not() {
        let Some((pem, ca)) = puppet_crl() else {
            return; // no Puppet CA on this machine: the e2e suite covers it
        };
        let crl = Crl::validate(&pem, &ca).expect("Puppet's own CRL");
        assert!(crl.older_than(&crl).is_none(), "the same CRL is not older");
        let mut ders = parse_crls(&pem).expect("pem");
        let mut forged = ders.remove(0).as_ref().to_vec();
        let last = forged.len() - 1;
        forged[last] ^= 0x55;
        let forged_pem = pem_of(&[forged]);
        let e = Crl::validate(&forged_pem, &ca).expect_err("a forged signature");
        assert!(e.contains("signature"), "{e}");
        assert!(Crl::validate(&pem, &[]).is_err(), "no CA: nobody signed it");
    }

    fn pem_of(ders: &[Vec<u8>]) -> Vec<u8> {
        use base64::Engine;
        let mut out = String::new();
        for der in ders {
            out.push_str("-----BEGIN X509 CRL-----\n");
            let b64 = base64::engine::general_purpose::STANDARD.encode(der);
            for chunk in b64.as_bytes().chunks(64) {
                out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
                out.push('\n');
            }
            out.push_str("-----END X509 CRL-----\n");
        }
        out.into_bytes()
    }

    #[test]
    fn an_older_crl_or_one_missing_an_issuer_does_not_replace() {
        let a = Crl {
            pem: vec![],
            ders: vec![],
            issued: vec![(b"ca".to_vec(), 100, Some(vec![5]))],
            next_update: None,
        };
        let older = Crl {
            issued: vec![(b"ca".to_vec(), 90, Some(vec![5]))],
            ..a.clone()
        };
        let lower_number = Crl {
            issued: vec![(b"ca".to_vec(), 100, Some(vec![4]))],
            ..a.clone()
        };
        let clock_back = Crl {
            issued: vec![(b"ca".to_vec(), 50, Some(vec![6]))],
            ..a.clone()
        };
        let other = Crl {
            issued: vec![(b"other".to_vec(), 200, None)],
            ..a.clone()
        };
        let newer = Crl {
            issued: vec![(b"ca".to_vec(), 110, Some(vec![1, 0]))],
            ..a.clone()
        };
        assert!(older.older_than(&a).is_some());
        assert!(lower_number.older_than(&a).is_some());
        assert!(other.older_than(&a).is_some());
        assert!(newer.older_than(&a).is_none());
        assert!(
            clock_back.older_than(&a).is_none(),
            "a higher CRL number wins"
        );
    }
}

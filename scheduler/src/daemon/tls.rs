//! TLS with Puppet's own certificates.
//!
//! pcq needs no PKI of its own: on a Puppet master it uses the host's
//! certificate and key from Puppet's SSL directory, and trusts Puppet's CA
//! (`certs/ca.pem`, a chain of intermediate and root). Keys are PKCS#1 RSA
//! PEM as Puppet writes them. The crypto provider is ring.

use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};

/// Where a certname's files are in a Puppet SSL directory.
#[derive(Clone, Debug)]
pub struct PuppetSsl {
    /// The CA chain.
    pub ca: PathBuf,
    /// The certificate.
    pub cert: PathBuf,
    /// Its private key.
    pub key: PathBuf,
}

/// TLS set-up failed; the message names the file.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {why}")]
pub struct TlsError {
    file: String,
    why: String,
}

impl TlsError {
    /// An error about `file`.
    pub fn new(file: impl Into<String>, why: impl Into<String>) -> TlsError {
        TlsError {
            file: file.into(),
            why: why.into(),
        }
    }
}

impl PuppetSsl {
    /// The files of `certname` in `ssldir`, laid out as Puppet does.
    pub fn new(ssldir: &Path, certname: &str) -> PuppetSsl {
        PuppetSsl {
            ca: ssldir.join("certs/ca.pem"),
            cert: ssldir.join(format!("certs/{certname}.pem")),
            key: ssldir.join(format!("private_keys/{certname}.pem")),
        }
    }

    fn provider() -> Arc<rustls::crypto::CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    /// The CA certificates.
    pub fn roots(&self) -> Result<RootCertStore, TlsError> {
        let mut roots = RootCertStore::empty();
        for cert in read_certs(&self.ca)? {
            roots.add(cert).map_err(|e| TlsError {
                file: self.ca.display().to_string(),
                why: e.to_string(),
            })?;
        }
        Ok(roots)
    }

    /// The CA chain's certificates.
    pub fn ca_certs(&self) -> Result<Vec<CertificateDer<'static>>, TlsError> {
        read_certs(&self.ca)
    }

    /// Certificate chain and key.
    pub fn identity(
        &self,
    ) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
        let certs = read_certs(&self.cert)?;
        let key = read_key(&self.key)?;
        Ok((certs, key))
    }

    /// A client configuration that trusts Puppet's CA and presents this
    /// certificate (mutual TLS with Puppet Server).
    pub fn client_config(&self) -> Result<ClientConfig, TlsError> {
        let (certs, key) = self.identity()?;
        let file = self.cert.display().to_string();
        ClientConfig::builder_with_provider(PuppetSsl::provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError {
                file: file.clone(),
                why: e.to_string(),
            })?
            .with_root_certificates(self.roots()?)
            .with_client_auth_cert(certs, key)
            .map_err(|e| TlsError {
                file,
                why: e.to_string(),
            })
    }

    /// A server configuration presenting this certificate, without client
    /// authentication (a stand-in Puppet Server in tests).
    pub fn server_config(&self) -> Result<rustls::ServerConfig, TlsError> {
        let (certs, key) = self.identity()?;
        let file = self.cert.display().to_string();
        rustls::ServerConfig::builder_with_provider(PuppetSsl::provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError {
                file: file.clone(),
                why: e.to_string(),
            })?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|e| TlsError {
                file,
                why: e.to_string(),
            })
    }
}

fn open(path: &Path) -> Result<BufReader<std::fs::File>, TlsError> {
    std::fs::File::open(path)
        .map(BufReader::new)
        .map_err(|e| TlsError {
            file: path.display().to_string(),
            why: e.to_string(),
        })
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = rustls_pemfile::certs(&mut open(path)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError {
            file: path.display().to_string(),
            why: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError {
            file: path.display().to_string(),
            why: "no certificate in it".into(),
        });
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    rustls_pemfile::private_key(&mut open(path)?)
        .map_err(|e| TlsError {
            file: path.display().to_string(),
            why: e.to_string(),
        })?
        .ok_or_else(|| TlsError {
            file: path.display().to_string(),
            why: "no private key in it".into(),
        })
}

/// A TLS acceptor that can be replaced while serving (a new CRL). Each
/// replacement bumps a generation that open connections watch: they close
/// and their clients' certificates are checked again on reconnecting.
pub struct Acceptor {
    current: std::sync::RwLock<Arc<tokio_rustls::TlsAcceptor>>,
    generation: tokio::sync::watch::Sender<u64>,
}

impl Acceptor {
    /// An acceptor for `config`.
    pub fn new(config: rustls::ServerConfig) -> Arc<Acceptor> {
        Arc::new(Acceptor {
            current: std::sync::RwLock::new(Arc::new(tokio_rustls::TlsAcceptor::from(Arc::new(
                config,
            )))),
            generation: tokio::sync::watch::Sender::new(0),
        })
    }

    /// Replaces the configuration for new connections and tells the open
    /// ones to close.
    pub fn replace(&self, config: rustls::ServerConfig) {
        let next = Arc::new(tokio_rustls::TlsAcceptor::from(Arc::new(config)));
        match self.current.write() {
            Ok(mut current) => *current = next,
            Err(poisoned) => *poisoned.into_inner() = next,
        }
        self.generation.send_modify(|g| *g += 1);
    }

    /// The acceptor for a new connection, and the generation it must watch.
    pub fn current(
        &self,
    ) -> (
        Arc<tokio_rustls::TlsAcceptor>,
        tokio::sync::watch::Receiver<u64>,
    ) {
        // subscribed first: a replacement between the two is seen as a
        // change, never missed
        let generation = self.generation.subscribe();
        let acceptor = match self.current.read() {
            Ok(a) => a.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        (acceptor, generation)
    }
}

/// CRLs in a PEM text (Puppet's `crl.pem` holds the intermediate's and the
/// root's).
pub fn parse_crls(pem: &[u8]) -> Result<Vec<CertificateRevocationListDer<'static>>, TlsError> {
    rustls_pemfile::crls(&mut &pem[..])
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::new("CRL", e.to_string()))
}

impl PuppetSsl {
    /// A server configuration presenting this certificate and requiring
    /// every client to present one issued by Puppet's CA and not revoked
    /// in `crls` (mutual TLS for the API).
    pub fn mutual_server_config(
        &self,
        crls: Vec<CertificateRevocationListDer<'static>>,
    ) -> Result<rustls::ServerConfig, TlsError> {
        let (certs, key) = self.identity()?;
        let file = self.cert.display().to_string();
        let err = |e: &dyn std::fmt::Display| TlsError::new(file.clone(), e.to_string());
        let mut verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(self.roots()?),
            PuppetSsl::provider(),
        );
        if !crls.is_empty() {
            // a CRL past its next update refuses every client: who was
            // revoked since is unknown
            verifier = verifier
                .with_crls(crls)
                .only_check_end_entity_revocation()
                .enforce_revocation_expiration();
        }
        let verifier = verifier.build().map_err(|e| err(&e))?;
        rustls::ServerConfig::builder_with_provider(PuppetSsl::provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| err(&e))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(certs, key)
            .map_err(|e| err(&e))
    }
}

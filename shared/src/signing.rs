//! The study credentials that secure aggregation signs with against a malicious aggregator: a site
//! signs its round-0 keys and the survivor set with the private key of its study certificate (the one
//! its mTLS connection presents), and checks every peer's signature against that peer's certificate,
//! which must chain to the study CA as a *site* (client) certificate for the site id the round names.
//! The aggregator's own certificate is a server certificate: it cannot speak for a site.
//!
//! ECDSA P-256 with SHA-256, the key type the study's provisioning issues (ring). [`site_authentication`]
//! reads a party's TLS files; everything else works on PEM bytes.

use std::sync::Arc;

use ring::rand::SystemRandom;
use ring::signature::{
    ECDSA_P256_SHA256_ASN1, ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, UnparsedPublicKey,
};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivatePkcs8KeyDer, UnixTime};
use rustls::server::danger::ClientCertVerifier;

use crate::config::TlsFiles;
use crate::secagg::{Authentication, PeerVerifier, Signer};
use crate::tls::site_of_parsed;
use x509_parser::certificate::X509Certificate;

/// Why study credentials cannot be used for signing or checking.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("{what} is not valid PEM: {problem}")]
    Pem { what: &'static str, problem: String },
    #[error("the private key is not an ECDSA P-256 key in PKCS#8 (as the study's provisioning issues): {0}")]
    KeyType(String),
    #[error("the private key does not belong to the certificate")]
    KeyMismatch,
    #[error("the certificate cannot be read: {0}")]
    Certificate(String),
    #[error("the study CA certificate cannot be used: {0}")]
    Authority(String),
}

/// A site's signer (its certificate and key) and the study CA, from its TLS files (`[tls]` of
/// `node.toml`): what it needs against a malicious aggregator.
///
/// # Errors
/// A file cannot be read, or [`SiteSigner::from_pem`] / [`StudyAuthority::from_ca_pem`] refuse it.
pub fn site_authentication(tls: &TlsFiles) -> Result<Authentication, CredentialError> {
    let read = |path: &std::path::Path| {
        crate::files::read_regular(path).map_err(|source| CredentialError::Read {
            path: path.to_path_buf(),
            source,
        })
    };
    let signer = SiteSigner::from_pem(&read(&tls.certificate)?, &read(&tls.key)?)?;
    let authority = StudyAuthority::from_ca_pem(&read(&tls.ca)?)?;
    Ok(Authentication {
        signer: Arc::new(signer),
        peers: Arc::new(authority),
    })
}

/// A site's certificate (DER) and its private key: signs the site's protocol messages.
pub struct SiteSigner {
    certificate: Vec<u8>,
    key: EcdsaKeyPair,
    rng: SystemRandom,
}

impl std::fmt::Debug for SiteSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SiteSigner").finish_non_exhaustive()
    }
}

impl SiteSigner {
    /// The signer of the site certificate `certificate_pem` (its first certificate) with the PKCS#8
    /// private key `key_pem`, checked to belong to it.
    ///
    /// # Errors
    /// Unreadable PEM, a key of another type, or a key of another certificate.
    pub fn from_pem(certificate_pem: &[u8], key_pem: &[u8]) -> Result<Self, CredentialError> {
        let certificate = CertificateDer::from_pem_slice(certificate_pem)
            .map_err(|e| CredentialError::Pem {
                what: "the site certificate",
                problem: e.to_string(),
            })?
            .to_vec();
        let key = PrivatePkcs8KeyDer::from_pem_slice(key_pem).map_err(|e| CredentialError::Pem {
            what: "the site key",
            problem: e.to_string(),
        })?;
        let rng = SystemRandom::new();
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, key.secret_pkcs8_der(), &rng)
            .map_err(|e| CredentialError::KeyType(e.to_string()))?;
        let signer = Self {
            certificate,
            key,
            rng,
        };
        let probe = b"fedlnm: does this key belong to this certificate?";
        let signature = signer.sign(probe).map_err(CredentialError::KeyType)?;
        parse(&signer.certificate)
            .and_then(|parsed| verify_with_certificate(&parsed, probe, &signature))
            .map_err(|_| CredentialError::KeyMismatch)?;
        Ok(signer)
    }
}

impl Signer for SiteSigner {
    fn credential(&self) -> &[u8] {
        &self.certificate
    }

    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, String> {
        self.key
            .sign(&self.rng, message)
            .map(|signature| signature.as_ref().to_vec())
            .map_err(|_| "ECDSA signing failed".to_owned())
    }
}

/// The study CA, as a site (or the aggregator) checks its peers' credentials: the same chain and
/// client-usage check the aggregator's TLS handshake makes, then the site id, then the signature.
pub struct StudyAuthority {
    verifier: Arc<dyn ClientCertVerifier>,
}

impl std::fmt::Debug for StudyAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StudyAuthority").finish_non_exhaustive()
    }
}

impl StudyAuthority {
    /// The authority of the CA certificates in `ca_pem`.
    ///
    /// # Errors
    /// Unreadable PEM or no usable CA certificate.
    pub fn from_ca_pem(ca_pem: &[u8]) -> Result<Self, CredentialError> {
        let certificates = CertificateDer::pem_slice_iter(ca_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| CredentialError::Pem {
                what: "the study CA certificate",
                problem: e.to_string(),
            })?;
        let mut roots = rustls::RootCertStore::empty();
        let (added, _ignored) = roots.add_parsable_certificates(certificates);
        if added == 0 {
            return Err(CredentialError::Authority("no CA certificate in the file".into()));
        }
        let verifier = rustls::server::WebPkiClientVerifier::builder(Arc::new(roots))
            .build()
            .map_err(|e| CredentialError::Authority(e.to_string()))?;
        Ok(Self { verifier })
    }
}

impl PeerVerifier for StudyAuthority {
    fn verify(
        &self,
        identity: &str,
        credential: &[u8],
        message: &[u8],
        signature: &[u8],
    ) -> Result<(), String> {
        self.verifier
            .verify_client_cert(&CertificateDer::from(credential), &[], UnixTime::now())
            .map_err(|e| format!("not a site certificate of this study: {e}"))?;
        // One parse for the site id and the public key.
        let parsed = parse(credential)?;
        let site = site_of_parsed(&parsed).map_err(|e| e.to_string())?.site;
        if site != identity {
            return Err(format!("the certificate is site {site}'s, not {identity}'s"));
        }
        verify_with_certificate(&parsed, message, signature)
    }
}

/// A certificate (DER), parsed.
fn parse(certificate: &[u8]) -> Result<X509Certificate<'_>, String> {
    x509_parser::parse_x509_certificate(certificate)
        .map(|(_, parsed)| parsed)
        .map_err(|e| CredentialError::Certificate(e.to_string()).to_string())
}

/// Checks an ECDSA P-256 signature against the public key of a certificate.
fn verify_with_certificate(
    certificate: &X509Certificate<'_>,
    message: &[u8],
    signature: &[u8],
) -> Result<(), String> {
    let public_key = certificate.public_key().subject_public_key.data.as_ref();
    UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, public_key)
        .verify(message, signature)
        .map_err(|_| "the signature does not verify".to_owned())
}

//! TLS policy and certificate identity, shared by both ends: the process-wide rustls crypto provider
//! (ring, TLS 1.3 cipher suites only), and reading a site id out of a client certificate.
//!
//! No I/O: the binaries and the network code call these.

/// The URI SAN prefix that carries a site id in a site certificate (`urn:fedlnm:site:S1`).
pub const SITE_URI_PREFIX: &str = "urn:fedlnm:site:";

/// A certificate that does not identify a site.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error("the client certificate cannot be parsed")]
    Unparsable,
    #[error("the client certificate names no site (no '{SITE_URI_PREFIX}<id>' URI)")]
    NoSite,
    #[error("the client certificate names several sites")]
    SeveralSites,
    #[error("the client certificate's common name '{common_name}' differs from its site '{site}'")]
    CommonNameMismatch { site: String, common_name: String },
}

/// Installs, once per process, rustls's ring crypto provider restricted to TLS 1.3 cipher suites, so
/// that no connection can negotiate TLS 1.2. Call at the top of each `main` (and of tests that use TLS).
/// Idempotent: a second call is a no-op.
pub fn install_crypto_provider() {
    let mut provider = rustls::crypto::ring::default_provider();
    provider
        .cipher_suites
        .retain(|suite| matches!(suite, rustls::SupportedCipherSuite::Tls13(_)));
    // Fails only when a provider is already installed: by an earlier call, which is what we want.
    let _already_installed = provider.install_default();
}

/// What a (chain-verified) client certificate says about its holder, read in one parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SiteCertificate {
    /// The site id it speaks for ([`site_of_certificate`]).
    pub site: String,
    /// When it stops being valid (its `notAfter`), as seconds since the Unix epoch.
    pub not_after: i64,
}

/// The site id a (chain-verified) client certificate speaks for: its single `urn:fedlnm:site:<id>` URI
/// SAN, which must agree with its subject common name.
pub fn site_of_certificate(der: &[u8]) -> Result<String, IdentityError> {
    site_certificate(der).map(|certificate| certificate.site)
}

/// The site id of a (chain-verified) client certificate, as [`site_of_certificate`], and its expiry.
pub fn site_certificate(der: &[u8]) -> Result<SiteCertificate, IdentityError> {
    let (_, certificate) = x509_parser::parse_x509_certificate(der).map_err(|_| IdentityError::Unparsable)?;
    site_of_parsed(&certificate)
}

/// [`site_certificate`] of a certificate already parsed (for callers that read more of it).
pub fn site_of_parsed(
    certificate: &x509_parser::certificate::X509Certificate<'_>,
) -> Result<SiteCertificate, IdentityError> {
    let sans = certificate
        .subject_alternative_name()
        .map_err(|_| IdentityError::Unparsable)?;
    let mut sites = sans
        .into_iter()
        .flat_map(|ext| ext.value.general_names.iter())
        .filter_map(|name| match name {
            x509_parser::extensions::GeneralName::URI(uri) => uri.strip_prefix(SITE_URI_PREFIX),
            _ => None,
        });
    let site = sites.next().ok_or(IdentityError::NoSite)?.to_owned();
    if sites.next().is_some() {
        return Err(IdentityError::SeveralSites);
    }
    let common_name = certificate
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .unwrap_or_default();
    if common_name != site {
        return Err(IdentityError::CommonNameMismatch {
            site,
            common_name: common_name.to_owned(),
        });
    }
    Ok(SiteCertificate {
        site,
        not_after: certificate.validity().not_after.timestamp(),
    })
}

//! A study PKI for the secure-aggregation tests: a CA, one ECDSA P-256 site certificate per
//! participant (the id `S<k>` for protocol id k, as the study's provisioning issues them) and the
//! aggregator's server certificate, made with rcgen; signers and the authority are the ones the
//! node and the aggregator use (`fedlnm_shared::signing`).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)] // Each test file uses part of it.

pub mod round;

use std::collections::BTreeMap;
use std::sync::Arc;

use fedlnm_shared::secagg::{Authentication, Security, SiteId};
use fedlnm_shared::signing::{SiteSigner, StudyAuthority};
use fedlnm_shared::tls::SITE_URI_PREFIX;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

/// Relays a message as the transport will: serialized to bytes and back.
pub fn relay<T: serde::Serialize + serde::de::DeserializeOwned>(message: &T) -> T {
    serde_json::from_slice(&serde_json::to_vec(message).unwrap()).unwrap()
}

/// A training instance of study "lnm-study" between `participants` over one tensor `head.weight`
/// of `len` values: complete graph, curious server, default quantization, no noise. Tests change
/// what they test with struct update syntax.
pub fn weighted_delta_config(
    participants: Vec<SiteId>,
    threshold: usize,
    round: u64,
    len: usize,
) -> fedlnm_shared::secagg::SecAggConfig {
    use fedlnm_shared::secagg::{
        Graph, InputKind, ModelVersion, QuantizationConfig, SecAggConfig, TensorSpec,
    };
    SecAggConfig {
        study_id: "lnm-study".into(),
        round,
        model_version: ModelVersion::new("model-v7", 1),
        participants,
        threshold,
        tensors: vec![TensorSpec {
            name: "head.weight".into(),
            shape: vec![len],
        }],
        fedbn_exclude: Vec::new(),
        quantization: QuantizationConfig::default(),
        max_delta_norm: 1e6,
        input: InputKind::WeightedDelta,
        privacy: None,
        security: Security::CuriousServer,
        graph: Graph::Complete,
    }
}

/// The study id of a protocol id.
pub fn identity(site: SiteId) -> String {
    format!("S{}", site.0)
}

/// The malicious-server protection of an instance between `sites`.
pub fn malicious(sites: &[SiteId]) -> Security {
    Security::MaliciousServer {
        identities: sites.iter().map(|&s| (s, identity(s))).collect(),
    }
}

/// A certificate and its key, PEM.
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

pub struct Pki {
    pub ca_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Pki {
    pub fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, format!("test study CA {name}"));
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
        let key = KeyPair::generate().unwrap();
        let ca_pem = params.self_signed(&key).unwrap().pem();
        Self {
            ca_pem,
            issuer: Issuer::new(params, key),
        }
    }

    /// A site (client) certificate for `site`, as provisioning issues it.
    pub fn site(&self, site: &str) -> Issued {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.subject_alt_names.push(SanType::URI(
            format!("{SITE_URI_PREFIX}{site}").as_str().try_into().unwrap(),
        ));
        params.distinguished_name.push(DnType::CommonName, site);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.issue(params)
    }

    /// The aggregator's server certificate (server usage only).
    pub fn server(&self) -> Issued {
        let mut params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "fedlnm aggregator");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.issue(params)
    }

    fn issue(&self, mut params: CertificateParams) -> Issued {
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    pub fn authority(&self) -> Arc<StudyAuthority> {
        Arc::new(StudyAuthority::from_ca_pem(self.ca_pem.as_bytes()).unwrap())
    }

    /// The authentication of each of `sites` (its own certificate and key, this study's authority).
    pub fn authentications(&self, sites: &[SiteId]) -> BTreeMap<SiteId, Authentication> {
        let authority = self.authority();
        sites
            .iter()
            .map(|&site| {
                let issued = self.site(&identity(site));
                let signer =
                    SiteSigner::from_pem(issued.cert_pem.as_bytes(), issued.key_pem.as_bytes()).unwrap();
                (
                    site,
                    Authentication {
                        signer: Arc::new(signer),
                        peers: authority.clone(),
                    },
                )
            })
            .collect()
    }
}

/// One PKI per test process, with each site's authentication issued once (rounds of a property test
/// reuse them, as a study reuses its certificates).
pub fn study_authentications(sites: &[SiteId]) -> BTreeMap<SiteId, Authentication> {
    use std::sync::{Mutex, OnceLock};
    static PKI: OnceLock<(Pki, Mutex<BTreeMap<SiteId, Authentication>>)> = OnceLock::new();
    let (pki, cache) = PKI.get_or_init(|| (Pki::new("shared"), Mutex::new(BTreeMap::new())));
    let mut cache = cache.lock().unwrap();
    for &site in sites {
        if !cache.contains_key(&site) {
            let issued = pki.authentications(&[site]);
            cache.extend(issued);
        }
    }
    sites.iter().map(|s| (*s, cache[s].clone())).collect()
}

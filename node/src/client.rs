//! The node's connection to the aggregator: gRPC over mutual TLS 1.3, always dialled out from the
//! hospital (the node never listens). Errors say what a hospital IT person can check.

use crate::proto::federation_client::FederationClient;
use crate::proto::{CheckInRequest, CheckInResponse};
use fedlnm_shared::config::NodeConfig;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// Why the node could not talk to the aggregator.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot read {}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("'{url}' is not a usable aggregator address: {source}")]
    Address {
        url: String,
        source: tonic::transport::Error,
    },
    #[error(
        "cannot connect to the aggregator at {url}: {source}. Check that the aggregator is running, that \
         outbound connections to its port are allowed by the firewall, and that site.pem/site.key/ca.pem \
         come from this study's startup kit and have not expired"
    )]
    Connect {
        url: String,
        source: tonic::transport::Error,
    },
    #[error("the aggregator refused the request ({code:?}): {message}")]
    Refused { code: tonic::Code, message: String },
}

/// Opens a mutual-TLS channel to the aggregator named in `config`.
pub async fn connect(config: &NodeConfig) -> Result<FederationClient<Channel>, ClientError> {
    fedlnm_shared::tls::install_crypto_provider();
    let read = |path: &Path| {
        std::fs::read(path).map_err(|source| ClientError::Read {
            path: path.to_path_buf(),
            source,
        })
    };
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read(&config.tls.ca)?))
        .identity(Identity::from_pem(
            read(&config.tls.certificate)?,
            read(&config.tls.key)?,
        ));
    if let Some(name) = &config.aggregator_name {
        tls = tls.domain_name(name.clone());
    }
    let url = config.aggregator.clone();
    let endpoint = Endpoint::from_shared(url.clone())
        .and_then(|e| e.tls_config(tls))
        .map_err(|source| ClientError::Address {
            url: url.clone(),
            source,
        })?
        .connect_timeout(Duration::from_secs(20))
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_while_idle(true);
    let channel = endpoint
        .connect()
        .await
        .map_err(|source| ClientError::Connect { url, source })?;
    Ok(FederationClient::new(channel))
}

/// Checks in with the aggregator: proves the network path, mutual TLS and this site's identity, and
/// returns the site's role in the study.
pub async fn check_in(config: &NodeConfig) -> Result<CheckInResponse, ClientError> {
    let mut client = connect(config).await?;
    let request = CheckInRequest {
        site: config.site.clone(),
        study: config.study.clone(),
        node_version: env!("CARGO_PKG_VERSION").to_owned(),
    };
    client
        .check_in(request)
        .await
        .map(tonic::Response::into_inner)
        .map_err(|status| ClientError::Refused {
            code: status.code(),
            message: status.message().to_owned(),
        })
}

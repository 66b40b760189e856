//! The aggregator's gRPC service over mutual TLS: every call is authorized by the site id in the client
//! certificate (chain-verified against the study CA by rustls), checked against the study config.
//!
//! Refusals are logged with the site and reason and change no state; they reach the node as a gRPC
//! status that says what to fix.

use crate::proto::federation_server::{Federation, FederationServer};
use crate::proto::{CheckInRequest, CheckInResponse};
use fedlnm_shared::config::{AggregatorConfig, SiteRole};
use std::future::Future;
use std::sync::Arc;
use tokio::net::TcpListener;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
use tonic::{Request, Response, Status};

/// What can stop the server from starting or serving.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("TLS configuration: {0}")]
    Tls(#[source] tonic::transport::Error),
    #[error("the gRPC server stopped: {0}")]
    Transport(#[source] tonic::transport::Error),
}

/// The federation service of one study.
#[derive(Debug, Clone)]
pub struct FederationService {
    config: Arc<AggregatorConfig>,
}

impl FederationService {
    #[must_use]
    pub fn new(config: AggregatorConfig) -> Self {
        Self {
            config: Arc::new(config),
        }
    }

    /// The calling site and its role, from the client certificate; checks that the request speaks for
    /// that site and study.
    fn authorize(
        &self,
        certificate_site: Option<String>,
        claimed_site: &str,
        claimed_study: &str,
    ) -> Result<(String, SiteRole), Status> {
        let Some(site) = certificate_site else {
            tracing::warn!("refused: no usable client certificate");
            return Err(Status::unauthenticated(
                "no client certificate naming a site was presented",
            ));
        };
        let Some(role) = self.config.role_of(&site) else {
            tracing::warn!(site, "refused: site not in the study");
            return Err(Status::permission_denied(format!(
                "site '{site}' is not part of study '{}'",
                self.config.study
            )));
        };
        if claimed_site != site {
            tracing::warn!(site, claimed_site, "refused: request speaks for another site");
            return Err(Status::permission_denied(format!(
                "the certificate is for site '{site}' but the request speaks for site '{claimed_site}'"
            )));
        }
        if claimed_study != self.config.study {
            tracing::warn!(site, claimed_study, "refused: wrong study");
            return Err(Status::failed_precondition(format!(
                "this aggregator runs study '{}', not '{claimed_study}': check the node's configuration",
                self.config.study
            )));
        }
        Ok((site, role))
    }
}

/// The site id of the client certificate of a request, if any.
fn certificate_site<T>(request: &Request<T>) -> Option<String> {
    let certificates = request.peer_certs()?;
    let leaf = certificates.first()?;
    match fedlnm_shared::tls::site_of_certificate(leaf.as_ref()) {
        Ok(site) => Some(site),
        Err(error) => {
            tracing::warn!(%error, "client certificate without a site identity");
            None
        }
    }
}

#[tonic::async_trait]
impl Federation for FederationService {
    async fn check_in(&self, request: Request<CheckInRequest>) -> Result<Response<CheckInResponse>, Status> {
        let certificate_site = certificate_site(&request);
        let request = request.into_inner();
        let (site, role) = self.authorize(certificate_site, &request.site, &request.study)?;
        tracing::info!(site, %role, node_version = request.node_version, "site checked in");
        Ok(Response::new(CheckInResponse {
            study: self.config.study.clone(),
            site,
            role: role.to_string(),
            aggregator_version: env!("CARGO_PKG_VERSION").to_owned(),
        }))
    }
}

/// Serves the study on `listener` with mutual TLS 1.3 until `shutdown` resolves.
pub async fn serve(
    config: AggregatorConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    fedlnm_shared::tls::install_crypto_provider();
    let read = |path: &std::path::Path| {
        std::fs::read(path).map_err(|source| ServeError::Read {
            path: path.to_path_buf(),
            source,
        })
    };
    let tls = ServerTlsConfig::new()
        .identity(Identity::from_pem(
            read(&config.tls.certificate)?,
            read(&config.tls.key)?,
        ))
        .client_ca_root(Certificate::from_pem(read(&config.tls.ca)?));
    let address = listener.local_addr().ok();
    tracing::info!(
        study = config.study,
        ?address,
        sites = config.sites.len(),
        "aggregator listening (mutual TLS 1.3)"
    );
    Server::builder()
        .tls_config(tls)
        .map_err(ServeError::Tls)?
        .add_service(FederationServer::new(FederationService::new(config)))
        .serve_with_incoming_shutdown(tokio_stream::wrappers::TcpListenerStream::new(listener), shutdown)
        .await
        .map_err(ServeError::Transport)
}

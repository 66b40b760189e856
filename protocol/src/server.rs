//! The aggregator's end of the wire: a typed service trait ([`FederationHandler`]) that the round
//! logic implements, the adapter that turns generated gRPC calls into its typed calls (reading the
//! caller's certificate identity, converting and checking messages, streaming downloads and receiving
//! uploads through the one chunked transfer), and [`serve`]: tonic over mutual TLS 1.3.

use crate::generated as pb;
use crate::generated::federation_server::{Federation, FederationServer};
use crate::messages::{
    AnalysisReport, CheckIn, CheckInReply, Claim, MetricsReport, SecAggMessage, Task, UpdateHeader,
    UploadReceipt,
};
use crate::transfer::{self, Assembler, Digest, TransferError};
use fedlnm_shared::config::TlsFiles;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tonic::transport::Server;
use tonic::{Request, Response, Status, Streaming};

/// The attribute that makes a [`FederationHandler`] implementation's `async fn`s object-safe.
pub use tonic::async_trait;

/// Longest wait for the first chunk (the header) of an upload; the handler chooses the silence
/// allowed between the chunks that follow ([`IncomingUpload::receive`]).
pub const CHUNK_IDLE: Duration = Duration::from_secs(120);

/// The site id in the caller's (chain-verified) client certificate, or `None` when it names none, and
/// when that certificate expires (seconds since the Unix epoch): the handshake checked it once, but a
/// connection may outlive it, so each call is checked again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub certificate_site: Option<String>,
    pub certificate_not_after: Option<i64>,
}

/// Bytes the server streams to a site as one transfer (a global model's safetensors file).
pub trait Download: Send + Sync + 'static {
    fn bytes(&self) -> &[u8];
    /// SHA-256 (hex) of [`Self::bytes`].
    fn digest(&self) -> &str;
}

/// An upload whose header has arrived: the handler authorizes it, then receives the payload with the
/// limit it allows.
pub struct IncomingUpload {
    pub header: UpdateHeader,
    first: Vec<u8>,
    stream: Streaming<pb::UpdateChunk>,
}

impl IncomingUpload {
    /// Receives the whole payload: refused before reading when the announced size exceeds `limit`,
    /// checked chunk by chunk (a link silent for `idle` between two chunks times out) and by its
    /// XXH3-128 checksum.
    ///
    /// # Errors
    /// [`TransferError`] naming what is wrong; its `status()` is the answer to the site.
    pub async fn receive(self, limit: u64, idle: Duration) -> Result<Vec<u8>, TransferError> {
        self.receive_inspecting(limit, idle, |_| {}).await
    }

    /// [`Self::receive`], handing every chunk, in order, to `inspect` once it is accepted, while it is
    /// still in the cache from its arrival (a check of the values as they stream in).
    ///
    /// # Errors
    /// As [`Self::receive`].
    pub async fn receive_inspecting(
        mut self,
        limit: u64,
        idle: Duration,
        mut inspect: impl FnMut(&[u8]) + Send,
    ) -> Result<Vec<u8>, TransferError> {
        const WHAT: &str = "update";
        let mut assembler = Assembler::new(WHAT, self.header.total_size, limit, Digest::Xxh3)?;
        assembler.push(None, &self.first)?;
        inspect(&self.first);
        loop {
            let chunk = match tokio::time::timeout(idle, self.stream.message()).await {
                Ok(Ok(Some(chunk))) => chunk,
                // A stream that ends (or breaks) early is a truncated transfer: `finish` names it.
                Ok(Ok(None) | Err(_)) => break,
                Err(_) => return Err(TransferError::Idle { what: WHAT, idle }),
            };
            if chunk.header.is_some() {
                return Err(TransferError::MisplacedHeader { what: WHAT });
            }
            assembler.push(None, &chunk.data)?;
            inspect(&chunk.data);
        }
        assembler.finish(&self.header.digest)
    }
}

/// The study's side of every call, in typed Rust. Each call receives the caller's certificate
/// identity; authorization is the handler's.
#[tonic::async_trait]
pub trait FederationHandler: Send + Sync + 'static {
    async fn check_in(&self, caller: Caller, request: CheckIn) -> Result<CheckInReply, Status>;
    async fn get_task(&self, caller: Caller, claim: Claim) -> Result<Task, Status>;
    async fn download_model(
        &self,
        caller: Caller,
        claim: Claim,
        version: u64,
    ) -> Result<Arc<dyn Download>, Status>;
    async fn upload_update(&self, caller: Caller, upload: IncomingUpload) -> Result<UploadReceipt, Status>;
    /// Returns the reply payload for the caller.
    async fn secure_aggregation(&self, caller: Caller, message: SecAggMessage) -> Result<Vec<u8>, Status>;
    async fn report_metrics(&self, caller: Caller, report: MetricsReport) -> Result<(), Status>;
    /// A site's answer to a step of a study analysis.
    async fn report_analysis(&self, caller: Caller, report: AnalysisReport) -> Result<(), Status>;

    /// A connection from `peer` failed its TLS handshake for `reason` (already logged); no call ran.
    fn handshake_refused(&self, peer: std::net::SocketAddr, reason: &'static str) {
        let _ = (peer, reason);
    }

    /// A call claiming `site` spoke another protocol revision and was refused before it reached the
    /// handler (already logged; the caller got `Unimplemented`).
    fn revision_refused(&self, site: &str, revision: u32) {
        let _ = (site, revision);
    }
}

/// What can stop the server from starting or serving.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot read {}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{}: {problem}", path.display())]
    Pem { path: PathBuf, problem: String },
    #[error("TLS configuration: {0}")]
    Tls(#[source] rustls::Error),
    #[error("the gRPC server stopped: {0}")]
    Transport(#[source] tonic::transport::Error),
}

/// Longest a TLS handshake may take before the connection is dropped (a peer that opens connections
/// and sends nothing holds no server resource for longer).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(20);

/// Serves `handler` on `listener` with mutual TLS 1.3 (`tls`: the server's certificate and key, and
/// the study CA that must have signed every client) until `shutdown` resolves. Each connection's
/// handshake runs on its own task; one that fails (no client certificate, another CA, an expired one,
/// an older TLS version, silence) is logged with the peer's address and reason and reported to
/// [`FederationHandler::handshake_refused`].
///
/// # Errors
/// [`ServeError`]: unreadable TLS files, transport failures.
pub async fn serve(
    handler: Arc<impl FederationHandler>,
    listener: TcpListener,
    tls: &TlsFiles,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    fedlnm_shared::tls::install_crypto_provider();
    let acceptor = tls_acceptor(tls)?;
    let (connections, incoming) = tokio::sync::mpsc::channel(64);
    // The accept loop is part of this future (not a task of its own), so that the listener goes when
    // `serve` is dropped: a restarted server can bind the same port at once.
    let accepting = {
        let handler = handler.clone();
        async move {
            loop {
                let (tcp, peer) = match listener.accept().await {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        tracing::warn!(%error, "cannot accept a connection");
                        continue;
                    }
                };
                let (acceptor, connections, handler) =
                    (acceptor.clone(), connections.clone(), handler.clone());
                tokio::spawn(async move {
                    let reason = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => {
                            let _ = connections.send(Ok::<_, std::io::Error>(stream)).await;
                            return;
                        }
                        Ok(Err(error)) => {
                            let reason = handshake_refusal(&error);
                            tracing::warn!(%peer, reason, %error, "refused: TLS handshake");
                            reason
                        }
                        Err(_) => {
                            tracing::warn!(%peer, seconds = HANDSHAKE_TIMEOUT.as_secs(), "refused: TLS handshake timed out");
                            "tls-handshake-timeout"
                        }
                    };
                    handler.handshake_refused(peer, reason);
                });
            }
        }
    };
    // A stop drains open calls, but never waits on a peer that no longer answers (a stalled link
    // cannot acknowledge the end of its connection): after `DRAIN_LIMIT` the rest are closed.
    let (stopping, stopped) = tokio::sync::oneshot::channel::<()>();
    let shutdown = async move {
        shutdown.await;
        let _ = stopping.send(());
    };
    let drain_limit = async move {
        if stopped.await.is_ok() {
            tokio::time::sleep(DRAIN_LIMIT).await;
            tracing::warn!(
                seconds = DRAIN_LIMIT.as_secs(),
                "connections still open after the stop was asked; closing them"
            );
        } else {
            std::future::pending::<()>().await;
        }
    };
    let serving = Server::builder()
        .add_service(
            FederationServer::new(Adapter { handler })
                .max_decoding_message_size(crate::MAX_MESSAGE_BYTES)
                .max_encoding_message_size(crate::MAX_MESSAGE_BYTES),
        )
        .serve_with_incoming_shutdown(tokio_stream::wrappers::ReceiverStream::new(incoming), shutdown);
    tokio::select! {
        result = serving => result.map_err(ServeError::Transport),
        () = accepting => Ok(()),
        () = drain_limit => Ok(()),
    }
}

/// How long a stop waits for open calls to end before it closes their connections.
pub const DRAIN_LIMIT: Duration = Duration::from_secs(10);

/// The rustls acceptor of the study: TLS 1.3 only (the process's provider), a client certificate from
/// the study CA required, HTTP/2 by ALPN.
fn tls_acceptor(tls: &TlsFiles) -> Result<tokio_rustls::TlsAcceptor, ServeError> {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let read = |path: &Path| {
        std::fs::read(path).map_err(|source| ServeError::Read {
            path: path.to_path_buf(),
            source,
        })
    };
    let pem = |path: &Path| {
        let path = path.to_path_buf();
        move |error: rustls::pki_types::pem::Error| ServeError::Pem {
            path,
            problem: error.to_string(),
        }
    };
    let certificates = |path: &Path| -> Result<Vec<CertificateDer<'static>>, ServeError> {
        CertificateDer::pem_slice_iter(&read(path)?)
            .collect::<Result<Vec<_>, _>>()
            .map_err(pem(path))
    };
    let mut roots = rustls::RootCertStore::empty();
    roots.add_parsable_certificates(certificates(&tls.ca)?);
    let verifier = rustls::server::WebPkiClientVerifier::builder(Arc::new(roots))
        .build()
        .map_err(|e| ServeError::Tls(rustls::Error::General(e.to_string())))?;
    let key = PrivateKeyDer::from_pem_slice(&read(&tls.key)?).map_err(pem(&tls.key))?;
    let mut config = rustls::ServerConfig::builder()
        .with_client_cert_verifier(verifier)
        .with_single_cert(certificates(&tls.certificate)?, key)
        .map_err(ServeError::Tls)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// A short label for a refused handshake (`/metrics`), read from rustls's error.
fn handshake_refusal(error: &std::io::Error) -> &'static str {
    use rustls::{CertificateError, Error as Tls};
    match error.get_ref().and_then(|inner| inner.downcast_ref::<Tls>()) {
        Some(Tls::NoCertificatesPresented) => "tls-no-client-certificate",
        Some(Tls::InvalidCertificate(CertificateError::UnknownIssuer | CertificateError::BadSignature)) => {
            "tls-client-certificate-unknown-issuer"
        }
        Some(Tls::InvalidCertificate(
            CertificateError::Expired | CertificateError::ExpiredContext { .. },
        )) => "tls-client-certificate-expired",
        // Issued after "now" by this machine's clock: one of the two clocks is wrong.
        Some(Tls::InvalidCertificate(
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. },
        )) => "tls-client-certificate-not-yet-valid",
        Some(Tls::InvalidCertificate(_)) => "tls-client-certificate-invalid",
        Some(Tls::PeerIncompatible(_)) => "tls-incompatible-peer",
        _ => "tls-handshake",
    }
}

/// Binds a TCP listener (for the gRPC service or `/metrics`).
///
/// # Errors
/// The address is malformed, taken, or not ours.
pub async fn bind(address: &str) -> std::io::Result<TcpListener> {
    TcpListener::bind(address).await
}

/// Turns generated calls into typed handler calls.
struct Adapter<H> {
    handler: Arc<H>,
}

/// The site id of the client certificate of a request, if any.
fn caller<T>(request: &Request<T>) -> Caller {
    let certificates = request.peer_certs();
    let leaf = certificates
        .as_ref()
        .and_then(|certificates| certificates.first());
    let certificate = leaf.and_then(|leaf| match fedlnm_shared::tls::site_certificate(leaf.as_ref()) {
        Ok(certificate) => Some(certificate),
        Err(error) => {
            tracing::warn!(%error, "client certificate without a site identity");
            None
        }
    });
    let certificate_not_after = certificate.as_ref().map(|c| c.not_after);
    let certificate_site = certificate.map(|c| c.site);
    Caller {
        certificate_site,
        certificate_not_after,
    }
}

impl<H: FederationHandler> Adapter<H> {
    /// Refuses a node of another protocol revision ([`crate::PROTOCOL_REVISION`]) before its request
    /// reaches the handler: `Unimplemented`, which the node treats as fatal; the handler is told
    /// ([`FederationHandler::revision_refused`]).
    fn same_revision(&self, site: &str, revision: u32, node_version: &str) -> Result<(), Status> {
        if revision == crate::PROTOCOL_REVISION {
            return Ok(());
        }
        self.handler.revision_refused(site, revision);
        tracing::warn!(
            site,
            revision,
            node_version,
            "refused a node of another protocol revision"
        );
        Err(Status::unimplemented(crate::revision_mismatch(
            &format!("the node of site '{site}'"),
            revision,
            node_version,
            "this aggregator",
        )))
    }
}

type ModelStream = Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::ModelChunk, Status>> + Send>>;

#[tonic::async_trait]
impl<H: FederationHandler> Federation for Adapter<H> {
    async fn check_in(
        &self,
        request: Request<pb::CheckInRequest>,
    ) -> Result<Response<pb::CheckInResponse>, Status> {
        let caller = caller(&request);
        let request = request.into_inner();
        self.same_revision(&request.site, request.protocol_revision, &request.node_version)?;
        let check_in = CheckIn {
            claim: Claim::new(request.site, request.study),
            node_version: request.node_version,
        };
        let reply = self.handler.check_in(caller, check_in).await?;
        Ok(Response::new(reply.into()))
    }

    async fn get_task(&self, request: Request<pb::TaskRequest>) -> Result<Response<pb::Task>, Status> {
        let caller = caller(&request);
        let request = request.into_inner();
        self.same_revision(&request.site, request.protocol_revision, &request.node_version)?;
        let claim = Claim::new(request.site, request.study);
        let task = self.handler.get_task(caller, claim).await?;
        Ok(Response::new(task.into()))
    }

    type DownloadModelStream = ModelStream;

    async fn download_model(
        &self,
        request: Request<pb::ModelRequest>,
    ) -> Result<Response<Self::DownloadModelStream>, Status> {
        let caller = caller(&request);
        let request = request.into_inner();
        let claim = Claim::new(request.site, request.study);
        let download = self
            .handler
            .download_model(caller, claim, request.version)
            .await?;
        let total_size = download.bytes().len() as u64;
        // Each chunk is copied out of the shared bytes only when the stream is polled for it.
        let chunks = (0..transfer::chunk_count(download.bytes().len())).map(move |index| {
            let (offset, data) = transfer::chunk(download.bytes(), index);
            Ok(pb::ModelChunk {
                offset,
                data: data.to_vec(),
                total_size,
                digest: download.digest().to_owned(),
            })
        });
        Ok(Response::new(Box::pin(tokio_stream::iter(chunks))))
    }

    async fn upload_update(
        &self,
        request: Request<Streaming<pb::UpdateChunk>>,
    ) -> Result<Response<pb::UploadReceipt>, Status> {
        let caller = caller(&request);
        let mut stream = request.into_inner();
        let first = match tokio::time::timeout(CHUNK_IDLE, stream.message()).await {
            Ok(first) => first?.ok_or_else(|| Status::invalid_argument("empty upload"))?,
            Err(_) => {
                return Err(TransferError::Idle {
                    what: "update",
                    idle: CHUNK_IDLE,
                }
                .status());
            }
        };
        let header = first
            .header
            .ok_or_else(|| Status::invalid_argument("the first chunk of an upload must carry its header"))?;
        let header = UpdateHeader::try_from(header).map_err(|e| e.status())?;
        let upload = IncomingUpload {
            header,
            first: first.data,
            stream,
        };
        let receipt = self.handler.upload_update(caller, upload).await?;
        Ok(Response::new(pb::UploadReceipt {
            round: receipt.round,
            bytes: receipt.bytes,
        }))
    }

    async fn secure_aggregation(
        &self,
        request: Request<pb::SecAggRequest>,
    ) -> Result<Response<pb::SecAggReply>, Status> {
        let caller = caller(&request);
        let message = SecAggMessage::try_from(request.into_inner()).map_err(|e| e.status())?;
        let payload = self.handler.secure_aggregation(caller, message).await?;
        Ok(Response::new(pb::SecAggReply { payload }))
    }

    async fn report_metrics(
        &self,
        request: Request<pb::MetricsReport>,
    ) -> Result<Response<pb::MetricsReceipt>, Status> {
        let caller = caller(&request);
        let report = MetricsReport::from(request.into_inner());
        let round = report.round;
        self.handler.report_metrics(caller, report).await?;
        Ok(Response::new(pb::MetricsReceipt { round }))
    }

    async fn report_analysis(
        &self,
        request: Request<pb::AnalysisReport>,
    ) -> Result<Response<pb::AnalysisReceipt>, Status> {
        let caller = caller(&request);
        let report = AnalysisReport::from(request.into_inner());
        let step = report.step;
        self.handler.report_analysis(caller, report).await?;
        Ok(Response::new(pb::AnalysisReceipt { step }))
    }
}

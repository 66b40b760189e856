//! The node's connection to the aggregator: gRPC over mutual TLS 1.3, always dialled out from the
//! hospital (the node never listens), with typed calls. Downloads and uploads go through the one
//! chunked transfer ([`crate::transfer`]). Errors say what a hospital IT person can check.

use crate::generated as pb;
use crate::generated::federation_client::FederationClient;
use crate::messages::{
    AnalysisReport, CheckInReply, Claim, MetricsReport, ModelRef, ProtocolError, SecAggMessage, SecAggStage,
    Task, UpdateFormat, UpdateHeader, UploadReceipt,
};
use crate::transfer::{self, Assembler, Digest, TransferError};
use fedlnm_shared::analysis::AnalysisAnswer;
use fedlnm_shared::config::NodeConfig;
use fedlnm_shared::federation::SiteRoundMetrics;
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
    #[error("cannot connect to the aggregator at {url}: {hint}")]
    Connect {
        url: String,
        /// What to check, read from the failure (which certificate, the address, the firewall).
        hint: &'static str,
        source: tonic::transport::Error,
    },
    #[error("the aggregator refused the request ({code:?}): {message}")]
    Refused { code: tonic::Code, message: String },
    #[error("{0}")]
    Revision(String),
    #[error("the aggregator sent a message this node cannot read: {0}")]
    Protocol(#[from] ProtocolError),
    #[error(transparent)]
    Transfer(#[from] TransferError),
}

impl From<tonic::Status> for ClientError {
    fn from(status: tonic::Status) -> Self {
        // TLS 1.3 checks the client certificate after the client's first flight: a refused site
        // certificate surfaces at the first call, as a transport status.
        let message = match tls_hint(&status) {
            Some(hint) => format!("{hint} ({})", status.message()),
            None => status.message().to_owned(),
        };
        Self::Refused {
            code: status.code(),
            message,
        }
    }
}

/// What a hospital should check, read from a connection failure's causes.
fn connect_hint(error: &(dyn std::error::Error + 'static)) -> &'static str {
    if let Some(hint) = tls_hint(error) {
        return hint;
    }
    let io_kind =
        causes(error).find_map(|cause| cause.downcast_ref::<std::io::Error>().map(std::io::Error::kind));
    match io_kind {
        Some(std::io::ErrorKind::ConnectionRefused) => {
            "nothing accepts connections at that address: check that the aggregator is running and that \
             `aggregator` in node.toml names its host and port"
        }
        Some(std::io::ErrorKind::TimedOut) => {
            "no answer: check that the firewall allows outbound connections to the aggregator's port"
        }
        _ => {
            "check that the aggregator is running, that outbound connections to its port are allowed by \
             the firewall, and that site.pem, site.key and ca.pem come from this study's startup kit and \
             have not expired"
        }
    }
}

/// A certificate problem among the causes of `error`, said as what to check. rustls's error reaches
/// us either as itself or, through hyper, only as its text inside an I/O error ("received fatal alert:
/// UnknownCA", "invalid peer certificate: UnknownIssuer"): both are read.
fn tls_hint(error: &(dyn std::error::Error + 'static)) -> Option<&'static str> {
    causes(error).find_map(|cause| {
        if let Some(tls) = cause.downcast_ref::<rustls::Error>() {
            return tls_error_hint(&tls.to_string());
        }
        let inner = cause.downcast_ref::<std::io::Error>()?.get_ref()?;
        tls_error_hint(&inner.to_string())
    })
}

/// The hint for rustls's description of a failure.
fn tls_error_hint(text: &str) -> Option<&'static str> {
    if let Some(alert) = text.strip_prefix("received fatal alert: ") {
        return match alert.trim() {
            "UnknownCA"
            | "BadCertificate"
            | "CertificateExpired"
            | "CertificateRevoked"
            | "CertificateUnknown"
            | "CertificateRequired"
            | "AccessDenied"
            | "UnsupportedCertificate" => Some(
                "the aggregator refused this site's certificate: site.pem and site.key must come from this \
                 study's startup kit, must not have expired, and the aggregator's clock must be right",
            ),
            "ProtocolVersion" => {
                Some("the aggregator and this node share no TLS version (TLS 1.3 is required)")
            }
            _ => None,
        };
    }
    let problem = text.strip_prefix("invalid peer certificate: ")?.trim();
    Some(
        if problem.starts_with("UnknownIssuer") || problem.starts_with("BadSignature") {
            "the aggregator's certificate is not signed by this kit's CA (ca.pem): is this startup kit from \
         this study?"
        } else if problem.starts_with("NotValidYet") || problem.contains("not valid yet") {
            "the aggregator's certificate is not valid yet by this machine's clock: this machine's clock is \
         probably behind (check its time synchronisation)"
        } else if problem.starts_with("Expired") || problem.contains("expired") {
            "the aggregator's certificate has expired by this machine's clock: ask the study's central team \
         to renew it, or check this machine's clock"
        } else if problem.starts_with("NotValidForName") || problem.contains("not valid for name") {
            "the aggregator's certificate does not name the host this node dials: check `aggregator` (and \
         `aggregator_name`) in node.toml against the study's provisioning"
        } else {
            "the aggregator's certificate is not valid for this study"
        },
    )
}

/// `error` and its sources, in order.
fn causes<'e>(
    error: &'e (dyn std::error::Error + 'static),
) -> impl Iterator<Item = &'e (dyn std::error::Error + 'static)> {
    std::iter::successors(Some(error), |cause| cause.source())
}

impl ClientError {
    /// A refusal that retrying cannot fix (wrong study, unknown site, a message the aggregator calls
    /// invalid, another protocol revision): the node stops and says why.
    #[must_use]
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            Self::Refused {
                code: tonic::Code::Unauthenticated
                    | tonic::Code::PermissionDenied
                    | tonic::Code::InvalidArgument
                    | tonic::Code::Unimplemented,
                ..
            } | Self::Read { .. }
                | Self::Address { .. }
                | Self::Revision(_)
        )
    }

    /// The round went on without this site (a stage closed, the round was abandoned or restarted):
    /// not an error, the node takes its next task.
    #[must_use]
    pub fn is_left_out(&self) -> bool {
        matches!(
            self,
            Self::Refused {
                code: tonic::Code::FailedPrecondition | tonic::Code::Aborted,
                ..
            }
        )
    }
}

/// A mutual-TLS connection of one site to the aggregator.
#[derive(Debug, Clone)]
pub struct Client {
    inner: FederationClient<Channel>,
    claim: Claim,
}

impl Client {
    /// Opens a mutual-TLS channel to the aggregator named in `config`, speaking for its site.
    ///
    /// # Errors
    /// Unreadable TLS files, a bad address, or no connection (named, with what to check).
    pub async fn connect(config: &NodeConfig) -> Result<Self, ClientError> {
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
        let channel = endpoint.connect().await.map_err(|source| ClientError::Connect {
            url,
            hint: connect_hint(&source),
            source,
        })?;
        Ok(Self {
            inner: FederationClient::new(channel)
                .max_decoding_message_size(crate::MAX_MESSAGE_BYTES)
                .max_encoding_message_size(crate::MAX_MESSAGE_BYTES),
            claim: Claim {
                site: config.site.clone(),
                study: config.study.clone(),
            },
        })
    }

    /// The generated client underneath, for tests that must send hand-made (hostile) messages.
    #[must_use]
    pub fn into_generated(self) -> FederationClient<Channel> {
        self.inner
    }

    /// Proves the network path, mutual TLS and this site's identity; returns the site's role.
    ///
    /// # Errors
    /// A refusal or an unreadable answer.
    pub async fn check_in(&mut self) -> Result<CheckInReply, ClientError> {
        let reply = self
            .inner
            .check_in(pb::CheckInRequest {
                site: self.claim.site.clone(),
                study: self.claim.study.clone(),
                node_version: env!("CARGO_PKG_VERSION").to_owned(),
                protocol_revision: crate::PROTOCOL_REVISION,
            })
            .await?
            .into_inner();
        // An aggregator of another release may not check (one from before revisions were numbered
        // cannot): the node does too.
        if reply.protocol_revision != crate::PROTOCOL_REVISION {
            return Err(ClientError::Revision(crate::revision_mismatch(
                "the aggregator",
                reply.protocol_revision,
                &reply.aggregator_version,
                "this node",
            )));
        }
        Ok(CheckInReply::try_from(reply)?)
    }

    /// The site's next task (a long poll: the aggregator answers when it has one, or with `Wait`).
    ///
    /// # Errors
    /// A refusal or an unreadable task.
    pub async fn get_task(&mut self) -> Result<Task, ClientError> {
        let task = self
            .inner
            .get_task(pb::TaskRequest {
                site: self.claim.site.clone(),
                study: self.claim.study.clone(),
                node_version: env!("CARGO_PKG_VERSION").to_owned(),
                protocol_revision: crate::PROTOCOL_REVISION,
            })
            .await?
            .into_inner();
        Ok(Task::try_from(task)?)
    }

    /// Downloads the safetensors bytes of `model`, checked against its announced size and digest.
    ///
    /// # Errors
    /// A refusal, or a transfer out of order, larger than announced or corrupted.
    pub async fn download_model(&mut self, model: &ModelRef) -> Result<Vec<u8>, ClientError> {
        let mut stream = self
            .inner
            .download_model(pb::ModelRequest {
                site: self.claim.site.clone(),
                study: self.claim.study.clone(),
                version: model.version,
            })
            .await?
            .into_inner();
        let mut assembler = Assembler::new(
            "model download",
            model.size_bytes,
            model.size_bytes,
            Digest::Sha256,
        )?;
        while let Some(chunk) = stream.message().await? {
            assembler.push(Some(chunk.offset), &chunk.data)?;
        }
        Ok(assembler.finish(&model.digest)?)
    }

    /// Uploads an update for `round` in chunks, the header first.
    ///
    /// # Errors
    /// A refusal (the status says what the aggregator did not accept).
    pub async fn upload_update(
        &mut self,
        round: u64,
        format: UpdateFormat,
        n_samples: u64,
        payload: &[u8],
    ) -> Result<UploadReceipt, ClientError> {
        let header = UpdateHeader {
            claim: self.claim.clone(),
            round,
            format,
            n_samples: if format == UpdateFormat::SafetensorsDelta {
                n_samples
            } else {
                0
            },
            total_size: payload.len() as u64,
            digest: transfer::upload_checksum(payload),
        };
        let mut header = Some(pb::UpdateHeader::from(header));
        let chunks: Vec<pb::UpdateChunk> = transfer::chunks(payload)
            .map(|(_, data)| pb::UpdateChunk {
                header: header.take(),
                data: data.to_vec(),
            })
            .collect();
        let receipt = self
            .inner
            .upload_update(tokio_stream::iter(chunks))
            .await?
            .into_inner();
        Ok(UploadReceipt {
            round: receipt.round,
            bytes: receipt.bytes,
        })
    }

    /// Sends one secure-aggregation message and returns the aggregator's reply for this site (which
    /// comes when the stage closes).
    ///
    /// # Errors
    /// A refusal: a stage that closed without this site is [`ClientError::is_left_out`].
    pub async fn secure_aggregation(
        &mut self,
        round: u64,
        stage: SecAggStage,
        payload: Vec<u8>,
    ) -> Result<Vec<u8>, ClientError> {
        let message = SecAggMessage {
            claim: self.claim.clone(),
            round,
            stage,
            payload,
        };
        let reply = self
            .inner
            .secure_aggregation(pb::SecAggRequest::from(message))
            .await?
            .into_inner();
        Ok(reply.payload)
    }

    /// Reports the site's validation metrics of the model `model_digest` of `round`, with its masked
    /// input of its pool's secure sum of statistics (empty outside a pool).
    ///
    /// # Errors
    /// A refusal.
    pub async fn report_metrics(
        &mut self,
        round: u64,
        model_digest: &str,
        metrics: &SiteRoundMetrics,
        masked_statistics: Vec<u8>,
    ) -> Result<(), ClientError> {
        let report = MetricsReport {
            claim: self.claim.clone(),
            round,
            model_digest: model_digest.to_owned(),
            metrics: crate::messages::Encoded::new(metrics, "validation metrics"),
            masked_statistics,
        };
        self.inner.report_metrics(pb::MetricsReport::from(report)).await?;
        Ok(())
    }

    /// Answers step `step` of the study analysis `analysis`.
    ///
    /// # Errors
    /// A refusal (for example an answer to a step that is no longer open).
    pub async fn report_analysis(
        &mut self,
        analysis: &str,
        step: u32,
        answer: &AnalysisAnswer,
    ) -> Result<(), ClientError> {
        let report = AnalysisReport {
            claim: self.claim.clone(),
            analysis: analysis.to_owned(),
            step,
            answer: crate::messages::Encoded::new(answer, "analysis answer"),
        };
        self.inner
            .report_analysis(pb::AnalysisReport::from(report))
            .await?;
        Ok(())
    }
}

/// Connects with `config` and checks in (`fedlnm-node check-in`).
///
/// # Errors
/// As [`Client::connect`] and [`Client::check_in`].
pub async fn check_in(config: &NodeConfig) -> Result<CheckInReply, ClientError> {
    Client::connect(config).await?.check_in().await
}

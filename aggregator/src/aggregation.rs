//! How a round's training updates are combined: a small interface ([`Aggregation`]) that the round
//! logic drives without knowing whether updates arrive in the clear ([`PlainAggregation`]) or masked
//! ([`crate::secure::SecureAggregation`], the default). Both produce the same thing: the FedAvg delta
//! Σ n_k Δ_k / Σ n_k over the sites that made it, which the round logic checks and applies.
//!
//! Receiving is cheap and happens under the study lock; the expensive end of a round (averaging,
//! unmasking) is handed out as a [`Finisher`] that the round logic runs on a blocking thread.

use fedlnm_protocol::{RoundAggregation, SecAggStage, UpdateFormat};
use fedlnm_shared::federation::AggregationKind;
use fedlnm_shared::federation::fedavg::{FedAvg, HeldBytes};
use fedlnm_shared::weights::NamedTensors;
use fedlnm_shared::weights::scan::ScanReport;
use std::collections::BTreeSet;
use std::path::Path;
use std::time::Instant;

/// A refused update or protocol message. The code tells the node whether retrying can help.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AggregationError {
    /// The message is malformed or does not fit the round (the node's fault).
    #[error("{0}")]
    Invalid(String),
    /// The message comes at the wrong time (a closed stage, a second upload).
    #[error("{0}")]
    WrongTime(String),
}

/// A complete upload, as far as the aggregation cares. The payload is shared, not copied: a plain
/// aggregation holds it until it is summed (see [`FedAvg`]), and with it whatever the receiver tied to
/// it (the server's permit that counts it against `rounds.max_concurrent_uploads`).
#[derive(Clone)]
pub struct Upload<'a> {
    pub site: &'a str,
    pub format: UpdateFormat,
    pub n_samples: u64,
    pub payload: HeldBytes,
    /// A scan of the payload's values made as it arrived (plain updates), which spares reading them
    /// again to check them.
    pub scan: Option<ScanReport>,
}

impl Upload<'_> {
    /// The payload's bytes.
    #[must_use]
    pub fn bytes(&self) -> &[u8] {
        (*self.payload).as_ref()
    }
}

/// The combined update of a round.
#[derive(Debug, Clone, PartialEq)]
pub struct RoundAggregate {
    /// Σ n_k Δ_k / Σ n_k over the aggregated tensors (FedBN tensors absent).
    pub average_delta: NamedTensors,
    pub total_samples: u64,
    /// Sites in the sum, and invited sites that are not.
    pub contributors: Vec<String>,
    pub dropped: Vec<String>,
}

/// Why the end of a round produced no new model (the round is abandoned, nothing committed).
#[derive(Debug, thiserror::Error)]
pub enum FinishError {
    #[error("the average of the updates: {0}")]
    Average(#[from] fedlnm_shared::federation::fedavg::FedAvgError),
    #[error("unmasking: {0}")]
    Unmasking(#[from] fedlnm_shared::secagg::SecAggError),
    #[error("the new model: {0}")]
    Model(#[from] fedlnm_shared::checkpoint::CheckpointError),
}

/// The expensive end of a round (averaging, or unmasking and decoding), run off the study lock: the
/// aggregate, or why the round cannot complete.
pub type Finisher = Box<dyn FnOnce() -> Result<RoundAggregate, FinishError> + Send>;

/// Where an aggregation stands after [`Aggregation::advance`].
pub enum Poll {
    Pending,
    /// Every update the round waits for is in (or its deadline passed): run the finisher. Returned
    /// once; the aggregation takes no message after it.
    Ready(Finisher),
    /// The round cannot complete (too few sites, a protocol failure): nothing is committed.
    Failed(String),
}

/// One round's aggregation. All calls come from the round logic under its lock, with the caller's
/// identity already authenticated (mTLS) and authorized (a training site of the study).
pub trait Aggregation: Send {
    fn kind(&self) -> AggregationKind;

    /// What `site`'s training task says about this aggregation; `None` when the site can no longer
    /// join this round (for instance the secure key exchange closed without it).
    fn task_fields(&self, site: &str) -> Option<RoundAggregation>;

    /// The largest upload payload accepted (checked before reading it).
    fn max_upload_bytes(&self) -> u64;

    /// A complete, digest-checked upload. A refused upload changes nothing.
    ///
    /// # Errors
    /// [`AggregationError`] naming what is wrong.
    fn accept_upload(&mut self, upload: &Upload<'_>) -> Result<(), AggregationError>;

    /// A protocol message of stage `stage` (secure aggregation only).
    ///
    /// # Errors
    /// [`AggregationError`]; always for plain aggregation.
    fn accept_message(
        &mut self,
        site: &str,
        stage: SecAggStage,
        payload: &[u8],
    ) -> Result<(), AggregationError>;

    /// The reply to `site` for `stage` once that stage has closed; `None` while it is open.
    fn reply(&self, site: &str, stage: SecAggStage) -> Option<Result<Vec<u8>, AggregationError>>;

    /// Closes the stages that are complete or past their deadline and reports where the round stands.
    fn advance(&mut self, now: Instant) -> Poll;

    /// The next instant at which [`Self::advance`] may close a stage on time alone.
    fn next_deadline(&self) -> Option<Instant>;

    /// A counter that grows whenever a stage closes, so that the round logic can wake the sites
    /// waiting for that stage's replies.
    fn closed_stages(&self) -> u64;

    /// Whether `site` has uploaded its update in this round.
    fn has_uploaded(&self, site: &str) -> bool;

    /// `site`'s node started afresh (it checked in again) and lost whatever it held of this round:
    /// stop waiting for it and do not offer it the round again. Returns whether that changed anything.
    fn forget(&mut self, site: &str) -> bool;
}

/// FedAvg of updates sent in the clear (safetensors of Δ_k plus n_k): the aggregator sees each
/// site's delta. For studies that opt out of secure aggregation, and the baseline it is compared with.
pub struct PlainAggregation {
    /// Taken by the finisher when the round closes.
    fedavg: Option<FedAvg>,
    /// Who uploaded, kept when the accumulator is handed to the finisher.
    contributors: Vec<String>,
    invited: BTreeSet<String>,
    min_sites: usize,
    deadline: Instant,
    max_bytes: u64,
    closed: bool,
}

impl PlainAggregation {
    /// Waits for `invited` sites until `deadline`; needs `min_sites` updates over the tensors of
    /// `global` for which `aggregated(name)` holds.
    #[must_use]
    pub fn new(
        global: &NamedTensors,
        aggregated: impl Fn(&str) -> bool,
        invited: impl IntoIterator<Item = String>,
        min_sites: usize,
        deadline: Instant,
    ) -> Self {
        let fedavg = FedAvg::new(global, aggregated);
        // The exact size of a delta file plus generous room for its header and metadata.
        let values = fedavg
            .layout()
            .tensors
            .iter()
            .map(|t| t.shape.iter().product::<usize>())
            .sum::<usize>();
        let header: usize = fedavg.layout().tensors.iter().map(|t| t.name.len() + 96).sum();
        Self {
            fedavg: Some(fedavg),
            contributors: Vec::new(),
            invited: invited.into_iter().collect(),
            min_sites,
            deadline,
            max_bytes: (4 * values + header + 64 * 1024) as u64,
            closed: false,
        }
    }
}

impl PlainAggregation {
    /// Limits the threads that accumulation and averaging use (default: the machine's available
    /// parallelism, which suits an aggregator alone on its machine). The result does not depend on it.
    pub fn set_threads(&mut self, threads: usize) {
        if let Some(fedavg) = &mut self.fedavg {
            fedavg.set_threads(threads);
        }
    }

    /// Holds at most `max_held` complete uploads before summing them (default: the whole round, one
    /// pass over all uploads at its end); the study passes `rounds.max_concurrent_uploads`, the
    /// number of updates its memory is sized for. The result does not depend on it.
    pub fn set_max_held(&mut self, max_held: usize) {
        if let Some(fedavg) = &mut self.fedavg {
            fedavg.set_max_held(max_held);
        }
    }
}

impl Aggregation for PlainAggregation {
    fn kind(&self) -> AggregationKind {
        AggregationKind::Plain
    }

    fn task_fields(&self, _site: &str) -> Option<RoundAggregation> {
        (!self.closed).then_some(RoundAggregation::Plain)
    }

    fn max_upload_bytes(&self) -> u64 {
        self.max_bytes
    }

    fn accept_upload(&mut self, upload: &Upload<'_>) -> Result<(), AggregationError> {
        let Some(fedavg) = self.fedavg.as_mut().filter(|_| !self.closed) else {
            return Err(AggregationError::WrongTime(
                "the round's uploads are closed".to_owned(),
            ));
        };
        if upload.format != UpdateFormat::SafetensorsDelta {
            return Err(AggregationError::Invalid(format!(
                "this round takes plain updates (safetensors deltas), not {:?}",
                upload.format
            )));
        }
        let origin = format!("update from site {}", upload.site);
        // Read in place: the delta's values are decoded where they are checked and summed, never
        // copied; the upload is held until it is summed.
        fedavg
            .hold_f32_bytes(
                upload.site,
                std::sync::Arc::clone(&upload.payload),
                upload.n_samples,
                Path::new(&origin),
                upload.scan.as_ref(),
            )
            .map_err(|e| AggregationError::Invalid(e.to_string()))?;
        self.contributors.push(upload.site.to_owned());
        Ok(())
    }

    fn accept_message(
        &mut self,
        site: &str,
        stage: SecAggStage,
        _payload: &[u8],
    ) -> Result<(), AggregationError> {
        Err(AggregationError::Invalid(format!(
            "site {site} sent a secure-aggregation message ({stage}) but this round uses plain aggregation"
        )))
    }

    fn reply(&self, _site: &str, stage: SecAggStage) -> Option<Result<Vec<u8>, AggregationError>> {
        Some(Err(AggregationError::Invalid(format!(
            "no '{stage}' stage: this round uses plain aggregation"
        ))))
    }

    fn advance(&mut self, now: Instant) -> Poll {
        if self.closed {
            return Poll::Pending;
        }
        let all_in = self.contributors.len() == self.invited.len();
        if !all_in && now < self.deadline {
            return Poll::Pending;
        }
        self.closed = true;
        let contributors = self.contributors.clone();
        if contributors.len() < self.min_sites {
            return Poll::Failed(format!(
                "{} of the {} required training sites uploaded before the deadline",
                contributors.len(),
                self.min_sites
            ));
        }
        let Some(fedavg) = self.fedavg.take() else {
            return Poll::Failed("the round's accumulator is gone".to_owned());
        };
        let dropped = self
            .invited
            .iter()
            .filter(|s| !contributors.contains(s))
            .cloned()
            .collect();
        Poll::Ready(Box::new(move || {
            let average_delta = fedavg.average()?;
            Ok(RoundAggregate {
                average_delta,
                total_samples: fedavg.total_samples(),
                contributors,
                dropped,
            })
        }))
    }

    fn next_deadline(&self) -> Option<Instant> {
        (!self.closed).then_some(self.deadline)
    }

    fn has_uploaded(&self, site: &str) -> bool {
        self.contributors.iter().any(|c| c == site)
    }

    fn closed_stages(&self) -> u64 {
        u64::from(self.closed)
    }

    fn forget(&mut self, _site: &str) -> bool {
        // A plain update carries no secret: a restarted site trains again and uploads, once.
        false
    }
}

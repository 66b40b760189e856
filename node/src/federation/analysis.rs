//! The node's side of the study's analyses: each step is answered from the site's manifest (its
//! labelled patients; no image is read) under the site's own `[analysis]` limits. At step 0 the site
//! joins with its size or refuses with the reason. At a Newton step it computes its sums, encodes
//! them as ring vectors ([`analysis::ring::encode`]), joins the step's secure sum, masks them and
//! sends them with its answer, then takes part in the unmasking: its sums never leave the site
//! unmasked.

use super::Node;
use super::secure::is_left_out;
use anyhow::Context as _;
use fedlnm_protocol::{AnalysisTask, Client, ClientError, payload};
use fedlnm_shared::analysis::{self, AnalysisAnswer, AnalysisRequest, SecureStep, SiteStep};
use fedlnm_shared::data;
use fedlnm_shared::secagg::SecAggClient;

impl Node {
    /// Answers a step of a study analysis. An answer the aggregator no longer takes (the step
    /// closed), or a secure sum that went on without this site, is logged: the aggregator then
    /// starts the analysis again without the site.
    pub(super) async fn answer_analysis(
        &mut self,
        client: &mut Client,
        task: &AnalysisTask,
    ) -> anyhow::Result<()> {
        if self.records.is_none() {
            let dir = self.config.data.clone();
            let read = tokio::task::spawn_blocking(move || data::read_manifest(&dir))
                .await
                .context("reading the manifest stopped")??;
            self.records = Some(read.records.into_iter().map(|(_, record)| record).collect());
        }
        let request = &task.request;
        let records = self.records.as_deref().unwrap_or_default();
        let step = analysis::site_step(records, request, self.config.analysis);
        let (answer, mut joined) = match (step, &request.sum) {
            (Err(reason), _) => (AnalysisAnswer::Refused { reason }, None),
            (Ok(step), None) => (
                AnalysisAnswer::Joined {
                    n: step.n,
                    events: step.events,
                },
                None,
            ),
            (Ok(step), Some(sum)) => match self.masked_step(client, request, sum, &step).await {
                Ok(Ok((secagg, input))) => {
                    let answer = AnalysisAnswer::Masked {
                        n: step.n,
                        events: step.events,
                        input,
                    };
                    (answer, Some((secagg, sum.config.round)))
                }
                Ok(Err(reason)) => (AnalysisAnswer::Refused { reason }, None),
                Err(error) if is_left_out(&error) => {
                    tracing::warn!(site = self.config.site, analysis = task.analysis, step = task.step, reason = %error, "left out of the analysis step's secure sum");
                    return Ok(());
                }
                // The connection: the node reconnects and takes its task again.
                Err(error) if error.downcast_ref::<ClientError>().is_some() => return Err(error),
                // The protocol refused something of the step (its configuration, a key directory):
                // the site says so instead of stopping.
                Err(error) => (
                    AnalysisAnswer::Refused {
                        reason: format!("the step's secure sum failed at this site: {error:#}"),
                    },
                    None,
                ),
            },
        };
        if let AnalysisAnswer::Refused { reason } = &answer {
            tracing::warn!(
                site = self.config.site,
                analysis = task.analysis,
                reason,
                "refusing the analysis"
            );
        } else {
            tracing::debug!(
                site = self.config.site,
                analysis = task.analysis,
                step = task.step,
                "analysis step answered"
            );
        }
        match client.report_analysis(&task.analysis, task.step, &answer).await {
            Err(error) if !error.is_fatal() && matches!(error, ClientError::Refused { .. }) => {
                tracing::warn!(site = self.config.site, analysis = task.analysis, %error, "answer not taken");
                return Ok(());
            }
            result => result?,
        }
        if let Some((secagg, round)) = &mut joined {
            match self.unmask(client, *round, secagg).await {
                Err(error) if is_left_out(&error) => {
                    tracing::warn!(site = self.config.site, analysis = task.analysis, reason = %error, "the analysis step's secure sum went on without this site");
                }
                other => other?,
            }
        }
        Ok(())
    }

    /// Joins the step's secure sum and masks the site's ring vectors: `Ok(Err(reason))` is a
    /// refusal (the step's sum is not one this site joins, or its sums do not fit the scales).
    async fn masked_step(
        &self,
        client: &mut Client,
        request: &AnalysisRequest,
        sum: &SecureStep,
        step: &SiteStep,
    ) -> anyhow::Result<Result<(SecAggClient, Vec<u8>), String>> {
        let site = &self.config.site;
        let Some(&site_id) = sum.ids.get(site) else {
            return Ok(Err(format!(
                "the step's secure sum is between {:?}, without this site",
                sum.ids.keys()
            )));
        };
        let members: Vec<_> = sum.ids.values().copied().collect();
        if sum.config.participants != members {
            return Ok(Err(
                "the step's secure sum names other participants than its ids".into()
            ));
        }
        let vectors =
            match analysis::ring::encode(&request.analysis, &request.fits, sum.rows, &step.contributions) {
                Ok(vectors) => vectors,
                Err(reason) => return Ok(Err(reason)),
            };
        let config = &sum.config;
        let (mut secagg, delivery) = self
            .join_instance(
                client,
                config.round,
                &config.model_version.model_digest,
                config,
                site_id,
                analysis::ring::INPUT,
            )
            .await?;
        let slices: Vec<&[u64]> = vectors.iter().map(Vec::as_slice).collect();
        let masked = secagg.masked_ring(&delivery, &slices)?;
        Ok(Ok((secagg, payload::encode(&masked))))
    }
}

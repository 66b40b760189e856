//! The site's checks of the survivor sets the server states (U1 ∩ N[u], U2 ∩ N[u], U3): against its
//! own view of U2, the threshold in its closed neighbourhood, and the instance's minimum in all.

use super::SecAggClient;
use crate::{RoundStage, SecAggError, SiteId};

impl SecAggClient {
    /// U3 and U2 \ U3 as the server states them at `stage`: sorted lists of participants; every
    /// member of U2 this site knows (its neighbours that sent it shares, and itself) in exactly one of
    /// them and no other member of N[u]; this site a survivor; at least t survivors in N[u] and at
    /// least the instance's minimum in all.
    pub(super) fn check_survivor_lists(
        &self,
        survivors: &[SiteId],
        dropped: &[SiteId],
        stage: RoundStage,
    ) -> Result<(), SecAggError> {
        for list in [survivors, dropped] {
            if list.windows(2).any(|w| w[0] >= w[1]) {
                return Err(self.malformed("survivor or dropped list is not sorted or repeats a site".into()));
            }
        }
        let site = self.site;
        if let Some(&v) = survivors.iter().chain(dropped).find(|&&v| {
            !self.config.is_participant(v)
                || (self.config.in_closed_neighbourhood(site, v) && !self.senders.contains(&v))
        }) {
            return Err(SecAggError::NotInRound {
                site: v,
                round: self.config.round(),
                stage,
            });
        }
        let listed_once = |v: &SiteId| survivors.binary_search(v).is_ok() != dropped.binary_search(v).is_ok();
        if !self.senders.iter().all(listed_once) {
            return Err(self.malformed("dropped list is not U2 minus the survivors".into()));
        }
        if !survivors.contains(&site) {
            return Err(self.malformed("survivor list leaves this site out".into()));
        }
        let here = self.config.closed_neighbourhood_members(site, survivors);
        self.check_neighbourhood(&here, stage)?;
        self.check_survivors(survivors.len(), self.config.min_survivors(), stage)
    }

    /// At least t of N[u] are in `members` (sites of N[u]); in the complete graph, the instance's
    /// [`SecAggError::TooFewSurvivors`] check.
    pub(super) fn check_neighbourhood(
        &self,
        members: &[SiteId],
        stage: RoundStage,
    ) -> Result<(), SecAggError> {
        let threshold = self.config.threshold();
        if self.config.is_complete_graph() {
            return self.check_survivors(members.len(), threshold, stage);
        }
        if members.len() < threshold {
            return Err(SecAggError::NeighbourhoodTooSmall {
                round: self.config.round(),
                stage,
                site: self.site,
                survivors: members.len(),
                threshold,
            });
        }
        Ok(())
    }
}

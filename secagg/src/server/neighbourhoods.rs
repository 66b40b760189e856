//! The server's checks of SecAgg+'s neighbourhoods (a no-op in the complete graph, where the global
//! quorum decides), and the key directory a site needs.

use super::SecAggServer;
use crate::messages::KeyDirectory;
use crate::{RoundConfig, RoundStage, SecAggError, SiteId};

impl SecAggServer {
    /// Aborts the instance unless every site of `owners` (the sites whose secrets may have to be
    /// rebuilt: U2 when `None`) has at least t of `members` (the sites left at `stage`) in its closed
    /// neighbourhood.
    pub(super) fn check_neighbourhoods(
        &mut self,
        members: &[SiteId],
        owners: Option<&[SiteId]>,
        stage: RoundStage,
    ) -> Result<(), SecAggError> {
        if self.config.is_complete_graph() {
            return Ok(());
        }
        let threshold = self.config.threshold();
        let owners = owners.map_or_else(|| self.u2.clone(), <[SiteId]>::to_vec);
        for site in owners {
            let survivors = self.config.count_in_closed_neighbourhood(site, members);
            if survivors < threshold {
                return Err(self.abort(SecAggError::NeighbourhoodTooSmall {
                    round: self.config.round(),
                    stage,
                    site,
                    survivors,
                    threshold,
                }));
            }
        }
        Ok(())
    }
}

impl KeyDirectory {
    /// The entries `site` needs: its closed neighbourhood's (keys) and their neighbours' (the
    /// credentials that sign survivor sets against a malicious server), i.e. the two-hop
    /// neighbourhood: 2k + 1 entries instead of n in a Harary graph; the whole directory in the
    /// complete graph. Relaying this instead of the whole directory keeps a site's download
    /// logarithmic in n.
    #[must_use]
    pub fn for_site(&self, config: &RoundConfig, site: SiteId) -> Self {
        let near = |v: SiteId| {
            config.in_closed_neighbourhood(site, v)
                || config
                    .neighbours(site)
                    .iter()
                    .any(|&w| config.in_closed_neighbourhood(w, v))
        };
        Self {
            header: self.header.clone(),
            sites: self
                .sites
                .iter()
                .filter(|entry| near(entry.header.site))
                .cloned()
                .collect(),
        }
    }
}

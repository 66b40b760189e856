//! The live status page (`/status`, beside `/metrics`): where the study is, when each site last made
//! a request, and the report of the rounds committed so far.

use super::FederationService;

/// How often the status page reloads itself.
const STATUS_REFRESH_SECONDS: u32 = 30;

impl FederationService {
    /// The live status page (`/status`): where the study is, when each site last made a request,
    /// and the report of the rounds committed so far (read from the state folder, off the lock).
    #[must_use]
    pub fn status_page(&self) -> String {
        let progress = self.lock().progress();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        let sites = self
            .shared
            .config
            .sites
            .iter()
            .map(|site| {
                let ago = self
                    .shared
                    .telemetry
                    .last_seen(&site.id)
                    .map(|seen| (now - seen).max(0.0));
                (site.id.clone(), site.role, ago)
            })
            .collect();
        let live = crate::report::html::LiveStatus {
            progress,
            sites,
            refresh_seconds: STATUS_REFRESH_SECONDS,
        };
        crate::report::status_page(&self.shared.config.state_dir, live)
    }
}

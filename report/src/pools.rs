//! The two pools of a round (its training sites, its validation sites), as every output lists them.

use super::{POOLED_TRAIN, POOLED_VALIDATION};
use fedlnm_shared::config::SiteRole;
use fedlnm_shared::federation::{PooledMetrics, RoundRecord};

/// The pools that exist in a round, with their row name and the role of the sites they pool.
pub fn pools(record: &RoundRecord) -> impl Iterator<Item = (&'static str, SiteRole, &PooledMetrics)> {
    [
        (POOLED_TRAIN, SiteRole::Train, record.pooled_train_sites.as_ref()),
        (
            POOLED_VALIDATION,
            SiteRole::Validate,
            record.pooled_validation_sites.as_ref(),
        ),
    ]
    .into_iter()
    .filter_map(|(name, role, pool)| pool.map(|pool| (name, role, pool)))
}

/// n_positive / n_patients of a pool; undefined without patients.
pub fn pooled_lnm_rate(pool: &PooledMetrics) -> Option<f64> {
    (pool.n_patients > 0).then(|| pool.n_positive as f64 / pool.n_patients as f64)
}

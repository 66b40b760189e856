//! How the outputs write values: CSV numbers, fixed decimals, percentages, AUCs with their CI.

use fedlnm_shared::federation::{AggregationKind, RoundRecord, ScoringStatistics, SiteRoundMetrics};

/// The aggregation as the tables name it: `plain` or `secure`.
pub fn aggregation_name(record: &RoundRecord) -> String {
    match record.aggregation {
        AggregationKind::Plain => "plain",
        AggregationKind::Secure => "secure",
    }
    .to_owned()
}

/// A CSV cell: the shortest representation that reads back to the same f64; empty when undefined
/// (or not finite, which the records never hold for a defined value).
pub fn number(value: Option<f64>) -> String {
    value
        .filter(|value| value.is_finite())
        .map(|value| value.to_string())
        .unwrap_or_default()
}

/// Three decimals, or an em dash when undefined.
pub fn fixed(value: Option<f64>) -> String {
    value.map_or_else(|| "—".to_owned(), |value| format!("{value:.3}"))
}

/// One decimal, as a percentage, or an em dash when undefined.
pub fn percent(value: Option<f64>) -> String {
    value.map_or_else(|| "—".to_owned(), |value| format!("{:.1}%", 100.0 * value))
}

/// `0.812 (0.741–0.883)`, `0.812 (CI undefined)` or `undefined (one class)`.
pub fn auc_with_ci(auc: Option<f64>, lower: Option<f64>, upper: Option<f64>) -> String {
    match (auc, lower, upper) {
        (Some(auc), Some(lower), Some(upper)) => format!("{auc:.3} ({lower:.3}–{upper:.3})"),
        (Some(auc), _, _) => format!("{auc:.3} (CI undefined)"),
        (None, _, _) => "undefined (one class)".to_owned(),
    }
}

/// The first 12 hex digits of a digest, enough to tell models apart in a summary.
pub fn short_digest(digest: &str) -> &str {
    digest.get(..12).unwrap_or(digest)
}

/// Which batch-normalisation statistics each of `sites` scored round `round`'s model with, as the
/// sites stated it: part of what the published figures measure (a model scored with each site's own
/// statistics is the weights plus a step each site runs on its own pictures).
#[must_use]
pub fn normalisation_statement(round: u64, sites: &[SiteRoundMetrics]) -> String {
    let mut groups: Vec<(Option<ScoringStatistics>, Vec<&str>)> = Vec::new();
    for site in sites {
        match groups.iter_mut().find(|(kind, _)| *kind == site.normalisation) {
            Some((_, sites)) => sites.push(&site.site),
            None => groups.push((site.normalisation, vec![&site.site])),
        }
    }
    let parts: Vec<String> = groups
        .iter()
        .map(|(kind, sites)| {
            let how = match kind {
                Some(ScoringStatistics::Model) => {
                    "with the model's own running statistics (averaged over the training sites)"
                }
                Some(ScoringStatistics::SiteReestimated) => {
                    "with statistics re-estimated on the site's own validation pictures before scoring \
                     (AdaBN; no label read)"
                }
                Some(ScoringStatistics::SiteLayers) => {
                    "with the site's own trained normalisation layers (FedBN)"
                }
                None => "with statistics the site did not state (a record written before sites stated them)",
            };
            format!("{} {how}", sites.join(", "))
        })
        .collect();
    format!(
        "Batch-normalisation statistics at scoring (round {round}): {}.",
        parts.join("; ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_written_round_trip_or_empty() {
        assert_eq!(number(Some(0.1)), "0.1");
        assert_eq!(number(Some(1.0 / 3.0)).parse::<f64>().unwrap(), 1.0 / 3.0);
        assert_eq!(number(None), "");
        assert_eq!(number(Some(f64::NAN)), "");
        assert_eq!(
            auc_with_ci(Some(0.8123), Some(0.74), Some(0.9)),
            "0.812 (0.740–0.900)"
        );
        assert_eq!(auc_with_ci(None, None, None), "undefined (one class)");
    }
}

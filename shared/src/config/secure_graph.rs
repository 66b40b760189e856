//! `rounds.secure_aggregation_graph` of `aggregator.toml`: the communication graph of secure
//! aggregation (the complete graph of Bonawitz et al., or SecAgg+'s sparse random graph) and the
//! per-neighbourhood threshold it implies.

use serde::{Deserialize, Serialize};

use super::ThreatModel;
use crate::secagg::{self, Graph};

/// Which sites of a round talk to each other in secure aggregation.
///
/// Written `secure_aggregation_graph = "complete"` (the default) or
/// `secure_aggregation_graph = { harary = { dropout_fraction = 0.05, corrupt_fraction = 0.05 } }`
/// (optionally with `degree = 12`).
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SecureAggregationGraph {
    /// Every training site with every other (Bonawitz et al. 2017): each site's work and traffic
    /// grow with the number of sites. Right for a study of a few dozen hospitals.
    #[default]
    Complete,
    /// SecAgg+ (Bell et al. 2020): each site works with `degree` others only (a random graph drawn
    /// anew for every round), so its work grows like log n. Pays off from about a hundred sites.
    Harary(HararySettings),
}

/// The SecAgg+ graph's settings: the study's tolerances, and the degree (optional).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HararySettings {
    /// k, the number of other sites each site works with (even). Absent: the least degree that the
    /// declared fractions allow (Bell et al.'s parameter selection, [`secagg::recommend_harary`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub degree: Option<usize>,
    /// The largest fraction of the training sites that may drop out of a round's secure aggregation;
    /// more abort the round (it then starts again).
    pub dropout_fraction: f64,
    /// The largest fraction of the training sites assumed to collude with the aggregator.
    pub corrupt_fraction: f64,
}

impl ThreatModel {
    /// The graph and the Shamir threshold of an instance between `n` sites: the complete graph with
    /// [`Self::threshold`], or the Harary graph with its degree (declared, or the least the fractions
    /// allow) and the least per-neighbourhood t that passes [`secagg::check_harary_parameters`] (at
    /// least (k+1)/2, or 2(k+1)/3 against a malicious aggregator; `min_sites` is a global floor and
    /// does not apply per neighbourhood).
    ///
    /// # Errors
    /// Why no safe degree or threshold exists, naming the setting.
    pub fn secure_aggregation_graph(
        self,
        n: usize,
        min_sites: usize,
        setting: &SecureAggregationGraph,
    ) -> Result<(Graph, usize), String> {
        let SecureAggregationGraph::Harary(harary) = setting else {
            return Ok((Graph::Complete, self.threshold(n, min_sites)));
        };
        let malicious = self.is_malicious();
        let (delta, gamma) = (harary.dropout_fraction, harary.corrupt_fraction);
        let degree = match harary.degree {
            Some(degree) => {
                secagg::check_degree(degree).map_err(|reason| format!("degree {reason}"))?;
                degree
            }
            None => secagg::recommend_harary(n, delta, gamma, malicious)
                .ok_or_else(|| {
                    format!(
                        "no degree is safe for {n} sites with dropout_fraction {delta} and corrupt_fraction \
                         {gamma} ({}): lower the fractions",
                        self.name()
                    )
                })?
                .degree,
        };
        let members = degree.min(n.saturating_sub(1)) + 1;
        let least = secagg::structural_minimum(n, degree, malicious);
        let mut last_problem = String::new();
        for threshold in least..=members {
            match secagg::check_harary_parameters(n, degree, threshold, delta, gamma, malicious) {
                Ok(()) => {
                    let graph = Graph::Harary {
                        degree,
                        dropout_fraction: delta,
                        corrupt_fraction: gamma,
                    };
                    return Ok((graph, threshold));
                }
                Err((field, problem)) => last_problem = format!("{field}: {problem}"),
            }
        }
        Err(format!(
            "degree {degree} with {n} sites has no safe threshold ({}); last check: {last_problem}",
            self.name()
        ))
    }

    fn name(self) -> &'static str {
        match self {
            Self::MaliciousAggregator => "malicious-aggregator",
            Self::HonestButCuriousAggregator => "honest-but-curious-aggregator",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn harary(degree: Option<usize>, delta: f64, gamma: f64) -> SecureAggregationGraph {
        SecureAggregationGraph::Harary(HararySettings {
            degree,
            dropout_fraction: delta,
            corrupt_fraction: gamma,
        })
    }

    #[test]
    fn thresholds_per_neighbourhood() {
        let curious = ThreatModel::HonestButCuriousAggregator;
        let malicious = ThreatModel::MaliciousAggregator;
        // The complete graph keeps the study's threshold.
        assert_eq!(
            malicious.secure_aggregation_graph(30, 2, &SecureAggregationGraph::Complete),
            Ok((Graph::Complete, 21))
        );
        // 100 sites, k = 14, 5 % each: up to 5 corrupt neighbours, so t > 7.5 and t > 5: 8.
        let (graph, t) = curious
            .secure_aggregation_graph(100, 2, &harary(Some(14), 0.05, 0.05))
            .unwrap();
        assert_eq!(
            (graph, t),
            (
                Graph::Harary {
                    degree: 14,
                    dropout_fraction: 0.05,
                    corrupt_fraction: 0.05
                },
                8
            )
        );
        // Without a degree: the recommended one, and its threshold passes the crate's validation.
        let (graph, t) = malicious
            .secure_aggregation_graph(100, 2, &harary(None, 0.05, 0.05))
            .unwrap();
        let Graph::Harary { degree, .. } = graph else {
            panic!("{graph:?}")
        };
        assert!(degree < 99 && 3 * t > 2 * (degree + 1), "{degree} {t}");
        // Odd degrees and hopeless fractions are refused with the reason.
        assert!(
            curious
                .secure_aggregation_graph(100, 2, &harary(Some(7), 0.05, 0.05))
                .unwrap_err()
                .contains("even")
        );
        assert!(
            malicious
                .secure_aggregation_graph(30, 2, &harary(Some(8), 0.1, 0.1))
                .unwrap_err()
                .contains("no safe threshold")
        );
    }

    #[test]
    fn the_setting_reads_as_documented() {
        #[derive(Deserialize)]
        struct Holder {
            secure_aggregation_graph: SecureAggregationGraph,
        }
        let read = |text: &str| toml::from_str::<Holder>(text).map(|h| h.secure_aggregation_graph);
        assert_eq!(
            read("secure_aggregation_graph = \"complete\"").unwrap(),
            SecureAggregationGraph::Complete
        );
        assert_eq!(
            read("secure_aggregation_graph = { harary = { degree = 12, dropout_fraction = 0.05, corrupt_fraction = 0.1 } }")
                .unwrap(),
            harary(Some(12), 0.05, 0.1)
        );
        assert!(read("secure_aggregation_graph = { harary = { degre = 12 } }").is_err());
    }
}

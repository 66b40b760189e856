//! The patient-flow count a clinical study reports: rows read, patients included, excluded by reason.

use std::collections::BTreeMap;
use std::fmt;

/// Patients read, included and excluded (by reason) at one site.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct PatientFlow {
    pub site: String,
    /// Data rows in the manifest.
    pub read: usize,
    pub included: usize,
    /// Excluded patients per reason (see `PatientError::reason`).
    pub excluded: BTreeMap<String, usize>,
}

impl PatientFlow {
    /// Total excluded patients.
    #[must_use]
    pub fn n_excluded(&self) -> usize {
        self.excluded.values().sum()
    }

    /// Records one exclusion.
    pub fn exclude(&mut self, reason: &str) {
        *self.excluded.entry(reason.to_owned()).or_insert(0) += 1;
    }
}

impl fmt::Display for PatientFlow {
    /// A markdown table: read, each exclusion reason, included.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "Patient flow, site {}", self.site)?;
        writeln!(f, "| step | patients |")?;
        writeln!(f, "| --- | ---: |")?;
        writeln!(f, "| read from the manifest | {} |", self.read)?;
        writeln!(f, "| excluded | {} |", self.n_excluded())?;
        for (reason, count) in &self.excluded {
            writeln!(f, "| - {reason} | {count} |")?;
        }
        write!(f, "| included | {} |", self.included)
    }
}

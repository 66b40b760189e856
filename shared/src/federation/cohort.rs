//! A site's patient flow and the characteristics of its included patients, as a multicentre report
//! gives them per site (TRIPOD+AI 20a/20b, TRIPOD-Cluster 10a/10b): counts, a mean and an SD, never a
//! patient. A node sends it with its validation report; the study report tabulates it.

use crate::data::SiteData;
use crate::data::report::Sex;
use crate::stats::sum::{mean, sample_variance};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The ACR TI-RADS levels counted per site (TR1 to TR5).
pub const TIRADS_LEVELS: usize = 5;

/// One site's flow and characteristics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SiteCohort {
    /// Data rows of the manifest.
    pub read: u64,
    /// Excluded rows by reason (the loader's reasons: unreadable image, missing field, ...).
    pub excluded: BTreeMap<String, u64>,
    /// Included patients (read minus excluded).
    pub included: u64,
    /// Included patients with pathology labels, and those with LNM among them.
    pub labelled: u64,
    pub lnm: u64,
    /// The labelled patients the site trains on and those it validates on (a validate-only site
    /// trains on none).
    pub training: u64,
    pub validation: u64,
    /// Age at diagnosis of the included patients: mean and sample SD (`None` below two patients).
    pub age_mean: Option<f64>,
    pub age_sd: Option<f64>,
    pub male: u64,
    pub multifocal: u64,
    /// Included patients by ACR TI-RADS level of their structured report, TR1 to TR5.
    pub tirads: Vec<u64>,
}

impl SiteCohort {
    /// The cohort of a loaded site, with the sizes of its training and validation parts.
    #[must_use]
    pub fn of_site(site: &SiteData, training: usize, validation: usize) -> Self {
        let count = |n: usize| u64::try_from(n).unwrap_or(u64::MAX);
        let patients = &site.patients;
        let ages: Vec<f64> = patients.iter().map(|p| p.record.clinical.age_years).collect();
        let mut tirads = vec![0; TIRADS_LEVELS];
        let (mut male, mut multifocal, mut labelled, mut lnm) = (0, 0, 0, 0);
        for patient in patients {
            let record = &patient.record;
            male += u64::from(record.clinical.sex == Sex::Male);
            multifocal += u64::from(record.clinical.multifocal);
            if let Some(labels) = record.labels {
                labelled += 1;
                lnm += u64::from(labels.lnm);
            }
            let level = usize::try_from(record.report.tirads_level()).unwrap_or(1);
            tirads[level.clamp(1, TIRADS_LEVELS) - 1] += 1;
        }
        Self {
            read: count(site.flow.read),
            excluded: site
                .flow
                .excluded
                .iter()
                .map(|(reason, &n)| (reason.clone(), count(n)))
                .collect(),
            included: count(site.flow.included),
            labelled,
            lnm,
            training: count(training),
            validation: count(validation),
            age_mean: mean(&ages),
            age_sd: sample_variance(&ages).map(f64::sqrt),
            male,
            multifocal,
            tirads,
        }
    }

    /// Checks a cohort received from a site: the counts add up (read = included + excluded; labelled,
    /// male, multifocal and the TI-RADS levels within the included; LNM within the labelled; training
    /// and validation within the labelled), the age finite and plausible.
    ///
    /// # Errors
    /// The first inconsistency, named.
    pub fn check(&self) -> Result<(), String> {
        let excluded = self.excluded.values().fold(0u64, |sum, &n| sum.saturating_add(n));
        if self.included.saturating_add(excluded) != self.read {
            return Err(format!(
                "cohort: {} read is not {} included plus {excluded} excluded",
                self.read, self.included
            ));
        }
        if let Some(reason) = self.excluded.keys().find(|reason| reason.len() > 200) {
            return Err(format!(
                "cohort: an exclusion reason of {} characters",
                reason.len()
            ));
        }
        for (name, value, limit, of) in [
            ("labelled", self.labelled, self.included, "included"),
            ("male", self.male, self.included, "included"),
            ("multifocal", self.multifocal, self.included, "included"),
            ("lnm", self.lnm, self.labelled, "labelled"),
            (
                "training + validation",
                self.training.saturating_add(self.validation),
                self.labelled,
                "labelled",
            ),
        ] {
            if value > limit {
                return Err(format!("cohort: {name} {value} exceeds the {limit} {of}"));
            }
        }
        let levels = self.tirads.iter().fold(0u64, |sum, &n| sum.saturating_add(n));
        if self.tirads.len() != TIRADS_LEVELS || levels != self.included {
            return Err(format!(
                "cohort: {} TI-RADS levels counting {levels}, expected {TIRADS_LEVELS} counting the {} included",
                self.tirads.len(),
                self.included
            ));
        }
        for (name, value) in [("age_mean", self.age_mean), ("age_sd", self.age_sd)] {
            if let Some(value) = value
                && !(value.is_finite() && (0.0..=150.0).contains(&value))
            {
                return Err(format!("cohort: {name} {value} is not an age in years"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cohort() -> SiteCohort {
        SiteCohort {
            read: 105,
            excluded: [("image file missing".to_owned(), 5)].into(),
            included: 100,
            labelled: 100,
            lnm: 37,
            training: 80,
            validation: 20,
            age_mean: Some(44.0),
            age_sd: Some(11.0),
            male: 25,
            multifocal: 20,
            tirads: vec![0, 10, 30, 40, 20],
        }
    }

    #[test]
    fn a_consistent_cohort_passes_and_each_inconsistency_is_named() {
        assert_eq!(cohort().check(), Ok(()));
        type Change = fn(&mut SiteCohort);
        let cases: [(Change, &str); 6] = [
            (|c| c.read = 110, "110 read is not 100 included plus 5 excluded"),
            (|c| c.lnm = 101, "lnm 101 exceeds the 100 labelled"),
            (
                |c| c.training = 90,
                "training + validation 110 exceeds the 100 labelled",
            ),
            (|c| c.tirads[4] = 21, "counting 101"),
            (|c| c.tirads.push(0), "6 TI-RADS levels"),
            (|c| c.age_mean = Some(f64::NAN), "age_mean NaN"),
        ];
        for (change, words) in cases {
            let mut bad = cohort();
            change(&mut bad);
            let error = bad.check().unwrap_err();
            assert!(error.contains(words), "{error}");
        }
    }
}

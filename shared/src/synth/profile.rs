//! Named site profiles: scanner rendering and case mix differ by site (non-IID), as in a real
//! multicentre study (a tertiary referral centre, a community hospital, a rural hospital).

use serde::Serialize;

/// The Doppler colour map a scanner uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum ColourMap {
    /// Dark red to bright red / dark blue to bright blue.
    Classic,
    /// Red to yellow / blue to cyan with velocity (a "velocity-variance" style map).
    Velocity,
}

/// One site's scanner and population.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SiteProfile {
    pub name: &'static str,
    /// The scanner model burned into the annotation band.
    pub scanner: &'static str,
    // Scanner rendering.
    /// Overall gain (multiplies echo intensity).
    pub gain: f64,
    /// Log-compression strength: higher shows more low-level echoes (flatter, greyer picture).
    pub dynamic_range: f64,
    /// Speckle grain (pixels of the 256-pixel canvas, lateral; axial is 0.6 of it).
    pub speckle_px: f64,
    /// Extra blur (pixels of the 256-pixel canvas): coarser resolution of older probes.
    pub blur_px: f64,
    /// Depth attenuation left after time-gain compensation (per field depth).
    pub residual_attenuation: f64,
    pub colour_map: ColourMap,
    // Population and readers.
    /// Shift of the LNM logit (prevalence differs by site).
    pub lnm_logit_shift: f64,
    pub male_fraction: f64,
    pub mean_age_years: f64,
    /// Median tumour diameter (mm); community and rural sites see larger tumours.
    pub median_size_mm: f64,
    pub multifocal_fraction: f64,
    /// Probability that the reader reports punctate foci that are present.
    pub reader_foci_sensitivity: f64,
    /// Share of reports written in Chinese.
    pub chinese_fraction: f64,
}

/// Names accepted by [`SiteProfile::named`].
pub const PROFILE_NAMES: &[&str] = &["tertiary", "community", "rural", "referral"];

impl SiteProfile {
    /// A named profile, or `None` for an unknown name (see [`PROFILE_NAMES`]).
    #[must_use]
    pub fn named(name: &str) -> Option<Self> {
        match name {
            "tertiary" => Some(Self {
                name: "tertiary",
                scanner: "ACUSON L18-4",
                gain: 1.0,
                dynamic_range: 9.0,
                speckle_px: 1.3,
                blur_px: 0.0,
                residual_attenuation: 0.15,
                colour_map: ColourMap::Velocity,
                lnm_logit_shift: 0.25,
                male_fraction: 0.24,
                mean_age_years: 44.0,
                median_size_mm: 10.0,
                multifocal_fraction: 0.32,
                reader_foci_sensitivity: 0.5,
                chinese_fraction: 0.5,
            }),
            "community" => Some(Self {
                name: "community",
                scanner: "LOGIQ E9 ML6-15",
                gain: 1.15,
                dynamic_range: 14.0,
                speckle_px: 1.8,
                blur_px: 0.6,
                residual_attenuation: 0.35,
                colour_map: ColourMap::Classic,
                lnm_logit_shift: 0.0,
                male_fraction: 0.27,
                mean_age_years: 47.0,
                median_size_mm: 12.0,
                multifocal_fraction: 0.27,
                reader_foci_sensitivity: 0.5,
                chinese_fraction: 0.3,
            }),
            "rural" => Some(Self {
                name: "rural",
                scanner: "DC-70 L12-3",
                gain: 0.85,
                dynamic_range: 6.0,
                speckle_px: 2.4,
                blur_px: 1.2,
                residual_attenuation: 0.6,
                colour_map: ColourMap::Classic,
                lnm_logit_shift: -0.3,
                male_fraction: 0.3,
                mean_age_years: 50.0,
                median_size_mm: 14.0,
                multifocal_fraction: 0.22,
                reader_foci_sensitivity: 0.4,
                chinese_fraction: 0.85,
            }),
            // A tertiary referral centre that sees the advanced cases (about 60% LNM) on another
            // scanner: the label and scanner skew of a non-IID federation.
            "referral" => Some(Self {
                name: "referral",
                scanner: "Aplio i800 i18LX5",
                gain: 1.25,
                dynamic_range: 11.0,
                speckle_px: 1.0,
                blur_px: 0.0,
                residual_attenuation: 0.1,
                colour_map: ColourMap::Velocity,
                lnm_logit_shift: 1.5,
                male_fraction: 0.3,
                mean_age_years: 42.0,
                median_size_mm: 13.0,
                multifocal_fraction: 0.38,
                reader_foci_sensitivity: 0.6,
                chinese_fraction: 0.2,
            }),
            _ => None,
        }
    }
}

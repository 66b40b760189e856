//! Synthetic multicentre cohorts (placeholder while being written).

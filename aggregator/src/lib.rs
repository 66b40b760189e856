//! fedlnm-aggregator: the study's only server. Today: provisioning of the study's certificates and
//! startup kits; the federation rounds build on it.

pub mod provision;

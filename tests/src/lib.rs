//! fedlnm's end-to-end test crate: its tests (under `tests/`) read the source tree for architecture
//! invariants today, and will start a real aggregator and real nodes on loopback with the federation.

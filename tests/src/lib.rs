//! Helpers for fedlnm's end-to-end tests.

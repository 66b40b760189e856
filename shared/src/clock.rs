//! The one clock format of the project's records and reports: UTC now, RFC 3339, to the second.

/// The current UTC time as RFC 3339, to the second (commit times, the "page made" line of a report).
#[must_use]
pub fn now_rfc3339() -> String {
    let now = time::OffsetDateTime::now_utc();
    now.replace_nanosecond(0)
        .unwrap_or(now)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

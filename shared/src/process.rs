//! What every fedlnm binary does around its `run`: logging set-up (to standard error, filtered by
//! `FEDLNM_LOG`, default `info`; text, or JSON lines with `--log-format json` / `FEDLNM_LOG_FORMAT`),
//! and turning the error that ended it into one line a hospital IT person can act on and an exit code:
//! 2 for bad input or usage (a file, a setting, an argument), 1 for anything else.

use std::error::Error;
use std::io::IsTerminal as _;

/// The environment variable that chooses the log format when the command line does not.
pub const LOG_FORMAT_ENV: &str = "FEDLNM_LOG_FORMAT";

/// How a binary writes its log to standard error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// One human-readable line per event; colours on a terminal only.
    #[default]
    Text,
    /// One JSON object per line (`timestamp`, `level`, `message`, the event's fields, `target`), for a
    /// log collector.
    Json,
}

impl LogFormat {
    /// Every format, in the order a help text lists them.
    pub const ALL: [Self; 2] = [Self::Text, Self::Json];

    /// The format's name on the command line and in [`LOG_FORMAT_ENV`].
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::Text => "text",
            Self::Json => "json",
        }
    }

    /// The format given on the command line, else the one [`LOG_FORMAT_ENV`] names, else text.
    ///
    /// # Errors
    /// [`LOG_FORMAT_ENV`] is set to something else than a format's name.
    pub fn chosen(command_line: Option<Self>) -> Result<Self, UnknownLogFormat> {
        match (command_line, std::env::var_os(LOG_FORMAT_ENV)) {
            (Some(format), _) => Ok(format),
            (None, None) => Ok(Self::default()),
            (None, Some(value)) => value.to_string_lossy().parse(),
        }
    }
}

impl std::fmt::Display for LogFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for LogFormat {
    type Err = UnknownLogFormat;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|format| format.name() == name)
            .ok_or_else(|| UnknownLogFormat(name.to_owned()))
    }
}

/// A log format name that is neither "text" nor "json".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown log format '{0}' (expected text or json)")]
pub struct UnknownLogFormat(pub String);

/// Installs the `tracing` subscriber of a binary, as text (see [`init_logging_as`]).
pub fn init_logging() {
    init_logging_as(LogFormat::Text);
}

/// Installs the `tracing` subscriber of a binary in `format`: as text with colours on a terminal
/// only, so that a log written to a file or a journal has no escape codes; as JSON lines with the
/// event's message and fields at the top level of each object.
pub fn init_logging_as(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("FEDLNM_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter);
    match format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

/// The chain of `error` on one line, causes joined by ": " as `{error:#}` does, leaving out a cause
/// whose text is already part of what the line says: an error whose message includes its `{source}`
/// is not followed by that source a second time.
#[must_use]
pub fn one_line(error: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

/// Whether `cause` is one of this library's errors that mean the input is at fault.
#[must_use]
pub fn is_input_error(cause: &(dyn Error + 'static)) -> bool {
    cause.is::<crate::stats::StatsError>()
        || cause.is::<crate::stats::logistic::LogisticError>()
        || cause.is::<crate::stats::privacy::PrivacyError>()
        || cause.is::<crate::data::ManifestError>()
        || cause.is::<crate::table::InputError>()
        || cause.is::<crate::config::ConfigError>()
        || cause.is::<crate::weights::WeightsError>()
        || cause.is::<crate::checkpoint::CheckpointError>()
}

/// The exit code of `error`: 2 when any cause is an input error of this library or one that
/// `is_binary_input_error` recognises, else 1.
#[must_use]
pub fn exit_code(
    error: &anyhow::Error,
    is_binary_input_error: impl Fn(&(dyn Error + 'static)) -> bool,
) -> u8 {
    let input_fault = error
        .chain()
        .any(|cause| is_input_error(cause) || is_binary_input_error(cause));
    if input_fault { 2 } else { 1 }
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context as _;
    use std::io;

    /// A library error that, like many of ours, says its source in its own message.
    #[derive(Debug, thiserror::Error)]
    #[error("cannot read {file}: {source}")]
    struct ReadError {
        file: &'static str,
        source: io::Error,
    }

    /// A library error that leaves its source to the chain.
    #[derive(Debug, thiserror::Error)]
    #[error("the checkpoint is unusable")]
    struct Unusable {
        source: io::Error,
    }

    fn denied() -> io::Error {
        io::Error::new(io::ErrorKind::PermissionDenied, "permission denied")
    }

    #[test]
    fn one_line_says_each_cause_once() {
        let cases: [(anyhow::Error, &str); 5] = [
            // An anyhow context over a thiserror with `{source}` over an io::Error.
            (
                Err::<(), _>(ReadError {
                    file: "node.toml",
                    source: denied(),
                })
                .context("cannot load the site's configuration")
                .unwrap_err(),
                "cannot load the site's configuration: cannot read node.toml: permission denied",
            ),
            // Without repeats the chain is unchanged: what `{error:#}` prints.
            (
                Err::<(), _>(Unusable { source: denied() })
                    .context("cannot start round 3")
                    .unwrap_err(),
                "cannot start round 3: the checkpoint is unusable: permission denied",
            ),
            (anyhow::Error::new(denied()), "permission denied"),
            // A context that already quotes the error it wraps.
            (
                Err::<(), _>(denied())
                    .context("the aggregator stopped: permission denied")
                    .unwrap_err(),
                "the aggregator stopped: permission denied",
            ),
            // An empty message adds nothing, not a stray separator.
            (
                Err::<(), _>(io::Error::other(""))
                    .context("cannot listen")
                    .unwrap_err(),
                "cannot listen",
            ),
        ];
        for (error, expected) in cases {
            assert_eq!(one_line(&error), expected, "{error:#}");
        }
        let plain = Err::<(), _>(Unusable { source: denied() })
            .context("cannot start round 3")
            .unwrap_err();
        assert_eq!(one_line(&plain), format!("{plain:#}"));
    }

    #[test]
    fn log_formats_are_named_as_on_the_command_line() {
        for format in LogFormat::ALL {
            assert_eq!(format.name().parse::<LogFormat>(), Ok(format));
            assert_eq!(format.to_string(), format.name());
        }
        assert_eq!(
            "JSON".parse::<LogFormat>(),
            Err(UnknownLogFormat("JSON".to_owned()))
        );
        assert_eq!(LogFormat::chosen(Some(LogFormat::Json)), Ok(LogFormat::Json));
    }
}

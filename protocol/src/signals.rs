//! The stop requests of a long-running command (`fedlnm-aggregator serve`, `fedlnm-node run`):
//! SIGINT (Ctrl-C) and SIGTERM (what a service manager sends), so that each binary says what a stop
//! does to the round in progress instead of dying without a word.

/// SIGINT (Ctrl-C) and SIGTERM (a service manager's stop), watched from the moment this is made: make
/// it before the command says it has started, so that no stop request finds the default action (death
/// without a word) in place.
pub struct StopSignals {
    #[cfg(unix)]
    interrupt: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    terminate: Option<tokio::signal::unix::Signal>,
}

impl StopSignals {
    #[must_use]
    pub fn watch() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Self {
                interrupt: signal(SignalKind::interrupt()).ok(),
                terminate: signal(SignalKind::terminate()).ok(),
            }
        }
        #[cfg(not(unix))]
        Self {}
    }

    /// Resolves at the first of them, with its name; a signal that cannot be watched never resolves.
    pub async fn first(self) -> &'static str {
        #[cfg(unix)]
        {
            let wait = |signal: Option<tokio::signal::unix::Signal>, name: &'static str| async move {
                match signal {
                    Some(mut signal) => {
                        signal.recv().await;
                        name
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                name = wait(self.interrupt, "SIGINT") => name,
                name = wait(self.terminate, "SIGTERM") => name,
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            "Ctrl-C"
        }
    }
}

//! Training progress for a person: a progress bar (indicatif) when stderr is a terminal, one log line
//! per epoch otherwise.

use fedlnm_model::train::TrainingEvent;
use std::io::IsTerminal as _;

/// Shows [`TrainingEvent`]s: steps move the bar (terminal only), epochs print a line above it or log.
pub(super) struct ProgressReporter {
    bar: Option<indicatif::ProgressBar>,
}

impl ProgressReporter {
    /// A reporter that has shown nothing yet (the bar appears at the first step, on a terminal).
    pub(super) fn new() -> Self {
        Self { bar: None }
    }

    /// Shows one event.
    pub(super) fn report(&mut self, event: &TrainingEvent) {
        match event {
            TrainingEvent::Step {
                step,
                total_steps,
                loss,
                epoch,
            } => {
                if std::io::stderr().is_terminal() {
                    let bar = self.bar.get_or_insert_with(|| {
                        let bar = indicatif::ProgressBar::new(*total_steps as u64);
                        if let Ok(style) = indicatif::ProgressStyle::with_template(
                            "{bar:40} {pos}/{len} steps, {elapsed} elapsed, ETA {eta} {msg}",
                        ) {
                            bar.set_style(style);
                        }
                        bar
                    });
                    bar.set_position(*step as u64);
                    bar.set_message(format!("epoch {epoch}, loss {loss:.4}"));
                }
            }
            TrainingEvent::Epoch(log) => {
                let findings = log
                    .train_findings_loss
                    .map_or_else(String::new, |loss| format!(", findings {loss:.4}"));
                let message = format!(
                    "epoch {}: loss {:.4} (LNM {:.4}, T {:.4}, N {:.4}{findings}), val AUC {}, {:.1} img/s",
                    log.epoch,
                    log.train_loss,
                    log.train_lnm_loss,
                    log.train_t_loss,
                    log.train_n_loss,
                    log.val_auc
                        .map_or_else(|| "n/a".to_owned(), |auc| format!("{auc:.3}")),
                    log.images_per_second
                );
                match &self.bar {
                    Some(bar) => bar.println(message),
                    None => tracing::info!("{message}"),
                }
            }
        }
    }

    /// Removes the bar, if one was shown.
    pub(super) fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

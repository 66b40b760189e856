//! Resuming `--design methods` (`--resume`). At the sizes where the comparison means something (4,000
//! patients per site) it runs for hours on 2 cores; a crash, a reboot or a stop should cost the piece
//! that was running, not the whole run. Each finished piece is recorded in the output folder, and the
//! same command again with `--resume` reuses it:
//! - the synthetic sites (`data/`), recorded once every site is written;
//! - each federated study (`study-k/`), recorded when it has finished: its rounds, final model and the
//!   external site's scores are read back from its own folder, as for a study just run;
//! - each single-shot model (centralised, each site alone): its weights in `models/`, recorded with
//!   its training time; a reused model is scored again (deterministic, seconds).
//!
//! A piece that was not recorded is made again from its start (an unfinished study's folder is removed
//! first). The run's arguments are kept in [`ARGUMENTS_FILE`]: resuming with other arguments is
//! refused, naming what differs, since the pieces would no longer belong to one comparison.

use super::{SimSite, SimulateArgs, SimulationOutcome};
use anyhow::{Context as _, bail};
use fedlnm_shared::checkpoint::{self, Checkpoint};
use fedlnm_shared::files::write_atomically;
use fedlnm_shared::model_config::ModelConfig;
use fedlnm_shared::weights::NamedTensors;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The arguments of the run a folder holds (`fedlnm-sim`'s version and every argument but `--out` and
/// `--resume`).
pub const ARGUMENTS_FILE: &str = "arguments.txt";
/// The records of finished pieces.
pub const PROGRESS_DIR: &str = "progress";
/// The single-shot models' weights.
pub const MODELS_DIR: &str = "models";
/// The record of the generated sites, in [`PROGRESS_DIR`].
const DATA_RECORD: &str = "data.json";

/// A finished study, with its paths relative to the output folder (so a moved folder still resumes).
#[derive(Serialize, Deserialize)]
struct StudyRecord {
    state_dir: PathBuf,
    results_dir: PathBuf,
    rounds: u64,
    final_digest: String,
    seconds: f64,
    node_work_dirs: Vec<(String, PathBuf)>,
}

/// A finished single-shot model: its training time (its weights are beside, in [`MODELS_DIR`]).
#[derive(Serialize, Deserialize)]
struct ModelRecord {
    seconds: f64,
    digest: String,
}

/// The output folder of a resumable run and its record of what is finished.
#[derive(Debug, Clone)]
pub struct Progress {
    out: PathBuf,
}

impl Progress {
    /// Opens `args.out`: a new run's folder (created; it must not exist or be empty), or with
    /// `--resume` the folder of a run of the same arguments (an empty or missing one starts afresh).
    ///
    /// # Errors
    /// A non-empty folder without `--resume`; with it, a folder holding no resumable run or a run of
    /// other arguments (the differing lines named); or the folder cannot be created or written.
    pub fn open(args: &SimulateArgs) -> anyhow::Result<Self> {
        let arguments = arguments_text(args);
        let empty = !args.out.exists()
            || std::fs::read_dir(&args.out)
                .with_context(|| format!("cannot read the folder {}", args.out.display()))?
                .next()
                .is_none();
        if !args.resume || empty {
            fedlnm_node::commands::create_output_dir(&args.out, "a simulation")?;
            let out = std::fs::canonicalize(&args.out)?;
            write_atomically(&out.join(ARGUMENTS_FILE), arguments.as_bytes())?;
            return Ok(Self { out });
        }
        let out = std::fs::canonicalize(&args.out)?;
        let file = out.join(ARGUMENTS_FILE);
        let Ok(kept) = std::fs::read_to_string(&file) else {
            bail!(
                "{} holds no run to resume (no {ARGUMENTS_FILE}): resume a folder written by \
                 `fedlnm-sim --design methods`, or choose a new --out folder",
                out.display()
            );
        };
        if kept != arguments {
            bail!(
                "{} holds a run of other arguments; resume it with the same ones (kept in {}) or choose a \
                 new --out folder. What differs (kept → now):\n{}",
                out.display(),
                file.display(),
                differences(&kept, &arguments)
            );
        }
        tracing::info!(out = %out.display(), "resuming: finished pieces are reused");
        Ok(Self { out })
    }

    /// The output folder (absolute).
    #[must_use]
    pub fn out(&self) -> &Path {
        &self.out
    }

    fn record(&self, name: &str) -> PathBuf {
        self.out.join(PROGRESS_DIR).join(name)
    }

    /// Whether the sites were generated whole; if not, `data/` is removed (a half-written site would
    /// otherwise be mixed with fresh ones).
    ///
    /// # Errors
    /// The unfinished folder cannot be removed.
    pub fn data_ready(&self, data_dir: &Path) -> anyhow::Result<bool> {
        if self.record(DATA_RECORD).is_file() {
            return Ok(true);
        }
        remove_unfinished(data_dir)?;
        Ok(false)
    }

    /// Records that `sites` are written whole in `data/`.
    ///
    /// # Errors
    /// The record cannot be written.
    pub fn data_done(&self, sites: &[SimSite]) -> anyhow::Result<()> {
        let sites: Vec<_> = sites
            .iter()
            .map(
                |(id, profile, trains)| serde_json::json!({"site": id, "profile": profile, "trains": trains}),
            )
            .collect();
        let record = serde_json::json!({ "sites": sites });
        self.write_record(DATA_RECORD, &serde_json::to_vec_pretty(&record)?)
    }

    /// The finished study of folder `folder` (`study-k`), or `None` after removing what an unfinished
    /// one left, so that it runs again from the start.
    ///
    /// # Errors
    /// A record that cannot be read, a study whose committed rounds are not what its record says, or an
    /// unfinished folder that cannot be removed.
    pub fn finished_study(&self, folder: &Path) -> anyhow::Result<Option<SimulationOutcome>> {
        let name = study_record_name(folder)?;
        let file = self.record(&name);
        let Ok(bytes) = std::fs::read(&file) else {
            remove_unfinished(folder)?;
            return Ok(None);
        };
        let record: StudyRecord =
            serde_json::from_slice(&bytes).with_context(|| format!("cannot read {}", file.display()))?;
        let study = SimulationOutcome {
            state_dir: self.out.join(record.state_dir),
            results_dir: self.out.join(record.results_dir),
            rounds: record.rounds,
            final_digest: record.final_digest,
            seconds: record.seconds,
            node_work_dirs: record
                .node_work_dirs
                .into_iter()
                .map(|(site, dir)| (site, self.out.join(dir)))
                .collect(),
        };
        let committed = fedlnm_aggregator::store::RoundStore::open_existing(&study.state_dir)?.latest()?;
        if committed
            .as_ref()
            .map(|c| (c.record.round, c.model.digest.as_str()))
            != Some((study.rounds, study.final_digest.as_str()))
        {
            bail!(
                "{}: the study's committed rounds are not those of {} (round {}, model {}); remove both to \
                 run it again",
                folder.display(),
                file.display(),
                study.rounds,
                study.final_digest
            );
        }
        tracing::info!(study = %folder.display(), rounds = study.rounds, "resuming: a finished study reused");
        Ok(Some(study))
    }

    /// Records that the study in `folder` has finished.
    ///
    /// # Errors
    /// A path outside the output folder, or the record cannot be written.
    pub fn study_done(&self, folder: &Path, study: &SimulationOutcome) -> anyhow::Result<()> {
        let relative = |path: &Path| -> anyhow::Result<PathBuf> {
            Ok(path
                .strip_prefix(&self.out)
                .with_context(|| format!("{} is outside {}", path.display(), self.out.display()))?
                .to_path_buf())
        };
        let record = StudyRecord {
            state_dir: relative(&study.state_dir)?,
            results_dir: relative(&study.results_dir)?,
            rounds: study.rounds,
            final_digest: study.final_digest.clone(),
            seconds: study.seconds,
            node_work_dirs: study
                .node_work_dirs
                .iter()
                .map(|(site, dir)| Ok((site.clone(), relative(dir)?)))
                .collect::<anyhow::Result<_>>()?,
        };
        self.write_record(&study_record_name(folder)?, &serde_json::to_vec_pretty(&record)?)
    }

    /// The single-shot model `name`'s weights and training seconds, if it was trained and recorded.
    ///
    /// # Errors
    /// A recorded model whose file is missing, unreadable, of another model than `model`, or not the
    /// weights recorded.
    pub fn trained(&self, name: &str, model: &ModelConfig) -> anyhow::Result<Option<(NamedTensors, f64)>> {
        let file = self.record(&model_record_name(name));
        let Ok(bytes) = std::fs::read(&file) else {
            return Ok(None);
        };
        let record: ModelRecord =
            serde_json::from_slice(&bytes).with_context(|| format!("cannot read {}", file.display()))?;
        let weights_file = self.model_file(name);
        let bytes = fedlnm_shared::files::read_regular(&weights_file)
            .with_context(|| format!("cannot read {}", weights_file.display()))?;
        let checkpoint = Checkpoint::from_bytes(&bytes, &weights_file)?;
        if checkpoint.config != *model || fedlnm_shared::weights::sha256_hex(&bytes) != record.digest {
            bail!(
                "{} is not the {name} model {} recorded; remove both to train it again",
                weights_file.display(),
                file.display()
            );
        }
        tracing::info!(model = name, "resuming: a trained model reused");
        Ok(Some((checkpoint.weights, record.seconds)))
    }

    /// Keeps the single-shot model `name` (its weights, then the record that it is finished).
    ///
    /// # Errors
    /// The weights or the record cannot be written.
    pub fn keep_trained(
        &self,
        name: &str,
        model: &ModelConfig,
        weights: &NamedTensors,
        seconds: f64,
    ) -> anyhow::Result<()> {
        let bytes = checkpoint::to_bytes(model, weights)?;
        write_creating_folder(&self.model_file(name), &bytes)?;
        let record = ModelRecord {
            seconds,
            digest: fedlnm_shared::weights::sha256_hex(&bytes),
        };
        self.write_record(&model_record_name(name), &serde_json::to_vec_pretty(&record)?)
    }

    fn model_file(&self, name: &str) -> PathBuf {
        self.out
            .join(MODELS_DIR)
            .join(format!("{}.safetensors", slug(name)))
    }

    fn write_record(&self, name: &str, bytes: &[u8]) -> anyhow::Result<()> {
        write_creating_folder(&self.record(name), bytes)
    }
}

/// [`write_atomically`] into `file`'s folder, created first if need be.
fn write_creating_folder(file: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    if let Some(parent) = file.parent() {
        std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
    }
    write_atomically(file, bytes)?;
    Ok(())
}

/// The text [`ARGUMENTS_FILE`] keeps: the version and every argument but `--out` and `--resume`.
fn arguments_text(args: &SimulateArgs) -> String {
    let kept = SimulateArgs {
        out: PathBuf::new(),
        resume: false,
        ..args.clone()
    };
    format!("fedlnm-sim {}\n{kept:#?}\n", env!("CARGO_PKG_VERSION"))
}

/// What differs between two arguments texts: line by line where they have the same lines (`kept →
/// now`), else the lines of each missing from the other (`- kept`, `+ now`).
fn differences(kept: &str, now: &str) -> String {
    let (old, new): (Vec<&str>, Vec<&str>) = (kept.lines().collect(), now.lines().collect());
    let lines: Vec<String> = if old.len() == new.len() {
        old.iter()
            .zip(&new)
            .filter(|(a, b)| a != b)
            .map(|(a, b)| format!("{} → {}", a.trim(), b.trim()))
            .collect()
    } else {
        let gone = old.iter().filter(|line| !new.contains(line));
        let added = new.iter().filter(|line| !old.contains(line));
        gone.map(|line| format!("- {}", line.trim()))
            .chain(added.map(|line| format!("+ {}", line.trim())))
            .collect()
    };
    lines.join("\n")
}

fn study_record_name(folder: &Path) -> anyhow::Result<String> {
    let name = folder
        .file_name()
        .and_then(|name| name.to_str())
        .with_context(|| format!("{} has no folder name", folder.display()))?;
    Ok(format!("{name}.json"))
}

/// The record of the single-shot model `name`, in [`PROGRESS_DIR`].
fn model_record_name(name: &str) -> String {
    format!("{}.json", slug(name))
}

/// A file name for a model's name: letters and digits kept, anything else a `-`.
fn slug(name: &str) -> String {
    name.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect()
}

fn remove_unfinished(dir: &Path) -> anyhow::Result<()> {
    if dir.exists() {
        tracing::info!(folder = %dir.display(), "resuming: an unfinished piece is made again");
        std::fs::remove_dir_all(dir).with_context(|| format!("cannot remove {}", dir.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use clap::Parser as _;
    use fedlnm_shared::model_config::Modality;

    fn args(out: &Path, extra: &[&str]) -> SimulateArgs {
        let mut argv = vec![
            "fedlnm-sim",
            "--design",
            "methods",
            "--out",
            out.to_str().unwrap(),
        ];
        argv.extend_from_slice(extra);
        SimulateArgs::try_parse_from(argv).unwrap()
    }

    #[test]
    fn a_run_keeps_its_arguments_and_resumes_only_with_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("run");
        let first = args(&out, &["--seed", "5", "--patients", "48"]);
        Progress::open(&first).unwrap();
        let kept = std::fs::read_to_string(out.join(ARGUMENTS_FILE)).unwrap();
        assert!(
            kept.contains("seed: 5") && !kept.contains(out.to_str().unwrap()),
            "{kept}"
        );

        // Without --resume a used folder is refused, as before.
        let again = Progress::open(&first).unwrap_err().to_string();
        assert!(again.contains("is not empty"), "{again}");
        // With it, the same arguments carry on; others are refused with what differs.
        let resumed = args(&out, &["--seed", "5", "--patients", "48", "--resume"]);
        assert_eq!(
            Progress::open(&resumed).unwrap().out(),
            std::fs::canonicalize(&out).unwrap()
        );
        let other = args(&out, &["--seed", "6", "--patients", "48", "--resume"]);
        let refused = Progress::open(&other).unwrap_err().to_string();
        assert!(refused.contains("seed: 5, → seed: 6,"), "{refused}");
        assert!(!refused.contains("patients"), "only what differs: {refused}");
        assert_eq!(
            std::fs::read_to_string(out.join(ARGUMENTS_FILE)).unwrap(),
            kept,
            "kept as it was"
        );

        // A folder of something else is not taken for a run; an empty one starts afresh.
        let foreign = dir.path().join("foreign");
        std::fs::create_dir(&foreign).unwrap();
        std::fs::write(foreign.join("notes.txt"), "mine").unwrap();
        let refused = Progress::open(&args(&foreign, &["--resume"]))
            .unwrap_err()
            .to_string();
        assert!(
            refused.contains("no run to resume") && refused.contains(ARGUMENTS_FILE),
            "{refused}"
        );
        let fresh = dir.path().join("fresh");
        Progress::open(&args(&fresh, &["--resume"])).unwrap();
        assert!(fresh.join(ARGUMENTS_FILE).is_file());
    }

    #[test]
    fn a_kept_model_is_reused_and_other_weights_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let run = args(&dir.path().join("run"), &["--image-size", "32"]);
        let progress = Progress::open(&run).unwrap();
        let model = super::super::study_model(&run, Modality::Multimodal);
        let weights = fedlnm_model::train::initial_weights(&model, 1);
        assert!(progress.trained("S1 alone", &model).unwrap().is_none());
        progress.keep_trained("S1 alone", &model, &weights, 12.5).unwrap();
        let (back, seconds) = progress.trained("S1 alone", &model).unwrap().unwrap();
        let bytes = |w: &NamedTensors| checkpoint::to_bytes(&model, w).unwrap();
        assert!(bytes(&back) == bytes(&weights), "the same weights");
        assert_eq!(seconds, 12.5);
        assert!(progress.trained("S2 alone", &model).unwrap().is_none());

        // Weights replaced behind the record's back are not taken for the recorded model.
        let other = fedlnm_model::train::initial_weights(&model, 2);
        checkpoint::write(&progress.model_file("S1 alone"), &model, &other).unwrap();
        let refused = progress.trained("S1 alone", &model).unwrap_err().to_string();
        assert!(
            refused.contains("S1-alone.safetensors") && refused.contains("recorded"),
            "{refused}"
        );
    }

    #[test]
    fn an_unfinished_study_or_data_folder_is_cleared_to_be_made_again() {
        let dir = tempfile::tempdir().unwrap();
        let progress = Progress::open(&args(&dir.path().join("run"), &[])).unwrap();
        let data = progress.out().join("data");
        std::fs::create_dir_all(data.join("S1")).unwrap();
        assert!(!progress.data_ready(&data).unwrap());
        assert!(!data.exists(), "half-written sites are removed");
        std::fs::create_dir_all(data.join("S1")).unwrap();
        progress.data_done(&[("S1".to_owned(), "rural", true)]).unwrap();
        assert!(progress.data_ready(&data).unwrap() && data.join("S1").exists());

        let study = progress.out().join("study-1");
        std::fs::create_dir_all(study.join("study")).unwrap();
        assert!(progress.finished_study(&study).unwrap().is_none());
        assert!(!study.exists());
    }
}

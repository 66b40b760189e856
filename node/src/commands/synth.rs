//! `fedlnm-node synth`: generate a synthetic site folder (or a contact sheet of pictures), and log the
//! oracle AUCs.

use anyhow::Context as _;
use clap::{Args, Subcommand, ValueEnum};
use fedlnm_shared::synth::{self, OutputFormat, PROFILE_NAMES, SiteProfile, SynthConfig};
use std::path::PathBuf;

/// Arguments of `synth`: either a site (the flags) or a subcommand.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct SynthArgs {
    #[command(subcommand)]
    pub action: Option<SynthAction>,
    #[command(flatten)]
    pub site: SiteArgs,
}

/// Generate one site.
#[derive(Debug, Args)]
pub struct SiteArgs {
    /// Site label (also the patient-id prefix), for example S1.
    #[arg(long, required = true)]
    pub site: Option<String>,
    /// Number of patients.
    #[arg(long, default_value_t = 800)]
    pub patients: usize,
    /// Seed: the same seed gives byte-identical output.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// Output folder (created; patients.csv, images/, synth_summary.json).
    #[arg(long, required = true)]
    pub out: Option<PathBuf>,
    /// Site profile: tertiary, community or rural.
    #[arg(long, default_value = "tertiary")]
    pub profile: String,
    /// Image file format.
    #[arg(long, value_enum, default_value_t = Format::Png)]
    pub format: Format,
    /// Side of the square pictures in pixels.
    #[arg(long, default_value_t = 256)]
    pub image_size: u32,
}

/// Image file format on the command line.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Format {
    Png,
    Dicom,
}

/// Other synth actions.
#[derive(Debug, Subcommand)]
pub enum SynthAction {
    /// Write a contact sheet: one row per profile (tertiary, community, rural), 3 LNM+ then 3 LNM- pictures.
    ContactSheet {
        /// Output PNG file.
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 7)]
        seed: u64,
        #[arg(long, default_value_t = 256)]
        image_size: u32,
    },
}

/// Runs `synth`.
pub fn run(args: SynthArgs) -> anyhow::Result<()> {
    if let Some(SynthAction::ContactSheet {
        out,
        seed,
        image_size,
    }) = args.action
    {
        let profiles: Vec<SiteProfile> = PROFILE_NAMES
            .iter()
            .filter_map(|name| SiteProfile::named(name))
            .collect();
        let sheet = synth::contact_sheet(&profiles, 3, image_size, seed);
        if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
        }
        sheet
            .save_with_format(&out, image::ImageFormat::Png)
            .with_context(|| format!("cannot write {}", out.display()))?;
        tracing::info!(file = %out.display(), "contact sheet written");
        return Ok(());
    }
    let site_args = args.site;
    // clap enforces both when no subcommand is given.
    let (Some(site), Some(out)) = (site_args.site, site_args.out) else {
        anyhow::bail!(fedlnm_shared::table::InputError::BadColumn {
            file: PathBuf::from("<command line>"),
            column: "--site/--out".to_owned(),
            problem: "both are required".to_owned(),
        });
    };
    let profile = SiteProfile::named(&site_args.profile).ok_or_else(|| {
        fedlnm_shared::table::InputError::BadColumn {
            file: PathBuf::from("<command line>"),
            column: "--profile".to_owned(),
            problem: format!(
                "unknown profile '{}' (known: {})",
                site_args.profile,
                PROFILE_NAMES.join(", ")
            ),
        }
    })?;
    let config = SynthConfig {
        site,
        n_patients: site_args.patients,
        seed: site_args.seed,
        profile,
        format: match site_args.format {
            Format::Png => OutputFormat::Png,
            Format::Dicom => OutputFormat::Dicom,
        },
        image_size: site_args.image_size,
    };
    let summary =
        synth::write_site(&config, &out).with_context(|| format!("generating site {}", config.site))?;
    println!(
        "{}",
        serde_json::to_string_pretty(&summary).context("serialising the summary")?
    );
    Ok(())
}

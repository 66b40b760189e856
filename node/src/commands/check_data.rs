//! `fedlnm-node check-data`: read a site folder exactly as training will, and report the patient flow
//! (read, included, excluded by reason) with every excluded patient and why, before the study starts.

use anyhow::Context as _;
use clap::Args;
use fedlnm_shared::data::{CropFractions, LoadOptions, Preprocess, load_site};
use std::path::PathBuf;

/// Arguments of `check-data`.
#[derive(Debug, Args)]
pub struct CheckDataArgs {
    /// The site folder (holding patients.csv and images/).
    #[arg(long)]
    pub data: PathBuf,
    /// Site label for the report (default: the folder's name).
    #[arg(long)]
    pub site: Option<String>,
    /// Side of the square model input the images are resized to, in pixels (32 to 1024).
    #[arg(long, default_value_t = 224, value_parser = clap::value_parser!(u32).range(32..=1024))]
    pub image_size: u32,
    /// Accept patients without pathology labels (for sites that only run predictions).
    #[arg(long)]
    pub allow_unlabelled: bool,
    /// Do not crop the annotation bands (the default crop fits the synthetic layout).
    #[arg(long)]
    pub no_crop: bool,
}

/// Loads the site and prints the flow table and the exclusions to standard output.
pub fn run(args: &CheckDataArgs) -> anyhow::Result<()> {
    let site = args.site.clone().unwrap_or_else(|| {
        args.data
            .file_name()
            .map_or_else(|| "site".to_owned(), |name| name.to_string_lossy().into_owned())
    });
    let options = LoadOptions {
        preprocess: Preprocess {
            size: args.image_size,
            crop: if args.no_crop {
                CropFractions::NONE
            } else {
                CropFractions::default()
            },
        },
        require_labels: !args.allow_unlabelled,
    };
    let data = load_site(&site, &args.data, &options)
        .with_context(|| format!("cannot use the site folder {}", args.data.display()))?;
    println!("{}", data.flow);
    if !data.exclusions.is_empty() {
        println!("\nExcluded patients:");
        for exclusion in &data.exclusions {
            // The error names the file, line, patient and field itself.
            println!("- {}", exclusion.error);
        }
    }
    Ok(())
}

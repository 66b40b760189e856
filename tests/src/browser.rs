//! A real browser for the report's tests: Debian's headless Chromium, run as its own process on a
//! page (a file, or a page the aggregator serves on loopback), returning the DOM the browser built or
//! a screenshot. `scripts/test` installs Chromium; a machine without it fails these tests by name.
//!
//! Chromium is started with every background service off and a dead proxy for anything that is not
//! loopback, so a test never sends traffic off the machine (the report itself fetches nothing).

use std::path::{Path, PathBuf};
use std::process::Command;

/// The Chromium binary on `PATH`.
///
/// # Panics
/// When there is none, naming the command that installs it.
#[must_use]
pub fn chromium() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for name in ["chromium", "chromium-browser", "google-chrome"] {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    panic!(
        "the report's browser tests need headless Chromium: run scripts/test (it installs Debian's \
         `chromium`), or `apt-get install chromium`"
    )
}

/// Runs Chromium headless on `url` with `extra` arguments; returns its standard output.
fn run_chromium(url: &str, extra: &[String]) -> Vec<u8> {
    let profile = tempfile::tempdir().unwrap();
    let output = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--hide-scrollbars",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-default-apps",
            "--disable-sync",
            "--disable-extensions",
            "--no-pings",
            "--dns-prefetch-disable",
            // Anything but loopback goes to a closed local port: no traffic leaves the machine.
            "--proxy-server=socks5://127.0.0.1:9",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(extra)
        .arg(url)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "chromium failed on {url}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output.stdout
}

/// The DOM Chromium built from `url`, serialised (`--dump-dom`).
#[must_use]
pub fn dump_dom(url: &str) -> String {
    String::from_utf8(run_chromium(url, &["--dump-dom".to_owned()])).unwrap()
}

/// A screenshot of `url` in a window of `size` (width, height), saved as `png` and decoded.
#[must_use]
pub fn screenshot(url: &str, png: &Path, size: (u32, u32)) -> image::RgbImage {
    run_chromium(
        url,
        &[
            format!("--window-size={},{}", size.0, size.1),
            format!("--screenshot={}", png.display()),
        ],
    );
    image::open(png).unwrap().to_rgb8()
}

/// The `file://` URL of a local file.
#[must_use]
pub fn file_url(path: &Path) -> String {
    format!("file://{}", path.canonicalize().unwrap().display())
}

/// How many times `needle` occurs in `haystack`.
#[must_use]
pub fn count(haystack: &str, needle: &str) -> usize {
    haystack.matches(needle).count()
}

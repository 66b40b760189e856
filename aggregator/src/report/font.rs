//! The figures' font: DejaVu Sans, embedded in the binary and registered with plotters once.

use super::ReportError;
use plotters::style::FontStyle;
use std::sync::OnceLock;

/// The name the figures' font is registered under (plotters' `FontFamily::SansSerif`).
pub(super) const FONT_FAMILY: &str = "sans-serif";

/// Registers the embedded DejaVu Sans for plotters' `ab_glyph` text, once per process.
///
/// DejaVu Sans (from the `dejavu` crate) is under the Bitstream Vera licence with DejaVu's changes in
/// the public domain: free to embed and redistribute, provided the notice travels with the fonts
/// (`aggregator/licenses/DejaVu-LICENSE.txt`). No system font or fontconfig is ever consulted.
pub(super) fn register_font() -> Result<(), ReportError> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let registered = *REGISTERED.get_or_init(|| {
        plotters::style::register_font(FONT_FAMILY, FontStyle::Normal, dejavu::sans::regular()).is_ok()
    });
    if registered {
        Ok(())
    } else {
        Err(ReportError::Font)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use plotters::prelude::*;

    /// The embedded font draws text with no system font: a label alone leaves dark pixels.
    #[test]
    fn the_embedded_font_draws_text() {
        register_font().unwrap();
        let (width, height) = (200_u32, 60_u32);
        let mut pixels = vec![255_u8; (width * height * 3) as usize];
        {
            let root = BitMapBackend::with_buffer(&mut pixels, (width, height)).into_drawing_area();
            root.draw(&Text::new(
                "1 − specificity",
                (5, 15),
                (FONT_FAMILY, 24).into_font(),
            ))
            .unwrap();
            root.present().unwrap();
        }
        let dark = pixels
            .chunks(3)
            .filter(|pixel| pixel.iter().all(|&c| c < 100))
            .count();
        assert!(dark > 100, "only {dark} dark pixels: no text was drawn");
    }
}

//! Drawing a line chart with plotters: the frame, the curves, the legend panel, PNG encoding, colours.

use super::ReportError;
use super::font::{FONT_FAMILY, register_font};
use image::ImageEncoder as _;
use plotters::prelude::*;

/// One line of a figure and its legend entry.
pub(super) struct Curve {
    pub(super) label: String,
    pub(super) colour: RGBColor,
    pub(super) width: u32,
    pub(super) dashed: bool,
    /// Runs of connected points (a gap splits a run).
    pub(super) runs: Vec<Vec<(f64, f64)>>,
}

/// The frame of a figure: everything but its curves.
pub(super) struct Figure<'a> {
    pub(super) file: &'static str,
    pub(super) size: (u32, u32),
    pub(super) caption: &'a str,
    pub(super) x_label: &'a str,
    pub(super) y_label: &'a str,
    pub(super) x_range: std::ops::Range<f64>,
    pub(super) y_range: std::ops::Range<f64>,
    /// The reference line (chance), dashed grey.
    pub(super) reference: [(f64, f64); 2],
    /// Label only the integer x values (rounds).
    pub(super) integer_x: bool,
}

/// Draws a line chart with its reference line and a legend panel on the right, and returns it encoded
/// as PNG.
pub(super) fn draw_figure(figure: Figure<'_>, curves: &[Curve]) -> Result<Vec<u8>, ReportError> {
    let Figure {
        file,
        size: (width, height),
        caption,
        x_label,
        y_label,
        x_range,
        y_range,
        reference,
        integer_x,
    } = figure;
    register_font()?;
    let draw_error = |error: &dyn std::fmt::Display| ReportError::Draw {
        file,
        message: error.to_string(),
    };
    let mut pixels = vec![255_u8; width as usize * height as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut pixels, (width, height)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| draw_error(&e))?;
        let (plot_area, legend_area) = root.split_horizontally(height.min(width * 2 / 3));
        let last_x = x_range.end;
        let mut chart = ChartBuilder::on(&plot_area)
            .caption(caption, (FONT_FAMILY, 26))
            .margin(20)
            .x_label_area_size(60)
            .y_label_area_size(80)
            .build_cartesian_2d(x_range, y_range)
            .map_err(|e| draw_error(&e))?;
        let x_formatter = |x: &f64| {
            if !integer_x {
                format!("{x:.1}")
            } else if (x - x.round()).abs() < 1e-9 && *x >= 0.0 && *x <= last_x {
                format!("{x:.0}")
            } else {
                String::new()
            }
        };
        chart
            .configure_mesh()
            .x_desc(x_label)
            .y_desc(y_label)
            .axis_desc_style((FONT_FAMILY, 22))
            .label_style((FONT_FAMILY, 17))
            .x_label_formatter(&x_formatter)
            .y_label_formatter(&|y: &f64| format!("{y:.1}"))
            .light_line_style(RGBColor(235, 235, 235))
            .draw()
            .map_err(|e| draw_error(&e))?;
        chart
            .draw_series(DashedLineSeries::new(
                reference.iter().copied(),
                8,
                6,
                REFERENCE_COLOUR.stroke_width(1),
            ))
            .map_err(|e| draw_error(&e))?;
        for curve in curves {
            let style = curve.colour.stroke_width(curve.width);
            for run in &curve.runs {
                if curve.dashed {
                    chart
                        .draw_series(DashedLineSeries::new(run.iter().copied(), 10, 6, style))
                        .map_err(|e| draw_error(&e))?;
                } else {
                    chart
                        .draw_series(LineSeries::new(run.iter().copied(), style))
                        .map_err(|e| draw_error(&e))?;
                }
                if integer_x {
                    chart
                        .draw_series(
                            run.iter()
                                .map(|&point| Circle::new(point, 4, curve.colour.filled())),
                        )
                        .map_err(|e| draw_error(&e))?;
                }
            }
        }

        // The legend: one entry per curve, a line sample and its label; closer and smaller for many
        // curves, so that 50 sites still fit the figure's height.
        let top = 90;
        let room = i32::try_from(height).unwrap_or(i32::MAX).saturating_sub(top + 20);
        let step = (room / i32::try_from(curves.len().max(1)).unwrap_or(i32::MAX)).clamp(10, 34);
        let font_size = (step / 2).clamp(9, 17);
        let mut y = top;
        for curve in curves {
            let sample = [(10, y), (50, y)];
            let style = curve.colour.stroke_width(curve.width);
            if curve.dashed {
                legend_area
                    .draw(&plotters::element::DashedPathElement::new(sample, 8, 5, style))
                    .map_err(|e| draw_error(&e))?;
            } else {
                legend_area
                    .draw(&PathElement::new(sample, style))
                    .map_err(|e| draw_error(&e))?;
            }
            let text_style = TextStyle::from((FONT_FAMILY, font_size).into_font()).pos(
                plotters::style::text_anchor::Pos::new(
                    plotters::style::text_anchor::HPos::Left,
                    plotters::style::text_anchor::VPos::Center,
                ),
            );
            legend_area
                .draw(&Text::new(curve.label.clone(), (60, y), text_style))
                .map_err(|e| draw_error(&e))?;
            y += step;
        }
        root.present().map_err(|e| draw_error(&e))?;
    }
    let mut png = Vec::new();
    image::codecs::png::PngEncoder::new(&mut png)
        .write_image(&pixels, width, height, image::ExtendedColorType::Rgb8)
        .map_err(|source| ReportError::Png { file, source })?;
    Ok(png)
}

/// The pools' curves: black for the training sites, dark grey (dashed) for the validation sites.
pub(super) const POOLED_TRAIN_COLOUR: RGBColor = RGBColor(0, 0, 0);
pub(super) const POOLED_VALIDATION_COLOUR: RGBColor = RGBColor(90, 90, 90);

/// The colour of the `index`-th site's curve.
pub(super) fn site_colour(index: usize) -> RGBColor {
    SITE_COLOURS.get(index).copied().unwrap_or_else(|| {
        let (r, g, b) = Palette99::pick(index).rgb();
        RGBColor(r, g, b)
    })
}

/// The reference line (chance).
const REFERENCE_COLOUR: RGBColor = RGBColor(160, 160, 160);

/// Distinct, saturated colours for the first sites (Tableau 10 without its grey, which the pools use);
/// plotters' 99-colour palette after them.
const SITE_COLOURS: [RGBColor; 9] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

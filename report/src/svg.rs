//! The HTML report's figures as inline SVG: line charts (ROC, calibration, decision curve, AUC by
//! round) and forest plots. Each figure is plain SVG elements with classes naming what they draw
//! (`series`, `point`, `ci`, `summary`, ...), so that a reader's browser needs nothing else and a test
//! can find every drawn element in the page's DOM. Text is SVG text in the page's font: no font is
//! embedded and nothing is fetched.

use maud::{Markup, html};

/// One line of a chart (runs of connected points; a gap splits a run) and its legend entry.
pub(crate) struct Series {
    pub(crate) label: String,
    /// A CSS colour.
    pub(crate) colour: String,
    pub(crate) dashed: bool,
    /// Draw a dot at every point (rounds, calibration groups).
    pub(crate) markers: bool,
    pub(crate) runs: Vec<Vec<(f64, f64)>>,
}

/// A point drawn over the series as an open circle (the Youden point of a ROC curve); its label is
/// the circle's tooltip (the legend says what it is).
pub(crate) struct Marked {
    pub(crate) x: f64,
    pub(crate) y: f64,
    pub(crate) label: String,
    pub(crate) colour: String,
}

/// A line chart: axes, ticks, a dashed reference line, the series clipped to the plot area, marked
/// points, and the legend below as an HTML list.
pub(crate) struct LineChart<'a> {
    /// The figure's class and the id of its clip path: unique in the page.
    pub(crate) id: &'a str,
    pub(crate) title: &'a str,
    pub(crate) x_label: &'a str,
    pub(crate) y_label: &'a str,
    pub(crate) x: (f64, f64),
    pub(crate) y: (f64, f64),
    pub(crate) x_ticks: Vec<f64>,
    pub(crate) y_ticks: Vec<f64>,
    /// Decimals of the tick labels.
    pub(crate) x_decimals: usize,
    pub(crate) y_decimals: usize,
    pub(crate) reference: Option<[(f64, f64); 2]>,
    pub(crate) series: Vec<Series>,
    pub(crate) marked: Vec<Marked>,
}

const WIDTH: f64 = 640.0;
const HEIGHT: f64 = 420.0;
const LEFT: f64 = 64.0;
const RIGHT: f64 = 16.0;
const TOP: f64 = 14.0;
const BOTTOM: f64 = 52.0;

/// Ticks from `low` to `high` (inclusive, within rounding) every `step`.
pub(crate) fn ticks(low: f64, high: f64, step: f64) -> Vec<f64> {
    let count = ((high - low) / step + 1e-9).floor();
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // A handful of ticks.
    let count = count.max(0.0) as usize;
    (0..=count).map(|i| low + step * i as f64).collect()
}

/// A number for an SVG attribute: two decimals are sub-pixel.
fn px(value: f64) -> String {
    format!("{value:.2}")
}

/// Where a data value lands on an axis of `length` pixels starting at `start`.
fn scale(value: f64, (low, high): (f64, f64), start: f64, length: f64) -> f64 {
    start + (value - low) / (high - low) * length
}

impl LineChart<'_> {
    fn to_x(&self, x: f64) -> f64 {
        scale(x, self.x, LEFT, WIDTH - LEFT - RIGHT)
    }

    fn to_y(&self, y: f64) -> f64 {
        scale(y, self.y, HEIGHT - BOTTOM, -(HEIGHT - TOP - BOTTOM))
    }

    fn path(&self, run: &[(f64, f64)]) -> String {
        run.iter()
            .filter(|(x, y)| x.is_finite() && y.is_finite())
            .map(|&(x, y)| format!("{},{}", px(self.to_x(x)), px(self.to_y(y))))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// The figure: the SVG and its legend.
    pub(crate) fn render(&self) -> Markup {
        let clip = format!("clip-{}", self.id);
        let (plot_left, plot_right) = (LEFT, WIDTH - RIGHT);
        let (plot_top, plot_bottom) = (TOP, HEIGHT - BOTTOM);
        html! {
            figure class={ "chart " (self.id) } {
                svg xmlns="http://www.w3.org/2000/svg" viewBox={ "0 0 " (WIDTH) " " (HEIGHT) }
                    role="img" aria-label=(self.title) {
                    // The clip leaves room for a marker on the frame (an observed rate of 0 or 1).
                    defs { clipPath id=(clip) {
                        rect x=(px(plot_left - 6.0)) y=(px(plot_top - 6.0)) width=(px(plot_right - plot_left + 12.0))
                            height=(px(plot_bottom - plot_top + 12.0)) {}
                    } }
                    g class="grid" {
                        @for &x in &self.x_ticks {
                            line x1=(px(self.to_x(x))) x2=(px(self.to_x(x))) y1=(px(plot_top))
                                y2=(px(plot_bottom)) {}
                        }
                        @for &y in &self.y_ticks {
                            line x1=(px(plot_left)) x2=(px(plot_right)) y1=(px(self.to_y(y)))
                                y2=(px(self.to_y(y))) {}
                        }
                    }
                    g class="axis" {
                        rect class="frame" x=(px(plot_left)) y=(px(plot_top)) width=(px(plot_right - plot_left))
                            height=(px(plot_bottom - plot_top)) {}
                        @for &x in &self.x_ticks {
                            text x=(px(self.to_x(x))) y=(px(plot_bottom + 18.0)) text-anchor="middle" {
                                (format!("{x:.*}", self.x_decimals))
                            }
                        }
                        @for &y in &self.y_ticks {
                            text x=(px(plot_left - 6.0)) y=(px(self.to_y(y) + 4.0)) text-anchor="end" {
                                (format!("{y:.*}", self.y_decimals))
                            }
                        }
                        text class="label" x=(px((plot_left + plot_right) / 2.0)) y=(px(HEIGHT - 10.0))
                            text-anchor="middle" { (self.x_label) }
                        text class="label" x="16" y=(px((plot_top + plot_bottom) / 2.0)) text-anchor="middle"
                            transform={ "rotate(-90 16 " (px((plot_top + plot_bottom) / 2.0)) ")" } { (self.y_label) }
                    }
                    g clip-path={ "url(#" (clip) ")" } {
                        @if let Some([(x1, y1), (x2, y2)]) = self.reference {
                            line class="reference" x1=(px(self.to_x(x1))) y1=(px(self.to_y(y1)))
                                x2=(px(self.to_x(x2))) y2=(px(self.to_y(y2))) {}
                        }
                        @for series in &self.series {
                            g class="series" data-label=(series.label) {
                                @for run in &series.runs {
                                    polyline points=(self.path(run)) fill="none" stroke=(series.colour)
                                        stroke-width="2"
                                        stroke-dasharray=[series.dashed.then_some("7 4")] {}
                                    @if series.markers {
                                        @for &(x, y) in run {
                                            circle class="point" cx=(px(self.to_x(x))) cy=(px(self.to_y(y)))
                                                r="3.5" fill=(series.colour) {}
                                        }
                                    }
                                }
                            }
                        }
                        @for mark in &self.marked {
                            g class="marked" {
                                circle cx=(px(self.to_x(mark.x))) cy=(px(self.to_y(mark.y))) r="6"
                                    fill="white" stroke=(mark.colour) stroke-width="2.5" {
                                    title { (mark.label) }
                                }
                            }
                        }
                    }
                }
                (legend(&self.series))
            }
        }
    }
}

/// The legend of a figure, as an HTML list (it wraps and never overlaps the plot).
fn legend(series: &[Series]) -> Markup {
    html! {
        ul class="legend" {
            @for series in series {
                li {
                    span class={ "swatch" @if series.dashed { " dashed" } }
                        style={ "border-color: " (series.colour) } {}
                    (series.label)
                }
            }
        }
    }
}

/// One row of a forest plot: a site's estimate with its CI, or a pooled summary (a diamond, with the
/// prediction interval as a line when there is one).
pub(crate) struct ForestRow {
    pub(crate) label: String,
    pub(crate) estimate: f64,
    pub(crate) lower: f64,
    pub(crate) upper: f64,
    /// The values as written in the right-hand column.
    pub(crate) text: String,
    pub(crate) kind: RowKind,
}

pub(crate) enum RowKind {
    /// A site (or a term): a square and its CI.
    Estimate,
    /// A pooled estimate: a diamond over its CI, and the prediction interval.
    Summary { prediction: Option<(f64, f64)> },
    /// A heading between groups of rows; the numbers are not drawn.
    Heading,
}

/// A forest plot: one row per estimate, a vertical reference line, an x axis (log-scaled for odds
/// ratios).
pub(crate) struct Forest<'a> {
    pub(crate) id: &'a str,
    pub(crate) title: &'a str,
    pub(crate) x_label: &'a str,
    pub(crate) log_scale: bool,
    pub(crate) x: (f64, f64),
    pub(crate) ticks: Vec<f64>,
    /// Decimals of the tick labels.
    pub(crate) tick_decimals: usize,
    pub(crate) reference: Option<f64>,
    pub(crate) rows: Vec<ForestRow>,
}

const FOREST_WIDTH: f64 = 900.0;
const FOREST_LABEL: f64 = 330.0;
const FOREST_TEXT: f64 = 180.0;
const FOREST_ROW: f64 = 26.0;

impl Forest<'_> {
    fn transform(&self, value: f64) -> f64 {
        if self.log_scale { value.ln() } else { value }
    }

    /// The pixel column of a value, clamped to the plot (an interval past the axis ends at its edge).
    fn to_x(&self, value: f64) -> f64 {
        let range = (self.transform(self.x.0), self.transform(self.x.1));
        let left = FOREST_LABEL;
        let width = FOREST_WIDTH - FOREST_LABEL - FOREST_TEXT;
        scale(self.transform(value), range, left, width).clamp(left, left + width)
    }

    pub(crate) fn render(&self) -> Markup {
        let top = 30.0;
        #[allow(clippy::cast_precision_loss)] // A few dozen rows.
        let bottom = top + FOREST_ROW * self.rows.len() as f64;
        let height = bottom + 48.0;
        let (left, right) = (FOREST_LABEL, FOREST_WIDTH - FOREST_TEXT);
        html! {
            figure class={ "forest " (self.id) } {
                svg xmlns="http://www.w3.org/2000/svg" viewBox={ "0 0 " (FOREST_WIDTH) " " (px(height)) }
                    role="img" aria-label=(self.title) {
                    text class="label" x=(px(FOREST_WIDTH - 4.0)) y="18" text-anchor="end" { "estimate (95% CI)" }
                    @if let Some(reference) = self.reference {
                        line class="reference" x1=(px(self.to_x(reference))) x2=(px(self.to_x(reference)))
                            y1=(px(top)) y2=(px(bottom)) {}
                    }
                    @for (index, row) in self.rows.iter().enumerate() {
                        @let y = top + FOREST_ROW * (index as f64 + 0.5);
                        @match row.kind {
                            RowKind::Heading => {
                                text class="heading" x="4" y=(px(y + 4.0)) { (row.label) }
                            }
                            RowKind::Estimate => {
                                g class="row" data-label=(row.label) {
                                    text x="12" y=(px(y + 4.0)) { (row.label) }
                                    line class="ci" x1=(px(self.to_x(row.lower))) x2=(px(self.to_x(row.upper)))
                                        y1=(px(y)) y2=(px(y)) {}
                                    rect class="estimate" x=(px(self.to_x(row.estimate) - 5.0)) y=(px(y - 5.0))
                                        width="10" height="10" {}
                                    text x=(px(FOREST_WIDTH - 4.0)) y=(px(y + 4.0)) text-anchor="end" { (row.text) }
                                }
                            }
                            RowKind::Summary { prediction } => {
                                g class="summary" data-label=(row.label) {
                                    text class="summary-label" x="4" y=(px(y + 4.0)) { (row.label) }
                                    @if let Some((low, high)) = prediction {
                                        line class="prediction" x1=(px(self.to_x(low))) x2=(px(self.to_x(high)))
                                            y1=(px(y)) y2=(px(y)) {}
                                    }
                                    polygon points=(format!(
                                        "{},{} {},{} {},{} {},{}",
                                        px(self.to_x(row.lower)), px(y),
                                        px(self.to_x(row.estimate)), px(y - 8.0),
                                        px(self.to_x(row.upper)), px(y),
                                        px(self.to_x(row.estimate)), px(y + 8.0)
                                    )) {}
                                    text x=(px(FOREST_WIDTH - 4.0)) y=(px(y + 4.0)) text-anchor="end" { (row.text) }
                                }
                            }
                        }
                    }
                    g class="axis" {
                        line x1=(px(left)) x2=(px(right)) y1=(px(bottom)) y2=(px(bottom)) {}
                        @for &tick in &self.ticks {
                            line x1=(px(self.to_x(tick))) x2=(px(self.to_x(tick))) y1=(px(bottom))
                                y2=(px(bottom + 5.0)) {}
                            text x=(px(self.to_x(tick))) y=(px(bottom + 19.0)) text-anchor="middle" {
                                (format!("{tick:.*}", self.tick_decimals))
                            }
                        }
                        text class="label" x=(px((left + right) / 2.0)) y=(px(bottom + 40.0)) text-anchor="middle" {
                            (self.x_label)
                        }
                    }
                }
            }
        }
    }
}

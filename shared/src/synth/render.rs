//! Colour Doppler rendering of one patient's thyroid nodule (transverse view, linear probe): B-mode
//! speckle over anatomy (skin, strap muscles, thyroid lobe, trachea, carotid), depth attenuation and
//! time-gain, a hypoechoic nodule whose size, shape, margin, position, echotexture and punctate foci
//! follow the truth, a Doppler box with red/blue flow, and burned-in annotation bands.

use super::cohort::PatientTruth;
use super::font;
use super::profile::{ColourMap, SiteProfile};
use crate::data::report::{CapsuleContact, Lobe, Vascularity};
use image::{Rgb, RgbImage};
use rand::{Rng, SeedableRng as _};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution as _, StandardNormal};
use std::f64::consts::PI;

/// Layout of the canvas as fractions: the annotation band on top and the depth scale on the right are
/// what [`crate::data::CropFractions::SYNTHETIC`] cuts away.
const BAND_TOP: f64 = 0.11;
const FIELD_RIGHT: f64 = 0.93;
const FIELD_LEFT: f64 = 0.015;

/// A single-channel float picture, row-major.
struct Plane {
    width: usize,
    height: usize,
    values: Vec<f64>,
}

impl Plane {
    fn new(width: usize, height: usize, value: f64) -> Self {
        Self {
            width,
            height,
            values: vec![value; width * height],
        }
    }
}

/// Nodule geometry in pixels.
struct Nodule {
    cx: f64,
    cy: f64,
    rx: f64,
    ry: f64,
    harmonics: Vec<(f64, f64, f64)>,
}

impl Nodule {
    /// Radius scale at angle `theta` (1 = the ellipse; lobulation and spiculation add to it).
    fn radius_scale(&self, theta: f64) -> f64 {
        1.0 + self
            .harmonics
            .iter()
            .map(|&(k, amplitude, phase)| amplitude * (k * theta + phase).sin())
            .sum::<f64>()
    }

    /// Signed normalised distance: < 1 inside, 1 on the margin.
    fn normalised_radius(&self, x: f64, y: f64) -> f64 {
        let (dx, dy) = ((x - self.cx) / self.rx, (y - self.cy) / self.ry);
        let theta = dy.atan2(dx);
        (dx * dx + dy * dy).sqrt() / self.radius_scale(theta)
    }
}

/// Renders the patient's picture at `size`×`size` pixels. Deterministic for the patient's render seed.
#[must_use]
pub fn render(truth: &PatientTruth, profile: &SiteProfile, site_label: &str, size: u32) -> RgbImage {
    let mut rng = ChaCha8Rng::seed_from_u64(truth.render_seed);
    let n = size.max(32) as usize;
    let scale = n as f64 / 256.0;
    let field = Field::new(n);

    // Field depth adapts to the nodule, as a sonographer sets it; the nodule keeps within the lobe.
    let depth_mm = (truth.size_mm * 2.3).max(40.0);
    let px_per_mm = field.height / depth_mm;
    let thyroid_medial_right = truth.lobe != Lobe::Left;
    let reflectivity = anatomy(&field, truth, px_per_mm, thyroid_medial_right, &mut rng);
    let (mut echo, nodule) = reflectivity;

    // Multiplicative Rayleigh speckle: magnitude of a blurred complex Gaussian field, mean 1.
    let speckle = speckle(n, profile.speckle_px * scale, &mut rng);
    for (value, grain) in echo.values.iter_mut().zip(&speckle.values) {
        // Speckle partly smoothed, as scanners' speckle reduction does.
        *value *= grain.powf(0.7);
    }
    // Depth attenuation left after time-gain compensation, a slightly uneven TGC, log compression.
    let mut grey = Plane::new(n, n, 0.0);
    let log_norm = (1.0 + profile.dynamic_range * 2.2).ln();
    for y in 0..n {
        let depth = ((y as f64 - field.top) / field.height).clamp(0.0, 1.0);
        let tgc = (-profile.residual_attenuation * depth).exp() * (1.0 + 0.06 * (depth * 7.0).sin());
        for x in 0..n {
            let i = y * n + x;
            let intensity = echo.values[i] * tgc * profile.gain;
            grey.values[i] = ((1.0 + profile.dynamic_range * intensity).ln() / log_norm).clamp(0.0, 1.0);
        }
    }
    if profile.blur_px > 0.0 {
        grey = gaussian_blur(&grey, profile.blur_px * scale, profile.blur_px * scale);
    }

    let mut picture = RgbImage::new(n as u32, n as u32);
    for y in 0..n {
        for x in 0..n {
            let inside = field.contains(x as f64, y as f64);
            let g = if inside { grey.values[y * n + x] } else { 0.0 };
            let level = to_byte(g * 255.0);
            picture.put_pixel(x as u32, y as u32, Rgb([level, level, level]));
        }
    }
    doppler(&mut picture, &field, &nodule, truth, profile, scale, &mut rng);
    annotate(&mut picture, &field, truth, profile, site_label, depth_mm, scale);
    picture
}

/// The imaging field in pixels.
struct Field {
    left: f64,
    right: f64,
    top: f64,
    bottom: f64,
    width: f64,
    height: f64,
}

impl Field {
    fn new(n: usize) -> Self {
        let size = n as f64;
        let (left, right, top, bottom) = (
            FIELD_LEFT * size,
            FIELD_RIGHT * size,
            BAND_TOP * size + 2.0,
            size - 1.0,
        );
        Self {
            left,
            right,
            top,
            bottom,
            width: right - left,
            height: bottom - top,
        }
    }

    fn contains(&self, x: f64, y: f64) -> bool {
        x >= self.left && x < self.right && y >= self.top && y < self.bottom
    }

    /// Pixel position of field fractions (lateral u, depth v).
    fn at(&self, u: f64, v: f64) -> (f64, f64) {
        (self.left + u * self.width, self.top + v * self.height)
    }
}

/// Tissue reflectivity (thyroid parenchyma = 1) and the nodule's geometry.
fn anatomy(
    field: &Field,
    truth: &PatientTruth,
    px_per_mm: f64,
    medial_right: bool,
    rng: &mut ChaCha8Rng,
) -> (Plane, Nodule) {
    let n = (field.bottom + 1.0) as usize;
    let mut echo = Plane::new(n, n, 0.0);
    let side = |u: f64| if medial_right { u } else { 1.0 - u };

    // Nodule size and shape (taller-than-wide means the antero-posterior axis is the longer).
    let radius = 0.5 * truth.size_mm * px_per_mm;
    let (rx, ry) = if truth.taller_than_wide {
        (radius * 0.8, radius)
    } else {
        (radius, radius * 0.72)
    };
    // Thyroid lobe: an ellipse that holds the nodule.
    let (tcx, tcy) = field.at(side(0.46), 0.47);
    let tax = (0.3 * field.width).max(rx * 1.35);
    let tay = (0.2 * field.height).max(ry * 1.3);
    // Nodule position: deep inside, touching, or breaking through the anterior capsule.
    let (ncx, ncy) = match truth.capsule_contact {
        CapsuleContact::None => (
            tcx + rng.random_range(-0.25..0.25) * (tax - rx),
            tcy + 0.1 * (tay - ry),
        ),
        CapsuleContact::Under25 => (tcx + rng.random_range(-0.2..0.2) * tax, tcy - tay + ry * 1.02),
        CapsuleContact::Over25 => {
            let protrusion = if truth.extrathyroidal_extension {
                0.55
            } else {
                0.85
            };
            (
                tcx + rng.random_range(-0.15..0.15) * tax,
                tcy - tay + ry * protrusion,
            )
        }
    };
    let amplitude = 0.02 + 0.2 * truth.margin_irregularity;
    let harmonics = (0..4)
        .map(|i| {
            let k = f64::from(3 + 2 * i) + f64::from(rng.random_range(0..2_u8));
            (
                k,
                amplitude * rng.random_range(0.4..1.0) / (1.0 + 0.25 * f64::from(i)),
                rng.random_range(0.0..2.0 * PI),
            )
        })
        .collect();
    let nodule = Nodule {
        cx: ncx,
        cy: ncy,
        rx,
        ry,
        harmonics,
    };

    let (trx, try_) = field.at(side(0.97), 0.34);
    let trachea_r = 0.12 * field.height;
    let (car_x, car_y) = field.at(side(0.1), 0.64);
    let carotid_r = 0.085 * field.height;
    let (jug_x, jug_y) = field.at(side(0.02), 0.45);
    // Aggressiveness darkens the nodule exponentially, i.e. linearly in the log-compressed grey levels,
    // with little texture noise, so that it stays legible at a 64-px model input
    // (`tests/synth_legibility.rs`): it carries the largest image-borne effect of the true model.
    let nodule_echo = (0.36 * (-0.45 * truth.aggressiveness).exp()).clamp(0.03, 1.0);
    let heterogeneity = 0.06 + 0.05 * truth.aggressiveness.max(0.0);
    let texture = smooth_noise(n, 3.5 * px_per_mm.max(1.0), rng);
    let septa = smooth_noise(n, 2.0, rng);

    for y in 0..n {
        for x in 0..n {
            let (xf, yf) = (x as f64, y as f64);
            if !field.contains(xf, yf) {
                continue;
            }
            let depth = (yf - field.top) / field.height;
            let u = (xf - field.left) / field.width;
            // Superficial layers.
            let mut r = if depth < 0.025 {
                1.7
            } else if depth < 0.1 {
                0.45 + 0.5 * (septa.values[y * n + x] * 3.0).max(0.0) * ((depth * 90.0).sin().abs())
            } else {
                0.55
            };
            // Strap muscles over the thyroid, sternocleidomastoid laterally: hypoechoic, fibrillar.
            let strap = ellipse(
                xf,
                yf,
                field.at(side(0.5), 0.155),
                0.42 * field.width,
                0.055 * field.height,
            );
            let scm = ellipse(
                xf,
                yf,
                field.at(side(0.08), 0.2),
                0.2 * field.width,
                0.08 * field.height,
            );
            if strap < 1.0 || scm < 1.0 {
                r = 0.3 + 0.18 * (yf * 1.3 / field.height.max(1.0) * 60.0).sin().abs();
            }
            // Deep: prevertebral muscles, then fading.
            if depth > 0.78 + 0.04 * (u * 7.0).sin() {
                r = 0.4 + 0.12 * (u * 9.0 + depth * 20.0).sin();
            }
            // Thyroid lobe with its capsule (a thin bright line).
            let lobe_theta = (yf - tcy).atan2(xf - tcx);
            let lobe = ellipse(xf, yf, (tcx, tcy), tax, tay) / (1.0 + 0.07 * (3.0 * lobe_theta + 0.6).cos());
            if lobe < 1.0 {
                r = 1.0 + 0.08 * texture.values[y * n + x];
            }
            if (lobe - 1.0).abs() < 0.035 {
                r = 1.5;
            }
            // Trachea: bright anterior cartilage/air line, reverberation and shadow behind.
            let tr = ((xf - trx).powi(2) + (yf - try_).powi(2)).sqrt() / trachea_r;
            if tr < 1.0 {
                r = if tr > 0.85 { 0.3 } else { 0.08 };
            }
            if yf > try_ - 0.62 * trachea_r
                && (xf - trx).abs() < 0.75 * trachea_r
                && (0.6..0.75).contains(&tr)
            {
                r = 2.5;
            }
            if yf > try_ - 0.3 * trachea_r && (xf - trx).abs() < 0.55 * trachea_r * (1.0 - 0.3 * depth) {
                let reverb = ((yf - try_) / (0.22 * trachea_r)).fract();
                r = if reverb < 0.12 { 0.5 } else { 0.07 };
            }
            // Carotid artery and jugular vein: anechoic lumens with bright walls.
            let ca = ((xf - car_x).powi(2) + (yf - car_y).powi(2)).sqrt() / carotid_r;
            if ca < 1.12 {
                r = if ca > 0.95 { 1.6 } else { 0.03 };
            }
            if ellipse(xf, yf, (jug_x, jug_y), 0.1 * field.width, 0.04 * field.height) < 1.0 {
                r = 0.04;
            }
            // The nodule: hypoechoic, heterogeneous with aggressiveness, margin by irregularity.
            let nr = nodule.normalised_radius(xf, yf);
            if nr < 1.06 {
                let inner = nodule_echo * (1.0 + heterogeneity * 2.0 * texture.values[y * n + x]);
                let edge = ((1.06 - nr) / 0.12).clamp(0.0, 1.0);
                r = r * (1.0 - edge) + inner.max(0.03) * edge;
            }
            // Posterior attenuation behind the solid nodule.
            if yf > nodule.cy + nodule.ry && (xf - nodule.cx).abs() < nodule.rx * 0.8 && lobe < 1.0 {
                r *= 0.8;
            }
            echo.values[y * n + x] = r;
        }
    }
    // Punctate echogenic foci (microcalcifications): bright spots a few pixels wide inside the nodule.
    let sigma = 0.0065 * field.width.max(1.0) / (FIELD_RIGHT - FIELD_LEFT);
    for _ in 0..truth.microcalcifications {
        let angle = rng.random_range(0.0..2.0 * PI);
        let distance = rng.random_range(0.0..0.7_f64).sqrt();
        let (fx, fy) = (
            nodule.cx + distance * rx * angle.cos(),
            nodule.cy + distance * ry * angle.sin(),
        );
        add_spot(&mut echo, fx, fy, sigma, 7.0);
    }
    (echo, nodule)
}

/// `((x-cx)/ax)^2 + ((y-cy)/ay)^2`, square-rooted: < 1 inside the ellipse.
fn ellipse(x: f64, y: f64, centre: (f64, f64), ax: f64, ay: f64) -> f64 {
    (((x - centre.0) / ax).powi(2) + ((y - centre.1) / ay).powi(2)).sqrt()
}

fn add_spot(plane: &mut Plane, cx: f64, cy: f64, sigma: f64, peak: f64) {
    let reach = (3.0 * sigma).ceil() as i64;
    let (x0, y0) = (cx.round() as i64, cy.round() as i64);
    for y in (y0 - reach)..=(y0 + reach) {
        for x in (x0 - reach)..=(x0 + reach) {
            if x < 0 || y < 0 || x >= plane.width as i64 || y >= plane.height as i64 {
                continue;
            }
            let d2 = (x as f64 - cx).powi(2) + (y as f64 - cy).powi(2);
            let index = y as usize * plane.width + x as usize;
            plane.values[index] += peak * (-d2 / (2.0 * sigma * sigma)).exp();
        }
    }
}

/// Rayleigh speckle with grain `grain_px` (lateral), mean about 1.
fn speckle(n: usize, grain_px: f64, rng: &mut ChaCha8Rng) -> Plane {
    let mut real = Plane::new(n, n, 0.0);
    let mut imaginary = Plane::new(n, n, 0.0);
    for value in real.values.iter_mut().chain(imaginary.values.iter_mut()) {
        *value = StandardNormal.sample(rng);
    }
    let (sx, sy) = (grain_px.max(0.3), (0.6 * grain_px).max(0.3));
    let real = gaussian_blur(&real, sx, sy);
    let imaginary = gaussian_blur(&imaginary, sx, sy);
    let mut magnitude = Plane::new(n, n, 0.0);
    for (i, value) in magnitude.values.iter_mut().enumerate() {
        *value = (real.values[i].powi(2) + imaginary.values[i].powi(2)).sqrt();
    }
    let mean = magnitude.values.iter().sum::<f64>() / magnitude.values.len().max(1) as f64;
    if mean > 0.0 {
        magnitude.values.iter_mut().for_each(|value| *value /= mean);
    }
    magnitude
}

/// Smooth noise of about unit standard deviation with correlation length `scale_px`: Gaussian values on
/// a coarse grid, smoothly (cosine) interpolated. Cheap at any scale.
fn smooth_noise(n: usize, scale_px: f64, rng: &mut ChaCha8Rng) -> Plane {
    let step = scale_px.max(1.0);
    let cells = (n as f64 / step).ceil() as usize + 2;
    let grid: Vec<f64> = (0..cells * cells).map(|_| StandardNormal.sample(rng)).collect();
    let mut plane = Plane::new(n, n, 0.0);
    for y in 0..n {
        let gy = y as f64 / step;
        let (y0, ty) = (gy.floor() as usize, smoothstep(gy.fract()));
        for x in 0..n {
            let gx = x as f64 / step;
            let (x0, tx) = (gx.floor() as usize, smoothstep(gx.fract()));
            let at = |i: usize, j: usize| grid[(j.min(cells - 1)) * cells + i.min(cells - 1)];
            let top = at(x0, y0) * (1.0 - tx) + at(x0 + 1, y0) * tx;
            let bottom = at(x0, y0 + 1) * (1.0 - tx) + at(x0 + 1, y0 + 1) * tx;
            plane.values[y * n + x] = top * (1.0 - ty) + bottom * ty;
        }
    }
    plane
}

fn smoothstep(t: f64) -> f64 {
    t * t * (3.0 - 2.0 * t)
}

/// Separable Gaussian blur with clamped edges.
fn gaussian_blur(plane: &Plane, sigma_x: f64, sigma_y: f64) -> Plane {
    let horizontal = blur_pass(plane, sigma_x, true);
    blur_pass(&horizontal, sigma_y, false)
}

fn blur_pass(plane: &Plane, sigma: f64, horizontal: bool) -> Plane {
    if sigma < 0.25 {
        return Plane {
            values: plane.values.clone(),
            ..*plane
        };
    }
    let radius = (3.0 * sigma).ceil() as i64;
    let kernel: Vec<f64> = (-radius..=radius)
        .map(|i| (-(i * i) as f64 / (2.0 * sigma * sigma)).exp())
        .collect();
    let total: f64 = kernel.iter().sum();
    let (w, h) = (plane.width as i64, plane.height as i64);
    let mut out = Plane::new(plane.width, plane.height, 0.0);
    for y in 0..h {
        for x in 0..w {
            let mut acc = 0.0;
            for (k, weight) in kernel.iter().enumerate() {
                let offset = k as i64 - radius;
                let (sx, sy) = if horizontal {
                    ((x + offset).clamp(0, w - 1), y)
                } else {
                    (x, (y + offset).clamp(0, h - 1))
                };
                acc += weight * plane.values[(sy * w + sx) as usize];
            }
            out.values[(y * w + x) as usize] = acc / total;
        }
    }
    out
}

/// The Doppler box around the nodule and its red/blue flow, following the vascularity pattern.
fn doppler(
    picture: &mut RgbImage,
    field: &Field,
    nodule: &Nodule,
    truth: &PatientTruth,
    profile: &SiteProfile,
    scale: f64,
    rng: &mut ChaCha8Rng,
) {
    let half_w = (nodule.rx * 1.7).max(22.0 * scale);
    let half_h = (nodule.ry * 1.6).max(18.0 * scale);
    let x0 = (nodule.cx - half_w).max(field.left + 1.0);
    let x1 = (nodule.cx + half_w).min(field.right - 2.0);
    let y0 = (nodule.cy - half_h).max(field.top + 1.0);
    let y1 = (nodule.cy + half_h).min(field.bottom - 1.0);
    let mut flow = Plane::new(picture.width() as usize, picture.height() as usize, 0.0);
    let thickness = 1.7 * scale.max(0.5);
    let vessel = |points: &[(f64, f64)], velocity: f64, flow: &mut Plane| {
        for pair in points.windows(2) {
            let steps = (((pair[1].0 - pair[0].0).powi(2) + (pair[1].1 - pair[0].1).powi(2)).sqrt() * 2.0)
                .ceil() as usize;
            for s in 0..=steps.max(1) {
                let t = s as f64 / steps.max(1) as f64;
                let (px, py) = (
                    pair[0].0 + t * (pair[1].0 - pair[0].0),
                    pair[0].1 + t * (pair[1].1 - pair[0].1),
                );
                stamp(flow, px, py, thickness, velocity);
            }
        }
    };
    let rim = |theta: f64, factor: f64| {
        let r = nodule.radius_scale(theta) * factor;
        (
            nodule.cx + r * nodule.rx * theta.cos(),
            nodule.cy + r * nodule.ry * theta.sin(),
        )
    };
    let peripheral = matches!(truth.vascularity, Vascularity::Peripheral | Vascularity::Mixed);
    let internal = matches!(truth.vascularity, Vascularity::Intranodular | Vascularity::Mixed);
    if peripheral {
        for _ in 0..rng.random_range(2..5) {
            let start = rng.random_range(0.0..2.0 * PI);
            let span = rng.random_range(0.5..1.4);
            let points: Vec<(f64, f64)> = (0..=12)
                .map(|i| rim(start + span * f64::from(i) / 12.0, 1.1))
                .collect();
            let velocity = if rng.random_bool(0.5) { 1.0 } else { -1.0 } * rng.random_range(0.4..1.0);
            vessel(&points, velocity, &mut flow);
        }
    }
    if internal {
        for _ in 0..rng.random_range(2..5) {
            let theta = rng.random_range(0.0..2.0 * PI);
            let bend = rng.random_range(-0.5..0.5);
            let points: Vec<(f64, f64)> = (0..=8)
                .map(|i| rim(theta + bend * f64::from(i) / 8.0, 1.05 - 0.09 * f64::from(i)))
                .collect();
            let velocity = if rng.random_bool(0.5) { 1.0 } else { -1.0 } * rng.random_range(0.3..0.9);
            vessel(&points, velocity, &mut flow);
        }
    }
    // A few small parenchymal vessels in the box, outside the nodule.
    for _ in 0..rng.random_range(1..4) {
        let (sx, sy) = (
            rng.random_range(x0..x1.max(x0 + 1.0)),
            rng.random_range(y0..y1.max(y0 + 1.0)),
        );
        let angle = rng.random_range(0.0..PI);
        let length = rng.random_range(4.0..10.0) * scale;
        let points = [(sx, sy), (sx + length * angle.cos(), sy + length * angle.sin())];
        vessel(&points, if rng.random_bool(0.5) { 0.5 } else { -0.5 }, &mut flow);
    }
    let width = picture.width() as usize;
    for y in (y0 as u32)..=(y1 as u32) {
        for x in (x0 as u32)..=(x1 as u32) {
            let velocity = flow.values[y as usize * width + x as usize];
            if velocity.abs() < 0.12 {
                continue;
            }
            let v = velocity.abs().min(1.0);
            let colour = match (profile.colour_map, velocity > 0.0) {
                (ColourMap::Classic, true) => [110.0 + 145.0 * v, 10.0 + 30.0 * v * v, 5.0],
                (ColourMap::Classic, false) => [5.0, 20.0 + 60.0 * v * v, 110.0 + 145.0 * v],
                (ColourMap::Velocity, true) => [170.0 + 85.0 * v, 30.0 + 200.0 * v * v, 10.0],
                (ColourMap::Velocity, false) => [10.0, 40.0 + 190.0 * v * v, 170.0 + 85.0 * v],
            };
            picture.put_pixel(
                x,
                y,
                Rgb([to_byte(colour[0]), to_byte(colour[1]), to_byte(colour[2])]),
            );
        }
    }
    // The box outline.
    let outline = Rgb([200, 200, 200]);
    for x in (x0 as u32)..=(x1 as u32) {
        picture.put_pixel(x, y0 as u32, outline);
        picture.put_pixel(x, y1 as u32, outline);
    }
    for y in (y0 as u32)..=(y1 as u32) {
        picture.put_pixel(x0 as u32, y, outline);
        picture.put_pixel(x1 as u32, y, outline);
    }
}

/// Adds a disc of flow (keeps the stronger velocity where vessels cross).
fn stamp(flow: &mut Plane, cx: f64, cy: f64, radius: f64, velocity: f64) {
    let reach = radius.ceil() as i64 + 1;
    let (x0, y0) = (cx.round() as i64, cy.round() as i64);
    for y in (y0 - reach)..=(y0 + reach) {
        for x in (x0 - reach)..=(x0 + reach) {
            if x < 0 || y < 0 || x >= flow.width as i64 || y >= flow.height as i64 {
                continue;
            }
            let d = ((x as f64 - cx).powi(2) + (y as f64 - cy).powi(2)).sqrt();
            if d <= radius {
                let index = y as usize * flow.width + x as usize;
                let value = velocity * (1.0 - 0.5 * d / radius.max(1e-9));
                if value.abs() > flow.values[index].abs() {
                    flow.values[index] = value;
                }
            }
        }
    }
}

/// Burned-in annotations: scanner, preset and settings on top (no identifiers), depth ticks and the
/// colour bar on the right.
fn annotate(
    picture: &mut RgbImage,
    field: &Field,
    truth: &PatientTruth,
    profile: &SiteProfile,
    site: &str,
    depth_mm: f64,
    scale: f64,
) {
    let glyph = (scale.round() as u32).max(1);
    let text = Rgb([215, 215, 215]);
    let lobe = match truth.lobe {
        Lobe::Left => "LT",
        Lobe::Right => "RT",
        Lobe::Isthmus => "ISTH",
    };
    let line_height = 7 * glyph;
    let lines = [
        format!("{} {}", site.to_uppercase(), profile.scanner),
        format!(
            "THYROID {lobe} TRANS  GN {:.0}  DR {:.0}",
            profile.gain * 50.0,
            profile.dynamic_range * 5.0
        ),
        format!("CF 6.0MHZ PRF 1.0K  D {:.1}CM", depth_mm / 10.0),
    ];
    for (i, line) in lines.iter().enumerate() {
        font::draw_text(
            picture,
            line,
            2 * glyph,
            2 * glyph + i as u32 * line_height,
            glyph,
            text,
        );
    }
    // Depth ticks every 5 mm (long every 10 mm) and a focus marker.
    let tick_x = field.right as u32 + 2 * glyph;
    let mut mm = 0.0;
    while mm <= depth_mm {
        let y = (field.top + mm / depth_mm * field.height) as u32;
        let long = (mm as u32).is_multiple_of(10);
        let length = if long { 4 * glyph } else { 2 * glyph };
        for x in tick_x..(tick_x + length).min(picture.width()) {
            if y < picture.height() {
                picture.put_pixel(x, y, text);
            }
        }
        mm += 5.0;
    }
    let focus_y = (field.top + 0.5 * field.height) as u32;
    for d in 0..(3 * glyph) {
        for x in (tick_x + 5 * glyph + d)..(tick_x + 8 * glyph).min(picture.width()) {
            for y in
                focus_y.saturating_sub(3 * glyph - d)..=(focus_y + 3 * glyph - d).min(picture.height() - 1)
            {
                picture.put_pixel(x.min(picture.width() - 1), y, Rgb([230, 200, 60]));
            }
        }
    }
    // Colour velocity bar: red (towards) on top, blue (away) below.
    let bar_x = picture.width().saturating_sub(5 * glyph);
    let bar_top = (field.top + 0.05 * field.height) as u32;
    let bar_height = (0.22 * field.height) as u32;
    for dy in 0..bar_height {
        let v = 1.0 - 2.0 * f64::from(dy) / f64::from(bar_height.max(1));
        let colour = if v >= 0.0 {
            Rgb([
                to_byte(60.0 + 195.0 * v),
                to_byte(if profile.colour_map == ColourMap::Velocity {
                    220.0 * v * v
                } else {
                    30.0 * v
                }),
                0,
            ])
        } else {
            let w = -v;
            Rgb([
                0,
                to_byte(if profile.colour_map == ColourMap::Velocity {
                    220.0 * w * w
                } else {
                    50.0 * w
                }),
                to_byte(60.0 + 195.0 * w),
            ])
        };
        for x in bar_x..(bar_x + 3 * glyph).min(picture.width()) {
            picture.put_pixel(x, bar_top + dy, colour);
        }
    }
}

fn to_byte(value: f64) -> u8 {
    // Clamped to [0, 255] and rounded: the cast is exact.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let byte = value.round().clamp(0.0, 255.0) as u8;
    byte
}

//! Image files to model input: PNG, JPEG or DICOM (RGB, YBR, grey-scale, multi-frame; 8 or 16 bits) to
//! an RGB picture, burned-in annotation bands cropped, resized to a square, as a CHW `f32` tensor in [0, 1].
//!
//! DICOM: the parser reads the header transiently; this module copies out only the image geometry and
//! the pixels of the chosen frame, and drops the object before returning. No identifying attribute
//! (PatientName, PatientID, dates, institution) is kept in any struct.

use super::error::ImageError;
use dicom_dictionary_std::tags;
use dicom_pixeldata::PixelDecoder as _;
use image::{RgbImage, imageops::FilterType};
use std::io::Read as _;
use std::path::Path;

/// Fractions of the picture's height (top, bottom) and width (left, right) to cut away before resizing:
/// the burned-in annotation bands (scanner name, gain, depth scale).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CropFractions {
    pub top: f32,
    pub bottom: f32,
    pub left: f32,
    pub right: f32,
}

impl CropFractions {
    /// No cropping.
    pub const NONE: Self = Self {
        top: 0.0,
        bottom: 0.0,
        left: 0.0,
        right: 0.0,
    };
    /// The layout the synthetic generator writes: a text band on top, a depth scale on the right.
    pub const SYNTHETIC: Self = Self {
        top: 0.11,
        bottom: 0.0,
        left: 0.0,
        right: 0.07,
    };
}

impl Default for CropFractions {
    fn default() -> Self {
        Self::SYNTHETIC
    }
}

/// How pictures become tensors.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Preprocess {
    /// Side of the square model input (64 in tests, 224 for real runs).
    pub size: u32,
    pub crop: CropFractions,
}

impl Default for Preprocess {
    fn default() -> Self {
        Self {
            size: 224,
            crop: CropFractions::default(),
        }
    }
}

/// A CHW RGB tensor, values in [0, 1], `data.len() == 3 * size * size`.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageTensor {
    pub size: u32,
    pub data: Vec<f32>,
}

/// The file formats the loader accepts, recognised by their magic bytes (not the extension).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageFormat {
    Png,
    Jpeg,
    Dicom,
}

/// Reads an image file (frame `frame` for multi-frame DICOM) as 8-bit RGB.
pub fn read_rgb(file: &Path, frame: u32) -> Result<RgbImage, ImageError> {
    match sniff_format(file)? {
        ImageFormat::Png => decode_raster(file, image::ImageFormat::Png, "PNG"),
        ImageFormat::Jpeg => decode_raster(file, image::ImageFormat::Jpeg, "JPEG"),
        ImageFormat::Dicom => read_dicom_frame(file, frame),
    }
}

/// Reads, crops, resizes and converts one image file.
pub fn load_tensor(file: &Path, frame: u32, preprocess: &Preprocess) -> Result<ImageTensor, ImageError> {
    let picture = read_rgb(file, frame)?;
    to_tensor(&picture, preprocess).map_err(|(width, height)| ImageError::TooSmall {
        file: file.to_path_buf(),
        width,
        height,
    })
}

/// Crops the annotation bands, resizes to `size`×`size` and converts to CHW `f32` in [0, 1].
/// Fails with the cropped size when fewer than 8×8 pixels remain.
pub fn to_tensor(picture: &RgbImage, preprocess: &Preprocess) -> Result<ImageTensor, (u32, u32)> {
    let (width, height) = picture.dimensions();
    let crop = preprocess.crop;
    let cut = |fraction: f32, extent: u32| {
        // Fractions are clamped to [0, 0.45]: the result is a pixel count within the picture.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let pixels = (fraction.clamp(0.0, 0.45) * extent as f32).round() as u32;
        pixels
    };
    let (x0, x1) = (
        cut(crop.left, width),
        width.saturating_sub(cut(crop.right, width)),
    );
    let (y0, y1) = (
        cut(crop.top, height),
        height.saturating_sub(cut(crop.bottom, height)),
    );
    let (crop_width, crop_height) = (x1.saturating_sub(x0), y1.saturating_sub(y0));
    if crop_width < 8 || crop_height < 8 || preprocess.size == 0 {
        return Err((crop_width, crop_height));
    }
    let cropped = image::imageops::crop_imm(picture, x0, y0, crop_width, crop_height).to_image();
    let size = preprocess.size;
    let resized = image::imageops::resize(&cropped, size, size, FilterType::Triangle);
    let plane = (size * size) as usize;
    let mut data = vec![0.0_f32; 3 * plane];
    for (index, pixel) in resized.pixels().enumerate() {
        for channel in 0..3 {
            data[channel * plane + index] = f32::from(pixel.0[channel]) / 255.0;
        }
    }
    Ok(ImageTensor { size, data })
}

/// Recognises PNG, JPEG and DICOM (the `DICM` marker after the 128-byte preamble) by their first bytes.
pub fn sniff_format(file: &Path) -> Result<ImageFormat, ImageError> {
    let mut handle = crate::files::open_regular(file).map_err(|source| open_error(file, source))?;
    let mut head = Vec::with_capacity(132);
    handle
        .by_ref()
        .take(132)
        .read_to_end(&mut head)
        .map_err(|source| ImageError::Unreadable {
            file: file.to_path_buf(),
            source,
        })?;
    if head.starts_with(b"\x89PNG\r\n\x1a\n") {
        Ok(ImageFormat::Png)
    } else if head.starts_with(&[0xFF, 0xD8, 0xFF]) {
        Ok(ImageFormat::Jpeg)
    } else if head.len() == 132 && &head[128..132] == b"DICM" {
        Ok(ImageFormat::Dicom)
    } else {
        Err(ImageError::UnknownFormat {
            file: file.to_path_buf(),
        })
    }
}

fn open_error(file: &Path, source: std::io::Error) -> ImageError {
    if source.kind() == std::io::ErrorKind::NotFound {
        ImageError::Missing {
            file: file.to_path_buf(),
        }
    } else {
        ImageError::Unreadable {
            file: file.to_path_buf(),
            source,
        }
    }
}

/// Whether JPEG bytes end with the end-of-image marker `FF D9`, after any zero padding.
fn ends_with_jpeg_eoi(bytes: &[u8]) -> bool {
    let end = bytes.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    bytes[..end].ends_with(&[0xFF, 0xD9])
}

fn decode_raster(
    file: &Path,
    format: image::ImageFormat,
    name: &'static str,
) -> Result<RgbImage, ImageError> {
    let bytes = crate::files::read_regular(file).map_err(|source| open_error(file, source))?;
    // The JPEG decoder fills a truncated scan with grey instead of failing: a JPEG must end with its
    // end-of-image marker (trailing zero padding allowed).
    if format == image::ImageFormat::Jpeg && !ends_with_jpeg_eoi(&bytes) {
        return Err(ImageError::Corrupt {
            file: file.to_path_buf(),
            format: name,
            message: "truncated: no end-of-image marker".to_owned(),
        });
    }
    image::load_from_memory_with_format(&bytes, format)
        .map(|picture| picture.to_rgb8())
        .map_err(|error| ImageError::Corrupt {
            file: file.to_path_buf(),
            format: name,
            message: error.to_string(),
        })
}

/// The few attributes needed to interpret the pixels; nothing else is copied out of the object.
struct PixelLayout {
    rows: u32,
    columns: u32,
    samples_per_pixel: u16,
    bits_allocated: u16,
    bits_stored: u16,
    photometric: String,
    planar_by_plane: bool,
}

fn read_dicom_frame(file: &Path, frame: u32) -> Result<RgbImage, ImageError> {
    let corrupt = |message: String| ImageError::Corrupt {
        file: file.to_path_buf(),
        format: "DICOM",
        message,
    };
    let unsupported = |attribute: &'static str, value: String| ImageError::DicomUnsupported {
        file: file.to_path_buf(),
        attribute,
        value,
    };
    let object = dicom_object::OpenFileOptions::new()
        .open_file(file)
        .map_err(|e| corrupt(e.to_string()))?;
    if object.element_opt(tags::PIXEL_DATA).ok().flatten().is_none() {
        return Err(ImageError::DicomNoPixelData {
            file: file.to_path_buf(),
        });
    }
    let decoded = object.decode_pixel_data().map_err(|e| corrupt(e.to_string()))?;
    let n_frames = decoded.number_of_frames();
    if frame >= n_frames {
        return Err(ImageError::FrameOutOfRange {
            file: file.to_path_buf(),
            frame,
            n_frames,
        });
    }
    let layout = PixelLayout {
        rows: decoded.rows(),
        columns: decoded.columns(),
        samples_per_pixel: decoded.samples_per_pixel(),
        bits_allocated: decoded.bits_allocated(),
        bits_stored: decoded.bits_stored(),
        photometric: decoded.photometric_interpretation().as_str().to_owned(),
        planar_by_plane: decoded.planar_configuration() == dicom_pixeldata::PlanarConfiguration::PixelFirst,
    };
    if decoded.pixel_representation() == dicom_pixeldata::PixelRepresentation::Signed {
        return Err(unsupported("PixelRepresentation", "signed".to_owned()));
    }
    let raw = decoded.frame_data(frame).map_err(|e| corrupt(e.to_string()))?;
    let rgb = samples_to_rgb(raw, &layout).map_err(|(attribute, value)| unsupported(attribute, value))?;
    let (columns, rows) = (layout.columns, layout.rows);
    RgbImage::from_raw(columns, rows, rgb)
        .ok_or_else(|| corrupt("pixel data shorter than rows x columns".to_owned()))
}

/// Interleaved 8-bit RGB from one frame's raw samples, or the attribute that cannot be handled.
fn samples_to_rgb(raw: &[u8], layout: &PixelLayout) -> Result<Vec<u8>, (&'static str, String)> {
    let n_pixels = layout.rows as usize * layout.columns as usize;
    let samples = usize::from(layout.samples_per_pixel);
    // 8-bit samples as they are; 16-bit samples scaled from bits_stored down to 8 bits.
    let values: Vec<u8> = match layout.bits_allocated {
        8 => raw.to_vec(),
        16 => {
            let shift = layout.bits_stored.clamp(8, 16) - 8;
            raw.chunks_exact(2)
                .map(|pair| {
                    let value = u16::from_le_bytes([pair[0], pair[1]]) >> shift;
                    // Shifting by bits_stored - 8 leaves at most 8 significant bits.
                    u8::try_from(value.min(255)).unwrap_or(u8::MAX)
                })
                .collect()
        }
        other => return Err(("BitsAllocated", other.to_string())),
    };
    if values.len() < n_pixels * samples {
        return Err((
            "pixel data length",
            format!("{} samples for {n_pixels} pixels x {samples}", values.len()),
        ));
    }
    let mut rgb = Vec::with_capacity(n_pixels * 3);
    match (layout.photometric.as_str(), samples) {
        ("MONOCHROME2", 1) => values[..n_pixels].iter().for_each(|&v| rgb.extend([v, v, v])),
        ("MONOCHROME1", 1) => values[..n_pixels].iter().for_each(|&v| rgb.extend([255 - v; 3])),
        ("RGB" | "YBR_FULL", 3) => {
            for pixel in 0..n_pixels {
                let sample = |channel: usize| {
                    if layout.planar_by_plane {
                        values[channel * n_pixels + pixel]
                    } else {
                        values[pixel * 3 + channel]
                    }
                };
                let (a, b, c) = (sample(0), sample(1), sample(2));
                if layout.photometric == "RGB" {
                    rgb.extend([a, b, c])
                } else {
                    rgb.extend(ybr_to_rgb(a, b, c))
                }
            }
        }
        (photometric, samples) => {
            return Err((
                "PhotometricInterpretation",
                format!("{photometric} with {samples} sample(s) per pixel"),
            ));
        }
    }
    Ok(rgb)
}

/// YBR_FULL (ITU-R BT.601 full range) to RGB.
fn ybr_to_rgb(y: u8, cb: u8, cr: u8) -> [u8; 3] {
    let (y, cb, cr) = (f32::from(y), f32::from(cb) - 128.0, f32::from(cr) - 128.0);
    // Clamped to [0, 255] and rounded: the cast is exact.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let channel = |value: f32| value.round().clamp(0.0, 255.0) as u8;
    [
        channel(y + 1.402 * cr),
        channel(y - 0.344_136 * cb - 0.714_136 * cr),
        channel(y + 1.772 * cb),
    ]
}

//! Image files to model input: PNG, JPEG or DICOM (RGB, YBR, grey-scale, multi-frame; 8 or 16 bits;
//! uncompressed, RLE Lossless or JPEG) to an RGB picture, burned-in annotation bands cropped, resized to
//! a square, as a CHW `f32` tensor in [0, 1].
//!
//! DICOM (the `dicom` module): the header is read lazily, without the pixel data, and only the requested
//! frame's bytes are read and decoded, within [`MAX_DICOM_FRAME_BYTES`]. Only the image geometry and
//! the pixels of the chosen frame are copied out: no identifying attribute (PatientName, PatientID,
//! dates, institution) is read into memory at all.

mod dicom;

use super::error::ImageError;
use image::{RgbImage, imageops::FilterType};
use std::io::Read as _;
use std::path::Path;

pub use dicom::{MAX_FRAME_BYTES as MAX_DICOM_FRAME_BYTES, SUPPORTED_ENCODINGS as SUPPORTED_DICOM_ENCODINGS};

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
        ImageFormat::Dicom => dicom::read_frame(file, frame),
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

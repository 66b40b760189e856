//! One DICOM frame to RGB, reading no more than that frame needs: the file meta group (for the transfer
//! syntax), the data set up to the pixel data with every value skipped unread except the ten
//! pixel-module attributes, then the bytes of the requested frame alone, decoded (native, RLE Lossless
//! or JPEG) and converted to 8-bit RGB.
//!
//! Memory stays bounded whatever the file holds: the frame size is checked against [`MAX_FRAME_BYTES`]
//! from the header before any pixel data is read, a multi-frame file is never decoded whole, and no
//! other attribute's value (identifying or not) is ever read into memory.

mod codecs;
mod frame;
mod header;
mod samples;

use crate::data::error::ImageError;
use dicom_dictionary_std::uids;
use dicom_transfer_syntax_registry::{TransferSyntaxIndex as _, TransferSyntaxRegistry};
use header::PixelData;
use image::RgbImage;
use std::io::BufReader;
use std::path::Path;

/// The largest frame the loader decodes, in bytes of samples (Rows × Columns × SamplesPerPixel ×
/// BitsAllocated/8): 64 MiB, e.g. 4096 × 4096 RGB at 8 bits (48 MiB) passes, a 588 MB frame does not.
/// Ultrasound frames are a few MB. The compressed data of one frame is held to the same limit.
pub const MAX_FRAME_BYTES: u64 = 64 << 20;

/// The transfer syntaxes the loader decodes, as the unsupported-encoding error lists them.
pub const SUPPORTED_ENCODINGS: &str = "Implicit and Explicit VR Little Endian, Encapsulated \
    Uncompressed Explicit VR Little Endian, RLE Lossless, JPEG Baseline (Process 1), JPEG Extended \
    (Process 2 & 4, 8-bit), JPEG Lossless (Process 14 and its First-Order Prediction SV1)";

/// Reads frame `frame` (0-based) of the DICOM file `file` as 8-bit RGB.
pub(super) fn read_frame(file: &Path, frame: u32) -> Result<RgbImage, ImageError> {
    read(file, frame).map_err(|problem| problem.into_error(file, frame))
}

/// What went wrong, before the file name is attached.
#[derive(Debug)]
enum Problem {
    Io(std::io::Error),
    Corrupt(String),
    Inconsistent(String),
    Unsupported(&'static str, String),
    Encoding(String),
    TooLarge {
        what: &'static str,
        detail: String,
        bytes: u64,
    },
    NoPixelData,
    FrameOutOfRange {
        n_frames: u32,
    },
}

impl Problem {
    fn into_error(self, file: &Path, frame: u32) -> ImageError {
        let file = file.to_path_buf();
        match self {
            Self::Io(source) if source.kind() == std::io::ErrorKind::NotFound => ImageError::Missing { file },
            Self::Io(source) => ImageError::Unreadable { file, source },
            Self::Corrupt(message) => ImageError::Corrupt {
                file,
                format: "DICOM",
                message,
            },
            Self::Inconsistent(problem) => ImageError::DicomInconsistent { file, problem },
            Self::Unsupported(attribute, value) => ImageError::DicomUnsupported {
                file,
                attribute,
                value,
            },
            Self::Encoding(transfer_syntax) => ImageError::DicomUnsupportedEncoding {
                file,
                transfer_syntax,
            },
            Self::TooLarge { what, detail, bytes } => ImageError::DicomTooLarge {
                file,
                what,
                detail,
                bytes,
                limit: MAX_FRAME_BYTES,
            },
            Self::NoPixelData => ImageError::DicomNoPixelData { file },
            Self::FrameOutOfRange { n_frames } => ImageError::FrameOutOfRange {
                file,
                frame,
                n_frames,
            },
        }
    }
}

fn corrupt(error: impl std::fmt::Display) -> Problem {
    Problem::Corrupt(error.to_string())
}

/// A read error: the file ending early is a truncated file (`what` says where), anything else is I/O.
fn read_failed(what: &str) -> impl Fn(std::io::Error) -> Problem + '_ {
    move |error| {
        if error.kind() == std::io::ErrorKind::UnexpectedEof {
            Problem::Corrupt(format!("truncated: the file ends inside {what}"))
        } else {
            Problem::Io(error)
        }
    }
}

/// How the pixel data of a transfer syntax is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Encoding {
    /// Uncompressed, one value of `frames × frame size` bytes.
    Native,
    /// Uncompressed frames in fragments.
    EncapsulatedUncompressed,
    Rle,
    /// DCT JPEG (baseline, extended).
    JpegLossy,
    /// Lossless JPEG (process 14).
    JpegLossless,
}

impl Encoding {
    fn of(transfer_syntax_uid: &str) -> Option<Self> {
        match transfer_syntax_uid {
            uids::IMPLICIT_VR_LITTLE_ENDIAN | uids::EXPLICIT_VR_LITTLE_ENDIAN => Some(Self::Native),
            uids::ENCAPSULATED_UNCOMPRESSED_EXPLICIT_VR_LITTLE_ENDIAN => Some(Self::EncapsulatedUncompressed),
            uids::RLE_LOSSLESS => Some(Self::Rle),
            uids::JPEG_BASELINE8_BIT | uids::JPEG_EXTENDED12_BIT => Some(Self::JpegLossy),
            uids::JPEG_LOSSLESS | uids::JPEG_LOSSLESS_SV1 => Some(Self::JpegLossless),
            _ => None,
        }
    }
}

fn read(file: &Path, frame: u32) -> Result<RgbImage, Problem> {
    let mut reader = BufReader::new(crate::files::open_regular(file).map_err(Problem::Io)?);
    let uid = header::read_transfer_syntax_uid(&mut reader)?;
    let transfer_syntax = TransferSyntaxRegistry.get(&uid);
    let name = match transfer_syntax {
        Some(known) => format!("{} ({uid})", known.name()),
        None => format!("{uid} (not a known transfer syntax)"),
    };
    let (Some(encoding), Some(transfer_syntax)) = (Encoding::of(&uid), transfer_syntax) else {
        return Err(Problem::Encoding(name));
    };
    let (attributes, pixel_data) = header::read_header(&mut reader, transfer_syntax)?;
    let pixel_data = pixel_data.ok_or(Problem::NoPixelData)?;
    let layout = attributes.layout()?;
    layout.check_encoding(encoding, &name)?;
    layout.check_size()?;
    if frame >= layout.n_frames {
        return Err(Problem::FrameOutOfRange {
            n_frames: layout.n_frames,
        });
    }
    let samples = match (encoding, pixel_data) {
        (Encoding::Native, PixelData::Native { offset, length }) => {
            frame::read_native_frame(&mut reader, &layout, frame, offset, length)?
        }
        (Encoding::Native, PixelData::Encapsulated(_)) => {
            return Err(corrupt(
                "encapsulated pixel data under an uncompressed transfer syntax",
            ));
        }
        (_, PixelData::Native { .. }) => {
            return Err(corrupt(format!("uncompressed pixel data under {name}")));
        }
        (encoding, PixelData::Encapsulated(items)) => {
            let data = frame::read_encapsulated_frame(&mut reader, &items, &layout, frame, encoding)?;
            match encoding {
                Encoding::Rle => codecs::decode_rle(&data, &layout)?,
                Encoding::JpegLossy | Encoding::JpegLossless => codecs::decode_jpeg(&data, &layout)?,
                Encoding::Native | Encoding::EncapsulatedUncompressed => {
                    frame::native_samples(data, &layout, frame)?
                }
            }
        }
    };
    let rgb = samples.into_rgb(layout.n_pixels());
    RgbImage::from_raw(layout.columns, layout.rows, rgb)
        .ok_or_else(|| corrupt("decoded pixels do not fill Rows x Columns"))
}

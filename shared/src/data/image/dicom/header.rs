//! The DICOM header, read without the pixel data: the transfer syntax from the file meta group, the
//! pixel-module attributes and where the pixel data lies, then the checks that they agree.

use super::{Encoding, MAX_FRAME_BYTES, Problem, corrupt, read_failed};
use dicom_core::header::HasLength as _;
use dicom_core::{PrimitiveValue, Tag};
use dicom_dictionary_std::tags;
use dicom_parser::StatefulDecode as _;
use dicom_parser::dataset::LazyDataToken;
use dicom_parser::dataset::lazy_read::LazyDataSetReader;
use dicom_transfer_syntax_registry::TransferSyntax;
use std::fs::File;
use std::io::{BufReader, Read as _};

/// Sequences nested deeper than this are refused (the parser keeps one entry per level).
const MAX_SEQUENCE_DEPTH: usize = 64;
/// Encapsulated pixel data with more fragments than this is refused (their positions are kept).
const MAX_FRAGMENTS: usize = 1 << 20;
/// A pixel-module attribute is a short number or code string; a longer value is not read.
const MAX_ATTRIBUTE_BYTES: u32 = 64;

/// Reads the file meta group (always explicit VR little endian) after the preamble and returns its
/// TransferSyntaxUID, leaving `reader` at the first element of the data set.
pub(super) fn read_transfer_syntax_uid(reader: &mut BufReader<File>) -> Result<String, Problem> {
    let in_meta = read_failed("the file meta group");
    let mut preamble = [0_u8; 132];
    reader.read_exact(&mut preamble).map_err(&in_meta)?;
    if preamble[128..] != *b"DICM" {
        return Err(corrupt("no DICM marker after the 128-byte preamble"));
    }
    let mut transfer_syntax = None;
    loop {
        let mut tag = [0_u8; 4];
        match reader.read_exact(&mut tag) {
            Ok(()) => {}
            // A file that ends after its meta group has no data set (so no pixel data).
            Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(error) => return Err(Problem::Io(error)),
        }
        if u16::from_le_bytes([tag[0], tag[1]]) != 0x0002 {
            reader.seek_relative(-4).map_err(Problem::Io)?;
            break;
        }
        let element = u16::from_le_bytes([tag[2], tag[3]]);
        let mut vr = [0_u8; 2];
        reader.read_exact(&mut vr).map_err(&in_meta)?;
        let length = if matches!(
            &vr,
            b"OB"
                | b"OD"
                | b"OF"
                | b"OL"
                | b"OV"
                | b"OW"
                | b"SQ"
                | b"SV"
                | b"UC"
                | b"UN"
                | b"UR"
                | b"UT"
                | b"UV"
        ) {
            let mut bytes = [0_u8; 6];
            reader.read_exact(&mut bytes).map_err(&in_meta)?;
            u32::from_le_bytes([bytes[2], bytes[3], bytes[4], bytes[5]])
        } else {
            let mut bytes = [0_u8; 2];
            reader.read_exact(&mut bytes).map_err(&in_meta)?;
            u32::from(u16::from_le_bytes(bytes))
        };
        if length == u32::MAX {
            return Err(corrupt(format!(
                "file meta element (0002,{element:04X}) has an undefined length"
            )));
        }
        if element == 0x0010 {
            if length > MAX_ATTRIBUTE_BYTES {
                return Err(corrupt(format!("TransferSyntaxUID is {length} bytes long")));
            }
            let mut value = vec![0_u8; length as usize];
            reader.read_exact(&mut value).map_err(&in_meta)?;
            let text = String::from_utf8_lossy(&value);
            transfer_syntax = Some(text.trim_end_matches(['\0', ' ']).trim().to_owned());
        } else {
            reader.seek_relative(i64::from(length)).map_err(Problem::Io)?;
        }
    }
    transfer_syntax.ok_or_else(|| corrupt("the file meta group has no TransferSyntaxUID"))
}

/// The pixel-module attributes, in the order [`Attributes`] keeps them.
pub(super) const PIXEL_MODULE: [(Tag, &str); 10] = [
    (tags::SAMPLES_PER_PIXEL, "SamplesPerPixel"),
    (tags::PHOTOMETRIC_INTERPRETATION, "PhotometricInterpretation"),
    (tags::PLANAR_CONFIGURATION, "PlanarConfiguration"),
    (tags::NUMBER_OF_FRAMES, "NumberOfFrames"),
    (tags::ROWS, "Rows"),
    (tags::COLUMNS, "Columns"),
    (tags::BITS_ALLOCATED, "BitsAllocated"),
    (tags::BITS_STORED, "BitsStored"),
    (tags::HIGH_BIT, "HighBit"),
    (tags::PIXEL_REPRESENTATION, "PixelRepresentation"),
];

/// The values of the [`PIXEL_MODULE`] attributes found at the top level of the data set.
#[derive(Debug, Default)]
pub(super) struct Attributes([Option<PrimitiveValue>; 10]);

/// Where the pixel data lies in the file.
#[derive(Debug)]
pub(super) enum PixelData {
    /// One value: `length` bytes from `offset`.
    Native {
        offset: u64,
        length: u64,
    },
    Encapsulated(PixelItems),
}

/// The items of encapsulated pixel data: the basic offset table (first item) and the fragments.
#[derive(Debug, Default)]
pub(super) struct PixelItems {
    pub(super) n_items: usize,
    pub(super) offset_table: Vec<u32>,
    pub(super) fragments: Vec<Fragment>,
}

#[derive(Debug, Clone, Copy)]
pub(super) struct Fragment {
    pub(super) offset: u64,
    pub(super) length: u32,
}

/// Walks the data set up to the pixel data without reading any value except the pixel-module
/// attributes; returns them and where the pixel data is (`None`: the data set has none).
pub(super) fn read_header(
    reader: &mut BufReader<File>,
    transfer_syntax: &TransferSyntax,
) -> Result<(Attributes, Option<PixelData>), Problem> {
    let mut tokens = LazyDataSetReader::new_with_ts(reader, transfer_syntax).map_err(corrupt)?;
    let mut attributes = Attributes::default();
    let mut depth = 0_usize;
    let mut pixel_items: Option<PixelItems> = None;
    let deeper = |depth: usize| {
        if depth >= MAX_SEQUENCE_DEPTH {
            Err(corrupt(format!(
                "sequences nested more than {MAX_SEQUENCE_DEPTH} deep"
            )))
        } else {
            Ok(depth + 1)
        }
    };
    while let Some(token) = tokens.advance() {
        match token.map_err(corrupt)? {
            LazyDataToken::SequenceStart { .. } => depth = deeper(depth)?,
            LazyDataToken::PixelSequenceStart => {
                if depth == 0 {
                    pixel_items = Some(PixelItems::default());
                }
                depth = deeper(depth)?;
            }
            LazyDataToken::SequenceEnd => {
                depth = depth.saturating_sub(1);
                if depth == 0
                    && let Some(items) = pixel_items.take()
                {
                    return Ok((attributes, Some(PixelData::Encapsulated(items))));
                }
            }
            LazyDataToken::ItemStart { .. } => {
                if let Some(items) = pixel_items.as_mut().filter(|_| depth == 1) {
                    items.n_items += 1;
                }
            }
            LazyDataToken::ItemEnd | LazyDataToken::ElementHeader(_) => {}
            LazyDataToken::LazyValue { header, decoder } => {
                if depth == 0 && header.tag == tags::PIXEL_DATA {
                    let offset = decoder.position();
                    let length = u64::from(header.len.0);
                    return Ok((attributes, Some(PixelData::Native { offset, length })));
                }
                match PIXEL_MODULE.iter().position(|(tag, _)| *tag == header.tag) {
                    Some(index) if depth == 0 => {
                        if header.len.0 > MAX_ATTRIBUTE_BYTES {
                            return Err(corrupt(format!(
                                "{} has a value of {} bytes",
                                PIXEL_MODULE[index].1, header.len.0
                            )));
                        }
                        // Preserved: text stays text, so that a bad number is reported as such.
                        let value = decoder.read_value_preserved(&header).map_err(corrupt)?;
                        attributes.0[index] = Some(value);
                    }
                    _ => decoder.skip_bytes(header.len.0).map_err(corrupt)?,
                }
            }
            LazyDataToken::LazyItemValue { len, decoder } => match pixel_items.as_mut() {
                Some(items) if depth == 1 && items.n_items == 1 => {
                    if !len.is_multiple_of(4) || len as usize / 4 > MAX_FRAGMENTS {
                        return Err(corrupt(format!("a basic offset table of {len} bytes")));
                    }
                    decoder
                        .read_u32_to_vec(len, &mut items.offset_table)
                        .map_err(corrupt)?;
                }
                Some(items) if depth == 1 => {
                    if items.fragments.len() >= MAX_FRAGMENTS {
                        return Err(corrupt(format!("more than {MAX_FRAGMENTS} pixel data fragments")));
                    }
                    items.fragments.push(Fragment {
                        offset: decoder.position(),
                        length: len,
                    });
                    decoder.skip_bytes(len).map_err(corrupt)?;
                }
                _ => decoder.skip_bytes(len).map_err(corrupt)?,
            },
            // A kind of token this walk does not know: consumed if it carries a value.
            other => other.skip().map_err(corrupt)?,
        }
    }
    if pixel_items.is_some() {
        return Err(corrupt(
            "truncated: the file ends inside the encapsulated pixel data",
        ));
    }
    Ok((attributes, None))
}

/// Photometric interpretations the loader converts to RGB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Photometric {
    Monochrome1,
    Monochrome2,
    Rgb,
    YbrFull,
    /// YBR_FULL with Cb and Cr shared by each horizontal pair of pixels (stored Y1 Y2 Cb Cr when
    /// uncompressed; JPEG upsamples them itself).
    YbrFull422,
}

/// The pixel description, checked for consistency.
#[derive(Debug, Clone)]
pub(super) struct PixelLayout {
    pub(super) rows: u32,
    pub(super) columns: u32,
    pub(super) samples_per_pixel: u16,
    pub(super) bits_allocated: u16,
    pub(super) bits_stored: u16,
    pub(super) high_bit: u16,
    pub(super) photometric: Photometric,
    pub(super) photometric_name: String,
    /// Planar configuration 1: all of the first sample, then all of the second, ...
    pub(super) planar: bool,
    pub(super) n_frames: u32,
}

impl Attributes {
    pub(super) fn value(&self, name: &str) -> Option<&PrimitiveValue> {
        let index = PIXEL_MODULE.iter().position(|(_, known)| *known == name)?;
        self.0[index].as_ref()
    }

    /// The attribute as a whole number, `None` when absent or empty.
    pub(super) fn integer(&self, name: &'static str) -> Result<Option<i64>, Problem> {
        let Some(value) = self.value(name).filter(|value| !value.is_empty()) else {
            return Ok(None);
        };
        value.to_int::<i64>().map(Some).map_err(|_| {
            Problem::Inconsistent(format!(
                "{name} '{}' is not a whole number",
                crate::table::excerpt(value.to_str().trim())
            ))
        })
    }

    pub(super) fn required(&self, name: &'static str) -> Result<i64, Problem> {
        self.integer(name)?
            .ok_or_else(|| Problem::Inconsistent(format!("{name} is missing")))
    }

    /// Checks the pixel-module attributes against each other.
    pub(super) fn layout(&self) -> Result<PixelLayout, Problem> {
        let inconsistent = |problem: String| Err(Problem::Inconsistent(problem));
        let rows = self.required("Rows")?;
        let columns = self.required("Columns")?;
        for (name, extent) in [("Rows", rows), ("Columns", columns)] {
            if !(1..=65_535).contains(&extent) {
                return inconsistent(format!("{name} is {extent}; it must be 1 to 65535"));
            }
        }
        let samples_per_pixel = self.required("SamplesPerPixel")?;
        if samples_per_pixel != 1 && samples_per_pixel != 3 {
            return inconsistent(format!(
                "SamplesPerPixel is {samples_per_pixel}; it must be 1 or 3"
            ));
        }
        let bits_allocated = self.required("BitsAllocated")?;
        match bits_allocated {
            8 | 16 => {}
            1 | 32 | 64 => return Err(Problem::Unsupported("BitsAllocated", bits_allocated.to_string())),
            _ => {
                return inconsistent(format!(
                    "BitsAllocated is {bits_allocated}; it must be 1 or a multiple of 8"
                ));
            }
        }
        let bits_stored = self.required("BitsStored")?;
        if bits_stored < 1 {
            return inconsistent(format!("BitsStored is {bits_stored}"));
        }
        if bits_stored > bits_allocated {
            return inconsistent(format!(
                "BitsStored {bits_stored} is more than BitsAllocated {bits_allocated}"
            ));
        }
        let high_bit = self.integer("HighBit")?.unwrap_or(bits_stored - 1);
        if high_bit >= bits_allocated {
            return inconsistent(format!(
                "HighBit {high_bit} is not below BitsAllocated {bits_allocated}"
            ));
        }
        if high_bit + 1 < bits_stored {
            return inconsistent(format!(
                "HighBit {high_bit} leaves no room for BitsStored {bits_stored} (HighBit must be at least BitsStored - 1)"
            ));
        }
        match self.integer("PixelRepresentation")?.unwrap_or(0) {
            0 => {}
            1 => return Err(Problem::Unsupported("PixelRepresentation", "signed".to_owned())),
            other => return inconsistent(format!("PixelRepresentation is {other}; it must be 0 or 1")),
        }
        let planar = match self.integer("PlanarConfiguration")?.unwrap_or(0) {
            0 => false,
            1 => true,
            other => return inconsistent(format!("PlanarConfiguration is {other}; it must be 0 or 1")),
        };
        let n_frames = self.integer("NumberOfFrames")?.unwrap_or(1);
        if !(1..=i64::from(u32::MAX)).contains(&n_frames) {
            return inconsistent(format!("NumberOfFrames is {n_frames}"));
        }
        let photometric_name = self
            .value("PhotometricInterpretation")
            .map(|value| value.to_str().trim().to_owned())
            .filter(|name| !name.is_empty())
            .ok_or_else(|| Problem::Inconsistent("PhotometricInterpretation is missing".to_owned()))?;
        let photometric = match photometric_name.as_str() {
            "MONOCHROME1" => Photometric::Monochrome1,
            "MONOCHROME2" => Photometric::Monochrome2,
            "RGB" => Photometric::Rgb,
            "YBR_FULL" => Photometric::YbrFull,
            "YBR_FULL_422" => Photometric::YbrFull422,
            other => {
                return Err(Problem::Unsupported(
                    "PhotometricInterpretation",
                    crate::table::excerpt(other),
                ));
            }
        };
        let needed_samples = match photometric {
            Photometric::Monochrome1 | Photometric::Monochrome2 => 1,
            _ => 3,
        };
        if samples_per_pixel != needed_samples {
            return inconsistent(format!(
                "PhotometricInterpretation {photometric_name} needs SamplesPerPixel {needed_samples}, not {samples_per_pixel}"
            ));
        }
        // Every value was range-checked above: the conversions cannot fail.
        let narrow = |value: i64| u16::try_from(value).unwrap_or(u16::MAX);
        Ok(PixelLayout {
            rows: u32::from(narrow(rows)),
            columns: u32::from(narrow(columns)),
            samples_per_pixel: narrow(samples_per_pixel),
            bits_allocated: narrow(bits_allocated),
            bits_stored: narrow(bits_stored),
            high_bit: narrow(high_bit),
            photometric,
            photometric_name,
            planar: planar && samples_per_pixel == 3,
            n_frames: u32::try_from(n_frames).unwrap_or(u32::MAX),
        })
    }
}

impl PixelLayout {
    pub(super) fn n_pixels(&self) -> usize {
        self.rows as usize * self.columns as usize
    }

    pub(super) fn bytes_per_sample(&self) -> usize {
        usize::from(self.bits_allocated / 8)
    }

    /// Bytes of one decoded frame: Rows × Columns × SamplesPerPixel × BitsAllocated/8.
    pub(super) fn frame_bytes(&self) -> u64 {
        u64::from(self.rows)
            * u64::from(self.columns)
            * u64::from(self.samples_per_pixel)
            * u64::from(self.bits_allocated / 8)
    }

    /// Bytes of one uncompressed frame as stored (YBR_FULL_422 keeps two samples per pixel).
    pub(super) fn stored_frame_bytes(&self) -> u64 {
        if self.photometric == Photometric::YbrFull422 {
            u64::from(self.rows) * u64::from(self.columns) * 2 * u64::from(self.bits_allocated / 8)
        } else {
            self.frame_bytes()
        }
    }

    /// Refuses a frame over [`MAX_FRAME_BYTES`], from the header alone.
    pub(super) fn check_size(&self) -> Result<(), Problem> {
        let bytes = self.frame_bytes();
        if bytes > MAX_FRAME_BYTES {
            return Err(Problem::TooLarge {
                what: "one frame",
                detail: format!(
                    "Rows {} x Columns {} x SamplesPerPixel {} x BitsAllocated {}/8",
                    self.rows, self.columns, self.samples_per_pixel, self.bits_allocated
                ),
                bytes,
            });
        }
        Ok(())
    }

    /// Refuses colour layouts that the encoding cannot carry or the loader cannot convert.
    pub(super) fn check_encoding(&self, encoding: Encoding, transfer_syntax: &str) -> Result<(), Problem> {
        let unsupported = || {
            Err(Problem::Unsupported(
                "PhotometricInterpretation",
                format!("{} under {transfer_syntax}", self.photometric_name),
            ))
        };
        match (self.photometric, encoding) {
            (Photometric::YbrFull422, Encoding::Native | Encoding::EncapsulatedUncompressed) => {
                if !self.columns.is_multiple_of(2) {
                    return Err(Problem::Inconsistent(format!(
                        "PhotometricInterpretation YBR_FULL_422 needs an even Columns, not {}",
                        self.columns
                    )));
                }
                if self.planar {
                    return Err(Problem::Inconsistent(
                        "PhotometricInterpretation YBR_FULL_422 needs PlanarConfiguration 0, not 1"
                            .to_owned(),
                    ));
                }
                Ok(())
            }
            (Photometric::YbrFull422, Encoding::JpegLossy) => Ok(()),
            (Photometric::YbrFull422, Encoding::Rle | Encoding::JpegLossless) => unsupported(),
            _ => Ok(()),
        }
    }
}

//! The two decoders: RLE Lossless (PackBits, written here) and JPEG (`jpeg-decoder`, after the frame
//! header has been checked against the DICOM header).

use super::header::PixelLayout;
use super::samples::{Arrangement, Colour, Samples};
use super::{MAX_FRAME_BYTES, Problem, corrupt};

/// Decodes one RLE Lossless frame (PS3.5 annex G) into pixel-interleaved little-endian samples.
pub(super) fn decode_rle(data: &[u8], layout: &PixelLayout) -> Result<Samples, Problem> {
    let bytes_per_sample = layout.bytes_per_sample();
    let samples_per_pixel = usize::from(layout.samples_per_pixel);
    let expected_segments = bytes_per_sample * samples_per_pixel;
    let n_pixels = layout.n_pixels();
    let Some(header) = data.get(..64) else {
        return Err(corrupt(format!(
            "the RLE frame is {} bytes, shorter than its 64-byte header",
            data.len()
        )));
    };
    let word = |index: usize| {
        u32::from_le_bytes([
            header[4 * index],
            header[4 * index + 1],
            header[4 * index + 2],
            header[4 * index + 3],
        ])
    };
    let n_segments = word(0) as usize;
    if n_segments != expected_segments {
        return Err(corrupt(format!(
            "the RLE frame has {n_segments} segments; SamplesPerPixel {samples_per_pixel} x BitsAllocated {}/8 needs {expected_segments}",
            layout.bits_allocated
        )));
    }
    let stride = expected_segments;
    let mut out = vec![0_u8; n_pixels * stride];
    for segment in 0..n_segments {
        let start = word(segment + 1) as usize;
        let end = if segment + 1 < n_segments {
            word(segment + 2) as usize
        } else {
            data.len()
        };
        let Some(encoded) = data.get(start..end).filter(|_| start >= 64) else {
            return Err(corrupt(format!(
                "RLE segment {segment} spans bytes {start}..{end} of a {}-byte frame",
                data.len()
            )));
        };
        // Segments hold the most significant byte of each sample first; samples are stored little endian.
        let sample = segment / bytes_per_sample;
        let byte = bytes_per_sample - 1 - segment % bytes_per_sample;
        let written = unpack_bits(
            encoded,
            &mut out[sample * bytes_per_sample + byte..],
            stride,
            n_pixels,
        );
        if written < n_pixels {
            return Err(corrupt(format!(
                "RLE segment {segment} decodes to {written} bytes; Rows x Columns is {n_pixels}"
            )));
        }
    }
    Ok(Samples {
        data: out,
        bytes_per_sample,
        samples_per_pixel,
        low_bit: layout.high_bit + 1 - layout.bits_stored,
        bits_stored: layout.bits_stored,
        arrangement: Arrangement::Interleaved,
        colour: Colour::of(layout.photometric),
    })
}

/// PackBits: writes up to `limit` bytes to `out[0]`, `out[stride]`, ... and returns how many it wrote.
pub(super) fn unpack_bits(encoded: &[u8], out: &mut [u8], stride: usize, limit: usize) -> usize {
    let mut written = 0;
    let mut input = encoded.iter();
    let mut put = |value: u8, written: &mut usize| {
        if let Some(slot) = out.get_mut(*written * stride) {
            *slot = value;
        }
        *written += 1;
    };
    while written < limit {
        let Some(&control) = input.next() else { break };
        match control {
            // A literal run of control + 1 bytes.
            0..=127 => {
                for _ in 0..=control {
                    let Some(&value) = input.next() else { break };
                    if written < limit {
                        put(value, &mut written);
                    }
                }
            }
            // No operation.
            128 => {}
            // The next byte repeated 257 - control times (2 to 128).
            129..=255 => {
                let Some(&value) = input.next() else { break };
                for _ in 0..(257 - usize::from(control)) {
                    if written < limit {
                        put(value, &mut written);
                    }
                }
            }
        }
    }
    written.min(limit)
}

/// What a JPEG stream's markers before its first scan say: the frame header (SOF) and the Adobe
/// APP14 colour transform, if any.
#[derive(Debug, Clone, Copy)]
pub(super) struct JpegFrameHeader {
    /// The n of the SOFn marker: 0 baseline, 1 extended, 2 progressive, 3 lossless.
    pub(super) process: u8,
    pub(super) precision: u8,
    pub(super) height: u16,
    pub(super) width: u16,
    pub(super) components: u8,
    /// The transform byte of an Adobe APP14 segment: 0 none (RGB), 1 YCbCr, 2 YCCK.
    pub(super) adobe_transform: Option<u8>,
}

/// Walks the markers of a JPEG stream up to its first scan.
pub(super) fn jpeg_frame_header(data: &[u8]) -> Result<JpegFrameHeader, Problem> {
    if !data.starts_with(&[0xFF, 0xD8]) {
        return Err(corrupt(
            "the frame does not start with a JPEG start-of-image marker",
        ));
    }
    let mut frame: Option<JpegFrameHeader> = None;
    let mut adobe_transform = None;
    let mut at = 2;
    loop {
        if data.get(at) != Some(&0xFF) {
            return Err(corrupt(format!("no JPEG marker at byte {at} of the frame")));
        }
        while data.get(at) == Some(&0xFF) {
            at += 1;
        }
        let Some(&marker) = data.get(at) else {
            return Err(corrupt("truncated: the JPEG stream ends before its scan"));
        };
        at += 1;
        match marker {
            0x01 | 0xD0..=0xD8 => continue,
            0xD9 => return Err(corrupt("the JPEG stream ends before its scan")),
            _ => {}
        }
        let segment = data
            .get(at..at + 2)
            .map(|pair| usize::from(u16::from_be_bytes([pair[0], pair[1]])))
            .and_then(|length| data.get(at + 2..at + length.max(2)))
            .ok_or_else(|| corrupt("truncated: the JPEG stream ends inside a marker segment"))?;
        match marker {
            0xDA => {
                let frame =
                    frame.ok_or_else(|| corrupt("the JPEG stream has no frame header before its scan"))?;
                return Ok(JpegFrameHeader {
                    adobe_transform,
                    ..frame
                });
            }
            0xC0..=0xCF if marker != 0xC4 && marker != 0xC8 && marker != 0xCC && frame.is_none() => {
                let fields = segment
                    .get(..6)
                    .ok_or_else(|| corrupt("a JPEG frame header shorter than 6 bytes"))?;
                frame = Some(JpegFrameHeader {
                    process: marker - 0xC0,
                    precision: fields[0],
                    height: u16::from_be_bytes([fields[1], fields[2]]),
                    width: u16::from_be_bytes([fields[3], fields[4]]),
                    components: fields[5],
                    adobe_transform: None,
                });
            }
            0xEE if segment.starts_with(b"Adobe") => adobe_transform = segment.get(11).copied(),
            _ => {}
        }
        at += 2 + segment.len();
    }
}

/// Decodes one JPEG frame after checking its frame header against the DICOM header, so that the
/// decoder never allocates more than the header (and [`MAX_FRAME_BYTES`]) allows.
///
/// Colour follows the DICOM header, as pydicom does: the decoder converts YCbCr to RGB only when an
/// Adobe APP14 segment asks for it; otherwise the samples come back as stored and the
/// photometric interpretation says what they are (YBR_FULL_422 or YBR_FULL: converted here; RGB: kept).
pub(super) fn decode_jpeg(data: &[u8], layout: &PixelLayout) -> Result<Samples, Problem> {
    let header = jpeg_frame_header(data)?;
    let lossless = header.process == 3;
    if header.process > 3 {
        return Err(Problem::Unsupported(
            "JPEG coding process",
            format!("SOF{} (hierarchical or arithmetic coding)", header.process),
        ));
    }
    if !lossless && header.precision != 8 {
        return Err(Problem::Unsupported(
            "JPEG sample precision",
            format!(
                "{} bits in a DCT-coded frame (only 8 is decoded)",
                header.precision
            ),
        ));
    }
    if lossless && !(2..=16).contains(&header.precision) {
        return Err(corrupt(format!("JPEG sample precision {}", header.precision)));
    }
    if (u32::from(header.width), u32::from(header.height)) != (layout.columns, layout.rows) {
        return Err(Problem::Inconsistent(format!(
            "the JPEG frame is {} x {} pixels but Columns x Rows is {} x {}",
            header.width, header.height, layout.columns, layout.rows
        )));
    }
    if u16::from(header.components) != layout.samples_per_pixel {
        return Err(Problem::Inconsistent(format!(
            "the JPEG frame has {} component(s) but SamplesPerPixel is {}",
            header.components, layout.samples_per_pixel
        )));
    }
    let bytes_per_sample = if header.precision > 8 { 2 } else { 1 };
    if bytes_per_sample > layout.bytes_per_sample() {
        return Err(Problem::Inconsistent(format!(
            "the JPEG frame has {}-bit samples but BitsAllocated is {}",
            header.precision, layout.bits_allocated
        )));
    }
    let samples_per_pixel = usize::from(layout.samples_per_pixel);
    let decoder_converts =
        samples_per_pixel == 3 && !lossless && header.adobe_transform.is_some_and(|t| t != 0);
    let mut decoder = jpeg_decoder::Decoder::new(data);
    decoder.set_max_decoding_buffer_size(usize::try_from(MAX_FRAME_BYTES).unwrap_or(usize::MAX));
    if !decoder_converts {
        // `RGB` interleaves the components as stored, without conversion (jpeg-decoder 0.3's `None`
        // writes them line by line instead, and can overrun its output).
        decoder.set_color_transform(jpeg_decoder::ColorTransform::RGB);
    }
    let pixels = decoder.decode().map_err(|error| match error {
        jpeg_decoder::Error::Unsupported(feature) => {
            Problem::Unsupported("JPEG feature", format!("{feature:?}"))
        }
        other => corrupt(format!("JPEG: {other}")),
    })?;
    let expected = layout.n_pixels() * samples_per_pixel * bytes_per_sample;
    if pixels.len() != expected {
        return Err(corrupt(format!(
            "the JPEG frame decodes to {} bytes; Rows x Columns x SamplesPerPixel needs {expected}",
            pixels.len()
        )));
    }
    Ok(Samples {
        data: pixels,
        bytes_per_sample,
        samples_per_pixel,
        low_bit: 0,
        bits_stored: u16::from(header.precision),
        arrangement: Arrangement::Interleaved,
        colour: if decoder_converts {
            Colour::Rgb
        } else {
            Colour::of(layout.photometric)
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packbits_literal_and_repeat_runs_fill_a_strided_plane() {
        // Literal [1, 2, 3], then 7 repeated 4 times, then a no-op, then a literal [9].
        let encoded = [2, 1, 2, 3, 253, 7, 128, 0, 9];
        let mut out = [0_u8; 16];
        let written = unpack_bits(&encoded, &mut out, 2, 8);
        assert_eq!(written, 8);
        let plane: Vec<u8> = out.iter().step_by(2).copied().collect();
        assert_eq!(plane, [1, 2, 3, 7, 7, 7, 7, 9]);
        assert!(
            out.iter().skip(1).step_by(2).all(|&b| b == 0),
            "the other plane is untouched"
        );
    }

    #[test]
    fn packbits_stops_at_the_limit_and_reports_a_short_segment() {
        let mut out = [0_u8; 4];
        assert_eq!(
            unpack_bits(&[129, 5], &mut out, 1, 4),
            4,
            "a run of 128 is cut at the limit"
        );
        assert_eq!(out, [5; 4]);
        assert_eq!(
            unpack_bits(&[1, 5], &mut out, 1, 4),
            1,
            "a literal cut short by the input"
        );
        assert_eq!(unpack_bits(&[], &mut out, 1, 4), 0);
    }

    #[test]
    fn a_jpeg_frame_header_is_found_past_other_markers() {
        // SOI, APP0 of length 4, SOF0 (precision 8, 16 x 32, 3 components; component table left out),
        // an Adobe APP14 with transform 1, then the scan.
        let mut data = vec![0xFF, 0xD8, 0xFF, 0xE0, 0x00, 0x04, 0xAA, 0xBB];
        data.extend([0xFF, 0xC0, 0x00, 0x08, 8, 0, 16, 0, 32, 3]);
        data.extend([0xFF, 0xEE, 0x00, 0x0E]);
        data.extend(b"Adobe\x00\x64\x00\x00\x00\x00\x01");
        data.extend([0xFF, 0xDA, 0x00, 0x02]);
        let header = jpeg_frame_header(&data).unwrap();
        assert_eq!(
            (
                header.process,
                header.precision,
                header.height,
                header.width,
                header.components
            ),
            (0, 8, 16, 32, 3)
        );
        assert_eq!(header.adobe_transform, Some(1));
        assert!(
            jpeg_frame_header(&data[..14]).is_err(),
            "cut inside the frame header"
        );
        assert!(
            jpeg_frame_header(&[0xFF, 0xD8, 0xFF, 0xDA, 0, 2]).is_err(),
            "a scan before any frame header"
        );
        assert!(
            jpeg_frame_header(&[0x00, 0x01]).is_err(),
            "no start-of-image marker"
        );
    }
}

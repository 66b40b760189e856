//! The bytes of one frame: seeked to in native pixel data, or gathered from the fragments that hold it.

use super::header::{Fragment, Photometric, PixelItems, PixelLayout};
use super::samples::{Arrangement, Colour, Samples};
use super::{Encoding, MAX_FRAME_BYTES, Problem, corrupt, read_failed};
use std::fs::File;
use std::io::{BufReader, Read as _, Seek as _, SeekFrom};

/// Reads frame `frame` of native pixel data (`length` bytes from `offset`).
pub(super) fn read_native_frame(
    reader: &mut BufReader<File>,
    layout: &PixelLayout,
    frame: u32,
    offset: u64,
    length: u64,
) -> Result<Samples, Problem> {
    let stored = layout.stored_frame_bytes();
    let needed = stored * u64::from(layout.n_frames);
    if length < needed {
        return Err(corrupt(format!(
            "the pixel data holds {length} bytes but NumberOfFrames {} x {stored} bytes per frame need {needed}",
            layout.n_frames
        )));
    }
    reader
        .seek(SeekFrom::Start(offset + stored * u64::from(frame)))
        .map_err(Problem::Io)?;
    // `stored` is at most MAX_FRAME_BYTES (checked from the header): it fits in memory.
    let mut data = vec![0_u8; usize::try_from(stored).unwrap_or(usize::MAX)];
    let what = format!("frame {frame}");
    reader.read_exact(&mut data).map_err(read_failed(&what))?;
    native_samples(data, layout, frame)
}

/// Uncompressed frame bytes as samples, in the layout the header describes.
pub(super) fn native_samples(data: Vec<u8>, layout: &PixelLayout, frame: u32) -> Result<Samples, Problem> {
    let stored = usize::try_from(layout.stored_frame_bytes()).unwrap_or(usize::MAX);
    if data.len() < stored {
        return Err(corrupt(format!(
            "frame {frame} holds {} bytes; the header needs {stored}",
            data.len()
        )));
    }
    let arrangement = if layout.photometric == Photometric::YbrFull422 {
        Arrangement::PairsYybr
    } else if layout.planar {
        Arrangement::Planar
    } else {
        Arrangement::Interleaved
    };
    Ok(Samples {
        data,
        bytes_per_sample: layout.bytes_per_sample(),
        samples_per_pixel: usize::from(layout.samples_per_pixel),
        low_bit: layout.high_bit + 1 - layout.bits_stored,
        bits_stored: layout.bits_stored,
        arrangement,
        colour: Colour::of(layout.photometric),
    })
}

/// Reads the fragments that hold frame `frame` of encapsulated pixel data, concatenated.
pub(super) fn read_encapsulated_frame(
    reader: &mut BufReader<File>,
    items: &PixelItems,
    layout: &PixelLayout,
    frame: u32,
    encoding: Encoding,
) -> Result<Vec<u8>, Problem> {
    let fragments = frame_fragments(reader, items, layout.n_frames, frame, encoding)?;
    let bytes: u64 = fragments.iter().map(|fragment| u64::from(fragment.length)).sum();
    if bytes > MAX_FRAME_BYTES {
        return Err(Problem::TooLarge {
            what: "the compressed data of one frame",
            detail: format!("frame {frame}, {} fragment(s)", fragments.len()),
            bytes,
        });
    }
    let mut data = Vec::with_capacity(usize::try_from(bytes).unwrap_or(0));
    let what = format!("the fragments of frame {frame}");
    for fragment in fragments {
        reader
            .seek(SeekFrom::Start(fragment.offset))
            .map_err(Problem::Io)?;
        let start = data.len();
        data.resize(start + fragment.length as usize, 0);
        reader
            .read_exact(&mut data[start..])
            .map_err(read_failed(&what))?;
    }
    Ok(data)
}

/// Which fragments hold frame `frame`: all of them for a single frame, one each when there are as many
/// fragments as frames, else those the basic offset table points to (or, for JPEG without a table,
/// those from the frame's start-of-image marker to the next).
pub(super) fn frame_fragments(
    reader: &mut BufReader<File>,
    items: &PixelItems,
    n_frames: u32,
    frame: u32,
    encoding: Encoding,
) -> Result<Vec<Fragment>, Problem> {
    let fragments = &items.fragments;
    let frame_index = frame as usize;
    if fragments.is_empty() {
        return Err(corrupt("the encapsulated pixel data has no fragments"));
    }
    if n_frames == 1 {
        return Ok(fragments.clone());
    }
    if fragments.len() == n_frames as usize {
        return Ok(vec![fragments[frame_index]]);
    }
    let table = &items.offset_table;
    if !table.is_empty() {
        if table.len() != n_frames as usize {
            return Err(corrupt(format!(
                "the basic offset table has {} entries for NumberOfFrames {n_frames}",
                table.len()
            )));
        }
        let start = u64::from(table[frame_index]);
        let end = table
            .get(frame_index + 1)
            .map_or(u64::MAX, |&next| u64::from(next));
        let mut position = 0_u64;
        let mut chosen = Vec::new();
        for fragment in fragments {
            if (start..end).contains(&position) {
                chosen.push(*fragment);
            }
            position += 8 + u64::from(fragment.length);
        }
        if chosen.is_empty() {
            return Err(corrupt(format!(
                "the basic offset table points frame {frame} at no fragment"
            )));
        }
        return Ok(chosen);
    }
    if encoding == Encoding::JpegLossy || encoding == Encoding::JpegLossless {
        let mut starts = Vec::new();
        for (index, fragment) in fragments.iter().enumerate() {
            let mut head = [0_u8; 2];
            if fragment.length >= 2 {
                reader
                    .seek(SeekFrom::Start(fragment.offset))
                    .map_err(Problem::Io)?;
                reader
                    .read_exact(&mut head)
                    .map_err(read_failed("the pixel data fragments"))?;
            }
            if head == [0xFF, 0xD8] {
                starts.push(index);
            }
        }
        if let Some(&first) = starts.get(frame_index) {
            let last = starts.get(frame_index + 1).copied().unwrap_or(fragments.len());
            return Ok(fragments[first..last].to_vec());
        }
        return Err(corrupt(format!(
            "{} JPEG images in {} fragments for NumberOfFrames {n_frames}",
            starts.len(),
            fragments.len()
        )));
    }
    Err(corrupt(format!(
        "{} fragments for NumberOfFrames {n_frames} and no basic offset table: which hold frame {frame} is unknown",
        fragments.len()
    )))
}

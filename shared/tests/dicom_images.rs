//! DICOM frames against an independent decoder: uncompressed (YBR_FULL_422 included), RLE Lossless and
//! JPEG frames decode to the colours pydicom gives (with its `convert_color_space`); unsupported
//! encodings, inconsistent pixel descriptions and oversized frames are refused with their own reasons,
//! from the header; only the requested frame is read; damaged compressed data is corrupt, never a panic.
//!
//! Fixtures: `tests/fixtures/dicom/` (made by `make_dicoms.py` there) and pydicom's bundled test files;
//! the reference decoding is `tests/fixtures/dicom/reference_rgb.py` (pydicom, numpy and Pillow, from
//! requirements-test.txt).
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test code: a panic is a failed test.

use dicom_core::{DataElement, PrimitiveValue, Tag, VR};
use dicom_dictionary_std::{tags, uids};
use fedlnm_shared::data::ImageError;
use fedlnm_shared::data::image::{MAX_DICOM_FRAME_BYTES, read_rgb};
use image::RgbImage;
use std::path::{Path, PathBuf};

fn python() -> String {
    std::env::var("FEDLNM_PYTHON").unwrap_or_else(|_| "python3".to_owned())
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/dicom")
        .join(name)
}

/// A file of pydicom's bundled test data, located through Python.
fn pydicom_file(name: &str) -> PathBuf {
    let output = std::process::Command::new(python())
        .args([
            "-c",
            "import pydicom,os;print(os.path.join(os.path.dirname(pydicom.__file__),'data','test_files'))",
        ])
        .output()
        .expect("cannot start python3 (set FEDLNM_PYTHON)");
    assert!(
        output.status.success(),
        "pydicom is not installed: pip install -r requirements-test.txt\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let file = PathBuf::from(String::from_utf8(output.stdout).unwrap().trim()).join(name);
    assert!(
        file.is_file(),
        "{} is not in pydicom's test files",
        file.display()
    );
    file
}

/// pydicom's decoding of each (file, frame), converted to RGB by `reference_rgb.py`.
fn reference(requests: &[(PathBuf, u32)]) -> Vec<RgbImage> {
    let dir = tempfile::tempdir().unwrap();
    let outs: Vec<PathBuf> = (0..requests.len())
        .map(|index| dir.path().join(format!("{index}.rgb")))
        .collect();
    let input: Vec<serde_json::Value> = requests
        .iter()
        .zip(&outs)
        .map(|((file, frame), out)| serde_json::json!({ "path": file, "frame": frame, "out": out }))
        .collect();
    let mut child = std::process::Command::new(python())
        .arg(fixture("reference_rgb.py"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("cannot start python3 (set FEDLNM_PYTHON)");
    serde_json::to_writer(child.stdin.take().unwrap(), &input).unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "reference_rgb.py failed (pip install -r requirements-test.txt):\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let shapes: Vec<serde_json::Value> = serde_json::from_slice(&output.stdout).unwrap();
    shapes
        .iter()
        .zip(&outs)
        .zip(requests)
        .map(|((shape, out), (file, frame))| {
            let [rows, columns] = shape
                .as_array()
                .and_then(|dims| {
                    dims.iter()
                        .map(serde_json::Value::as_u64)
                        .collect::<Option<Vec<_>>>()
                })
                .and_then(|dims| <[u64; 2]>::try_from(dims).ok())
                .unwrap_or_else(|| panic!("pydicom cannot decode {} frame {frame}: {shape}", file.display()));
            let bytes = std::fs::read(out).unwrap();
            RgbImage::from_raw(
                u32::try_from(columns).unwrap(),
                u32::try_from(rows).unwrap(),
                bytes,
            )
            .unwrap()
        })
        .collect()
}

/// The largest and the mean absolute difference over all channels of two same-sized pictures.
fn differences(ours: &RgbImage, theirs: &RgbImage) -> (u8, f64) {
    let diffs: Vec<u8> = ours
        .as_raw()
        .iter()
        .zip(theirs.as_raw())
        .map(|(a, b)| a.abs_diff(*b))
        .collect();
    let max = diffs.iter().copied().max().unwrap_or(0);
    let mean = diffs.iter().map(|&d| f64::from(d)).sum::<f64>() / diffs.len().max(1) as f64;
    (max, mean)
}

/// One decoding case: `file` frame `frame` must match pydicom's decoding of `reference` (the same
/// file unless pydicom cannot decode it) within `max` per channel and `mean` on average.
struct Case {
    file: PathBuf,
    reference: PathBuf,
    frame: u32,
    max: u8,
    mean: f64,
}

fn same(file: PathBuf, frame: u32, max: u8, mean: f64) -> Case {
    Case {
        reference: file.clone(),
        file,
        frame,
        max,
        mean,
    }
}

#[test]
fn frames_decode_to_the_colours_pydicom_gives() {
    // Exact for lossless data in RGB or grey; ±1 where YBR is converted (rounding); lossy JPEG within
    // what two JPEG decoders differ by (libjpeg in Pillow, jpeg-decoder here: up to 3, mean below 0.25,
    // mostly from chroma upsampling).
    let cases = [
        // Uncompressed YBR_FULL_422 (the tester's file, and a two-frame one).
        same(pydicom_file("SC_ybr_full_422_uncompressed.dcm"), 0, 1, 0.5),
        same(fixture("ybr_full_422_2frames.dcm"), 0, 1, 0.5),
        same(fixture("ybr_full_422_2frames.dcm"), 1, 1, 0.5),
        // Uncompressed RGB, implicit VR grey (MONOCHROME1: inverted).
        same(pydicom_file("examples_rgb_color.dcm"), 0, 0, 0.0),
        same(fixture("implicit_monochrome1.dcm"), 0, 0, 0.0),
        // RLE Lossless: RGB 8 and 16 bits, two frames, YBR_FULL, 12 bits in 16 grey over three frames.
        same(pydicom_file("SC_rgb_rle.dcm"), 0, 0, 0.0),
        same(pydicom_file("SC_rgb_rle_2frame.dcm"), 1, 0, 0.0),
        same(pydicom_file("SC_rgb_rle_16bit.dcm"), 0, 0, 0.0),
        same(fixture("rle_ybr_full.dcm"), 0, 1, 0.5),
        same(fixture("rle_monochrome2_12bit_3frames.dcm"), 2, 0, 0.0),
        // JPEG Baseline: YBR_FULL, YBR_FULL_422, a real 30-frame cine (first and last frame), RGB
        // without colour transform, two frames split over four fragments without offset table, grey.
        same(pydicom_file("SC_rgb_jpeg_dcmtk.dcm"), 0, 4, 0.5),
        same(pydicom_file("SC_rgb_dcmtk_+eb+cy+np.dcm"), 0, 4, 0.5),
        same(pydicom_file("examples_ybr_color.dcm"), 0, 4, 0.5),
        same(pydicom_file("examples_ybr_color.dcm"), 29, 4, 0.5),
        same(pydicom_file("SC_jpeg_no_color_transform.dcm"), 0, 4, 0.5),
        same(fixture("jpeg_baseline_ybr_full_422_2frames.dcm"), 1, 4, 0.5),
        same(fixture("jpeg_baseline_monochrome2.dcm"), 0, 4, 0.5),
        // JPEG Lossless SV1 (pydicom needs a plugin for it): the same picture as its RLE copy, exactly.
        Case {
            file: pydicom_file("SC_rgb_jpeg_gdcm.dcm"),
            reference: pydicom_file("SC_rgb_rle.dcm"),
            frame: 0,
            max: 0,
            mean: 0.0,
        },
    ];
    let references = reference(
        &cases
            .iter()
            .map(|case| (case.reference.clone(), case.frame))
            .collect::<Vec<_>>(),
    );
    for (case, theirs) in cases.iter().zip(&references) {
        let name = format!("{} frame {}", case.file.display(), case.frame);
        let ours = read_rgb(&case.file, case.frame).unwrap_or_else(|error| panic!("{name}: {error}"));
        assert_eq!(ours.dimensions(), theirs.dimensions(), "{name}");
        let (max, mean) = differences(&ours, theirs);
        assert!(
            max <= case.max && mean <= case.mean,
            "{name}: differs from pydicom by up to {max} (mean {mean:.3}); allowed {} (mean {})",
            case.max,
            case.mean
        );
    }
    // The frame index is honoured: the two frames of each multi-frame case differ.
    for (file, frames) in [
        (fixture("ybr_full_422_2frames.dcm"), [0, 1]),
        (pydicom_file("examples_ybr_color.dcm"), [0, 29]),
        (fixture("jpeg_baseline_ybr_full_422_2frames.dcm"), [0, 1]),
        (fixture("rle_monochrome2_12bit_3frames.dcm"), [0, 2]),
    ] {
        let [first, other] = frames.map(|frame| read_rgb(&file, frame).unwrap());
        assert_ne!(first, other, "{}: frames {frames:?}", file.display());
    }
}

/// The error of reading `file` frame `frame`, which must fail.
fn refusal(file: &Path, frame: u32) -> ImageError {
    match read_rgb(file, frame) {
        Ok(_) => panic!("{} frame {frame} was accepted", file.display()),
        Err(error) => error,
    }
}

#[test]
fn unsupported_encodings_are_named_and_not_called_corrupt() {
    let cases = [
        (pydicom_file("JPEG2000.dcm"), "JPEG 2000"),
        (pydicom_file("MR_small_jpeg_ls_lossless.dcm"), "JPEG-LS Lossless"),
        (
            pydicom_file("image_dfl.dcm"),
            "Deflated Explicit VR Little Endian",
        ),
        (
            pydicom_file("ExplVR_BigEnd.dcm"),
            "Explicit VR Big Endian (1.2.840.10008.1.2.2)",
        ),
        (
            fixture("private_transfer_syntax.dcm"),
            "1.2.3.4.5.6.7.8.9.1 (not a known transfer syntax)",
        ),
        // A supported transfer syntax with what the decoders do not handle.
        (pydicom_file("JPGExtended.dcm"), "12 bits"),
        (pydicom_file("MR_small_RLE.dcm"), "PixelRepresentation 'signed'"),
        (pydicom_file("SC_rgb_rle_32bit.dcm"), "BitsAllocated '32'"),
        (
            pydicom_file("examples_palette.dcm"),
            "PhotometricInterpretation 'PALETTE COLOR'",
        ),
    ];
    for (file, needle) in cases {
        let error = refusal(&file, 0);
        let message = error.to_string();
        assert_eq!(error.reason(), "unsupported DICOM encoding", "{message}");
        assert!(
            message.contains(needle) && message.contains(file.file_name().unwrap().to_str().unwrap()),
            "{message}"
        );
    }
    let message = refusal(&pydicom_file("JPEG2000.dcm"), 0).to_string();
    assert!(
        message.contains("unsupported DICOM encoding JPEG 2000 Image Compression (1.2.840.10008.1.2.4.91)")
            && message.contains("RLE Lossless, JPEG Baseline"),
        "names the encoding and what is supported: {message}"
    );
}

/// Writes an explicit VR little endian DICOM with `elements` and `pixel_data`.
fn write_dicom(file: &Path, elements: Vec<DataElement<dicom_object::InMemDicomObject>>, pixel_data: Vec<u8>) {
    let mut object = dicom_object::InMemDicomObject::from_element_iter(elements);
    object.put(DataElement::new(
        tags::PIXEL_DATA,
        VR::OB,
        PrimitiveValue::from(pixel_data),
    ));
    let meta = dicom_object::FileMetaTableBuilder::new()
        .transfer_syntax(uids::EXPLICIT_VR_LITTLE_ENDIAN)
        .media_storage_sop_class_uid(uids::ULTRASOUND_IMAGE_STORAGE)
        .media_storage_sop_instance_uid("2.25.4242");
    object.with_meta(meta).unwrap().write_to_file(file).unwrap();
}

/// Attributes to set (`Some`) or remove (`None`) in [`pixel_module`].
type Changes = Vec<(Tag, Option<PrimitiveValue>)>;

/// The pixel module of an 8 x 8 RGB 8-bit picture, with `changes` applied (`None` removes the attribute).
fn pixel_module(
    changes: &[(Tag, Option<PrimitiveValue>)],
) -> Vec<DataElement<dicom_object::InMemDicomObject>> {
    let base: [(Tag, VR, PrimitiveValue); 9] = [
        (tags::SAMPLES_PER_PIXEL, VR::US, PrimitiveValue::from(3_u16)),
        (
            tags::PHOTOMETRIC_INTERPRETATION,
            VR::CS,
            PrimitiveValue::from("RGB"),
        ),
        (tags::PLANAR_CONFIGURATION, VR::US, PrimitiveValue::from(0_u16)),
        (tags::ROWS, VR::US, PrimitiveValue::from(8_u16)),
        (tags::COLUMNS, VR::US, PrimitiveValue::from(8_u16)),
        (tags::BITS_ALLOCATED, VR::US, PrimitiveValue::from(8_u16)),
        (tags::BITS_STORED, VR::US, PrimitiveValue::from(8_u16)),
        (tags::HIGH_BIT, VR::US, PrimitiveValue::from(7_u16)),
        (tags::PIXEL_REPRESENTATION, VR::US, PrimitiveValue::from(0_u16)),
    ];
    let mut elements: Vec<_> = base
        .into_iter()
        .filter(|(tag, ..)| !changes.iter().any(|(changed, _)| changed == tag))
        .map(|(tag, vr, value)| DataElement::new(tag, vr, value))
        .collect();
    for (tag, value) in changes {
        if let Some(value) = value {
            let vr = match *tag {
                tags::PHOTOMETRIC_INTERPRETATION => VR::CS,
                tags::NUMBER_OF_FRAMES => VR::IS,
                _ => VR::US,
            };
            elements.push(DataElement::new(*tag, vr, value.clone()));
        }
    }
    elements
}

#[test]
fn inconsistent_pixel_descriptions_are_refused_naming_the_attributes() {
    let us = |value: u16| Some(PrimitiveValue::from(value));
    let text = |value: &str| Some(PrimitiveValue::from(value));
    let cases: Vec<(Changes, &str)> = vec![
        (
            vec![(tags::BITS_STORED, us(12))],
            "BitsStored 12 is more than BitsAllocated 8",
        ),
        (
            vec![(tags::HIGH_BIT, us(8))],
            "HighBit 8 is not below BitsAllocated 8",
        ),
        (
            vec![(tags::HIGH_BIT, us(3))],
            "HighBit 3 leaves no room for BitsStored 8",
        ),
        (vec![(tags::BITS_STORED, us(0))], "BitsStored is 0"),
        (
            vec![
                (tags::BITS_ALLOCATED, us(12)),
                (tags::BITS_STORED, us(12)),
                (tags::HIGH_BIT, us(11)),
            ],
            "BitsAllocated is 12",
        ),
        (
            vec![(tags::SAMPLES_PER_PIXEL, us(2))],
            "SamplesPerPixel is 2; it must be 1 or 3",
        ),
        (
            vec![(tags::SAMPLES_PER_PIXEL, us(4))],
            "SamplesPerPixel is 4; it must be 1 or 3",
        ),
        (vec![(tags::ROWS, us(0))], "Rows is 0"),
        (vec![(tags::COLUMNS, us(0))], "Columns is 0"),
        (vec![(tags::ROWS, None)], "Rows is missing"),
        (vec![(tags::BITS_STORED, None)], "BitsStored is missing"),
        (
            vec![(tags::PHOTOMETRIC_INTERPRETATION, None)],
            "PhotometricInterpretation is missing",
        ),
        (
            vec![(tags::PLANAR_CONFIGURATION, us(2))],
            "PlanarConfiguration is 2",
        ),
        (
            vec![(tags::PIXEL_REPRESENTATION, us(7))],
            "PixelRepresentation is 7",
        ),
        (
            vec![(tags::PHOTOMETRIC_INTERPRETATION, text("MONOCHROME2"))],
            "MONOCHROME2 needs SamplesPerPixel 1, not 3",
        ),
        (vec![(tags::NUMBER_OF_FRAMES, text("0"))], "NumberOfFrames is 0"),
        (
            vec![(tags::NUMBER_OF_FRAMES, text("many"))],
            "NumberOfFrames 'many' is not a whole number",
        ),
        (
            vec![
                (tags::PHOTOMETRIC_INTERPRETATION, text("YBR_FULL_422")),
                (tags::COLUMNS, us(7)),
            ],
            "YBR_FULL_422 needs an even Columns, not 7",
        ),
    ];
    let dir = tempfile::tempdir().unwrap();
    for (index, (changes, needle)) in cases.into_iter().enumerate() {
        let file = dir.path().join(format!("inconsistent-{index}.dcm"));
        write_dicom(&file, pixel_module(&changes), vec![0; 8 * 8 * 3]);
        let error = refusal(&file, 0);
        let message = error.to_string();
        assert_eq!(
            error.reason(),
            "inconsistent DICOM pixel description",
            "{message}"
        );
        assert!(
            message.contains(needle) && message.contains(&format!("inconsistent-{index}.dcm")),
            "{message}"
        );
    }
    // The compressed frame's own header disagreeing with Rows and Columns.
    let error = refusal(&fixture("jpeg_size_mismatch.dcm"), 0);
    assert_eq!(error.reason(), "inconsistent DICOM pixel description", "{error}");
    assert!(
        error
            .to_string()
            .contains("the JPEG frame is 64 x 64 pixels but Columns x Rows is 16 x 16"),
        "{error}"
    );
}

#[test]
fn a_frame_over_the_size_limit_is_refused_from_the_header_before_its_pixels_are_read() {
    let dir = tempfile::tempdir().unwrap();
    let us = |value: u16| Some(PrimitiveValue::from(value));
    // 65535 x 65535 RGB at 16 bits claims 25.8 GB per frame; the file holds 6 bytes of pixels.
    let huge = dir.path().join("huge.dcm");
    let changes = [
        (tags::ROWS, us(65_535)),
        (tags::COLUMNS, us(65_535)),
        (tags::BITS_ALLOCATED, us(16)),
        (tags::BITS_STORED, us(16)),
        (tags::HIGH_BIT, us(15)),
    ];
    write_dicom(&huge, pixel_module(&changes), vec![0; 6]);
    let error = refusal(&huge, 0);
    let message = error.to_string();
    assert!(matches!(error, ImageError::DicomTooLarge { .. }), "{message}");
    assert_eq!(error.reason(), "DICOM frame too large");
    let bytes = 65_535_u64 * 65_535 * 3 * 2;
    assert!(
        message.contains(&format!("one frame is {bytes} bytes"))
            && message.contains("Rows 65535 x Columns 65535 x SamplesPerPixel 3 x BitsAllocated 16/8")
            && message.contains(&format!("over the limit of {MAX_DICOM_FRAME_BYTES} bytes")),
        "{message}"
    );
    // A grey frame of exactly the limit passes the size check (and then fails the length check: the
    // file holds 8 bytes); one more column is over it.
    let side = u16::try_from((MAX_DICOM_FRAME_BYTES as f64).sqrt() as u64).unwrap();
    assert_eq!(
        u64::from(side) * u64::from(side),
        MAX_DICOM_FRAME_BYTES,
        "the limit is a square"
    );
    let grey = |columns: u16| {
        vec![
            (tags::ROWS, us(side)),
            (tags::COLUMNS, us(columns)),
            (tags::SAMPLES_PER_PIXEL, us(1)),
            (
                tags::PHOTOMETRIC_INTERPRETATION,
                Some(PrimitiveValue::from("MONOCHROME2")),
            ),
        ]
    };
    let at_limit = dir.path().join("at-limit.dcm");
    write_dicom(&at_limit, pixel_module(&grey(side)), vec![0; 8]);
    let message = refusal(&at_limit, 0).to_string();
    assert!(message.contains("the pixel data holds 8 bytes"), "{message}");
    let over = dir.path().join("over.dcm");
    write_dicom(&over, pixel_module(&grey(side + 1)), vec![0; 8]);
    assert!(matches!(refusal(&over, 0), ImageError::DicomTooLarge { .. }));
}

#[test]
fn only_the_requested_frame_is_read() {
    // Three RGB frames, the file cut inside the third: the first two still decode.
    let file = fixture("rgb_3frames_truncated.dcm");
    let frames: Vec<RgbImage> = (0..2).map(|frame| read_rgb(&file, frame).unwrap()).collect();
    assert_ne!(frames[0], frames[1]);
    let message = refusal(&file, 2).to_string();
    assert!(
        message.contains("truncated: the file ends inside frame 2"),
        "{message}"
    );
    assert!(matches!(
        refusal(&file, 3),
        ImageError::FrameOutOfRange { n_frames: 3, .. }
    ));
    // A header claiming a million frames over 192 bytes of pixels is refused without reading them.
    let dir = tempfile::tempdir().unwrap();
    let claims = dir.path().join("million-frames.dcm");
    let changes = [(tags::NUMBER_OF_FRAMES, Some(PrimitiveValue::from("1000000")))];
    write_dicom(&claims, pixel_module(&changes), vec![0; 8 * 8 * 3]);
    let message = refusal(&claims, 0).to_string();
    assert!(
        message.contains("the pixel data holds 192 bytes but NumberOfFrames 1000000 x 192 bytes per frame"),
        "{message}"
    );
}

#[test]
fn damaged_compressed_frames_are_corrupt_and_never_a_panic() {
    let error = refusal(&fixture("rle_short_segment.dcm"), 0);
    assert_eq!(error.reason(), "image unreadable or corrupt", "{error}");
    assert!(
        error
            .to_string()
            .contains("RLE segment 2 decodes to 11 bytes; Rows x Columns is 128"),
        "{error}"
    );
    // Every truncation and many single-byte changes of an RLE and two JPEG files: each read returns.
    let dir = tempfile::tempdir().unwrap();
    let damaged = dir.path().join("damaged.dcm");
    for name in [
        "rle_ybr_full.dcm",
        "jpeg_baseline_ybr_full_422_2frames.dcm",
        "jpeg_baseline_monochrome2.dcm",
    ] {
        let bytes = std::fs::read(fixture(name)).unwrap();
        for cut in 132..bytes.len() {
            std::fs::write(&damaged, &bytes[..cut]).unwrap();
            if let Ok(picture) = read_rgb(&damaged, 0) {
                assert!(picture.width() > 0, "{name} cut at {cut}");
            }
        }
        for position in (132..bytes.len()).step_by(3) {
            for flip in [0x01_u8, 0x80, 0xFF] {
                let mut changed = bytes.clone();
                changed[position] ^= flip;
                std::fs::write(&damaged, &changed).unwrap();
                let _outcome = read_rgb(&damaged, 0);
            }
        }
    }
}

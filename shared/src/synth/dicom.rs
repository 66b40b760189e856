//! Writes a synthetic picture as an ultrasound DICOM file: RGB, 8-bit, Explicit VR Little Endian, with
//! UIDs under the `2.25` (UUID-derived) root computed from the seed, and no real identifier.

use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_object::{FileMetaTableBuilder, InMemDicomObject};
use image::RgbImage;
use std::path::Path;

/// Why a DICOM file could not be written.
#[derive(Debug, thiserror::Error)]
pub enum DicomWriteError {
    #[error("a picture of {columns}×{rows} pixels does not fit DICOM's 65535×65535")]
    TooLarge { columns: u32, rows: u32 },
    #[error("cannot build the DICOM file meta group: {0}")]
    Meta(String),
    #[error("cannot write the DICOM file: {0}")]
    Write(String),
}

/// Writes `picture` to `file` as a DICOM Ultrasound Image. `uid_seed` makes the UIDs deterministic.
///
/// # Errors
/// [`DicomWriteError`].
pub fn write_dicom(
    file: &Path,
    picture: &RgbImage,
    pseudonym: &str,
    uid_seed: u128,
) -> Result<(), DicomWriteError> {
    let instance_uid = format!("2.25.{uid_seed}");
    let study_uid = format!("2.25.{}", uid_seed.wrapping_add(1));
    let series_uid = format!("2.25.{}", uid_seed.wrapping_add(2));
    let (width, height) = picture.dimensions();
    let too_large = || DicomWriteError::TooLarge {
        columns: width,
        rows: height,
    };
    let rows = u16::try_from(height).map_err(|_| too_large())?;
    let columns = u16::try_from(width).map_err(|_| too_large())?;
    let text = |tag, vr, value: &str| DataElement::new(tag, vr, PrimitiveValue::from(value));
    let short = |tag, value: u16| DataElement::new(tag, VR::US, PrimitiveValue::from(value));
    let object = InMemDicomObject::from_element_iter([
        text(tags::SOP_CLASS_UID, VR::UI, uids::ULTRASOUND_IMAGE_STORAGE),
        text(tags::SOP_INSTANCE_UID, VR::UI, &instance_uid),
        text(tags::MODALITY, VR::CS, "US"),
        text(tags::MANUFACTURER, VR::LO, "FEDLNM SYNTHETIC"),
        text(tags::PATIENT_NAME, VR::PN, "SYNTHETIC^PATIENT"),
        text(tags::PATIENT_ID, VR::LO, pseudonym),
        text(tags::BODY_PART_EXAMINED, VR::CS, "THYROID"),
        text(tags::STUDY_INSTANCE_UID, VR::UI, &study_uid),
        text(tags::SERIES_INSTANCE_UID, VR::UI, &series_uid),
        short(tags::SAMPLES_PER_PIXEL, 3),
        text(tags::PHOTOMETRIC_INTERPRETATION, VR::CS, "RGB"),
        short(tags::PLANAR_CONFIGURATION, 0),
        short(tags::ROWS, rows),
        short(tags::COLUMNS, columns),
        short(tags::BITS_ALLOCATED, 8),
        short(tags::BITS_STORED, 8),
        short(tags::HIGH_BIT, 7),
        short(tags::PIXEL_REPRESENTATION, 0),
        DataElement::new(
            tags::PIXEL_DATA,
            VR::OB,
            PrimitiveValue::from(picture.as_raw().clone()),
        ),
    ]);
    let meta = FileMetaTableBuilder::new()
        .transfer_syntax(uids::EXPLICIT_VR_LITTLE_ENDIAN)
        .media_storage_sop_class_uid(uids::ULTRASOUND_IMAGE_STORAGE)
        .media_storage_sop_instance_uid(instance_uid.as_str())
        .implementation_class_uid("2.25.1234567890")
        .implementation_version_name("FEDLNM_SYNTH");
    let file_object = object
        .with_meta(meta)
        .map_err(|e| DicomWriteError::Meta(e.to_string()))?;
    file_object
        .write_to_file(file)
        .map_err(|e| DicomWriteError::Write(e.to_string()))
}

//! Fuzz target `image`: the PNG/JPEG/DICOM loader: data::image::load_tensor of a file (body: `tests/src/fuzzing.rs`, `image_file`).
#![no_main]

fedlnm_fuzz::target!(image_file);

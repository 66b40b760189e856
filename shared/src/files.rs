//! Opening the files that a site or a study hands over: regular files only. A FIFO given as an image,
//! a manifest, a configuration or a checkpoint would block the reader forever, and a device could be
//! endless; both are refused before anything is read, with an error that says what the path is.

use std::fs::File;
use std::io;
use std::path::Path;

/// Opens `file` for reading if it is a regular file (symbolic links followed).
///
/// # Errors
/// The path does not exist or cannot be read, or it is not a regular file
/// ([`io::ErrorKind::InvalidInput`]).
pub fn open_regular(file: &Path) -> io::Result<File> {
    check_regular(file)?;
    File::open(file)
}

/// Reads the whole of `file` if it is a regular file.
///
/// # Errors
/// As [`open_regular`].
pub fn read_regular(file: &Path) -> io::Result<Vec<u8>> {
    check_regular(file)?;
    std::fs::read(file)
}

/// Fails unless `file` is a regular file.
///
/// # Errors
/// As [`open_regular`].
pub fn check_regular(file: &Path) -> io::Result<()> {
    let file_type = std::fs::metadata(file)?.file_type();
    if file_type.is_file() {
        return Ok(());
    }
    let what = if file_type.is_dir() {
        "a folder"
    } else {
        "a pipe, socket or device"
    };
    Err(io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("not a regular file ({what})"),
    ))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn folders_are_refused_and_files_read() {
        let dir = tempfile::tempdir().unwrap();
        let error = read_regular(dir.path()).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidInput);
        assert!(error.to_string().contains("a folder"), "{error}");
        let file = dir.path().join("x.txt");
        std::fs::write(&file, b"ok").unwrap();
        assert_eq!(read_regular(&file).unwrap(), b"ok");
    }
}

//! Opening the files that a site or a study hands over: regular files only. A FIFO given as an image,
//! a manifest, a configuration or a checkpoint would block the reader forever, and a device could be
//! endless; both are refused before anything is read, with an error that says what the path is.
//! And writing the files that must never be overwritten (keys, certificates, secrets): [`write_new`];
//! and the files a reader must never see half of (records of finished work): [`write_atomically`].

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

/// Writes a new file, never over an existing one, creating its folder; `private` files (keys,
/// secrets) get mode 0600, others 0644; the contents are synced to disk before it returns.
///
/// # Errors
/// The file exists, or a folder or the file cannot be created or written.
pub fn write_new(path: &Path, contents: &[u8], private: bool) -> io::Result<()> {
    use std::io::Write as _;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(if private { 0o600 } else { 0o644 });
    }
    let mut file = options.open(path)?;
    file.write_all(contents)?;
    file.sync_all()
}

/// Writes `file` whole or not at all: the contents go to `<file name>.partial` beside it, are synced to disk, and
/// the temporary is renamed over `file`, so a reader (or a crash) never sees half of it. The error
/// names the file.
///
/// # Errors
/// The temporary cannot be written or synced, or cannot be renamed to `file`.
pub fn write_atomically(file: &Path, contents: &[u8]) -> io::Result<()> {
    use std::io::Write as _;
    let named = |path: &Path, error: io::Error| {
        io::Error::new(error.kind(), format!("cannot write {}: {error}", path.display()))
    };
    let mut name = file.file_name().unwrap_or_default().to_os_string();
    name.push(".partial");
    let temporary = file.with_file_name(name);
    let mut partial = File::create(&temporary).map_err(|e| named(&temporary, e))?;
    partial
        .write_all(contents)
        .and_then(|()| partial.sync_all())
        .map_err(|e| named(&temporary, e))?;
    std::fs::rename(&temporary, file).map_err(|e| named(file, e))
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

    #[test]
    fn an_atomic_write_replaces_the_file_whole_and_names_it_when_it_cannot() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("record.json");
        write_atomically(&file, b"first").unwrap();
        write_atomically(&file, b"second").unwrap();
        assert_eq!(std::fs::read(&file).unwrap(), b"second");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["record.json"], "no temporary left behind");
        let missing = dir.path().join("no-such-folder").join("record.json");
        let error = write_atomically(&missing, b"x").unwrap_err();
        assert!(error.to_string().contains("no-such-folder"), "{error}");
    }
}

//! File writing that never overwrites by accident and never leaves half-written files.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::PkiError;

/// Mode of private keys: owner read/write only.
pub const KEY_MODE: u32 = 0o600;
/// Mode of certificates, CRLs and the index.
pub const PUBLIC_MODE: u32 = 0o644;

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PkiError + '_ {
    move |source| PkiError::Io {
        path: path.to_owned(),
        source,
    }
}

/// A temporary file next to `path`, created with `mode` (never chmod-ed later, so a key
/// is never readable by others, not even for an instant), holding `contents`, synced.
fn write_temp(path: &Path, contents: &[u8], mode: u32) -> Result<PathBuf, PkiError> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temp = path.with_file_name(format!(
        ".{name}.tmp-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&temp)?;
        file.write_all(contents)?;
        file.sync_all()
    })();
    if let Err(source) = result {
        let _ = fs::remove_file(&temp);
        return Err(PkiError::Io { path: temp, source });
    }
    Ok(temp)
}

/// Writes a new file atomically; fails with [`PkiError::FileExists`] if `path` exists.
/// (A hard link refuses an existing target, unlike rename, and is atomic.)
pub fn write_new(path: &Path, contents: &[u8], mode: u32) -> Result<(), PkiError> {
    if path.exists() {
        return Err(PkiError::FileExists(path.to_owned()));
    }
    let temp = write_temp(path, contents, mode)?;
    let linked = fs::hard_link(&temp, path);
    let _ = fs::remove_file(&temp);
    match linked {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            Err(PkiError::FileExists(path.to_owned()))
        }
        Err(source) => Err(PkiError::Io {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Replaces a file atomically (temp + rename): readers see the old or the new contents.
pub fn replace(path: &Path, contents: &[u8], mode: u32) -> Result<(), PkiError> {
    let temp = write_temp(path, contents, mode)?;
    fs::rename(&temp, path).map_err(|source| {
        let _ = fs::remove_file(&temp);
        PkiError::Io {
            path: path.to_owned(),
            source,
        }
    })
}

/// Creates a directory (and parents), owner-only.
pub fn create_dir(path: &Path) -> Result<(), PkiError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(io(path))
}

/// Reads a file to a string, naming the file in the error.
pub fn read_string(path: &Path) -> Result<String, PkiError> {
    fs::read_to_string(path).map_err(io(path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn new_files_are_not_overwritten_and_keep_their_mode() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("a.key");
        write_new(&path, b"one", KEY_MODE).expect("write");
        let mode = fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(matches!(
            write_new(&path, b"two", KEY_MODE),
            Err(PkiError::FileExists(_))
        ));
        assert_eq!(fs::read(&path).expect("read"), b"one");
        replace(&path, b"three", KEY_MODE).expect("replace");
        assert_eq!(fs::read(&path).expect("read"), b"three");
        // No temporary file is left behind.
        assert_eq!(fs::read_dir(dir.path()).expect("dir").count(), 1);
    }
}

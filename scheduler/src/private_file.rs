//! Files that hold secrets (catalogs, a node's sync state): written with
//! mode 0600, atomically and durably.
//!
//! The bytes go to a temporary file beside the target (a name of its own
//! per write, so two writers never share one), are fsynced, renamed over
//! the target, and the directory is fsynced so the rename itself survives
//! a power loss. Temporaries a crash leaves behind are recognised by
//! [`is_temporary`] and swept by their owner at start. A reader sees the old file or the new one, never a part.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write as _};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Replaces `path` with `bytes` (mode 0600), atomically and durably.
pub fn write(path: &Path, bytes: &[u8]) -> io::Result<()> {
    stage(path, bytes)?.commit()?;
    sync_dir(folder_of(path))
}

/// The folder `path` is in: `.` for a bare file name (whose parent is
/// the empty path, which cannot be opened).
fn folder_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Makes the renames in `dir` durable (fsync of the folder).
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Is this a temporary [`stage`] writes (one a crash may leave behind)?
pub fn is_temporary(name: &str) -> bool {
    name.starts_with('.') && name.ends_with(".tmp")
}

/// New contents for `path`, written and fsynced beside it but not in
/// place yet: [`Staged::commit`] puts them there, dropping throws them
/// away. A writer that may learn, after the bytes are ready, that they are
/// no longer wanted (the node was removed meanwhile) stages first.
#[derive(Debug)]
pub struct Staged {
    tmp: PathBuf,
    path: PathBuf,
    done: bool,
}

/// Writes `bytes` to a temporary of its own beside `path` (mode 0600) and
/// fsyncs it.
pub fn stage(path: &Path, bytes: &[u8]) -> io::Result<Staged> {
    static WRITES: AtomicU64 = AtomicU64::new(0);
    let dir = folder_of(path);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let n = WRITES.fetch_add(1, Ordering::Relaxed);
    let tmp = dir.join(format!(".{name}.{}.{n}.tmp", std::process::id()));
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    // ours from here on: removed unless committed
    let staged = Staged {
        tmp,
        path: path.to_path_buf(),
        done: false,
    };
    f.write_all(bytes)?;
    f.sync_all()?;
    Ok(staged)
}

impl Staged {
    /// Renames the contents into place: atomic, and cheap enough for the
    /// driver's own task. [`sync_dir`] then makes it durable.
    pub fn commit(mut self) -> io::Result<()> {
        fs::rename(&self.tmp, &self.path)?;
        self.done = true;
        Ok(())
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if !self.done {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_bare_file_name_is_in_the_current_folder() {
        assert_eq!(folder_of(Path::new("measured.json")), Path::new("."));
        assert_eq!(folder_of(Path::new("/tmp/m.json")), Path::new("/tmp"));
        assert_eq!(folder_of(Path::new("out/m.json")), Path::new("out"));
        assert!(sync_dir(folder_of(Path::new("x"))).is_ok());
    }

    #[test]
    fn replaces_the_file_privately_and_leaves_no_temporary_behind() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("web-01.example.com.json");
        write(&path, b"one").expect("first");
        write(&path, b"two").expect("second");
        assert_eq!(fs::read(&path).expect("read"), b"two");
        let mode = fs::metadata(&path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let names: Vec<_> = fs::read_dir(dir.path())
            .expect("dir")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
        assert!(write(&dir.path().join("missing/x"), b"x").is_err());
    }

    #[test]
    fn a_staged_write_lands_only_when_committed() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("a.json");
        write(&path, b"old").expect("old");
        let dropped = stage(&path, b"unwanted").expect("stage");
        drop(dropped);
        assert_eq!(fs::read(&path).expect("read"), b"old");
        let kept = stage(&path, b"new").expect("stage");
        assert_eq!(fs::read(&path).expect("read"), b"old", "not in place yet");
        kept.commit().expect("commit");
        assert_eq!(fs::read(&path).expect("read"), b"new");
        assert_eq!(
            fs::read_dir(dir.path()).expect("dir").count(),
            1,
            "no temporary left"
        );
    }

    #[test]
    fn concurrent_writers_never_share_a_temporary() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("n.json");
        let a = vec![b'a'; 1 << 16];
        let b = vec![b'b'; 1 << 16];
        std::thread::scope(|s| {
            for bytes in [&a, &b] {
                let path = &path;
                s.spawn(move || {
                    for _ in 0..200 {
                        write(path, bytes).expect("every write succeeds");
                    }
                });
            }
        });
        let last = fs::read(&path).expect("read");
        assert!(last == a || last == b, "a whole version, never a mix");
    }
}

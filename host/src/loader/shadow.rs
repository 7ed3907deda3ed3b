//! The private directory of plugin copies: one per plugin host, made at
//! start, removed when its owner is dropped, or by [`remove_all`] when the
//! process ends without running destructors (`<kill>`).

use std::fs;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

/// Shadow directories of this process that still exist.
static LIVE: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// A directory of plugin copies, readable by this user only, removed on
/// drop. Files of versions still mapped vanish from it but stay readable
/// through their mappings.
#[derive(Debug)]
pub(crate) struct ShadowDir {
    path: PathBuf,
}

impl ShadowDir {
    /// A fresh directory inside `root` (default: the system temporary
    /// directory). A directory per run means a copy left behind by a crashed
    /// run can never collide with this run's names.
    pub(crate) fn create(root: Option<&Path>) -> std::io::Result<Self> {
        let root = root.map_or_else(std::env::temp_dir, Path::to_path_buf);
        fs::create_dir_all(&root)?;
        let mut attempt = 0u32;
        let path = loop {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0);
            let dir = root.join(format!(".taskit-host-{}-{nanos:08x}", std::process::id()));
            match fs::DirBuilder::new().mode(0o700).create(&dir) {
                Ok(()) => break dir,
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && attempt < 16 => {
                    attempt += 1
                }
                Err(e) => return Err(e),
            }
        };
        LIVE.lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(path.clone());
        Ok(Self { path })
    }

    /// Where the copies go.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ShadowDir {
    fn drop(&mut self) {
        LIVE.lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|p| p != &self.path);
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// Removes every shadow directory of this process, for an exit that skips
/// destructors.
pub(crate) fn remove_all() {
    let live = std::mem::take(&mut *LIVE.lock().unwrap_or_else(PoisonError::into_inner));
    for path in live {
        let _ = fs::remove_dir_all(path);
    }
}

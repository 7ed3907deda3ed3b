//! Private temporary directories, and plugin files installed the ways an
//! operator installs them.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// A directory removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    /// A new empty directory whose name says what it is for.
    pub fn new(label: &str) -> Self {
        static N: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "taskit-test-{label}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        // Writable by its owner only, whatever the umask: the host refuses
        // a plugins directory others may write to.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))
            .expect("chmod temp dir");
        Self(dir)
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.0
    }

    /// A path inside it.
    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Copies `src` into `dir` as `name` the way an operator would replace a
/// plugin atomically: write a hidden temporary file, then rename it.
pub fn install_by_rename(src: &Path, dir: &Path, name: &str) {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::copy(src, &tmp).expect("copy plugin");
    private(&tmp);
    std::fs::rename(&tmp, dir.join(name)).expect("rename plugin into place");
}

/// Overwrites `dir/name` in place, as `cp new.so dir/name` does.
pub fn install_by_overwrite(src: &Path, dir: &Path, name: &str) {
    std::fs::copy(src, dir.join(name)).expect("copy over plugin");
    private(&dir.join(name));
}

/// Writable by its owner only, whatever the umask (as the host requires).
fn private(file: &Path) {
    std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o755)).expect("chmod plugin");
}

/// Writes `token` to `dir/token`, readable by its owner only (as the host
/// requires of an admin token file); its path.
pub fn private_token_file(dir: &TempDir, token: &str) -> PathBuf {
    let path = dir.join("token");
    std::fs::write(&path, token).expect("write the token file");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
        .expect("chmod the token file");
    path
}

/// A plugins directory holding the demo plugin as `demo.so`.
pub fn demo_dir(label: &str) -> TempDir {
    let dir = TempDir::new(label);
    install_by_rename(&crate::built::plugin("taskit_demo"), dir.path(), "demo.so");
    dir
}

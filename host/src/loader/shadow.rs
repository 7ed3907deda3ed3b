//! The private directory of plugin copies: one per plugin host, made at
//! start, removed when its owner is dropped, or by [`remove_all`] when the
//! process ends without running destructors (`<kill>`).

use std::fs;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
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
    /// Its lock file, locked while this host runs.
    _lock: fs::File,
}

impl ShadowDir {
    /// A fresh directory inside `root` (default: the system temporary
    /// directory). A directory per run means a copy left behind by a crashed
    /// run can never collide with this run's names.
    ///
    /// Refuses a `root` that any user may write to without the sticky bit
    /// (another user could swap this run's directory), and removes the
    /// directories that hosts of this user which are no longer running left
    /// in it (a crash or SIGKILL skips the removal).
    ///
    /// Each directory holds a lock file, locked (`flock`) for as long as
    /// its host runs: a directory whose lock can be taken is stale, whatever
    /// its process id says (in containers every host may be pid 1). It gets
    /// its name only once locked (made under a temporary name, then
    /// renamed), so no host can take a directory being made for stale.
    pub(crate) fn create(root: Option<&Path>) -> std::io::Result<Self> {
        let root = root.map_or_else(std::env::temp_dir, Path::to_path_buf);
        fs::create_dir_all(&root)?;
        let mode = fs::metadata(&root)?.mode();
        if mode & 0o002 != 0 && mode & 0o1000 == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                format!(
                    "{} is writable by every user and has no sticky bit: another user could replace the plugin copies made in it; use --shadow-dir with a private directory, or chmod +t it",
                    root.display()
                ),
            ));
        }
        // One at a time in this process: a directory being made is never
        // taken for stale by another host of the process.
        let mut live = LIVE.lock().unwrap_or_else(PoisonError::into_inner);
        remove_stale(&root);
        let mut attempt = 0u32;
        let (path, lock) = loop {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0);
            let name = format!("{}-{nanos:08x}", std::process::id());
            let making = root.join(format!("{MAKING}{name}"));
            match fs::DirBuilder::new().mode(0o700).create(&making) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && attempt < 16 => {
                    attempt += 1;
                    continue;
                }
                Err(e) => return Err(e),
            }
            let made = lock_new(&making).and_then(|lock| {
                let path = root.join(format!("{PREFIX}{name}"));
                fs::rename(&making, &path)?;
                Ok((path, lock))
            });
            match made {
                Ok(made) => break made,
                Err(e) => {
                    let _ = fs::remove_dir_all(&making);
                    return Err(e);
                }
            }
        };
        live.push(path.clone());
        Ok(Self { path, _lock: lock })
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

/// The name of a shadow directory of process `pid`: `PREFIX` `pid` `-` …
const PREFIX: &str = ".taskit-host-";
/// The name of one being made.
const MAKING: &str = ".taskit-making-";
/// The lock file in each.
const LOCK: &str = ".lock";

/// Makes the lock file in `dir` and locks it.
fn lock_new(dir: &Path) -> std::io::Result<fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(dir.join(LOCK))?;
    if try_lock(&file) {
        Ok(file)
    } else {
        Err(std::io::Error::other("cannot lock a new shadow directory"))
    }
}

/// Takes the exclusive lock of `file` if no one holds it.
fn try_lock(file: &fs::File) -> bool {
    use std::os::fd::AsRawFd;
    // SAFETY: a plain system call on a descriptor we own.
    unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 }
}

/// Removes the shadow directories in `root` of hosts of this user that no
/// longer run: owned by this user, and their lock free (a host holds it for
/// its whole life). One without a lock file (made before they had one) is
/// stale if the process it is named for is gone.
fn remove_stale(root: &Path) {
    let Ok(entries) = fs::read_dir(root) else {
        return;
    };
    // SAFETY: plain system call with no arguments.
    let me = unsafe { libc::geteuid() };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(PREFIX).or_else(|| n.strip_prefix(MAKING)))
            .and_then(|rest| rest.split_once('-'))
            .and_then(|(pid, _)| pid.parse::<libc::pid_t>().ok())
        else {
            continue;
        };
        // Not following a link: only a directory of our own.
        let Ok(meta) = entry.path().symlink_metadata() else {
            continue;
        };
        if !meta.is_dir() || meta.uid() != me || pid <= 0 {
            continue;
        }
        // Held (locked) while it is removed.
        let _lock = match fs::File::open(entry.path().join(LOCK)) {
            Ok(lock) if try_lock(&lock) => Some(lock),
            Ok(_) => continue,
            // Being made (not locked yet), or made without a lock.
            Err(_) if name.to_string_lossy().starts_with(MAKING) || process_exists(pid) => continue,
            Err(_) => None,
        };
        match fs::remove_dir_all(entry.path()) {
            Ok(()) => {
                tracing::info!(dir = %entry.path().display(), pid, "removed the plugin copies of a host that is gone")
            }
            Err(err) => {
                tracing::warn!(dir = %entry.path().display(), %err, "cannot remove the plugin copies of a host that is gone")
            }
        }
    }
}

/// Whether process `pid` exists (it may be another user's).
fn process_exists(pid: libc::pid_t) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    let alive = unsafe { libc::kill(pid, 0) } == 0;
    alive || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Removes every shadow directory of this process, for an exit that skips
/// destructors.
pub(crate) fn remove_all() {
    let live = std::mem::take(&mut *LIVE.lock().unwrap_or_else(PoisonError::into_inner));
    for path in live {
        let _ = fs::remove_dir_all(path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn copies_left_under_this_pid_by_an_earlier_host_are_removed() {
        let root = std::env::temp_dir().join(format!("taskit-shadow-test-{}", std::process::id()));
        fs::create_dir_all(&root).unwrap();
        fs::set_permissions(&root, fs::Permissions::from_mode(0o700)).unwrap();
        let live = ShadowDir::create(Some(&root)).unwrap();
        // What a host that ran as this pid before (pid 1 in a container)
        // left behind: its lock file, no longer locked.
        let left = root.join(format!("{PREFIX}{}-0000beef", std::process::id()));
        fs::create_dir(&left).unwrap();
        fs::write(left.join(LOCK), b"").unwrap();
        let second = ShadowDir::create(Some(&root)).unwrap();
        assert!(!left.exists(), "the copies of a host gone stayed");
        assert!(
            live.path().exists() && second.path().exists(),
            "a live one was removed"
        );
        drop((live, second));
        fs::remove_dir_all(&root).unwrap();
    }
}

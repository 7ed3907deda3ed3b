//! Who may change what the host runs, checked as OpenSSH's StrictModes
//! checks a user's keys: the plugins directory and each plugin file must be
//! writable by nobody but their owner, and owned by the host's user or
//! root. Otherwise any user who can write there runs code as the host's
//! user.

use std::fs::Metadata;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// Why `path` (a `what`: "plugins directory", "plugin file"), whose
/// metadata is `meta`, lets someone else than the host's user change it,
/// with the fix; `None` if it does not.
pub(crate) fn unsafe_because(meta: &Metadata, what: &str, path: &Path) -> Option<String> {
    // SAFETY: plain system call with no arguments.
    let me = unsafe { libc::geteuid() };
    let shown = path.display();
    let mode = meta.mode();
    if meta.uid() != me && meta.uid() != 0 {
        return Some(format!(
            "{what} {shown} is owned by user {}, not by this host's user ({me}) or root: that user can make this host run any code; chown it (or pass --allow-insecure-plugins)",
            meta.uid()
        ));
    }
    if mode & 0o022 != 0 {
        let who = if mode & 0o002 != 0 {
            "every user"
        } else {
            "its group"
        };
        return Some(format!(
            "{what} {shown} is writable by {who}: they can make this host run any code; run `chmod go-w {shown}` (or pass --allow-insecure-plugins)"
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn group_or_world_writable_is_unsafe_and_private_is_not() {
        let dir = std::env::temp_dir().join(format!("taskit-strict-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("p.so");
        std::fs::write(&file, b"x").unwrap();
        for (mode, bad) in [(0o644, false), (0o755, false), (0o664, true), (0o646, true)] {
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode)).unwrap();
            let meta = std::fs::metadata(&file).unwrap();
            let why = unsafe_because(&meta, "plugin file", &file);
            assert_eq!(why.is_some(), bad, "{mode:o}: {why:?}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

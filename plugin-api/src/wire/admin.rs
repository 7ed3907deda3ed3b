//! Admin signals: requests to reserved task ids, answered by the host
//! itself. Each signal declares the type of its reply here, once, for the
//! host that encodes it and the clients that decode it.
//!
//! | signal | reply | |
//! |---|---|---|
//! | `<status>` | [`Reply::Status`]: the running-task count, as a decimal string | TaskIt 4.0 |
//! | `<stop>` | [`Reply::Done`] once the drain has begun | TaskIt 4.0 |
//! | `<kill>` | [`Reply::Done`], then the host ends | TaskIt 4.0 |
//! | `<tasks>` | [`Reply::Tasks`]: the plugins and their task ids | ours |
//! | `<reload>` | [`Reply::Reload`]: what a rescan of the plugins directory did | ours |
//!
//! `<status>` answers what TaskIt calls `get_tasks`: the number of tasks
//! running, counting the status call itself (an idle host says `"1"`).

use std::fmt;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::codec::{CodecError, CodecKind};

/// Task ids starting with this are reserved for admin signals: no plugin or
/// in-process task may use one.
pub const RESERVED_PREFIX: char = '<';

/// Whether `task` is reserved for admin signals (see [`RESERVED_PREFIX`]).
pub fn is_reserved(task: &str) -> bool {
    task.starts_with(RESERVED_PREFIX)
}

/// An admin signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Signal {
    /// `<status>`: the running-task count (TaskIt's `get_tasks`).
    Status,
    /// `<tasks>`: the loaded plugins and their task ids.
    Tasks,
    /// `<reload>`: rescan the plugins directory now.
    Reload,
    /// `<stop>`: stop accepting, answer every accepted call, exit.
    Stop,
    /// `<kill>`: exit now.
    Kill,
}

impl Signal {
    /// Every signal.
    pub const ALL: [Signal; 5] = [
        Signal::Status,
        Signal::Tasks,
        Signal::Reload,
        Signal::Stop,
        Signal::Kill,
    ];

    /// Whether it changes the host (`<stop>`, `<kill>`, `<reload>`): what
    /// the token a host makes guards.
    pub fn changes_host(self) -> bool {
        matches!(self, Self::Stop | Self::Kill | Self::Reload)
    }

    /// Its task id on the wire, e.g. `<stop>`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Status => "<status>",
            Self::Tasks => "<tasks>",
            Self::Reload => "<reload>",
            Self::Stop => "<stop>",
            Self::Kill => "<kill>",
        }
    }

    /// The signal a task id names, if any.
    pub fn parse(task: &str) -> Option<Signal> {
        Self::ALL.into_iter().find(|s| s.name() == task)
    }

    /// Reads this signal's reply, encoded with `codec`.
    pub fn decode_reply(self, codec: CodecKind, bytes: &[u8]) -> Result<Reply, CodecError> {
        Ok(match self {
            Self::Status => Reply::Status(codec.decode(bytes)?),
            Self::Tasks => Reply::Tasks(codec.decode(bytes)?),
            Self::Reload => Reply::Reload(codec.decode(bytes)?),
            // Any successful answer will do: TaskIt 4.0 answers `null`, we
            // answer `()` (`null` in JSON, nothing in bincode).
            Self::Stop | Self::Kill => Reply::Done,
        })
    }
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The reply to a [`Signal`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// To `<status>`: the running-task count as a decimal string, as TaskIt
    /// 4.0 sends it.
    Status(String),
    /// To `<tasks>`.
    Tasks(Vec<PluginSummary>),
    /// To `<reload>`.
    Reload(ReloadReport),
    /// To `<stop>` and `<kill>`.
    Done,
}

impl Reply {
    /// Writes the reply with `codec`.
    pub fn encode(&self, codec: CodecKind) -> Result<Vec<u8>, CodecError> {
        match self {
            Self::Status(count) => codec.encode(count),
            Self::Tasks(plugins) => codec.encode(plugins),
            Self::Reload(report) => codec.encode(report),
            Self::Done => codec.encode(&()),
        }
    }
}

/// One entry of the `<tasks>` reply.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginSummary {
    /// The plugin's name (`embedded` for the host program's own tasks).
    pub name: String,
    /// The plugin's version string.
    pub version: String,
    /// The plugin file (empty for embedded tasks).
    pub file: String,
    /// The ids it serves.
    pub tasks: Vec<String>,
    /// Where it runs: `process` (worker processes), `none` (in the host),
    /// or empty when the host did not say (an older host, in JSON; always
    /// written, as bincode has no optional fields).
    #[serde(default)]
    pub isolation: String,
    /// The process ids of its workers running now.
    #[serde(default)]
    pub workers: Vec<u32>,
    /// Workers started again after a crash, over this version's life.
    #[serde(default)]
    pub restarts: u64,
    /// How its last worker crash ended ("killed by SIGSEGV").
    #[serde(default)]
    pub last_crash: Option<String>,
    /// Set when it crashed too often and is no longer started: why.
    #[serde(default)]
    pub failed: Option<String>,
    /// Calls its workers are running now (worker processes only).
    #[serde(default)]
    pub running: u64,
    /// Calls waiting for one of its task slots (`--max-tasks`), or for a
    /// worker while all restart (worker processes only).
    #[serde(default)]
    pub waiting: u64,
}

/// The `<reload>` reply: files loaded, refused and removed by the rescan.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadReport {
    /// Files loaded (new, or a new version).
    pub loaded: Vec<String>,
    /// Files refused; the version loaded before, if any, keeps serving.
    pub refused: Vec<String>,
    /// Files gone, whose tasks were unregistered.
    pub removed: Vec<String>,
    /// Files found as they were.
    pub unchanged: u64,
}

/// Why an admin token file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    /// It cannot be read.
    #[error("cannot read the admin token file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// Its group or other users may read it (checked by the host, which
    /// owns the secret).
    #[error("the admin token file {path} is readable by other users than its owner; run `chmod go-r {path}` first")]
    Exposed {
        /// The file.
        path: String,
    },
    /// It holds nothing.
    #[error("the admin token file {path} is empty")]
    Empty {
        /// The file.
        path: String,
    },
}

/// Reads an admin token: the file's text without its final line break.
/// With `private`, a file every user may read is refused.
pub fn read_token_file(path: &Path, private: bool) -> Result<String, TokenFileError> {
    use std::os::unix::fs::PermissionsExt;
    let shown = path.display().to_string();
    let read = |source| TokenFileError::Read {
        path: shown.clone(),
        source,
    };
    if private {
        let meta = std::fs::metadata(path).map_err(read)?;
        if meta.permissions().mode() & 0o044 != 0 {
            return Err(TokenFileError::Exposed { path: shown });
        }
    }
    let text = std::fs::read_to_string(path).map_err(read)?;
    let token = text.trim_end_matches(['\n', '\r']);
    if token.is_empty() {
        return Err(TokenFileError::Empty { path: shown });
    }
    Ok(token.to_owned())
}

/// The directory where a host started with neither `--admin-token-file`
/// nor `--no-admin-token` writes the admin token it makes, one file per
/// port it listens on ([`local_token_file`]), and where clients on the same
/// machine look for it: `$TASKIT_RUNTIME_DIR` if set; else `/run/taskit`
/// for root; else `$XDG_RUNTIME_DIR/taskit`; else `/tmp/taskit-UID`.
pub fn runtime_dir() -> std::path::PathBuf {
    if let Some(dir) = std::env::var_os("TASKIT_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        return dir.into();
    }
    let uid = effective_uid();
    if uid == Some(0) {
        return "/run/taskit".into();
    }
    if let Some(dir) = std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        return Path::new(&dir).join("taskit");
    }
    match uid {
        Some(uid) => format!("/tmp/taskit-{uid}").into(),
        None => std::env::temp_dir().join("taskit"),
    }
}

/// The file holding the admin token a host listening on `addr` made (see
/// [`runtime_dir`]): `admin-token-PORT` for 127.0.0.1 and the unspecified
/// addresses (`0.0.0.0`, `::`), `admin-token-IP-PORT` for any other, so
/// hosts on one port of several loopback addresses (127.0.0.2,
/// 127.0.0.3, ...) each keep their own.
pub fn local_token_file(addr: std::net::SocketAddr) -> std::path::PathBuf {
    let ip = addr.ip();
    let name = if ip == std::net::Ipv4Addr::LOCALHOST || ip.is_unspecified() {
        format!("admin-token-{}", addr.port())
    } else {
        format!("admin-token-{ip}-{}", addr.port())
    };
    runtime_dir().join(name)
}

/// The admin token the host on this machine listening on `addr` made, if
/// its file is there, private (a plain file, not a link, owned by this
/// user, or read by root, and readable by nobody else), the host that wrote
/// it still runs, and it listens on `addr` itself (or on the unspecified
/// address of its family, on that port). Looked for in
/// [`local_token_file`], then in `/run/taskit-PORT/` (where the systemd
/// unit's host writes it). Clients send it only to loopback addresses.
///
/// The file holds the token, the host's pid, then the addresses it listens
/// on ([`local_token_text`]): a file left by a host that was killed is
/// ignored, and so is one of a host on another address of the same port,
/// so whatever else listens there is never sent the token.
pub fn local_token(addr: std::net::SocketAddr) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let uid = effective_uid()?;
    let port = addr.port();
    let unit = Path::new(&format!("/run/taskit-{port}")).join(format!("admin-token-{port}"));
    // A host listening on the unspecified address writes the port's file.
    let any = (std::net::Ipv4Addr::UNSPECIFIED, port).into();
    let mut files = vec![local_token_file(addr), local_token_file(any), unit];
    files.dedup();
    files.into_iter().find_map(|path| {
        if std::fs::symlink_metadata(&path)
            .ok()?
            .file_type()
            .is_symlink()
        {
            return None;
        }
        let mut file = std::fs::File::open(&path).ok()?;
        let meta = file.metadata().ok()?;
        if !meta.is_file() || meta.mode() & 0o077 != 0 || (meta.uid() != uid && uid != 0) {
            return None;
        }
        let mut text = String::new();
        std::io::Read::read_to_string(&mut file, &mut text).ok()?;
        let mut lines = text.lines();
        let token = lines.next().filter(|t| !t.is_empty())?;
        let pid: u32 = lines.next()?.parse().ok()?;
        if !Path::new(&format!("/proc/{pid}")).exists() {
            return None;
        }
        let listens_there = lines
            .filter_map(|l| l.parse::<std::net::SocketAddr>().ok())
            .any(|bound| {
                bound == addr
                    || (bound.port() == port
                        && bound.ip().is_unspecified()
                        && bound.is_ipv4() == addr.is_ipv4())
            });
        listens_there.then(|| token.to_owned())
    })
}

/// What a host listening on `addrs` writes to its token file: the token,
/// its pid, then the addresses, a line each.
pub fn local_token_text(token: &str, addrs: &[std::net::SocketAddr]) -> String {
    let mut text = format!("{token}\n{}\n", std::process::id());
    for addr in addrs {
        text.push_str(&format!("{addr}\n"));
    }
    text
}

/// This process's effective user id (the owner of `/proc/self`).
fn effective_uid() -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").ok().map(|m| m.uid())
}

/// A number of seconds as given on a command line (`2.5`): positive and
/// finite, or an error saying so. For `clap`'s `value_parser`.
pub fn parse_seconds(text: &str) -> Result<std::time::Duration, String> {
    text.parse::<f64>()
        .ok()
        .and_then(|secs| std::time::Duration::try_from_secs_f64(secs).ok())
        .filter(|d| !d.is_zero())
        .ok_or_else(|| format!("{text:?} is not a positive number of seconds"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_round_trip_by_name() {
        for signal in Signal::ALL {
            assert_eq!(Signal::parse(signal.name()), Some(signal));
            assert!(is_reserved(signal.name()));
        }
        assert_eq!(Signal::parse("<nope>"), None);
        assert!(is_reserved("<nope>"));
        assert!(!is_reserved("add"));
    }

    #[test]
    fn replies_decode_as_declared_in_both_codecs() {
        for codec in [CodecKind::Json, CodecKind::Bincode] {
            let status = Reply::Status("3".into()).encode(codec).unwrap();
            assert_eq!(
                Signal::Status.decode_reply(codec, &status).unwrap(),
                Reply::Status("3".into())
            );
            let done = Reply::Done.encode(codec).unwrap();
            assert_eq!(
                Signal::Stop.decode_reply(codec, &done).unwrap(),
                Reply::Done
            );
            let report = Reply::Reload(ReloadReport::default())
                .encode(codec)
                .unwrap();
            assert!(matches!(
                Signal::Reload.decode_reply(codec, &report).unwrap(),
                Reply::Reload(_)
            ));
        }
        // The original TaskIt 4.0 backend answers `<stop>` with `null`.
        assert_eq!(
            Signal::Stop.decode_reply(CodecKind::Json, b"null").unwrap(),
            Reply::Done
        );
    }

    #[test]
    fn seconds_must_be_positive() {
        assert_eq!(
            parse_seconds("2.5"),
            Ok(std::time::Duration::from_millis(2500))
        );
        for bad in ["0", "-1", "NaN", "inf", "soon", ""] {
            assert!(parse_seconds(bad).is_err(), "{bad}");
        }
    }
}

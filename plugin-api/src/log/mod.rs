//! TaskIt's logging model on `tracing`.
//!
//! TaskIt has four levels, DEBUG, INFO, ERROR and IMPORTANT. Here they are
//! `tracing` levels: DEBUG (and TRACE) is DEBUG, INFO is INFO, ERROR is
//! ERROR, and IMPORTANT is WARN, the one `tracing` level between INFO and
//! ERROR (so `RUST_LOG`, `EnvFilter` and every `tracing` tool work on them
//! unchanged). Emit with [`log`] or the `tracing` macros.
//!
//! With the `log-layers` feature, TaskIt's loggers are `tracing-subscriber`
//! layers:
//!
//! | TaskIt | here |
//! |---|---|
//! | `LoggerNode(children, allowed)` | [`node`]: child layers behind a level filter |
//! | `FileLogger(file, allowed, flush=N)` | [`FileLogger`] (wrap it in [`node`] to filter) |
//! | `Splitter(files)` | [`Splitter`]: one `Write` to several |
//! | `OutToLog(logger, level)`, `OutToError` | [`OutToLog`]: a `Write` whose lines become records |
//! | `null_logger` | [`NullLogger`] |
//!
//! Inside a plugin, records go to the host through the ABI (the plugin's
//! `tracing` is bridged at load time), tagged with the plugin's name and
//! version.

use std::fmt;
use std::io::Write;

/// The target of records emitted by [`log`] and [`OutToLog`].
pub const TARGET: &str = "taskit";

/// TaskIt's four levels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Level {
    /// DEBUG (`tracing`'s DEBUG and TRACE).
    Debug,
    /// INFO.
    Info,
    /// IMPORTANT (`tracing`'s WARN).
    Important,
    /// ERROR.
    Error,
}

impl Level {
    /// TaskIt's name for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Debug => "DEBUG",
            Self::Info => "INFO",
            Self::Important => "IMPORTANT",
            Self::Error => "ERROR",
        }
    }

    /// The TaskIt level of a `tracing` level.
    pub fn of(level: &tracing::Level) -> Self {
        match *level {
            tracing::Level::ERROR => Self::Error,
            tracing::Level::WARN => Self::Important,
            tracing::Level::INFO => Self::Info,
            _ => Self::Debug,
        }
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Emits one record at a TaskIt level, to whatever subscriber is current.
pub fn log(level: Level, message: &str) {
    match level {
        Level::Debug => tracing::debug!(target: TARGET, "{message}"),
        Level::Info => tracing::info!(target: TARGET, "{message}"),
        Level::Important => tracing::warn!(target: TARGET, "{message}"),
        Level::Error => tracing::error!(target: TARGET, "{message}"),
    }
}

/// A `std::io::Write` whose complete lines become log records at one level
/// (TaskIt's `OutToLog`; at `Level::Error` it is `OutToError`). A partial
/// line waits in a buffer for its newline; what is left when the writer is
/// dropped is logged then.
pub struct OutToLog {
    level: Level,
    partial: Vec<u8>,
}

impl OutToLog {
    /// Lines written become records at `level`.
    pub fn new(level: Level) -> Self {
        Self {
            level,
            partial: Vec::new(),
        }
    }

    /// TaskIt's `OutToError`: lines become ERROR records.
    pub fn errors() -> Self {
        Self::new(Level::Error)
    }

    fn emit(&self, line: &[u8]) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        log(self.level, &String::from_utf8_lossy(line));
    }
}

impl Write for OutToLog {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut rest = buf;
        while let Some(end) = rest.iter().position(|&b| b == b'\n') {
            if self.partial.is_empty() {
                self.emit(&rest[..end]);
            } else {
                self.partial.extend_from_slice(&rest[..end]);
                let line = std::mem::take(&mut self.partial);
                self.emit(&line);
            }
            rest = &rest[end + 1..];
        }
        self.partial.extend_from_slice(rest);
        Ok(buf.len())
    }

    /// Does not log a partial line: `print!` flushes often, and a record
    /// per fragment would split lines.
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for OutToLog {
    fn drop(&mut self) {
        if !self.partial.is_empty() {
            let line = std::mem::take(&mut self.partial);
            self.emit(&line);
        }
    }
}

/// One `Write` that writes everything to several (TaskIt's `Splitter`).
pub struct Splitter {
    outputs: Vec<Box<dyn Write + Send>>,
}

impl Splitter {
    /// Writes go to every one of `outputs`.
    pub fn new(outputs: Vec<Box<dyn Write + Send>>) -> Self {
        Self { outputs }
    }
}

impl Write for Splitter {
    /// Writes to every output even if one fails; reports the first failure.
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut first_error = None;
        for out in &mut self.outputs {
            if let Err(e) = out.write_all(buf) {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(buf.len()), Err)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let mut first_error = None;
        for out in &mut self.outputs {
            if let Err(e) = out.flush() {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

/// `LEVEL (Thu 26 November 2026, 02:17:03)\tmessage`, TaskIt's line format
/// (time in UTC).
pub fn format_line(level: Level, time: std::time::SystemTime, message: &str) -> String {
    format!("{} ({})\t{}\n", level, format_time(time), message)
}

fn format_time(time: std::time::SystemTime) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    let secs = time
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{} {:02} {} {}, {:02}:{:02}:{:02}",
        DAYS[days.rem_euclid(7) as usize],
        day,
        MONTHS[(month - 1) as usize],
        year,
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

pub(crate) mod fields;
#[cfg(feature = "log-layers")]
mod layers;
#[cfg(feature = "log-layers")]
pub use layers::{node, Allowed, FileLogger, FlushHandle, NullLogger};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_is_formatted_like_taskit() {
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_795_659_423);
        assert_eq!(format_time(t), "Thu 26 November 2026, 02:17:03");
        assert_eq!(
            format_time(std::time::UNIX_EPOCH),
            "Thu 01 January 1970, 00:00:00"
        );
        assert_eq!(
            format_line(Level::Important, std::time::UNIX_EPOCH, "hi"),
            "IMPORTANT (Thu 01 January 1970, 00:00:00)\thi\n"
        );
    }
}

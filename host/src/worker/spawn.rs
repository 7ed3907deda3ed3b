//! Starting one worker process and waiting for it to load its plugin; what
//! its exit status means.

use std::io::{self, BufRead, BufReader, Read};
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use taskit_plugin_api::host_side::abi::LogLevel;

use super::channel::{self, FromWorker};
use super::WorkerOptions;
use crate::loader::LoadError;
use crate::rate::Limiter;
use crate::services::{emit_plugin_log, plugin_log_enabled};
use crate::text::Printable;

/// The descriptor numbers a worker finds its channel and the shared
/// counters at.
pub(crate) const CHANNEL_FD: i32 = 3;
pub(crate) const COUNTERS_FD: i32 = 4;
/// The plugin's shadow copy, opened by the host: the worker maps
/// `/proc/self/fd/5`, so it needs no access to the shadow directory (it may
/// run as another user) and maps exactly the file the host checked.
pub(crate) const SHADOW_FD: i32 = 5;

/// A worker that is running, not yet known to have loaded its plugin.
pub(crate) struct Started {
    pub(crate) child: Child,
    pub(crate) channel: UnixStream,
    pub(crate) output: io::PipeReader,
}

/// What a worker is told on its command line.
pub(crate) struct Launch<'a> {
    pub(crate) options: &'a WorkerOptions,
    pub(crate) shadow: &'a std::path::Path,
    pub(crate) source: &'a std::path::Path,
    pub(crate) counters: Option<(BorrowedFd<'a>, usize)>,
}

type Job = Box<dyn FnOnce() + Send>;

/// Runs `job` on the one thread that starts every worker. A worker asks to
/// be killed when the thread that started it ends (`PR_SET_PDEATHSIG`), so
/// that thread must live as long as the process.
fn on_spawner_thread<T: Send + 'static>(job: impl FnOnce() -> T + Send + 'static) -> io::Result<T> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<Job>>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        let started = std::thread::Builder::new()
            .name("taskit-spawner".into())
            .spawn(move || {
                for job in rx {
                    job();
                }
            });
        if let Err(err) = started {
            tracing::error!(%err, "cannot start the worker spawner thread");
        }
        Mutex::new(tx)
    });
    let (tx, rx) = mpsc::sync_channel(1);
    let job: Job = Box::new(move || {
        let _ = tx.send(job());
    });
    spawner
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .send(job)
        .map_err(|_| io::Error::other("the worker spawner thread is gone"))?;
    rx.recv()
        .map_err(|_| io::Error::other("the worker spawner thread is gone"))
}

/// Starts a worker for `launch`.
pub(crate) fn start(launch: &Launch<'_>) -> io::Result<Started> {
    let (ours, theirs) = UnixStream::pair()?;
    let (output, output_writer) = io::pipe()?;
    let shadow = std::fs::File::open(launch.shadow)?;
    let mut cmd = Command::new(&launch.options.program);
    cmd.args(&launch.options.args)
        .arg("--shadow")
        .arg(format!("/proc/self/fd/{SHADOW_FD}"))
        .arg("--source")
        .arg(launch.source)
        .arg("--log-level")
        .arg(min_log_level().to_string())
        .arg("--max-frame")
        .arg(launch.options.max_frame.to_string())
        .stdin(Stdio::null())
        .stdout(output_writer.try_clone()?)
        .stderr(output_writer);
    let channel_fd = theirs.as_raw_fd();
    let counters_fd = match launch.counters {
        Some((fd, slot)) => {
            cmd.arg("--counter-slot").arg(slot.to_string());
            fd.as_raw_fd()
        }
        None => -1,
    };
    let memory_limit = launch.options.memory_limit;
    let user = launch.options.user;
    let shadow_fd = shadow.as_raw_fd();
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if let Some(bytes) = memory_limit {
                let limit = libc::rlimit {
                    rlim_cur: bytes as libc::rlim_t,
                    rlim_max: bytes as libc::rlim_t,
                };
                if libc::setrlimit(libc::RLIMIT_AS, &limit) != 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            // Neither the worker nor anything it runs may gain privileges
            // (setuid binaries, file capabilities).
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            // Dup above the target numbers first, so neither lands on the
            // other; dup2 then clears close-on-exec on 3 and 4.
            let channel = libc::fcntl(channel_fd, libc::F_DUPFD_CLOEXEC, 10);
            if channel < 0 || libc::dup2(channel, CHANNEL_FD) < 0 {
                return Err(io::Error::last_os_error());
            }
            let shadow = libc::fcntl(shadow_fd, libc::F_DUPFD_CLOEXEC, 10);
            if counters_fd >= 0 {
                let counters = libc::fcntl(counters_fd, libc::F_DUPFD_CLOEXEC, 10);
                if counters < 0 || libc::dup2(counters, COUNTERS_FD) < 0 {
                    return Err(io::Error::last_os_error());
                }
            } else if libc::dup2(
                libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY),
                COUNTERS_FD,
            ) < 0
            {
                return Err(io::Error::last_os_error());
            }
            if shadow < 0 || libc::dup2(shadow, SHADOW_FD) < 0 {
                return Err(io::Error::last_os_error());
            }
            if let Some((uid, gid)) = user {
                if libc::setgroups(0, std::ptr::null()) != 0
                    || libc::setgid(gid) != 0
                    || libc::setuid(uid) != 0
                {
                    return Err(io::Error::last_os_error());
                }
            }
            // Die with the host, even one killed with SIGKILL (set after
            // the user change, which clears it).
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(io::Error::last_os_error());
            }
            // Nothing but stdio, the channel, the counters and the plugin
            // crosses (whatever the host's embedder opened without
            // close-on-exec).
            libc::syscall(libc::SYS_close_range, SHADOW_FD as u32 + 1, u32::MAX, 0u32);
            Ok(())
        });
    }
    let child = on_spawner_thread(move || cmd.spawn())??;
    drop((theirs, shadow));
    Ok(Started {
        child,
        channel: ours,
        output,
    })
}

/// The lowest plugin log level the host's subscriber wants (5: none).
fn min_log_level() -> u8 {
    [
        LogLevel::Trace,
        LogLevel::Debug,
        LogLevel::Info,
        LogLevel::Warn,
        LogLevel::Error,
    ]
    .into_iter()
    .find(|l| plugin_log_enabled(*l))
    .map_or(5, |l| l as u8)
}

/// What the worker said it loaded.
pub(crate) struct Ready {
    pub(crate) name: String,
    pub(crate) version: String,
    pub(crate) tasks: Vec<String>,
}

/// Waits up to `limit` for the worker to load its plugin. On refusal or
/// timeout the worker is killed and reaped.
pub(crate) fn handshake(
    started: &mut Started,
    limit: Duration,
    max_frame: usize,
    label: &str,
) -> Result<Ready, LoadError> {
    let deadline = Instant::now() + limit;
    let mut buf = Vec::new();
    let outcome = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break Err(timed_out(limit));
        }
        if let Err(err) = started.channel.set_read_timeout(Some(left)) {
            break Err(LoadError::Io(format!("worker channel: {err}")));
        }
        match channel::read_frame(&mut started.channel, &mut buf, max_frame) {
            Ok(true) => {}
            Ok(false) => break Err(died_loading(&mut started.child)),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                break Err(timed_out(limit))
            }
            Err(_) => break Err(died_loading(&mut started.child)),
        }
        match channel::parse_from_worker(&buf) {
            Ok(FromWorker::Ready {
                name,
                version,
                tasks,
            }) => {
                break Ok(Ready {
                    name,
                    version,
                    tasks,
                })
            }
            Ok(FromWorker::Refused(err)) => break Err(err),
            Ok(FromWorker::Log {
                level,
                target,
                message,
            }) => emit_plugin_log(label, "(loading)", level, target, message),
            Ok(FromWorker::Reply { .. }) | Err(_) => {
                break Err(LoadError::Init(
                    "the worker sent something other than READY while loading".into(),
                ))
            }
        }
    };
    let _ = started.channel.set_read_timeout(None);
    if outcome.is_err() {
        kill_and_reap(&mut started.child);
    }
    outcome
}

fn timed_out(limit: Duration) -> LoadError {
    LoadError::Init(format!(
        "loading it and running its init did not finish within {} s (--init-timeout); the worker was killed",
        limit.as_secs_f64()
    ))
}

fn died_loading(child: &mut Child) -> LoadError {
    let cause = reap(child, Duration::from_millis(500))
        .map_or_else(|| "it stopped answering".to_owned(), describe);
    LoadError::Init(format!("the worker died while loading it: {cause}"))
}

/// Waits up to `limit` for `child` to exit; kills it past that. Its status,
/// or `None` if even waiting failed.
pub(crate) fn reap(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(2)),
            Ok(None) => {
                let _ = child.kill();
                return child.wait().ok();
            }
            Err(_) => return None,
        }
    }
}

/// Kills `child` and waits for it.
pub(crate) fn kill_and_reap(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// An exit status in words: "killed by SIGSEGV", "exited with status 0".
pub(crate) fn describe(status: ExitStatus) -> String {
    if let Some(signal) = status.signal() {
        return format!("killed by {}", signal_name(signal));
    }
    match status.code() {
        Some(code) => format!("exited with status {code}"),
        None => format!("ended: {status}"),
    }
}

fn signal_name(signal: i32) -> String {
    let name = match signal {
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGABRT => "SIGABRT",
        libc::SIGKILL => "SIGKILL",
        libc::SIGBUS => "SIGBUS",
        libc::SIGILL => "SIGILL",
        libc::SIGFPE => "SIGFPE",
        libc::SIGTERM => "SIGTERM",
        libc::SIGINT => "SIGINT",
        libc::SIGHUP => "SIGHUP",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGTRAP => "SIGTRAP",
        libc::SIGSYS => "SIGSYS",
        libc::SIGXCPU => "SIGXCPU",
        libc::SIGXFSZ => "SIGXFSZ",
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGUSR2 => "SIGUSR2",
        libc::SIGALRM => "SIGALRM",
        _ => return format!("signal {signal}"),
    };
    name.to_owned()
}

/// Longest line of a worker's output logged; the rest of it is dropped.
const MAX_OUTPUT_LINE: usize = 4096;

/// Logs what a worker writes to its standard output and error, line by
/// line, tagged with the plugin, until it closes them.
pub(crate) fn relay_output(
    output: io::PipeReader,
    plugin: &str,
    version: &str,
    pid: u32,
    out_of_memory: &std::sync::atomic::AtomicBool,
) {
    let mut reader = BufReader::new(output);
    let mut line = Vec::new();
    // A plugin printing without pause gets a few lines a second logged.
    let limiter = Limiter::new();
    loop {
        line.clear();
        match (&mut reader)
            .take(MAX_OUTPUT_LINE as u64)
            .read_until(b'\n', &mut line)
        {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        if line.last() != Some(&b'\n') && line.len() >= MAX_OUTPUT_LINE {
            skip_line(&mut reader);
        }
        let text = String::from_utf8_lossy(&line);
        let text = text.trim_end();
        // What Rust's allocation failure handler prints before aborting.
        if text.starts_with("memory allocation of") && text.ends_with("failed") {
            out_of_memory.store(true, std::sync::atomic::Ordering::Release);
        }
        if text.is_empty() {
            continue;
        }
        if let Some(left_out) = limiter.admit() {
            tracing::warn!(plugin, version, pid, output = %Printable(text), left_out, "plugin worker output");
        }
    }
}

/// Skips the rest of a line without holding it.
fn skip_line(reader: &mut impl BufRead) {
    loop {
        let (found, used) = match reader.fill_buf() {
            Ok([]) | Err(_) => return,
            Ok(buf) => match buf.iter().position(|&b| b == b'\n') {
                Some(i) => (true, i + 1),
                None => (false, buf.len()),
            },
        };
        reader.consume(used);
        if found {
            return;
        }
    }
}

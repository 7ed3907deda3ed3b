//! The worker process: maps one plugin version, reports READY or REFUSED,
//! then runs the calls the host sends until its channel closes.

use std::collections::HashMap;
use std::ffi::OsString;
use std::io::Write;
use std::os::fd::{BorrowedFd, FromRawFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use abi_stable::std_types::{RSlice, RStr};
use taskit_plugin_api::error::kind;
use taskit_plugin_api::host_side::abi::{CallRequest, HostServices, LogLevel};
use taskit_plugin_api::TaskError;

use super::channel::{self, ToWorker};
use super::spawn::{CHANNEL_FD, COUNTERS_FD};
use crate::counters;
use crate::loader::Opened;
use crate::services::{leak_services, Services};

/// Longest log message a plugin may send in one record; longer ones are cut.
const MAX_LOG_MESSAGE: usize = 64 << 10;

/// The worker's command line, after the subcommand.
struct Args {
    shadow: PathBuf,
    source: PathBuf,
    log_level: u8,
    max_frame: usize,
    counter_slot: Option<usize>,
}

fn parse(args: impl Iterator<Item = OsString>) -> Result<Args, String> {
    let mut args = args;
    let (mut shadow, mut source, mut log_level, mut max_frame, mut counter_slot) =
        (None, None, 5u8, 1usize << 30, None);
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or(format!("{flag:?} needs a value"));
        let number = |v: OsString| -> Result<usize, String> {
            v.to_str()
                .and_then(|s| s.parse().ok())
                .ok_or(format!("{flag:?} needs a number"))
        };
        match flag.to_str() {
            Some("--shadow") => shadow = Some(PathBuf::from(value()?)),
            Some("--source") => source = Some(PathBuf::from(value()?)),
            Some("--log-level") => log_level = number(value()?)?.min(5) as u8,
            Some("--max-frame") => max_frame = number(value()?)?,
            Some("--counter-slot") => counter_slot = Some(number(value()?)?),
            _ => return Err(format!("unknown argument {flag:?}")),
        }
    }
    Ok(Args {
        shadow: shadow.ok_or("--shadow is required")?,
        source: source.ok_or("--source is required")?,
        log_level,
        max_frame,
        counter_slot,
    })
}

/// Runs a worker process: what `taskit-host __worker ...` does. `args` are
/// the arguments after the subcommand. Returns the exit status (a worker
/// whose channel closes exits at once, without returning).
///
/// A program that embeds the host with process isolation calls this first
/// thing in `main` when its first argument is [`WORKER_SUBCOMMAND`]:
///
/// ```no_run
/// let mut args = std::env::args_os().skip(1);
/// if args.next().is_some_and(|a| a == taskit_host::WORKER_SUBCOMMAND) {
///     std::process::exit(taskit_host::run_worker(args));
/// }
/// ```
///
/// [`WORKER_SUBCOMMAND`]: super::WORKER_SUBCOMMAND
pub fn run_worker(args: impl Iterator<Item = OsString>) -> i32 {
    let args = match parse(args) {
        Ok(a) => a,
        Err(err) => {
            eprintln!("taskit worker: {err}");
            return 2;
        }
    };
    // SAFETY: the host passes the channel as descriptor 3; nothing else in
    // this process owns it.
    let channel = unsafe { UnixStream::from_raw_fd(CHANNEL_FD) };
    let words = args.counter_slot.and_then(|slot| {
        // SAFETY: the host passes the counters' memory as descriptor 4
        // whenever it passes a slot; it is only mapped, never closed here.
        let fd = unsafe { BorrowedFd::borrow_raw(COUNTERS_FD) };
        counters::map(fd).ok().map(|words| (words, slot))
    });
    let writer = match channel.try_clone() {
        Ok(w) => Arc::new(Mutex::new(w)),
        Err(err) => {
            eprintln!("taskit worker: cannot use the channel: {err}");
            return 2;
        }
    };
    let services = leak_services(WorkerServices {
        words,
        writer: Arc::clone(&writer),
        log_level: args.log_level,
    });
    let send = |frame: &[u8]| {
        let _ = writer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .write_all(frame);
    };
    let opened = match Opened::open(&args.shadow, &args.source)
        .and_then(|opened| opened.init(services).map(|()| opened))
    {
        Ok(opened) => opened,
        Err(err) => {
            let mut frame = Vec::new();
            channel::encode_refused(&mut frame, &err);
            send(&frame);
            return 0;
        }
    };
    let mut frame = Vec::new();
    channel::encode_ready(&mut frame, &opened.name, &opened.version, &opened.tasks);
    send(&frame);
    let worker = Arc::new(Worker {
        plugin: opened,
        services,
        writer,
        max_frame: args.max_frame,
        cancels: Mutex::new(HashMap::new()),
        reader: Mutex::new(Reader {
            channel: std::io::BufReader::with_capacity(64 << 10, channel),
            buf: Vec::new(),
        }),
        waiting: AtomicUsize::new(0),
    });
    worker.lead()
}

/// The worker's state while it serves.
struct Worker {
    plugin: Opened,
    services: HostServices,
    writer: Arc<Mutex<UnixStream>>,
    max_frame: usize,
    /// Cancellation flags of the calls running, by id.
    cancels: Mutex<HashMap<u64, Arc<AtomicBool>>>,
    /// The channel's reading end: whichever thread holds it reads.
    reader: Mutex<Reader>,
    /// Threads waiting to read.
    waiting: AtomicUsize,
}

struct Reader {
    channel: std::io::BufReader<UnixStream>,
    buf: Vec<u8>,
}

struct Job {
    id: u64,
    task: usize,
    codec: taskit_plugin_api::CodecKind,
    args: Vec<u8>,
    kwargs: Vec<u8>,
    cancelled: Arc<AtomicBool>,
}

impl Worker {
    /// Every thread of the worker runs this: take the reading end, read
    /// until a call arrives, hand the reading end to the next thread, run
    /// the call, answer it, and go back to waiting. A call runs on the
    /// thread that read it, so it costs no hand-off, and a call that turns
    /// slow holds up no other: another thread is already reading. When the
    /// host closes the channel, the process ends (without waiting for calls
    /// still running: the host no longer wants their answers).
    fn lead(self: Arc<Self>) -> ! {
        loop {
            self.waiting.fetch_add(1, Ordering::AcqRel);
            let mut reader = self.reader.lock().unwrap_or_else(PoisonError::into_inner);
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            let job = self.next_call(&mut reader);
            if self.waiting.load(Ordering::Acquire) == 0 {
                // Nobody to read while this call runs: one more thread
                // (the host bounds the calls in flight, hence the threads).
                let next = Arc::clone(&self);
                if std::thread::Builder::new()
                    .name("taskit-task".into())
                    .spawn(move || next.lead())
                    .is_err()
                {
                    eprintln!("taskit worker: cannot start a thread; calls wait for this one");
                }
            }
            drop(reader);
            let result = self.call(&job);
            self.cancels
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&job.id);
            let mut frame = Vec::new();
            channel::encode_reply(&mut frame, job.id, &result);
            let _ = self
                .writer
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .write_all(&frame);
        }
    }

    /// Reads frames until a call; passes cancellations on meanwhile.
    fn next_call(&self, reader: &mut Reader) -> Job {
        loop {
            match channel::read_frame(&mut reader.channel, &mut reader.buf, self.max_frame) {
                Ok(true) => {}
                Ok(false) | Err(_) => std::process::exit(0),
            }
            match channel::parse_to_worker(&reader.buf) {
                Ok(ToWorker::Call {
                    id,
                    codec,
                    task,
                    args,
                    kwargs,
                }) => {
                    let cancelled = Arc::new(AtomicBool::new(false));
                    self.cancels
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .insert(id, Arc::clone(&cancelled));
                    return Job {
                        id,
                        task,
                        codec,
                        args: args.to_vec(),
                        kwargs: kwargs.to_vec(),
                        cancelled,
                    };
                }
                Ok(ToWorker::Cancel { id }) => {
                    if let Some(flag) = self
                        .cancels
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .get(&id)
                    {
                        flag.store(true, Ordering::Release);
                    }
                }
                Err(err) => {
                    eprintln!("taskit worker: bad frame from the host: {err}");
                    std::process::exit(2);
                }
            }
        }
    }

    /// Runs a call.
    fn call(&self, job: &Job) -> Result<Vec<u8>, TaskError> {
        if job.task >= self.plugin.tasks.len() {
            return Err(TaskError::msg(kind::PROTOCOL_ERROR, "no such task number"));
        }
        let request = CallRequest {
            task: job.task,
            codec: RStr::from_str(job.codec.name()),
            args: RSlice::from_slice(&job.args),
            kwargs: RSlice::from_slice(&job.kwargs),
            cancelled: &job.cancelled,
            host: self.services,
        };
        match self.plugin.call(&request) {
            Ok(bytes) if bytes.len() + 64 > self.max_frame => Err(TaskError::msg(
                kind::MESSAGE_TOO_LARGE,
                format!(
                    "the result is {} bytes, over the limit of {} for a worker's reply",
                    bytes.len(),
                    self.max_frame
                ),
            )),
            other => other,
        }
    }
}

/// What the plugin's [`HostServices`] reach in a worker: the shared running
/// count and the channel for log records.
struct WorkerServices {
    words: Option<(&'static [AtomicU64], usize)>,
    writer: Arc<Mutex<UnixStream>>,
    log_level: u8,
}

impl Services for WorkerServices {
    fn running_tasks(&self) -> u64 {
        self.words.map_or(0, |(words, _)| counters::sum(words))
    }

    fn subtask_enter(&self) {
        if let Some(word) = self.own_word() {
            counters::up(word);
        }
    }

    fn subtask_exit(&self) {
        if let Some(word) = self.own_word() {
            counters::down(word);
        }
    }

    fn log_enabled(&self, level: LogLevel) -> bool {
        level as u8 >= self.log_level
    }

    fn log(&self, level: LogLevel, target: &str, message: &str) {
        if !self.log_enabled(level) {
            return;
        }
        let mut cut = message.len().min(MAX_LOG_MESSAGE);
        while !message.is_char_boundary(cut) {
            cut -= 1;
        }
        let mut frame = Vec::with_capacity(cut + 64);
        channel::encode_log(&mut frame, level, target, &message[..cut]);
        // A poisoned lock is still usable.
        let _ = self
            .writer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .write_all(&frame);
    }
}

impl WorkerServices {
    /// This worker's word of the shared counters, if it has one.
    fn own_word(&self) -> Option<&'static AtomicU64> {
        self.words.and_then(|(words, slot)| words.get(slot))
    }
}

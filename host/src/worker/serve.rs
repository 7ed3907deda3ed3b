//! The worker process: maps one plugin version, reports READY or REFUSED,
//! then runs the calls the host sends until its channel closes.

use std::collections::HashMap;
use std::ffi::OsString;
use std::io::Write;
use std::os::fd::{BorrowedFd, FromRawFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use abi_stable::std_types::{RSlice, RStr};
use taskit_plugin_api::error::kind;
use taskit_plugin_api::host_side::abi::{CallRequest, HostServices, LogLevel};
use taskit_plugin_api::TaskError;

use super::channel::{self, ToWorker};
use super::spawn::{CHANNEL_FD, COUNTERS_FD};
use crate::call::{max_result, within};
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
    let out = match channel.try_clone() {
        Ok(socket) => Arc::new(Out {
            socket,
            frames: Mutex::new(Vec::new()),
        }),
        Err(err) => {
            eprintln!("taskit worker: cannot use the channel: {err}");
            return 2;
        }
    };
    let services = leak_services(WorkerServices {
        words,
        out: Arc::clone(&out),
        log_level: args.log_level,
    });
    let opened = match Opened::open(&args.shadow, &args.source)
        .and_then(|opened| opened.init(services).map(|()| opened))
    {
        Ok(opened) => opened,
        Err(err) => {
            out.send(|frame| channel::encode_refused(frame, &err));
            return 0;
        }
    };
    out.send(|frame| channel::encode_ready(frame, &opened.name, &opened.version, &opened.tasks));
    let worker = Arc::new(Worker {
        plugin: opened,
        services,
        out,
        max_frame: args.max_frame,
        cancels: Mutex::new(HashMap::new()),
        reader: Mutex::new(Reader {
            channel: std::io::BufReader::with_capacity(64 << 10, channel),
            buf: Vec::new(),
        }),
        reading: AtomicBool::new(false),
        inline: AtomicU64::new(0),
        spares: Mutex::new(Spares::default()),
        promoted: Condvar::new(),
        watchdog_parked: AtomicBool::new(false),
        watchdog: Mutex::new(()),
        unparked: Condvar::new(),
    });
    let watched = Arc::clone(&worker);
    if let Err(err) = std::thread::Builder::new()
        .name("taskit-watchdog".into())
        .spawn(move || watched.watch())
    {
        eprintln!("taskit worker: cannot start its watchdog: {err}");
        return 2;
    }
    worker.serve()
}

/// How long the reading thread may run a call before another thread takes
/// over reading (a call queued behind one that turned slow waits about this
/// long, at most twice it).
const TAKE_OVER_AFTER: Duration = Duration::from_millis(1);

/// Watchdog rounds with no call running before the watchdog sleeps until
/// the next call (so an idle worker does not wake every millisecond).
const QUIET_ROUNDS: u32 = 1000;

/// Replies queued past this size are written at once.
const FLUSH_AT: usize = 64 << 10;

/// The channel's writing end, and the frames queued for it. Replies queue
/// while more calls are already read; they are written in one go before the
/// reading thread waits for more, or by the thread that ran the call when
/// another one reads meanwhile.
struct Out {
    socket: UnixStream,
    frames: Mutex<Vec<u8>>,
}

impl Out {
    /// Queues a frame (`encode` appends it).
    fn queue(&self, encode: impl FnOnce(&mut Vec<u8>)) {
        let mut frames = lock(&self.frames);
        encode(&mut frames);
        if frames.len() >= FLUSH_AT {
            Self::write(&self.socket, &mut frames);
        }
    }

    /// Queues a frame and writes everything queued.
    fn send(&self, encode: impl FnOnce(&mut Vec<u8>)) {
        let mut frames = lock(&self.frames);
        encode(&mut frames);
        Self::write(&self.socket, &mut frames);
    }

    /// Writes everything queued.
    fn flush(&self) {
        let mut frames = lock(&self.frames);
        if !frames.is_empty() {
            Self::write(&self.socket, &mut frames);
        }
    }

    fn write(mut socket: &UnixStream, frames: &mut Vec<u8>) {
        // A failed write means the host is gone; the next read ends the
        // process.
        let _ = socket.write_all(frames);
        frames.clear();
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The worker's state while it serves.
///
/// One thread at a time reads the channel (it holds `reading`), and runs
/// each call it reads itself, with no hand-off to another thread. While it
/// runs one, nobody reads: should the call take longer than
/// [`TAKE_OVER_AFTER`], the watchdog wakes a spare thread (or starts one) to
/// take over reading, so a call that turns slow holds up no other for
/// longer than that. The thread that ran the call then becomes a spare.
struct Worker {
    plugin: Opened,
    services: HostServices,
    out: Arc<Out>,
    max_frame: usize,
    /// Cancellation flags of the calls running, by id.
    cancels: Mutex<HashMap<u64, Arc<AtomicBool>>>,
    /// The channel's reading end, used by the thread holding `reading`.
    reader: Mutex<Reader>,
    /// Some thread reads, or will read next.
    reading: AtomicBool,
    /// The id of the call the last reading thread runs, while it runs it
    /// (0: none). Call ids start at 1.
    inline: AtomicU64,
    spares: Mutex<Spares>,
    promoted: Condvar,
    /// The watchdog sleeps until a call runs.
    watchdog_parked: AtomicBool,
    watchdog: Mutex<()>,
    unparked: Condvar,
}

/// Threads with nothing to do, waiting for their turn to read.
#[derive(Default)]
struct Spares {
    idle: usize,
    /// Turns handed out but not yet taken.
    promoted: usize,
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
    /// Every thread of the worker runs this: take the turn to read, read a
    /// call, run it, queue its answer; without the turn, wait as a spare.
    /// When the host closes the channel, the process ends (without waiting
    /// for calls still running: the host no longer wants their answers).
    fn serve(self: Arc<Self>) -> ! {
        loop {
            if self
                .reading
                .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
            {
                // Another thread reads: it may be waiting for the host
                // already, so this thread's answer goes out now.
                self.out.flush();
                self.wait_for_turn();
                continue;
            }
            let job = self.next_call(&mut lock(&self.reader));
            self.inline.store(job.id, Ordering::SeqCst);
            self.reading.store(false, Ordering::Release);
            self.wake_watchdog();
            let result = self.call(&job);
            let _ = self
                .inline
                .compare_exchange(job.id, 0, Ordering::AcqRel, Ordering::Relaxed);
            lock(&self.cancels).remove(&job.id);
            self.out
                .queue(|frame| channel::encode_reply(frame, job.id, &result));
        }
    }

    /// Reads frames until a call; passes cancellations on meanwhile. Before
    /// waiting for the host, writes the answers queued.
    fn next_call(&self, reader: &mut Reader) -> Job {
        loop {
            if !channel::holds_frame(reader.channel.buffer()) {
                self.out.flush();
            }
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
                    lock(&self.cancels).insert(id, Arc::clone(&cancelled));
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
                    if let Some(flag) = lock(&self.cancels).get(&id) {
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

    /// Waits until the watchdog hands this thread the turn to read.
    fn wait_for_turn(&self) {
        let mut spares = lock(&self.spares);
        spares.idle += 1;
        while spares.promoted == 0 {
            spares = self
                .promoted
                .wait(spares)
                .unwrap_or_else(PoisonError::into_inner);
        }
        spares.promoted -= 1;
        spares.idle -= 1;
    }

    /// Gets another thread reading: a spare, or a new thread. (The host
    /// bounds the calls in flight, hence the threads.)
    fn take_over(self: &Arc<Self>) {
        let mut spares = lock(&self.spares);
        if spares.idle > spares.promoted {
            spares.promoted += 1;
            self.promoted.notify_one();
            return;
        }
        drop(spares);
        let next = Arc::clone(self);
        if std::thread::Builder::new()
            .name("taskit-task".into())
            .spawn(move || next.serve())
            .is_err()
        {
            eprintln!("taskit worker: cannot start a thread; calls wait for the running one");
        }
    }

    /// Wakes the watchdog if it sleeps (a call has just started).
    fn wake_watchdog(&self) {
        if self.watchdog_parked.swap(false, Ordering::SeqCst) {
            let _watchdog = lock(&self.watchdog);
            self.unparked.notify_one();
        }
    }

    /// The watchdog: every [`TAKE_OVER_AFTER`], if the same call has been
    /// running on the reading thread since the last round and nobody reads,
    /// gets another thread reading.
    fn watch(self: Arc<Self>) {
        let (mut seen, mut quiet) = (0, 0);
        loop {
            std::thread::sleep(TAKE_OVER_AFTER);
            let running = self.inline.load(Ordering::SeqCst);
            if running == 0 {
                quiet += 1;
                if quiet >= QUIET_ROUNDS {
                    self.park_watchdog();
                    quiet = 0;
                }
                continue;
            }
            quiet = 0;
            if running == seen && !self.reading.load(Ordering::Acquire) {
                // Answers queued before the slow call go out now, whether
                // or not another thread can be had to read.
                self.out.flush();
                self.take_over();
                // Once per call.
                seen = 0;
            } else {
                seen = running;
            }
        }
    }

    /// Sleeps until a call starts.
    fn park_watchdog(&self) {
        let mut watchdog = lock(&self.watchdog);
        self.watchdog_parked.store(true, Ordering::SeqCst);
        if self.inline.load(Ordering::SeqCst) != 0 {
            self.watchdog_parked.store(false, Ordering::SeqCst);
            return;
        }
        while self.watchdog_parked.load(Ordering::SeqCst) {
            watchdog = self
                .unparked
                .wait(watchdog)
                .unwrap_or_else(PoisonError::into_inner);
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
        // What the host could not send on is not sent to it either.
        let limit = max_result(self.max_frame.saturating_sub(super::FRAME_SLACK));
        within(self.plugin.call(&request), limit)
    }
}

/// What the plugin's [`HostServices`] reach in a worker: the shared running
/// count and the channel for log records.
struct WorkerServices {
    words: Option<(&'static [AtomicU64], usize)>,
    out: Arc<Out>,
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
        self.out
            .send(|frame| channel::encode_log(frame, level, target, &message[..cut]));
    }
}

impl WorkerServices {
    /// This worker's word of the shared counters, if it has one.
    fn own_word(&self) -> Option<&'static AtomicU64> {
        self.words.and_then(|(words, slot)| words.get(slot))
    }
}

//! The thread that owns every load and unload of a [`PluginHost`], fed by
//! `notify` events and by forced reloads, so changes are applied one at a
//! time and in order.
//!
//! A file is loaded once it has stopped changing ([`Debouncer`]). Each event
//! about a file (re)arms a timer for it: short after events that mark the
//! end of a write (close after writing, rename into place), longer after
//! anything else (a write in progress, a removal). When the timer fires the
//! file's metadata is compared with what it was at the last event; if it
//! moved, the file is still being written and the timer is armed again.
//!
//! A writer can also stall for longer than the wait (a busy machine), so a
//! file written in place may be looked at half written. While its writer
//! may still have it open (created or written, no close since), a refusal is
//! held back rather than reported: the close that must come (the kernel
//! closes a dead writer's files too) brings another look. A writer that
//! keeps the file open without finishing is reported after
//! [`HostConfig::hold`]. Nor is a refusal reported when the file changed
//! while it was being loaded: the change brings events, hence another look.
//!
//! [`PluginHost`]: crate::PluginHost

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use notify::event::{AccessKind, AccessMode, ModifyKind};
use notify::EventKind;

use crate::loader::{Fingerprint, Loaded, Loader};
use crate::plugin_host::{HostConfig, PluginEvent, ReloadSummary};
use crate::registry::{Plugin, Registry};

/// What the thread is told.
pub(crate) enum Msg {
    /// A file-system event.
    Fs(notify::Result<notify::Event>),
    /// Rescan now, and answer with what it did.
    Reload(SyncSender<ReloadSummary>),
    /// End the thread.
    Shutdown,
}

/// File-system events waiting for the thread; beyond this many, events are
/// dropped and the directory is rescanned instead.
pub(crate) const EVENT_QUEUE: usize = 4096;

/// Events kept for a subscriber that is not reading; later ones are dropped
/// for it.
pub(crate) const SUBSCRIBER_QUEUE: usize = 1024;

pub(crate) type Subscribers = Arc<Mutex<Vec<SyncSender<PluginEvent>>>>;

/// Plugin files are `*.so` files whose name does not start with a dot (so a
/// writer can prepare `.demo.so.tmp` and rename it into place).
pub fn is_plugin_file(path: &Path) -> bool {
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return false;
    };
    !name.starts_with('.') && name.ends_with(".so")
}

/// What an event says about a file's write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Change {
    /// Closed after writing, or renamed into place: nothing more is coming.
    EndsWrite,
    /// Created, or contents written: the writer may still have the file
    /// open.
    Write,
    /// A removal, a change of metadata, anything else.
    Other,
    /// Not an event: a refusal held back while the file may still be
    /// written (see [`Debouncer::again`]).
    Held,
}

/// A file waiting to settle.
struct Pending<F> {
    due: Instant,
    change: Change,
    /// Its metadata at the last event; `None` if it did not exist then.
    seen: Option<F>,
    /// Created or written, and no close has been seen since.
    writing: bool,
}

impl<F> Pending<F> {
    /// See [`Settled::writer_open`].
    fn writer_open(&self) -> bool {
        self.writing && self.change != Change::Held
    }
}

/// A file that has settled.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Settled<F> {
    pub(crate) path: PathBuf,
    /// What a look at it gives now; `None`: gone.
    pub(crate) seen: Option<F>,
    /// Its writer may still have it open and be about to write more: a
    /// refusal now should be held back. Never after a hold has run out.
    pub(crate) writer_open: bool,
}

/// Files waiting to settle. `F` is what a look at a file gives (its
/// metadata, or anything comparable in tests).
pub(crate) struct Debouncer<F> {
    settle: Duration,
    quiet: Duration,
    hold: Duration,
    pending: HashMap<PathBuf, Pending<F>>,
}

impl<F: PartialEq + Copy> Debouncer<F> {
    /// Waits `settle` after a write ends, `quiet` after any other change,
    /// `hold` after a refusal held back.
    pub(crate) fn new(settle: Duration, quiet: Duration, hold: Duration) -> Self {
        Self {
            settle,
            quiet,
            hold,
            pending: HashMap::new(),
        }
    }

    /// Notes a change to `path` at `now`, when a look at it gave `seen`.
    pub(crate) fn note(&mut self, path: PathBuf, change: Change, seen: Option<F>, now: Instant) {
        let was_writing = self.pending.get(&path).is_some_and(|p| p.writing);
        let writing = match change {
            Change::Write => true,
            Change::EndsWrite => false,
            Change::Other | Change::Held => was_writing,
        };
        self.insert(path, change, seen, writing, now);
    }

    /// Looks at `path` again, after a refusal that was not final: after a
    /// hold if `hold`, else after the quiet time. `writing`: its writer may
    /// still have it open (as it was when it settled).
    pub(crate) fn again(
        &mut self,
        path: PathBuf,
        seen: Option<F>,
        hold: bool,
        writing: bool,
        now: Instant,
    ) {
        let change = if hold { Change::Held } else { Change::Other };
        self.insert(path, change, seen, writing, now);
    }

    fn insert(
        &mut self,
        path: PathBuf,
        change: Change,
        seen: Option<F>,
        writing: bool,
        now: Instant,
    ) {
        let delay = match change {
            Change::EndsWrite => self.settle,
            Change::Write | Change::Other => self.quiet,
            Change::Held => self.hold,
        };
        let due = now
            .checked_add(delay)
            .unwrap_or(now + Duration::from_secs(86_400));
        self.pending.insert(
            path,
            Pending {
                due,
                change,
                seen,
                writing,
            },
        );
    }

    /// Stops waiting for `path` (a rescan looks at it now); whether its
    /// writer may still have it open.
    pub(crate) fn forget(&mut self, path: &Path) -> bool {
        self.pending.remove(path).is_some_and(|p| p.writer_open())
    }

    /// When the next file is due, if any is waiting.
    pub(crate) fn next_due(&self) -> Option<Instant> {
        self.pending.values().map(|p| p.due).min()
    }

    /// The files settled at `now`, in name order, with what `look` gives for
    /// each now. A file whose look differs from the last event's is still
    /// being written: it waits one more settle time.
    ///
    /// Files whose writes ended within one settle time of each other come
    /// out together, so a conflict between files installed together
    /// resolves the same way every time.
    pub(crate) fn take_due(
        &mut self,
        now: Instant,
        mut look: impl FnMut(&Path) -> Option<F>,
    ) -> Vec<Settled<F>> {
        if !self.pending.values().any(|p| p.due <= now) {
            return Vec::new();
        }
        let batch_end = now.checked_add(self.settle).unwrap_or(now);
        let mut due: Vec<PathBuf> = self
            .pending
            .iter()
            .filter(|(_, p)| p.due <= now || (p.change == Change::EndsWrite && p.due <= batch_end))
            .map(|(path, _)| path.clone())
            .collect();
        due.sort();
        let mut settled = Vec::new();
        for path in due {
            let now_seen = look(&path);
            let Some(pending) = self.pending.get_mut(&path) else {
                continue;
            };
            if now_seen != pending.seen {
                pending.seen = now_seen;
                pending.due = now.checked_add(self.settle).unwrap_or(now);
                if pending.change == Change::Held {
                    // Changed during a hold: written, without an event
                    // (through a mapping, say); the hold starts again.
                    pending.change = Change::Other;
                }
                continue;
            }
            let writer_open = pending.writer_open();
            self.pending.remove(&path);
            settled.push(Settled {
                path,
                seen: now_seen,
                writer_open,
            });
        }
        settled
    }
}

/// The last load attempt of a file: its metadata then, and whether it was
/// refused.
#[derive(Clone, Copy)]
struct LastTry {
    fingerprint: Fingerprint,
    refused: bool,
}

/// Why the directory is rescanned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Rescan {
    /// Asked for (`SIGHUP`, `<reload>`): what is there now is loaded or
    /// refused, as it is, even if a writer may still have it open (whose
    /// close may not have been seen yet).
    Forced,
    /// The host's own: at start, or after file events were lost (the
    /// kernel's queue overflowed, the watcher failed). A file whose writer
    /// may still have it open is not refused.
    Watcher,
}

/// Why a file is looked at.
#[derive(Debug, Clone, Copy)]
struct Look {
    /// A rescan, which tries a file refused before again.
    rescan: bool,
    /// See [`Settled::writer_open`].
    writer_open: bool,
}

/// What one look at a file did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LoadOutcome {
    /// A new version serves its tasks.
    Loaded,
    /// Refused; the version loaded before, if any, keeps serving.
    Refused,
    /// Refused, but it may be half written: looked at again later.
    Pending,
    /// Not tried again (same metadata as the last try), or the same bytes
    /// as the version loaded.
    Unchanged,
}

/// The thread's state: the loader, and what it knows of each file.
pub(crate) struct Applier {
    config: HostConfig,
    loader: Loader,
    registry: Arc<Registry>,
    subscribers: Subscribers,
    debouncer: Debouncer<Fingerprint>,
    /// Per file: not tried again while its metadata stays the same.
    tries: HashMap<PathBuf, LastTry>,
    /// Per file: the content hash of the version serving it.
    loaded: HashMap<PathBuf, u64>,
    overflowed: Arc<AtomicBool>,
    rx: Receiver<Msg>,
    /// Messages taken while gathering forced reloads, to apply next (at
    /// most a queue's worth: gathering happens only when this is empty).
    backlog: VecDeque<Msg>,
    /// A shutdown was taken while gathering forced reloads.
    shutting_down: bool,
}

impl Applier {
    pub(crate) fn new(
        config: HostConfig,
        loader: Loader,
        registry: Arc<Registry>,
        subscribers: Subscribers,
        overflowed: Arc<AtomicBool>,
        rx: Receiver<Msg>,
    ) -> Self {
        Self {
            debouncer: Debouncer::new(config.settle, config.quiet, config.hold),
            config,
            loader,
            registry,
            subscribers,
            tries: HashMap::new(),
            loaded: HashMap::new(),
            overflowed,
            rx,
            backlog: VecDeque::new(),
            shutting_down: false,
        }
    }

    /// Applies changes until told to stop.
    pub(crate) fn run(mut self) {
        loop {
            if self.shutting_down {
                return;
            }
            if let Some(msg) = self.backlog.pop_front() {
                self.guarded_step(Some(msg));
                continue;
            }
            let msg = match self.debouncer.next_due() {
                None => self.rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
                Some(due) => self
                    .rx
                    .recv_timeout(due.saturating_duration_since(Instant::now())),
            };
            let msg = match msg {
                Ok(Msg::Shutdown) | Err(RecvTimeoutError::Disconnected) => return,
                Ok(msg) => Some(msg),
                Err(RecvTimeoutError::Timeout) => None,
            };
            self.guarded_step(msg);
        }
    }

    /// One bad step must not stop reloading for the rest of the process:
    /// it is logged, and the thread carries on.
    fn guarded_step(&mut self, msg: Option<Msg>) {
        let step = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.step(msg)));
        if step.is_err() {
            tracing::error!(
                "internal error while applying a plugin change (see the panic above); carrying on"
            );
        }
    }

    /// Takes every forced reload already asked for (a flood of `<reload>`
    /// costs one rescan per turn, not one each); other messages wait their
    /// turn.
    fn more_reloads(&mut self) -> Vec<SyncSender<ReloadSummary>> {
        let (replies, shutdown) = take_reloads(&self.rx, &mut self.backlog);
        self.shutting_down |= shutdown;
        replies
    }

    fn step(&mut self, msg: Option<Msg>) {
        match msg {
            Some(Msg::Fs(Ok(event))) => self.on_event(event),
            Some(Msg::Fs(Err(err))) => {
                tracing::warn!(%err, "file watcher error; rescanning the plugins directory");
                self.rescan(Rescan::Watcher);
            }
            Some(Msg::Reload(reply)) => {
                let mut replies = self.more_reloads();
                replies.push(reply);
                let summary = self.rescan(Rescan::Forced);
                self.registry.revive_all();
                for reply in replies {
                    let _ = reply.send(summary.clone());
                }
            }
            Some(Msg::Shutdown) | None => {}
        }
        if self.overflowed.swap(false, Ordering::AcqRel) {
            tracing::warn!("too many file events at once; rescanning the plugins directory");
            self.rescan(Rescan::Watcher);
        }
        let settled = self
            .debouncer
            .take_due(Instant::now(), |p| Fingerprint::of(p).ok());
        for Settled {
            path,
            seen,
            writer_open,
        } in settled
        {
            match seen {
                Some(fingerprint) => {
                    let look = Look {
                        rescan: false,
                        writer_open,
                    };
                    self.load_if_changed(&path, fingerprint, look);
                }
                None => {
                    self.unload(&path);
                }
            }
        }
    }

    fn on_event(&mut self, event: notify::Event) {
        if event.need_rescan() {
            // The kernel's queue overflowed: events were lost.
            self.rescan(Rescan::Watcher);
            return;
        }
        let change = match event.kind {
            EventKind::Access(AccessKind::Close(AccessMode::Write))
            | EventKind::Modify(ModifyKind::Name(_)) => Change::EndsWrite,
            // A file created is not written yet (`cp` creates, then
            // writes): a stall in between must not get it refused.
            EventKind::Create(_) | EventKind::Modify(ModifyKind::Data(_)) => Change::Write,
            // Reads (ours included) change nothing.
            EventKind::Access(_) => return,
            // A removal waits as long as a write in progress: `rm` then `cp`
            // is a common way to deploy, and should not leave the tasks
            // unregistered in between.
            _ => Change::Other,
        };
        let now = Instant::now();
        for path in event.paths {
            if !is_plugin_file(&path) || path.parent() != Some(self.config.plugins_dir.as_path()) {
                continue;
            }
            let seen = Fingerprint::of(&path).ok();
            self.debouncer.note(path, change, seen, now);
        }
    }

    /// Loads `path` unless it was already tried with this exact metadata
    /// (and, on a rescan, was not refused).
    ///
    /// A refusal is not final, so neither reported nor remembered, when the
    /// file changed while it was being loaded (the change brings events,
    /// hence another look), or when its writer may still have it open (it
    /// is held back, see the module's documentation).
    fn load_if_changed(
        &mut self,
        path: &Path,
        fingerprint: Fingerprint,
        look: Look,
    ) -> LoadOutcome {
        let tried = self
            .tries
            .get(path)
            .is_some_and(|last| last.fingerprint == fingerprint && !(last.refused && look.rescan));
        if tried {
            return LoadOutcome::Unchanged;
        }
        let outcome = self.loader.load(path, self.loaded.get(path).copied());
        if let Err(error) = &outcome {
            let now_seen = Fingerprint::of(path).ok();
            let writer_open = look.writer_open;
            let wait = if now_seen != Some(fingerprint) {
                Some((false, "it changed while being loaded"))
            } else if writer_open {
                Some((true, "its writer may still be writing it"))
            } else {
                None
            };
            if let Some((hold, why)) = wait {
                tracing::debug!(file = %path.display(), %error, "refused, but {why}; looking again later");
                self.debouncer
                    .again(path.to_owned(), now_seen, hold, writer_open, Instant::now());
                return LoadOutcome::Pending;
            }
        }
        self.tries.insert(
            path.to_owned(),
            LastTry {
                fingerprint,
                refused: outcome.is_err(),
            },
        );
        match outcome {
            Ok(Loaded::Unchanged) => {
                tracing::debug!(file = %path.display(), "same contents as the loaded version; not reloaded");
                LoadOutcome::Unchanged
            }
            Ok(Loaded::New {
                plugin,
                content_hash,
            }) => {
                self.loaded.insert(path.to_owned(), content_hash);
                self.install(path, plugin);
                LoadOutcome::Loaded
            }
            Err(error) => {
                match self.registry.loaded_from(path) {
                    Some(v) => tracing::error!(
                        file = %path.display(), %error, keeps_serving = %format!("{} {}", v.name, v.version),
                        "refused plugin file; the loaded version keeps serving"
                    ),
                    None => tracing::error!(file = %path.display(), %error, "refused plugin file"),
                }
                self.publish(PluginEvent::Refused {
                    file: path.to_owned(),
                    error,
                });
                LoadOutcome::Refused
            }
        }
    }

    /// Makes a new version of `path` serve, and says so.
    fn install(&mut self, path: &Path, plugin: Arc<dyn Plugin>) {
        let name = plugin.name().to_owned();
        let version = plugin.version().to_owned();
        let generation = plugin.generation();
        let tasks = plugin.tasks().len();
        let (old, conflicts) = self.registry.install(plugin);
        let replaced = old.as_ref().map(|o| o.version().to_owned());
        match &replaced {
            Some(old_version) => tracing::info!(
                plugin = %name, from = %old_version, to = %version, file = %path.display(), tasks,
                "reloaded plugin"
            ),
            None => {
                tracing::info!(plugin = %name, version = %version, file = %path.display(), tasks, "loaded plugin")
            }
        }
        for c in &conflicts {
            tracing::warn!(
                task = %c.task,
                served_by = %format!("{} ({})", c.winner.0, c.winner.1.display()),
                ignored_from = %format!("{} ({})", c.loser.0, c.loser.1.display()),
                "task id conflict: the plugin loaded first keeps it"
            );
        }
        // Released here, outside the registry's lock, if no call holds it.
        drop(old);
        self.publish(PluginEvent::Loaded {
            file: path.to_owned(),
            name,
            version,
            generation,
            replaced,
            conflicts,
        });
    }

    fn unload(&mut self, path: &Path) -> bool {
        self.tries.remove(path);
        self.loaded.remove(path);
        let Some(old) = self.registry.remove(path) else {
            return false;
        };
        tracing::info!(plugin = %old.name(), version = %old.version(), file = %path.display(), "removed plugin; its tasks are unregistered");
        self.publish(PluginEvent::Removed {
            file: path.to_owned(),
            name: old.name().to_owned(),
            version: old.version().to_owned(),
        });
        true
    }

    /// Brings the registry in line with the directory, in file-name order
    /// (which makes conflicts between plugins found together deterministic).
    pub(crate) fn rescan(&mut self, why: Rescan) -> ReloadSummary {
        let mut summary = ReloadSummary::default();
        let mut files: Vec<PathBuf> = match std::fs::read_dir(&self.config.plugins_dir) {
            Ok(entries) => entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| is_plugin_file(p))
                .collect(),
            Err(err) => {
                tracing::error!(dir = %self.config.plugins_dir.display(), %err, "cannot list the plugins directory");
                return summary;
            }
        };
        files.sort();
        for loaded in self.registry.plugins() {
            if !files.contains(&loaded.file) && self.unload(&loaded.file) {
                summary.removed.push(loaded.file);
            }
        }
        for file in files {
            let writer_open = self.debouncer.forget(&file);
            let look = Look {
                rescan: true,
                writer_open: writer_open && why == Rescan::Watcher,
            };
            let outcome = match Fingerprint::of(&file) {
                Ok(fingerprint) => self.load_if_changed(&file, fingerprint, look),
                Err(_) => LoadOutcome::Unchanged,
            };
            match outcome {
                LoadOutcome::Loaded => summary.loaded.push(file),
                LoadOutcome::Refused => summary.refused.push(file),
                LoadOutcome::Pending => summary.pending.push(file),
                LoadOutcome::Unchanged => summary.unchanged += 1,
            }
        }
        summary
    }

    fn publish(&self, event: PluginEvent) {
        match &event {
            PluginEvent::Loaded { name, .. } => crate::metrics::plugin_event(name, "loaded"),
            PluginEvent::Removed { name, .. } => crate::metrics::plugin_event(name, "removed"),
            PluginEvent::Refused { file, .. } => {
                let name = file.file_name().unwrap_or_default().to_string_lossy();
                crate::metrics::plugin_event(&name, "refused")
            }
        }
        let mut subs = self
            .subscribers
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        subs.retain(|tx| {
            !matches!(
                tx.try_send(event.clone()),
                Err(TrySendError::Disconnected(_))
            )
        });
    }
}

/// Takes every message queued on `rx`: the forced reloads, to answer with
/// one rescan; the others go to `backlog`, in order. Whether a shutdown was
/// among them.
fn take_reloads(
    rx: &Receiver<Msg>,
    backlog: &mut VecDeque<Msg>,
) -> (Vec<SyncSender<ReloadSummary>>, bool) {
    let (mut replies, mut shutdown) = (Vec::new(), false);
    while let Ok(msg) = rx.try_recv() {
        match msg {
            Msg::Reload(reply) => replies.push(reply),
            Msg::Shutdown => shutdown = true,
            other => backlog.push_back(other),
        }
    }
    (replies, shutdown)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reloads_asked_for_meanwhile_share_one_rescan_and_other_messages_wait_in_order() {
        let (tx, rx) = std::sync::mpsc::sync_channel(16);
        let event =
            |path: &str| Msg::Fs(Ok(notify::Event::new(EventKind::Any).add_path(path.into())));
        let mut waiting = Vec::new();
        for i in 0..6 {
            let (reply, answer) = std::sync::mpsc::sync_channel(1);
            tx.send(Msg::Reload(reply)).unwrap();
            waiting.push(answer);
            if i % 2 == 0 {
                tx.send(event(&format!("/p/{i}.so"))).unwrap();
            }
        }
        tx.send(Msg::Shutdown).unwrap();
        let mut backlog = VecDeque::new();
        let (replies, shutdown) = take_reloads(&rx, &mut backlog);
        assert_eq!(replies.len(), 6);
        assert!(shutdown);
        let paths: Vec<_> = backlog
            .iter()
            .map(|m| match m {
                Msg::Fs(Ok(e)) => e.paths[0].clone(),
                _ => panic!("only file events wait"),
            })
            .collect();
        assert_eq!(paths, ["/p/0.so", "/p/2.so", "/p/4.so"].map(PathBuf::from));
        assert!(rx.try_recv().is_err());
    }

    const MS: Duration = Duration::from_millis(1);

    fn debouncer() -> Debouncer<u32> {
        Debouncer::new(25 * MS, 250 * MS, 2000 * MS)
    }

    fn settled(path: &str, seen: Option<u32>, writer_open: bool) -> Settled<u32> {
        Settled {
            path: path.into(),
            seen,
            writer_open,
        }
    }

    #[test]
    fn a_finished_write_settles_after_the_short_wait_a_removal_after_the_long_one() {
        let t0 = Instant::now();
        let mut d = debouncer();
        d.note("/p/a.so".into(), Change::EndsWrite, Some(1), t0);
        d.note("/p/b.so".into(), Change::Other, None, t0);
        assert_eq!(d.next_due(), Some(t0 + 25 * MS));
        assert!(d.take_due(t0 + 24 * MS, |_| Some(1)).is_empty());
        let due = d.take_due(t0 + 25 * MS, |_| Some(1));
        assert_eq!(due, [settled("/p/a.so", Some(1), false)]);
        assert_eq!(d.next_due(), Some(t0 + 250 * MS));
        let due = d.take_due(t0 + 250 * MS, |_| None);
        assert_eq!(due, [settled("/p/b.so", None, false)]);
        assert_eq!(d.next_due(), None);
    }

    #[test]
    fn a_file_that_moved_since_its_last_event_waits_again() {
        let t0 = Instant::now();
        let mut d = debouncer();
        d.note("/p/a.so".into(), Change::EndsWrite, Some(1), t0);
        // Grown without an event: still being written.
        assert!(d.take_due(t0 + 25 * MS, |_| Some(2)).is_empty());
        assert_eq!(d.next_due(), Some(t0 + 50 * MS));
        assert_eq!(d.take_due(t0 + 50 * MS, |_| Some(2)).len(), 1);
    }

    #[test]
    fn writes_ending_within_one_settle_time_come_out_together_in_name_order() {
        let t0 = Instant::now();
        let mut d = debouncer();
        d.note("/p/z.so".into(), Change::EndsWrite, Some(1), t0);
        d.note("/p/a.so".into(), Change::EndsWrite, Some(1), t0 + 20 * MS);
        // A write in progress is not pulled into the batch early.
        d.note("/p/m.so".into(), Change::Other, Some(1), t0 + 20 * MS);
        let due: Vec<PathBuf> = d
            .take_due(t0 + 25 * MS, |_| Some(1))
            .into_iter()
            .map(|s| s.path)
            .collect();
        assert_eq!(due, [PathBuf::from("/p/a.so"), PathBuf::from("/p/z.so")]);
        assert_eq!(d.next_due(), Some(t0 + 270 * MS));
    }

    #[test]
    fn a_file_written_and_not_closed_has_its_writer_open_until_a_close_or_a_hold_runs_out() {
        let t0 = Instant::now();
        let mut d = debouncer();
        d.note("/p/a.so".into(), Change::Write, Some(1), t0);
        // A change of mode after the write (as `cp` does) keeps it open.
        d.note("/p/a.so".into(), Change::Other, Some(2), t0);
        let due = d.take_due(t0 + 250 * MS, |_| Some(2));
        assert_eq!(due, [settled("/p/a.so", Some(2), true)]);

        // Held: looked at again after the hold, with its writer taken as
        // gone, so that the refusal is reported.
        d.again("/p/a.so".into(), Some(2), true, true, t0 + 250 * MS);
        assert_eq!(d.next_due(), Some(t0 + 2250 * MS));
        let due = d.take_due(t0 + 2250 * MS, |_| Some(2));
        assert_eq!(due, [settled("/p/a.so", Some(2), false)]);

        // A change of mode during a hold: the writer is still open.
        d.again("/p/a.so".into(), Some(2), true, true, t0);
        d.note("/p/a.so".into(), Change::Other, Some(3), t0);
        assert!(d.take_due(t0 + 250 * MS, |_| Some(3))[0].writer_open);
        // Looked at again after a change during a load: as it was.
        d.again("/p/a.so".into(), Some(3), false, true, t0);
        assert_eq!(d.next_due(), Some(t0 + 250 * MS));
        assert!(d.take_due(t0 + 250 * MS, |_| Some(3))[0].writer_open);
        d.again("/p/a.so".into(), Some(3), false, false, t0);
        assert!(!d.take_due(t0 + 250 * MS, |_| Some(3))[0].writer_open);

        // Changed without an event during a hold: held again.
        d.again("/p/a.so".into(), Some(3), true, true, t0);
        assert!(d.take_due(t0 + 2000 * MS, |_| Some(4)).is_empty());
        assert!(d.take_due(t0 + 2025 * MS, |_| Some(4))[0].writer_open);
        // A rescan takes the writer's state, but ends a hold.
        d.note("/p/a.so".into(), Change::Write, Some(3), t0);
        assert!(d.forget(Path::new("/p/a.so")));
        d.again("/p/a.so".into(), Some(3), true, true, t0);
        assert!(!d.forget(Path::new("/p/a.so")));

        // A write during the hold opens it again; the close ends it.
        d.again("/p/a.so".into(), Some(2), true, false, t0);
        d.note("/p/a.so".into(), Change::Write, Some(3), t0);
        assert!(d.take_due(t0 + 250 * MS, |_| Some(3))[0].writer_open);
        d.note("/p/a.so".into(), Change::Write, Some(3), t0);
        d.note("/p/a.so".into(), Change::EndsWrite, Some(4), t0);
        assert!(!d.take_due(t0 + 25 * MS, |_| Some(4))[0].writer_open);
    }

    #[test]
    fn a_later_event_rearms_and_forget_drops() {
        let t0 = Instant::now();
        let mut d = debouncer();
        d.note("/p/a.so".into(), Change::EndsWrite, Some(1), t0);
        d.note("/p/a.so".into(), Change::Other, Some(1), t0 + 10 * MS);
        assert!(d.take_due(t0 + 25 * MS, |_| Some(1)).is_empty());
        d.forget(Path::new("/p/a.so"));
        assert_eq!(d.next_due(), None);
    }

    #[test]
    fn plugin_files_are_visible_so_files() {
        assert!(is_plugin_file(Path::new("/p/demo.so")));
        assert!(!is_plugin_file(Path::new("/p/.demo.so")));
        assert!(!is_plugin_file(Path::new("/p/demo.so.tmp")));
        assert!(!is_plugin_file(Path::new("/p/readme")));
    }
}

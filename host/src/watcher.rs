//! The plugins directory, watched: one thread owns every load and unload,
//! fed by `notify` events and by forced reloads, so changes are applied one
//! at a time and in order.
//!
//! A file is loaded once it has stopped changing. Each event about a file
//! (re)arms a timer for it: short after events that mark the end of a write
//! (close after writing, rename into place), longer after anything else (a
//! write in progress, a removal). When the timer fires the file's metadata is
//! compared with what it was at the last event; if it moved, the file is
//! still being written and the timer is armed again.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use notify::event::{AccessKind, AccessMode, ModifyKind};
use notify::{EventKind, RecursiveMode, Watcher as _};

use crate::loader::{Fingerprint, LoadError, Loaded, Loader, DEFAULT_MAX_PLUGIN_BYTES};
use crate::registry::{Conflict, Registry};
use crate::services::HostState;

/// How the plugin host is set up.
#[derive(Debug, Clone)]
pub struct HostConfig {
    /// The directory watched for plugin files (`*.so`, not hidden).
    pub plugins_dir: PathBuf,
    /// Where the private directory of shadow copies is made (default: the
    /// system temporary directory).
    pub shadow_dir: Option<PathBuf>,
    /// Wait after an event that ends a write (close after writing, rename).
    pub settle: Duration,
    /// Wait after any other change (a write in progress, a removal).
    pub quiet: Duration,
    /// Watch the directory for changes. Without it, plugins are loaded at
    /// start and on forced reloads only (for file systems where inotify
    /// sees nothing, such as NFS).
    pub watch: bool,
    /// Plugin files larger than this are refused.
    pub max_plugin_bytes: u64,
}

impl HostConfig {
    /// Defaults for watching `plugins_dir`.
    pub fn new(plugins_dir: impl Into<PathBuf>) -> Self {
        Self {
            plugins_dir: plugins_dir.into(),
            shadow_dir: None,
            settle: Duration::from_millis(25),
            quiet: Duration::from_millis(250),
            watch: true,
            max_plugin_bytes: DEFAULT_MAX_PLUGIN_BYTES,
        }
    }
}

/// Something that happened to a plugin file.
#[derive(Debug, Clone)]
pub enum PluginEvent {
    /// A version was loaded and now serves its tasks.
    Loaded {
        file: PathBuf,
        name: String,
        version: String,
        generation: u64,
        /// The version it replaced, if the file was loaded before.
        replaced: Option<String>,
        /// Ids of this plugin served by another one, or the reverse.
        conflicts: Vec<Conflict>,
    },
    /// A file was refused; the version loaded before (if any) keeps serving.
    Refused { file: PathBuf, error: LoadError },
    /// A file went away and its tasks were unregistered.
    Removed {
        file: PathBuf,
        name: String,
        version: String,
    },
}

/// What a forced reload did.
#[derive(Debug, Clone, Default)]
pub struct ReloadSummary {
    pub loaded: Vec<PathBuf>,
    pub refused: Vec<PathBuf>,
    pub removed: Vec<PathBuf>,
    pub unchanged: usize,
}

/// Why the plugin host could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("plugins directory {0} does not exist or is not a directory")]
    NoPluginsDir(PathBuf),
    #[error("cannot create the shadow directory: {0}")]
    ShadowDir(io::Error),
    #[error("cannot watch {dir}: {source}")]
    Watch { dir: PathBuf, source: notify::Error },
}

enum Msg {
    Fs(notify::Result<notify::Event>),
    Reload(SyncSender<ReloadSummary>),
    Shutdown,
}

/// File-system events waiting for the worker; beyond this many, events are
/// dropped and the directory is rescanned instead.
const EVENT_QUEUE: usize = 4096;

/// Events kept for a subscriber that is not reading; later ones are dropped
/// for it.
const SUBSCRIBER_QUEUE: usize = 1024;

type Subscribers = Arc<Mutex<Vec<SyncSender<PluginEvent>>>>;

/// A registry kept in step with a plugins directory.
pub struct PluginHost {
    registry: Arc<Registry>,
    shadow_dir: PathBuf,
    control: SyncSender<Msg>,
    subscribers: Subscribers,
    thread: Option<JoinHandle<()>>,
    _watcher: Option<notify::RecommendedWatcher>,
}

impl PluginHost {
    /// Loads every plugin in the directory into a new registry, then
    /// watches it.
    pub fn start(config: HostConfig) -> Result<Self, StartError> {
        Self::start_with(
            config,
            Arc::new(Registry::new(Arc::new(HostState::default()))),
        )
    }

    /// As [`start`](Self::start), into `registry` (which may already serve
    /// in-process tasks).
    pub fn start_with(mut config: HostConfig, registry: Arc<Registry>) -> Result<Self, StartError> {
        // notify reports absolute paths: compare events with the canonical
        // directory, whatever form it was given in.
        config.plugins_dir = match std::fs::canonicalize(&config.plugins_dir) {
            Ok(dir) if dir.is_dir() => dir,
            _ => return Err(StartError::NoPluginsDir(config.plugins_dir)),
        };
        let state = Arc::clone(registry.state());
        let mut loader =
            Loader::new(config.shadow_dir.clone(), state).map_err(StartError::ShadowDir)?;
        loader.set_max_bytes(config.max_plugin_bytes);
        let shadow_dir = loader.shadow_dir().to_owned();
        let (tx, rx) = mpsc::sync_channel(EVENT_QUEUE);
        let overflowed = Arc::new(AtomicBool::new(false));

        // Watch before the first scan, so nothing written in between is missed.
        let watcher = if config.watch {
            Some(watch(
                &config.plugins_dir,
                tx.clone(),
                Arc::clone(&overflowed),
            )?)
        } else {
            None
        };

        let subscribers = Subscribers::default();
        let mut worker = Worker {
            config,
            loader,
            registry: Arc::clone(&registry),
            subscribers: Arc::clone(&subscribers),
            pending: HashMap::new(),
            attempts: HashMap::new(),
            overflowed,
            rx,
        };
        worker.rescan();
        let thread = std::thread::Builder::new()
            .name("taskit-plugins".into())
            .spawn(move || worker.run())
            .map_err(StartError::ShadowDir)?;
        Ok(Self {
            registry,
            shadow_dir,
            control: tx,
            subscribers,
            thread: Some(thread),
            _watcher: watcher,
        })
    }

    /// The registry the directory feeds.
    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// This run's private directory of plugin copies (removed on drop).
    pub fn shadow_dir(&self) -> &Path {
        &self.shadow_dir
    }

    /// Rescans the directory now (SIGHUP, `<reload>`): loads new and changed
    /// files, retries refused ones, unregisters removed ones. Returns when done.
    pub fn reload(&self) -> ReloadSummary {
        let (tx, rx) = mpsc::sync_channel(1);
        if self.control.send(Msg::Reload(tx)).is_err() {
            return ReloadSummary::default();
        }
        rx.recv().unwrap_or_default()
    }

    /// A stream of what happens to plugin files from now on. A subscriber
    /// that falls more than 1024 events behind misses the later ones.
    pub fn subscribe(&self) -> Receiver<PluginEvent> {
        let (tx, rx) = mpsc::sync_channel(SUBSCRIBER_QUEUE);
        self.subscribers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(tx);
        rx
    }
}

fn watch(
    dir: &Path,
    tx: SyncSender<Msg>,
    overflowed: Arc<AtomicBool>,
) -> Result<notify::RecommendedWatcher, StartError> {
    let failed = |source| StartError::Watch {
        dir: dir.to_owned(),
        source,
    };
    let mut watcher = notify::recommended_watcher(move |event| {
        if let Err(TrySendError::Full(_)) = tx.try_send(Msg::Fs(event)) {
            overflowed.store(true, Ordering::Release);
        }
    })
    .map_err(failed)?;
    watcher
        .watch(dir, RecursiveMode::NonRecursive)
        .map_err(failed)?;
    Ok(watcher)
}

impl Drop for PluginHost {
    fn drop(&mut self) {
        let _ = self.control.send(Msg::Shutdown);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A file waiting to settle.
struct Pending {
    due: Instant,
    /// The last event ended a write (close, rename): nothing more is coming.
    ends_write: bool,
    /// Its metadata at the last event; `None` if it did not exist then.
    seen: Option<Fingerprint>,
}

/// The last load attempt of a file: its metadata then, and whether it was
/// refused.
#[derive(Clone, Copy)]
struct Attempt {
    fingerprint: Fingerprint,
    refused: bool,
}

struct Worker {
    config: HostConfig,
    loader: Loader,
    registry: Arc<Registry>,
    subscribers: Subscribers,
    pending: HashMap<PathBuf, Pending>,
    /// Per file: not tried again while its metadata stays the same.
    attempts: HashMap<PathBuf, Attempt>,
    overflowed: Arc<AtomicBool>,
    rx: Receiver<Msg>,
}

/// Plugin files are `*.so` files whose name does not start with a dot (so a
/// writer can prepare `.demo.so.tmp` and rename it into place).
pub fn is_plugin_file(path: &Path) -> bool {
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return false;
    };
    !name.starts_with('.') && name.ends_with(".so")
}

impl Worker {
    fn run(mut self) {
        loop {
            let next_due = self.pending.values().map(|p| p.due).min();
            let msg = match next_due {
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
            // One bad step must not stop reloading for the rest of the
            // process: log it and carry on.
            let step = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.step(msg)));
            if step.is_err() {
                tracing::error!("internal error while applying a plugin change (see the panic above); carrying on");
            }
        }
    }

    fn step(&mut self, msg: Option<Msg>) {
        match msg {
            Some(Msg::Fs(Ok(event))) => self.on_event(event),
            Some(Msg::Fs(Err(err))) => {
                tracing::warn!(%err, "file watcher error; rescanning the plugins directory");
                self.rescan();
            }
            Some(Msg::Reload(reply)) => {
                let summary = self.rescan();
                let _ = reply.send(summary);
            }
            Some(Msg::Shutdown) | None => {}
        }
        if self.overflowed.swap(false, Ordering::AcqRel) {
            tracing::warn!("too many file events at once; rescanning the plugins directory");
            self.rescan();
        }
        self.process_due();
    }

    fn on_event(&mut self, event: notify::Event) {
        if event.need_rescan() {
            // The kernel's queue overflowed: events were lost.
            self.rescan();
            return;
        }
        let (delay, ends_write) = match event.kind {
            EventKind::Access(AccessKind::Close(AccessMode::Write))
            | EventKind::Modify(ModifyKind::Name(_)) => (self.config.settle, true),
            // Reads (ours included) change nothing.
            EventKind::Access(_) => return,
            // A removal waits as long as a write in progress: `rm` then `cp`
            // is a common way to deploy, and should not leave the tasks
            // unregistered in between.
            _ => (self.config.quiet, false),
        };
        let now = Instant::now();
        let due = now
            .checked_add(delay)
            .unwrap_or(now + Duration::from_secs(86_400));
        for path in event.paths {
            if !is_plugin_file(&path) || path.parent() != Some(self.config.plugins_dir.as_path()) {
                continue;
            }
            let seen = Fingerprint::of(&path).ok();
            self.pending.insert(
                path,
                Pending {
                    due,
                    ends_write,
                    seen,
                },
            );
        }
    }

    fn process_due(&mut self) {
        let now = Instant::now();
        if !self.pending.values().any(|p| p.due <= now) {
            return;
        }
        // Files whose writes ended within one settle time of each other form
        // one batch, applied in file-name order as at start, so a conflict
        // between files installed together resolves the same way every time.
        let batch_end = now.checked_add(self.config.settle).unwrap_or(now);
        let mut due: Vec<PathBuf> = self
            .pending
            .iter()
            .filter(|(_, p)| p.due <= now || (p.ends_write && p.due <= batch_end))
            .map(|(path, _)| path.clone())
            .collect();
        due.sort();
        for path in due {
            let now_seen = Fingerprint::of(&path).ok();
            let Some(pending) = self.pending.get_mut(&path) else {
                continue;
            };
            if now_seen != pending.seen {
                // Changed since the last event without telling us: still
                // being written. Look again a little later.
                pending.seen = now_seen;
                pending.due = now.checked_add(self.config.settle).unwrap_or(now);
                continue;
            }
            self.pending.remove(&path);
            match now_seen {
                Some(fingerprint) => {
                    self.load_if_changed(&path, fingerprint, false);
                }
                None => {
                    self.unload(&path);
                }
            }
        }
    }

    /// Loads `path` unless it was already tried with this exact metadata
    /// (and, with `retry_refused`, was not refused). Returns `Some(loaded?)`
    /// if it loaded or refused a version.
    fn load_if_changed(
        &mut self,
        path: &Path,
        fingerprint: Fingerprint,
        retry_refused: bool,
    ) -> Option<bool> {
        if let Some(last) = self.attempts.get(path) {
            if last.fingerprint == fingerprint && !(last.refused && retry_refused) {
                return None;
            }
        }
        let current = self.registry.loaded_from(path);
        let outcome = self.loader.load(path, current.as_deref());
        self.attempts.insert(
            path.to_owned(),
            Attempt {
                fingerprint,
                refused: outcome.is_err(),
            },
        );
        match outcome {
            Ok(Loaded::Unchanged) => {
                tracing::debug!(file = %path.display(), "same contents as the loaded version; not reloaded");
                None
            }
            Ok(Loaded::New(version)) => {
                let (name, ver, generation) = (
                    version.name().to_owned(),
                    version.version().to_owned(),
                    version.generation(),
                );
                let tasks = version.tasks().len();
                let (old, conflicts) = self.registry.install(version);
                let replaced = old.as_ref().map(|o| o.version().to_owned());
                match &replaced {
                    Some(old_version) => tracing::info!(
                        plugin = %name, from = %old_version, to = %ver, file = %path.display(), tasks,
                        "reloaded plugin"
                    ),
                    None => {
                        tracing::info!(plugin = %name, version = %ver, file = %path.display(), tasks, "loaded plugin")
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
                drop(old);
                self.publish(PluginEvent::Loaded {
                    file: path.to_owned(),
                    name,
                    version: ver,
                    generation,
                    replaced,
                    conflicts,
                });
                Some(true)
            }
            Err(error) => {
                match &current {
                    Some(v) => tracing::error!(
                        file = %path.display(), %error, keeps_serving = %format!("{} {}", v.name(), v.version()),
                        "refused plugin file; the loaded version keeps serving"
                    ),
                    None => tracing::error!(file = %path.display(), %error, "refused plugin file"),
                }
                self.publish(PluginEvent::Refused {
                    file: path.to_owned(),
                    error,
                });
                Some(false)
            }
        }
    }

    fn unload(&mut self, path: &Path) -> bool {
        self.attempts.remove(path);
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
    fn rescan(&mut self) -> ReloadSummary {
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
            self.pending.remove(&file);
            let outcome = Fingerprint::of(&file)
                .ok()
                .and_then(|fp| self.load_if_changed(&file, fp, true));
            match outcome {
                Some(true) => summary.loaded.push(file),
                Some(false) => summary.refused.push(file),
                None => summary.unchanged += 1,
            }
        }
        summary
    }

    fn publish(&self, event: PluginEvent) {
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

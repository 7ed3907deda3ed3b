//! [`PluginHost`]: a [`Registry`] kept in step with a plugins directory.
//! What it owns: the registry, the thread that applies every change (see
//! `watcher`), the `notify` watcher feeding it, and the shadow directory of
//! plugin copies (through that thread's loader).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use notify::{RecursiveMode, Watcher as _};

use crate::loader::{strict, LoadError, Loader, ShadowDir, DEFAULT_MAX_PLUGIN_BYTES};
use crate::registry::{Conflict, Registry};
use crate::watcher::{Applier, Msg, Rescan, Subscribers, EVENT_QUEUE, SUBSCRIBER_QUEUE};
use crate::worker::Isolation;

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
    /// How long a refusal of a file whose writer may still have it open
    /// (written or created, no close since) is held back before it is
    /// reported: such a file may be half written by a writer that stalled.
    pub hold: Duration,
    /// Watch the directory for changes. Without it, plugins are loaded at
    /// start and on forced reloads only (for file systems where inotify
    /// sees nothing, such as NFS).
    pub watch: bool,
    /// Plugin files larger than this are refused.
    pub max_plugin_bytes: u64,
    /// Where plugins run: in this process (the default for a program
    /// embedding the host) or in worker processes (the default of the
    /// `taskit-host` binary).
    pub isolation: Isolation,
    /// Load plugins from a directory, or files, that someone else than
    /// this process's user (or root) owns or may write to, with a warning.
    /// Off by default: such a user could make the host run any code.
    pub allow_insecure: bool,
}

impl HostConfig {
    /// Defaults for watching `plugins_dir`.
    pub fn new(plugins_dir: impl Into<PathBuf>) -> Self {
        Self {
            plugins_dir: plugins_dir.into(),
            shadow_dir: None,
            settle: Duration::from_millis(25),
            quiet: Duration::from_millis(250),
            hold: Duration::from_secs(2),
            watch: true,
            max_plugin_bytes: DEFAULT_MAX_PLUGIN_BYTES,
            isolation: Isolation::InProcess,
            allow_insecure: false,
        }
    }
}

/// Something that happened to a plugin file.
#[derive(Debug, Clone)]
pub enum PluginEvent {
    /// A version was loaded and now serves its tasks.
    Loaded {
        /// The plugin file.
        file: PathBuf,
        /// The plugin's name.
        name: String,
        /// Its version string.
        version: String,
        /// Which load of the host this is.
        generation: u64,
        /// The version it replaced, if the file was loaded before.
        replaced: Option<String>,
        /// Ids of this plugin served by another one, or the reverse.
        conflicts: Vec<Conflict>,
    },
    /// A file was refused; the version loaded before (if any) keeps serving.
    Refused {
        /// The plugin file.
        file: PathBuf,
        /// Why.
        error: LoadError,
    },
    /// A file went away and its tasks were unregistered.
    Removed {
        /// The plugin file.
        file: PathBuf,
        /// The plugin's name.
        name: String,
        /// Its version string.
        version: String,
    },
}

/// What a forced reload did.
#[derive(Debug, Clone, Default)]
pub struct ReloadSummary {
    /// Files loaded (new, or a new version).
    pub loaded: Vec<PathBuf>,
    /// Files refused.
    pub refused: Vec<PathBuf>,
    /// Files gone, whose tasks were unregistered.
    pub removed: Vec<PathBuf>,
    /// Files found as they were.
    pub unchanged: usize,
    /// Files refused but maybe half written (they changed while being
    /// loaded), looked at again once they settle. Not in the `<reload>`
    /// reply.
    pub pending: Vec<PathBuf>,
}

impl ReloadSummary {
    /// Logs what it did, for a rescan asked for by `why` (`SIGHUP`,
    /// `<reload>`).
    pub fn log(&self, why: &str) {
        tracing::info!(
            loaded = self.loaded.len(),
            refused = self.refused.len(),
            removed = self.removed.len(),
            unchanged = self.unchanged,
            pending = self.pending.len(),
            "{why}: plugins directory rescanned"
        );
    }
}

/// Why the plugin host could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// `--plugins` names nothing usable.
    #[error("plugins directory {0} does not exist or is not a directory")]
    NoPluginsDir(PathBuf),
    /// Someone else than this process's user could put plugins in the
    /// directory (see [`HostConfig::allow_insecure`]).
    #[error("{0}")]
    InsecurePluginsDir(String),
    /// The shadow directory (or the thread) could not be made.
    #[error("cannot create the shadow directory: {0}")]
    ShadowDir(std::io::Error),
    /// The directory cannot be watched.
    #[error("cannot watch {dir}: {source}")]
    Watch {
        /// The plugins directory.
        dir: PathBuf,
        /// What `notify` said.
        source: notify::Error,
    },
}

/// A registry kept in step with a plugins directory: every `*.so` in it is
/// loaded, replaced when the file changes, and unregistered when it goes.
pub struct PluginHost {
    registry: Arc<Registry>,
    control: SyncSender<Msg>,
    subscribers: Subscribers,
    thread: Option<JoinHandle<()>>,
    _watcher: Option<notify::RecommendedWatcher>,
}

impl PluginHost {
    /// Loads every plugin in the directory into a new registry, then
    /// watches it.
    pub fn start(config: HostConfig) -> Result<Self, StartError> {
        Self::start_with(config, Arc::new(Registry::new()))
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
        let meta = std::fs::metadata(&config.plugins_dir)
            .map_err(|_| StartError::NoPluginsDir(config.plugins_dir.clone()))?;
        if let Some(why) = strict::unsafe_because(&meta, "plugins directory", &config.plugins_dir) {
            if !config.allow_insecure {
                return Err(StartError::InsecurePluginsDir(why));
            }
            tracing::warn!("INSECURE: serving it anyway (--allow-insecure-plugins): {why}");
        }
        let shadow_dir =
            ShadowDir::create(config.shadow_dir.as_deref()).map_err(StartError::ShadowDir)?;
        let loader = Loader::new(
            shadow_dir,
            config.max_plugin_bytes,
            Arc::clone(registry.state()),
            config.isolation.clone(),
            config.allow_insecure,
        );
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
        let mut applier = Applier::new(
            config,
            loader,
            Arc::clone(&registry),
            Arc::clone(&subscribers),
            overflowed,
            rx,
        );
        applier.rescan(Rescan::Watcher);
        let thread = std::thread::Builder::new()
            .name("taskit-plugins".into())
            .spawn(move || applier.run())
            .map_err(StartError::ShadowDir)?;
        Ok(Self {
            registry,
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

impl Drop for PluginHost {
    /// Stops the thread that applies changes; its loader removes the shadow
    /// directory as it goes.
    fn drop(&mut self) {
        let _ = self.control.send(Msg::Shutdown);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
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

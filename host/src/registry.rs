//! Task id → what serves it: a plugin version, or a Rust function of the
//! host's own program registered in-process (the embedded backend).
//!
//! The routing table is an immutable map behind a lock that is held only
//! long enough to clone an `Arc`: a reload builds a whole new table and
//! swaps it in, so a caller sees either the old table or the new one, never
//! a mix, and the version a call started on stays alive until it returns.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use taskit_plugin_api::abi::HostServices;
use taskit_plugin_api::error::{kind, panic_message};
use taskit_plugin_api::{call_task, CodecKind, Invocation, TaskContext, TaskError, TaskFn};

use crate::loader::PluginVersion;
use crate::services::{services_for, HostState};

type LocalFn = dyn Fn(&TaskContext<'_>, &Invocation<'_>, CodecKind) -> Result<Vec<u8>, TaskError>
    + Send
    + Sync;

/// A Rust function of the host's own program, served by id beside plugins.
struct LocalTask {
    id: String,
    run: Box<LocalFn>,
}

#[derive(Clone)]
enum Route {
    Plugin {
        version: Arc<PluginVersion>,
        index: usize,
    },
    Local(Arc<LocalTask>),
}

/// A task id resolved to what serves it (see [`Registry::resolve`]); holds
/// that plugin version alive.
pub struct Resolved(Route);

impl Resolved {
    /// Runs the task, as [`Registry::call`] does.
    pub fn call(
        &self,
        registry: &Registry,
        codec: CodecKind,
        args: &[u8],
        kwargs: &[u8],
        cancelled: &AtomicBool,
    ) -> Result<Vec<u8>, TaskError> {
        match &self.0 {
            Route::Plugin { version, index } => {
                version.call(*index, codec, args, kwargs, cancelled)
            }
            Route::Local(local) => {
                let _running = registry.state.enter();
                let ctx = TaskContext::new(registry.local_services, cancelled);
                let call = Invocation {
                    task: &local.id,
                    args,
                    kwargs,
                };
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    (local.run)(&ctx, &call, codec)
                }))
                .unwrap_or_else(|payload| {
                    Err(TaskError::msg(kind::PANIC, panic_message(payload.as_ref())))
                })
            }
        }
    }
}

/// Why an in-process task could not be registered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegisterError {
    #[error("task id `{0}` is empty or starts with `<` (reserved for admin signals)")]
    InvalidId(String),
    #[error("task id `{0}` is already registered in-process")]
    Duplicate(String),
}

/// The name conflicts report for in-process tasks.
pub const EMBEDDED: &str = "embedded";

type Table = HashMap<String, Route>;

/// A plugin file that is loaded, with its rank: the order in which its file
/// was first loaded, which decides task-id conflicts (lower rank wins) and
/// is kept across reloads of the same file.
struct Slot {
    rank: u64,
    version: Arc<PluginVersion>,
}

/// A task id that two plugins export: `winner` serves it, `loser`'s export
/// of it is ignored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    pub task: String,
    /// Name and file of the plugin that serves the id.
    pub winner: (String, PathBuf),
    /// Name and file of the plugin whose export of the id is ignored.
    pub loser: (String, PathBuf),
}

/// A loaded plugin, as `<tasks>` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginInfo {
    pub name: String,
    pub version: String,
    pub file: PathBuf,
    /// Ids this plugin serves (conflicting ids it lost are not listed).
    pub tasks: Vec<String>,
}

/// The host's task registry.
pub struct Registry {
    table: RwLock<Arc<Table>>,
    plugins: Mutex<Plugins>,
    state: Arc<HostState>,
    local_services: HostServices,
}

#[derive(Default)]
struct Plugins {
    by_file: BTreeMap<PathBuf, Slot>,
    /// In-process tasks; they win every conflict with a plugin.
    locals: BTreeMap<String, Arc<LocalTask>>,
    next_rank: u64,
}

impl Registry {
    /// An empty registry whose calls are counted in `state`.
    pub fn new(state: Arc<HostState>) -> Self {
        let local_services = services_for(&state, EMBEDDED, env!("CARGO_PKG_VERSION"));
        Self {
            table: RwLock::new(Arc::new(Table::new())),
            plugins: Mutex::new(Plugins::default()),
            state,
            local_services,
        }
    }

    /// The host's shared counters.
    pub fn state(&self) -> &Arc<HostState> {
        &self.state
    }

    /// Calls task `task` with arguments encoded by `codec` and keyword
    /// arguments as a JSON object (or empty). An unknown id gives a
    /// `KeyError` carrying the id, as TaskIt 4.0 does.
    pub fn call(
        &self,
        task: &str,
        codec: CodecKind,
        args: &[u8],
        kwargs: &[u8],
        cancelled: &AtomicBool,
    ) -> Result<Vec<u8>, TaskError> {
        self.resolve(task)?
            .call(self, codec, args, kwargs, cancelled)
    }

    /// What serves `task` right now, held for a later [`Resolved::call`]:
    /// a call accepted before a reload or removal runs on the version that
    /// was live when it was accepted, even if it waits for a task slot.
    pub fn resolve(&self, task: &str) -> Result<Resolved, TaskError> {
        self.route(task)
            .map(Resolved)
            .ok_or_else(|| TaskError::msg(kind::UNKNOWN_TASK, task))
    }

    /// Serves `f` in-process under `id`: TaskIt's "use almost any function
    /// without modification". In-process tasks win conflicts with plugins.
    pub fn register<M, F: TaskFn<M>>(
        &self,
        id: impl Into<String>,
        f: F,
    ) -> Result<(), RegisterError> {
        let id = id.into();
        if id.is_empty() || id.starts_with('<') {
            return Err(RegisterError::InvalidId(id));
        }
        let mut plugins = self.plugins.lock().unwrap_or_else(PoisonError::into_inner);
        if plugins.locals.contains_key(&id) {
            return Err(RegisterError::Duplicate(id));
        }
        let run: Box<LocalFn> = Box::new(move |ctx, call, codec| call_task(&f, ctx, call, codec));
        plugins
            .locals
            .insert(id.clone(), Arc::new(LocalTask { id, run }));
        self.rebuild(&plugins);
        Ok(())
    }

    /// Ids of the in-process tasks, sorted.
    pub fn local_tasks(&self) -> Vec<String> {
        let plugins = self.plugins.lock().unwrap_or_else(PoisonError::into_inner);
        plugins.locals.keys().cloned().collect()
    }

    fn route(&self, task: &str) -> Option<Route> {
        let table = self.table.read().unwrap_or_else(PoisonError::into_inner);
        table.get(task).cloned()
    }

    /// The plugin version serving `task` right now, if a plugin serves it.
    pub fn version_of(&self, task: &str) -> Option<Arc<PluginVersion>> {
        match self.route(task)? {
            Route::Plugin { version, .. } => Some(version),
            Route::Local(_) => None,
        }
    }

    /// The version loaded from `file`, if any.
    pub fn loaded_from(&self, file: &Path) -> Option<Arc<PluginVersion>> {
        let plugins = self.plugins.lock().unwrap_or_else(PoisonError::into_inner);
        plugins.by_file.get(file).map(|s| Arc::clone(&s.version))
    }

    /// Every loaded plugin and the ids it serves, ordered by file.
    pub fn plugins(&self) -> Vec<PluginInfo> {
        let plugins = self.plugins.lock().unwrap_or_else(PoisonError::into_inner);
        let table = self.table.read().unwrap_or_else(PoisonError::into_inner);
        plugins
            .by_file
            .values()
            .map(|slot| {
                let v = &slot.version;
                PluginInfo {
                    name: v.name().to_owned(),
                    version: v.version().to_owned(),
                    file: v.source().to_owned(),
                    tasks: v
                        .tasks()
                        .iter()
                        .filter(|id| {
                            matches!(table.get(*id), Some(Route::Plugin { version, .. }) if Arc::ptr_eq(version, v))
                        })
                        .cloned()
                        .collect(),
                }
            })
            .collect()
    }

    /// Every task id served, sorted.
    pub fn task_ids(&self) -> Vec<String> {
        let table = self.table.read().unwrap_or_else(PoisonError::into_inner);
        let mut ids: Vec<String> = table.keys().cloned().collect();
        ids.sort();
        ids
    }

    /// Makes `version` the one serving its file's tasks, replacing the
    /// previous version of the same file, if any (returned). Ids another
    /// plugin already serves stay with it; they are returned as conflicts.
    pub fn install(&self, version: PluginVersion) -> (Option<Arc<PluginVersion>>, Vec<Conflict>) {
        let version = Arc::new(version);
        let mut plugins = self.plugins.lock().unwrap_or_else(PoisonError::into_inner);
        let source = version.source().to_owned();
        let rank = match plugins.by_file.get(&source) {
            Some(slot) => slot.rank,
            None => {
                plugins.next_rank += 1;
                plugins.next_rank
            }
        };
        let old = plugins
            .by_file
            .insert(
                source,
                Slot {
                    rank,
                    version: Arc::clone(&version),
                },
            )
            .map(|slot| slot.version);
        let conflicts = self.rebuild(&plugins);
        let mine = conflicts
            .into_iter()
            .filter(|c| c.loser.1 == version.source() || c.winner.1 == version.source())
            .collect();
        (old, mine)
    }

    /// Unregisters the plugin loaded from `file`. Calls already running on
    /// it finish; ids it served and another plugin exports pass to that one.
    pub fn remove(&self, file: &Path) -> Option<Arc<PluginVersion>> {
        let mut plugins = self.plugins.lock().unwrap_or_else(PoisonError::into_inner);
        let slot = plugins.by_file.remove(file)?;
        self.rebuild(&plugins);
        Some(slot.version)
    }

    /// Rebuilds and publishes the routing table; returns every conflict.
    fn rebuild(&self, plugins: &Plugins) -> Vec<Conflict> {
        let mut slots: Vec<&Slot> = plugins.by_file.values().collect();
        slots.sort_by_key(|s| s.rank);
        let mut table: Table = plugins
            .locals
            .iter()
            .map(|(id, local)| (id.clone(), Route::Local(Arc::clone(local))))
            .collect();
        let mut conflicts = Vec::new();
        for slot in slots {
            for (index, id) in slot.version.tasks().iter().enumerate() {
                if let Some(existing) = table.get(id) {
                    let winner = match existing {
                        Route::Plugin { version, .. } => {
                            (version.name().to_owned(), version.source().to_owned())
                        }
                        Route::Local(_) => (EMBEDDED.to_owned(), PathBuf::new()),
                    };
                    conflicts.push(Conflict {
                        task: id.clone(),
                        winner,
                        loser: (
                            slot.version.name().to_owned(),
                            slot.version.source().to_owned(),
                        ),
                    });
                    continue;
                }
                table.insert(
                    id.clone(),
                    Route::Plugin {
                        version: Arc::clone(&slot.version),
                        index,
                    },
                );
            }
        }
        let mut guard = self.table.write().unwrap_or_else(PoisonError::into_inner);
        let old = std::mem::replace(&mut *guard, Arc::new(table));
        drop(guard);
        // Dropping the old table may release old versions; not under the lock.
        drop(old);
        conflicts
    }
}

//! Task id → what serves it: a plugin, or a Rust function of the host's own
//! program registered in-process (the embedded backend).
//!
//! The routing table is an immutable map behind a lock that is held only
//! long enough to clone an `Arc`: a reload builds a whole new table and
//! swaps it in, so a caller sees either the old table or the new one, never
//! a mix, and the version a call started on stays alive until it returns.
//!
//! Conflicts: in-process tasks win every one; between plugins, the file
//! loaded first keeps the id, and keeps its rank across reloads of the same
//! file.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock, Weak};

use taskit_plugin_api::error::kind;
use taskit_plugin_api::host_side::abi::HostServices;
use taskit_plugin_api::host_side::{run_task, TaskRunner};
use taskit_plugin_api::wire::admin::{is_reserved, PluginSummary};
use taskit_plugin_api::{TaskError, TaskFn};

use crate::batch::Batch;
use crate::call::TaskCall;
use crate::services::{services_for, HostState};
use crate::worker::{Deliver, Ticket};

/// One version of one plugin file, as the registry sees it: its identity,
/// its task ids, and a way to run them. The loader's in-process
/// `PluginVersion` is one; tests use a fake.
pub(crate) trait Plugin: Send + Sync + fmt::Debug {
    /// The plugin's name.
    fn name(&self) -> &str;
    /// Its version string.
    fn version(&self) -> &str;
    /// The watched file it was loaded from.
    fn source(&self) -> &Path;
    /// Which load of the host this is (unique per loaded version).
    fn generation(&self) -> u64;
    /// The task ids it exports, in its own order.
    fn tasks(&self) -> &[String];
    /// Runs its task number `index` (counting is the route's job).
    fn run(&self, index: usize, call: &TaskCall) -> Result<Vec<u8>, TaskError>;
    /// Serves again after being given up on (a forced reload): only worker
    /// processes can be given up on.
    fn revive(&self) {}
    /// Whether its tasks run in another process (then a call is best
    /// awaited with [`send`](Self::send), not run on a thread).
    fn is_remote(&self) -> bool {
        false
    }
    /// A worker process ready to take a call to task number `index`, if
    /// it runs in workers and one is live now (else [`run`](Self::run) it).
    fn ticket(&self, _index: usize) -> Option<Ticket> {
        None
    }
    /// How it runs, for `<tasks>`.
    fn health(&self) -> Health {
        Health {
            isolation: "none",
            ..Health::default()
        }
    }
    /// Shutdown waits no longer: stop the calls still running and answer
    /// them, if it can (a worker process can be killed; a thread in this
    /// process cannot). The task ids of the calls answered.
    fn abandon(&self) -> Vec<String> {
        Vec::new()
    }
}

/// How a plugin version runs, as `<tasks>` reports it.
#[derive(Debug, Clone, Default)]
pub(crate) struct Health {
    /// `process` or `none`.
    pub(crate) isolation: &'static str,
    /// Pids of its live workers.
    pub(crate) workers: Vec<u32>,
    /// Workers restarted after a crash.
    pub(crate) restarts: u64,
    /// The cause of its last crash.
    pub(crate) last_crash: Option<String>,
    /// Why it is marked failed, if it is.
    pub(crate) failed: Option<String>,
    /// Calls in its workers.
    pub(crate) running: usize,
    /// Calls waiting for a task slot or a worker.
    pub(crate) waiting: usize,
}

/// A Rust function of the host's own program, served by id beside plugins.
struct LocalTask {
    run: Box<TaskRunner>,
    services: HostServices,
}

#[derive(Clone)]
enum Target {
    Plugin {
        plugin: Arc<dyn Plugin>,
        index: usize,
    },
    Local(Arc<LocalTask>),
}

/// A task id resolved to what serves it: everything needed to run the task,
/// holding that plugin version alive (see [`Registry::resolve`]).
pub struct Route {
    target: Target,
    running: Arc<HostState>,
}

impl Route {
    /// Runs the task, counting it as running for the whole call.
    pub fn run(&self, call: &TaskCall) -> Result<Vec<u8>, TaskError> {
        let _running = self.running.enter();
        match &self.target {
            Target::Plugin { plugin, index } => plugin.run(*index, call),
            Target::Local(local) => run_task(
                &*local.run,
                local.services,
                call.cancelled(),
                &call.invocation(),
                call.codec(),
            ),
        }
    }
}

impl Route {
    /// The name of the plugin serving it ([`EMBEDDED`] for an in-process
    /// task).
    pub(crate) fn plugin_name(&self) -> &str {
        match &self.target {
            Target::Plugin { plugin, .. } => plugin.name(),
            Target::Local(_) => EMBEDDED,
        }
    }

    /// Whether the task runs in a worker process.
    pub(crate) fn is_remote(&self) -> bool {
        matches!(&self.target, Target::Plugin { plugin, .. } if plugin.is_remote())
    }

    /// A worker process ready to take the call, if the task runs in one
    /// and a worker is live now (else [`run`](Self::run) it).
    pub(crate) fn remote(&self) -> Option<Remote> {
        let Target::Plugin { plugin, index } = &self.target else {
            return None;
        };
        Some(Remote {
            ticket: plugin.ticket(*index)?,
            plugin: Arc::clone(plugin),
        })
    }
}

/// A call about to go to a plugin's worker processes (counted as running
/// while a worker has it), holding its plugin version until it is answered
/// (a version no call holds has its workers stopped).
pub(crate) struct Remote {
    ticket: Ticket,
    plugin: Arc<dyn Plugin>,
}

impl Remote {
    /// Sends the call, queued in `batch`; its answer goes to `deliver`
    /// (on another thread).
    pub(crate) fn dispatch(self, call: &TaskCall, deliver: Deliver, batch: &mut Batch) {
        let plugin = self.plugin;
        let deliver: Deliver = Box::new(move |result, batch: &mut Batch| {
            deliver(result, batch);
            drop(plugin);
        });
        self.ticket.dispatch(call, deliver, batch);
    }

    /// Sends the call; its answer, to await.
    pub(crate) fn send(
        self,
        call: &TaskCall,
    ) -> impl std::future::Future<Output = Result<Vec<u8>, TaskError>> + Send + 'static {
        let (sent, plugin) = (self.ticket.send(call), self.plugin);
        async move {
            let answer = sent.answer().await;
            drop(plugin);
            answer
        }
    }
}

/// Why an in-process task could not be registered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegisterError {
    /// The id is empty or reserved.
    #[error("task id `{0}` is empty or starts with `<` (reserved for admin signals)")]
    InvalidId(String),
    /// The id is already served in-process.
    #[error("task id `{0}` is already registered in-process")]
    Duplicate(String),
}

/// The name conflicts and `<tasks>` report for in-process tasks.
pub const EMBEDDED: &str = "embedded";

type Table = HashMap<String, Target>;

/// A plugin file that is loaded, with its rank: the order in which its file
/// was first loaded, which decides task-id conflicts (lower rank wins) and
/// is kept across reloads of the same file.
struct Installed {
    rank: u64,
    plugin: Arc<dyn Plugin>,
}

/// A task id that two plugins export: `winner` serves it, `loser`'s export
/// of it is ignored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    /// The id.
    pub task: String,
    /// Name and file of the plugin that serves the id.
    pub winner: (String, PathBuf),
    /// Name and file of the plugin whose export of the id is ignored.
    pub loser: (String, PathBuf),
}

/// A loaded plugin file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginInfo {
    /// The plugin's name.
    pub name: String,
    /// Its version string.
    pub version: String,
    /// The file it was loaded from.
    pub file: PathBuf,
    /// Which load of the host this is (unique per loaded version).
    pub generation: u64,
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
    by_file: BTreeMap<PathBuf, Installed>,
    /// Versions replaced or removed, while calls may still hold them (a
    /// stop past its drain timeout abandons their calls too).
    retired: Vec<Weak<dyn Plugin>>,
    /// In-process tasks; they win every conflict with a plugin.
    locals: BTreeMap<String, Arc<LocalTask>>,
    next_rank: u64,
}

impl Plugins {
    /// Remembers a version in workers taken out of service while calls may
    /// hold it. (A version in process is never freed, and has nothing to
    /// abandon.)
    fn retire(&mut self, plugin: &Arc<dyn Plugin>) {
        if plugin.is_remote() {
            self.retired.retain(|p| p.strong_count() > 0);
            self.retired.push(Arc::downgrade(plugin));
        }
    }
}

impl Default for Registry {
    fn default() -> Self {
        Self::new()
    }
}

impl Registry {
    /// An empty registry, with a running-task count of its own.
    pub fn new() -> Self {
        let state = Arc::new(HostState::default());
        let local_services = services_for(&state, EMBEDDED, env!("CARGO_PKG_VERSION"));
        Self {
            table: RwLock::new(Arc::new(Table::new())),
            plugins: Mutex::new(Plugins::default()),
            state,
            local_services,
        }
    }

    /// Tasks running now (calls in progress and the subtasks they started):
    /// what `<status>` reports, less itself.
    pub fn running_tasks(&self) -> u64 {
        self.state.running_tasks()
    }

    /// The counters plugins of this registry report to.
    pub(crate) fn state(&self) -> &Arc<HostState> {
        &self.state
    }

    /// Runs `call` on whatever serves its task now. An unknown id gives a
    /// `KeyError` carrying the id, as TaskIt 4.0 does.
    pub fn call(&self, call: &TaskCall) -> Result<Vec<u8>, TaskError> {
        self.resolve(call.task())?.run(call)
    }

    /// What serves `task` right now, held for a later [`Route::run`]: a call
    /// accepted before a reload or removal runs on the version that was live
    /// when it was accepted, even if it waits for a task slot.
    pub fn resolve(&self, task: &str) -> Result<Route, TaskError> {
        let table = self.table.read().unwrap_or_else(PoisonError::into_inner);
        let target = table
            .get(task)
            .cloned()
            .ok_or_else(|| TaskError::msg(kind::UNKNOWN_TASK, task))?;
        Ok(Route {
            target,
            running: Arc::clone(&self.state),
        })
    }

    /// Serves `f` in-process under `id`: TaskIt's "use almost any function
    /// without modification". In-process tasks win conflicts with plugins.
    pub fn register<M, F: TaskFn<M>>(
        &self,
        id: impl Into<String>,
        f: F,
    ) -> Result<(), RegisterError> {
        let id = id.into();
        if id.is_empty() || is_reserved(&id) {
            return Err(RegisterError::InvalidId(id));
        }
        let mut plugins = self.plugins.lock().unwrap_or_else(PoisonError::into_inner);
        if plugins.locals.contains_key(&id) {
            return Err(RegisterError::Duplicate(id));
        }
        let run: Box<TaskRunner> = Box::new(move |ctx, call, codec| {
            taskit_plugin_api::host_side::invoke(&f, ctx, call, codec)
        });
        let local = LocalTask {
            run,
            services: self.local_services,
        };
        plugins.locals.insert(id, Arc::new(local));
        self.rebuild(&plugins);
        Ok(())
    }

    /// The loaded version of `file`, if any.
    pub fn loaded_from(&self, file: &Path) -> Option<PluginInfo> {
        self.plugins().into_iter().find(|p| p.file == file)
    }

    /// Every loaded plugin file and the ids it serves, ordered by file.
    pub fn plugins(&self) -> Vec<PluginInfo> {
        let plugins = self.plugins.lock().unwrap_or_else(PoisonError::into_inner);
        let table = self.table.read().unwrap_or_else(PoisonError::into_inner);
        let serves = |plugin: &Arc<dyn Plugin>, id: &String| matches!(table.get(id), Some(Target::Plugin { plugin: p, .. }) if Arc::ptr_eq(p, plugin));
        plugins
            .by_file
            .values()
            .map(|installed| {
                let p = &installed.plugin;
                PluginInfo {
                    name: p.name().to_owned(),
                    version: p.version().to_owned(),
                    file: p.source().to_owned(),
                    generation: p.generation(),
                    tasks: p
                        .tasks()
                        .iter()
                        .filter(|id| serves(p, id))
                        .cloned()
                        .collect(),
                }
            })
            .collect()
    }

    /// Serves again every plugin version that was given up on (a forced
    /// reload; see [`PluginHost::reload`](crate::PluginHost::reload)).
    pub(crate) fn revive_all(&self) {
        for plugin in self.installed() {
            plugin.revive();
        }
    }

    /// See [`Plugin::abandon`]: for every plugin version loaded, and every
    /// version replaced or removed that calls still hold.
    pub(crate) fn abandon_running(&self) -> Vec<String> {
        let retired: Vec<Arc<dyn Plugin>> = {
            let plugins = self.plugins.lock().unwrap_or_else(PoisonError::into_inner);
            plugins.retired.iter().filter_map(Weak::upgrade).collect()
        };
        self.installed()
            .iter()
            .chain(&retired)
            .flat_map(|p| p.abandon())
            .collect()
    }

    /// Every plugin version installed now, taken out of the lock (what is
    /// done with them may take a while).
    fn installed(&self) -> Vec<Arc<dyn Plugin>> {
        let plugins = self.plugins.lock().unwrap_or_else(PoisonError::into_inner);
        plugins
            .by_file
            .values()
            .map(|i| Arc::clone(&i.plugin))
            .collect()
    }

    /// What `<tasks>` answers: the in-process tasks as a plugin named
    /// `embedded` (if there are any), then every plugin file.
    pub fn summaries(&self) -> Vec<PluginSummary> {
        let locals: Vec<String> = {
            let plugins = self.plugins.lock().unwrap_or_else(PoisonError::into_inner);
            plugins.locals.keys().cloned().collect()
        };
        let embedded = (!locals.is_empty()).then(|| PluginSummary {
            name: EMBEDDED.to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            file: String::new(),
            tasks: locals,
            isolation: "none".to_owned(),
            ..PluginSummary::default()
        });
        let health: HashMap<PathBuf, Health> = self
            .installed()
            .iter()
            .map(|p| (p.source().to_owned(), p.health()))
            .collect();
        embedded
            .into_iter()
            .chain(self.plugins().into_iter().map(|p| {
                let health = health.get(&p.file).cloned().unwrap_or_default();
                PluginSummary {
                    name: p.name,
                    version: p.version,
                    file: p.file.display().to_string(),
                    tasks: p.tasks,
                    isolation: health.isolation.to_owned(),
                    workers: health.workers,
                    restarts: health.restarts,
                    last_crash: health.last_crash,
                    failed: health.failed,
                    running: health.running as u64,
                    waiting: health.waiting as u64,
                }
            }))
            .collect()
    }

    /// Every task id served, sorted.
    pub fn task_ids(&self) -> Vec<String> {
        let table = self.table.read().unwrap_or_else(PoisonError::into_inner);
        let mut ids: Vec<String> = table.keys().cloned().collect();
        ids.sort();
        ids
    }

    /// Makes `plugin` the one serving its file's tasks, replacing the
    /// previous version of the same file, if any (returned). Ids another
    /// plugin already serves stay with it; they are returned as conflicts.
    pub(crate) fn install(
        &self,
        plugin: Arc<dyn Plugin>,
    ) -> (Option<Arc<dyn Plugin>>, Vec<Conflict>) {
        let mut plugins = self.plugins.lock().unwrap_or_else(PoisonError::into_inner);
        let source = plugin.source().to_owned();
        let rank = match plugins.by_file.get(&source) {
            Some(installed) => installed.rank,
            None => {
                plugins.next_rank += 1;
                plugins.next_rank
            }
        };
        let installed = Installed {
            rank,
            plugin: Arc::clone(&plugin),
        };
        let old = plugins
            .by_file
            .insert(source.clone(), installed)
            .map(|i| i.plugin);
        if let Some(old) = &old {
            plugins.retire(old);
        }
        let conflicts = self.rebuild(&plugins);
        let mine = conflicts
            .into_iter()
            .filter(|c| c.loser.1 == source || c.winner.1 == source)
            .collect();
        (old, mine)
    }

    /// Unregisters the plugin loaded from `file`. Calls already running on
    /// it finish; ids it served and another plugin exports pass to that one.
    pub(crate) fn remove(&self, file: &Path) -> Option<Arc<dyn Plugin>> {
        let mut plugins = self.plugins.lock().unwrap_or_else(PoisonError::into_inner);
        let installed = plugins.by_file.remove(file)?;
        plugins.retire(&installed.plugin);
        self.rebuild(&plugins);
        Some(installed.plugin)
    }

    /// Rebuilds and publishes the routing table; returns every conflict.
    fn rebuild(&self, plugins: &Plugins) -> Vec<Conflict> {
        let mut ranked: Vec<&Installed> = plugins.by_file.values().collect();
        ranked.sort_by_key(|i| i.rank);
        let mut table: Table = plugins
            .locals
            .iter()
            .map(|(id, local)| (id.clone(), Target::Local(Arc::clone(local))))
            .collect();
        let mut conflicts = Vec::new();
        for installed in ranked {
            let plugin = &installed.plugin;
            for (index, id) in plugin.tasks().iter().enumerate() {
                if let Some(existing) = table.get(id) {
                    let winner = match existing {
                        Target::Plugin { plugin, .. } => {
                            (plugin.name().to_owned(), plugin.source().to_owned())
                        }
                        Target::Local(_) => (EMBEDDED.to_owned(), PathBuf::new()),
                    };
                    conflicts.push(Conflict {
                        task: id.clone(),
                        winner,
                        loser: (plugin.name().to_owned(), plugin.source().to_owned()),
                    });
                    continue;
                }
                let target = Target::Plugin {
                    plugin: Arc::clone(plugin),
                    index,
                };
                table.insert(id.clone(), target);
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

#[cfg(test)]
mod tests {
    use super::*;
    use taskit_plugin_api::CodecKind;

    /// A plugin that answers every task with its own name and version.
    #[derive(Debug)]
    struct Fake {
        name: String,
        version: String,
        source: PathBuf,
        tasks: Vec<String>,
    }

    fn fake(name: &str, version: &str, file: &str, tasks: &[&str]) -> Arc<dyn Plugin> {
        Arc::new(Fake {
            name: name.into(),
            version: version.into(),
            source: PathBuf::from(file),
            tasks: tasks.iter().map(|t| t.to_string()).collect(),
        })
    }

    impl Plugin for Fake {
        fn name(&self) -> &str {
            &self.name
        }
        fn version(&self) -> &str {
            &self.version
        }
        fn source(&self) -> &Path {
            &self.source
        }
        fn generation(&self) -> u64 {
            0
        }
        fn tasks(&self) -> &[String] {
            &self.tasks
        }
        fn run(&self, _: usize, call: &TaskCall) -> Result<Vec<u8>, TaskError> {
            Ok(format!("\"{} {} {}\"", self.name, self.version, call.task()).into_bytes())
        }
    }

    fn who(registry: &Registry, task: &str) -> Result<String, TaskError> {
        let call = TaskCall::with_args(task, CodecKind::Json, &[(); 0]).unwrap();
        let bytes = registry.call(&call)?;
        Ok(serde_json::from_slice(&bytes).unwrap())
    }

    #[test]
    fn the_file_loaded_first_keeps_a_shared_id_across_reloads() {
        let registry = Registry::new();
        registry.install(fake("b", "1", "/p/b.so", &["shared", "b-only"]));
        let (_, conflicts) = registry.install(fake("a", "1", "/p/a.so", &["shared"]));
        assert_eq!(conflicts.len(), 1);
        assert_eq!(conflicts[0].winner.0, "b");
        assert_eq!(who(&registry, "shared").unwrap(), "b 1 shared");

        // Reloading the loser does not make it first; reloading the winner
        // keeps it first.
        registry.install(fake("a", "2", "/p/a.so", &["shared"]));
        registry.install(fake("b", "2", "/p/b.so", &["shared"]));
        assert_eq!(who(&registry, "shared").unwrap(), "b 2 shared");

        // The winner removed, the id passes to the other plugin.
        assert!(registry.remove(Path::new("/p/b.so")).is_some());
        assert_eq!(who(&registry, "shared").unwrap(), "a 2 shared");
        assert_eq!(
            who(&registry, "b-only").unwrap_err().kind(),
            kind::UNKNOWN_TASK
        );
    }

    #[test]
    fn in_process_tasks_win_and_are_summarised_as_embedded() {
        let registry = Registry::new();
        registry.register("shared", || "local").unwrap();
        let (_, conflicts) = registry.install(fake("p", "1", "/p/p.so", &["shared", "other"]));
        assert_eq!(conflicts[0].winner.0, EMBEDDED);
        assert_eq!(who(&registry, "shared").unwrap(), "local");
        assert_eq!(who(&registry, "other").unwrap(), "p 1 other");
        let summaries = registry.summaries();
        assert_eq!(summaries[0].name, EMBEDDED);
        assert_eq!(summaries[0].tasks, ["shared"]);
        assert_eq!(summaries[1].tasks, ["other"], "lost ids are not listed");
        assert_eq!(
            registry.register("<stop>", || ()),
            Err(RegisterError::InvalidId("<stop>".into()))
        );
        assert_eq!(
            registry.register("shared", || ()),
            Err(RegisterError::Duplicate("shared".into()))
        );
    }

    #[test]
    fn a_route_keeps_its_version_and_counts_itself_running() {
        let registry = Registry::new();
        registry.install(fake("p", "1", "/p/p.so", &["t"]));
        let route = registry.resolve("t").unwrap();
        registry.install(fake("p", "2", "/p/p.so", &["t"]));
        let call = TaskCall::with_args("t", CodecKind::Json, &[(); 0]).unwrap();
        assert_eq!(route.run(&call).unwrap(), b"\"p 1 t\"");
        assert_eq!(who(&registry, "t").unwrap(), "p 2 t");

        registry
            .register("count", |ctx: &taskit_plugin_api::TaskContext<'_>| {
                ctx.running_tasks()
            })
            .unwrap();
        assert_eq!(
            registry
                .call(&TaskCall::with_args("count", CodecKind::Json, &[(); 0]).unwrap())
                .unwrap(),
            b"1"
        );
        assert_eq!(registry.running_tasks(), 0);
    }

    #[test]
    fn an_in_process_panic_is_an_error_reply() {
        let registry = Registry::new();
        registry
            .register("boom", || -> i64 { panic!("kaboom") })
            .unwrap();
        let err = who(&registry, "boom").unwrap_err();
        assert_eq!(
            (err.kind(), err.args()[0].as_str()),
            (kind::PANIC, Some("kaboom"))
        );
        assert_eq!(registry.running_tasks(), 0);
    }
}

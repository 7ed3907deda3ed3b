//! The host's side of [`HostServices`]: the running-task count, subtask
//! accounting and the log bridge that plugins reach through the ABI.

use std::ffi::c_void;
use std::sync::Arc;

use abi_stable::prefix_type::WithMetadata;
use abi_stable::std_types::RStr;
use taskit_plugin_api::host_side::abi::{HostServices, HostVTable, HostVTableRef, LogLevel};
use tracing::Level;

use crate::counters::{self, Counters};

/// Counters shared by everything one host runs, worker processes included.
#[derive(Debug)]
pub(crate) struct HostState {
    counters: Counters,
}

impl Default for HostState {
    fn default() -> Self {
        Self {
            counters: Counters::new(),
        }
    }
}

impl HostState {
    /// Tasks running now: calls in progress plus subtasks they started,
    /// in this process and in its workers.
    pub fn running_tasks(&self) -> u64 {
        self.counters.sum()
    }

    /// Counts one task as running until the guard drops.
    pub fn enter(self: &Arc<Self>) -> RunningGuard {
        counters::up(self.counters.host());
        RunningGuard(Arc::clone(self))
    }

    /// The shared counters (for worker processes).
    pub(crate) fn counters(&self) -> &Counters {
        &self.counters
    }
}

/// One running task, counted until dropped.
#[derive(Debug)]
pub(crate) struct RunningGuard(Arc<HostState>);

impl Drop for RunningGuard {
    fn drop(&mut self) {
        counters::down(self.0.counters.host());
    }
}

/// What a plugin's [`HostServices::data`] points to: the shared counters and
/// the plugin's identity, used to tag its log records.
struct PluginData {
    state: Arc<HostState>,
    plugin: String,
    version: String,
}

/// Services for one loaded plugin version.
///
/// The data behind them is leaked on purpose: a plugin may keep the handle in
/// a static or in a thread it spawned, and plugin code stays mapped for the
/// life of the process (see `docs/plugins.md`), so the data must too. It is a
/// few dozen bytes per loaded version.
pub(crate) fn services_for(state: &Arc<HostState>, plugin: &str, version: &str) -> HostServices {
    let data: &'static PluginData = Box::leak(Box::new(PluginData {
        state: Arc::clone(state),
        plugin: plugin.to_owned(),
        version: version.to_owned(),
    }));
    // SAFETY: `data` is leaked (never freed) and is what the vtable's
    // functions expect.
    unsafe { HostServices::new(data as *const PluginData as *const c_void, vtable()) }
}

const VTABLE: &WithMetadata<HostVTable> = &WithMetadata::new(HostVTable {
    running_tasks,
    subtask_enter,
    subtask_exit,
    log_enabled,
    log,
});

fn vtable() -> HostVTableRef {
    HostVTableRef(VTABLE.static_as_prefix())
}

/// # Safety
///
/// `data` must come from `services_for`: a leaked, never freed `PluginData`.
unsafe fn data<'a>(data: *const c_void) -> &'a PluginData {
    unsafe { &*(data as *const PluginData) }
}

/// Runs `f` without letting a panic unwind into the plugin that called us
/// (a panic across `extern "C"` aborts the process).
fn guarded<T>(fallback: T, f: impl FnOnce() -> T) -> T {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or(fallback)
}

unsafe extern "C" fn running_tasks(d: *const c_void) -> u64 {
    let d = unsafe { data(d) };
    guarded(0, || d.state.running_tasks())
}

unsafe extern "C" fn subtask_enter(d: *const c_void) {
    let d = unsafe { data(d) };
    counters::up(d.state.counters.host());
}

unsafe extern "C" fn subtask_exit(d: *const c_void) {
    let d = unsafe { data(d) };
    counters::down(d.state.counters.host());
}

/// The target every plugin record is emitted under: filter plugin logs with
/// `RUST_LOG=taskit::plugin=debug`, or one plugin with
/// `RUST_LOG='taskit::plugin[{plugin=demo}]=debug'`.
pub const PLUGIN_LOG_TARGET: &str = "taskit::plugin";

unsafe extern "C" fn log_enabled(_: *const c_void, level: u8) -> bool {
    // A subscriber that panics must not take the process down.
    guarded(false, || plugin_log_enabled(LogLevel::from_u8(level)))
}

unsafe extern "C" fn log(d: *const c_void, level: u8, target: RStr<'_>, message: RStr<'_>) {
    let d = unsafe { data(d) };
    guarded((), || {
        emit_plugin_log(
            &d.plugin,
            &d.version,
            LogLevel::from_u8(level),
            &target,
            &message,
        )
    })
}

/// Whether the host's subscriber wants plugin records at `level`.
pub(crate) fn plugin_log_enabled(level: LogLevel) -> bool {
    match level {
        LogLevel::Trace => tracing::enabled!(target: PLUGIN_LOG_TARGET, Level::TRACE),
        LogLevel::Debug => tracing::enabled!(target: PLUGIN_LOG_TARGET, Level::DEBUG),
        LogLevel::Info => tracing::enabled!(target: PLUGIN_LOG_TARGET, Level::INFO),
        LogLevel::Warn => tracing::enabled!(target: PLUGIN_LOG_TARGET, Level::WARN),
        LogLevel::Error => tracing::enabled!(target: PLUGIN_LOG_TARGET, Level::ERROR),
    }
}

/// Emits one record of a plugin, tagged with its name and version, under
/// [`PLUGIN_LOG_TARGET`] (wherever the plugin runs: here or in a worker).
pub(crate) fn emit_plugin_log(
    plugin: &str,
    version: &str,
    level: LogLevel,
    target: &str,
    message: &str,
) {
    macro_rules! emit {
        ($level:expr) => {
            tracing::event!(
                target: PLUGIN_LOG_TARGET,
                $level,
                plugin = %plugin,
                version = %version,
                module = %target,
                "{}",
                message
            )
        };
    }
    match level {
        LogLevel::Trace => emit!(Level::TRACE),
        LogLevel::Debug => emit!(Level::DEBUG),
        LogLevel::Info => emit!(Level::INFO),
        LogLevel::Warn => emit!(Level::WARN),
        LogLevel::Error => emit!(Level::ERROR),
    }
}

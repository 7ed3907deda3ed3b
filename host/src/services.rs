//! The host's side of [`HostServices`]: the running-task count, subtask
//! accounting and the log bridge that plugins reach through the ABI.

use std::ffi::c_void;
use std::sync::Arc;

use abi_stable::prefix_type::WithMetadata;
use abi_stable::std_types::RStr;
use taskit_plugin_api::host_side::abi::{HostServices, HostVTable, HostVTableRef, LogLevel};
use tracing::Level;

use crate::counters::{self, Counters};
use crate::text::Printable;

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

/// What a plugin reaches through its [`HostServices`], wherever it runs:
/// in this process ([`services_for`]) or in a worker process.
pub(crate) trait Services: Send + Sync + 'static {
    /// Tasks running now, host-wide.
    fn running_tasks(&self) -> u64;
    /// A task started a subtask.
    fn subtask_enter(&self);
    /// A subtask ended (never below zero).
    fn subtask_exit(&self);
    /// Whether records at `level` are wanted.
    fn log_enabled(&self, level: LogLevel) -> bool;
    /// One record of the plugin's.
    fn log(&self, level: LogLevel, target: &str, message: &str);
}

/// The handle a plugin gets for `services`.
///
/// The data behind it is leaked on purpose: a plugin may keep the handle in
/// a static or in a thread it spawned, and plugin code stays mapped for the
/// life of the process (see `docs/plugins.md`), so the data must too. It is a
/// few dozen bytes per loaded version.
pub(crate) fn leak_services<S: Services>(services: S) -> HostServices {
    let data: &'static S = Box::leak(Box::new(services));
    // SAFETY: `data` is leaked (never freed) and is what `VTableOf::<S>`'s
    // functions expect.
    unsafe { HostServices::new(data as *const S as *const c_void, VTableOf::<S>::get()) }
}

/// The vtable that calls `S`'s methods, one per `S`.
struct VTableOf<S>(std::marker::PhantomData<S>);

impl<S: Services> VTableOf<S> {
    const VTABLE: &'static WithMetadata<HostVTable> = &WithMetadata::new(HostVTable {
        running_tasks: running_tasks::<S>,
        subtask_enter: subtask_enter::<S>,
        subtask_exit: subtask_exit::<S>,
        log_enabled: log_enabled::<S>,
        log: log::<S>,
    });

    fn get() -> HostVTableRef {
        HostVTableRef(Self::VTABLE.static_as_prefix())
    }
}

/// # Safety
///
/// `d` must come from [`leak_services`] with this `S`.
unsafe fn data<'a, S>(d: *const c_void) -> &'a S {
    unsafe { &*(d as *const S) }
}

/// Runs `f` without letting a panic unwind into the plugin that called us
/// (a panic across `extern "C"` aborts the process).
fn guarded<T>(fallback: T, f: impl FnOnce() -> T) -> T {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or(fallback)
}

unsafe extern "C" fn running_tasks<S: Services>(d: *const c_void) -> u64 {
    let d = unsafe { data::<S>(d) };
    guarded(0, || d.running_tasks())
}

unsafe extern "C" fn subtask_enter<S: Services>(d: *const c_void) {
    let d = unsafe { data::<S>(d) };
    guarded((), || d.subtask_enter())
}

unsafe extern "C" fn subtask_exit<S: Services>(d: *const c_void) {
    let d = unsafe { data::<S>(d) };
    guarded((), || d.subtask_exit())
}

unsafe extern "C" fn log_enabled<S: Services>(d: *const c_void, level: u8) -> bool {
    let d = unsafe { data::<S>(d) };
    // A subscriber that panics must not take the process down.
    guarded(false, || d.log_enabled(LogLevel::from_u8(level)))
}

unsafe extern "C" fn log<S: Services>(
    d: *const c_void,
    level: u8,
    target: RStr<'_>,
    message: RStr<'_>,
) {
    let d = unsafe { data::<S>(d) };
    guarded((), || d.log(LogLevel::from_u8(level), &target, &message))
}

/// A plugin version in this process: the shared counters and the plugin's
/// identity, used to tag its log records.
struct InProcess {
    state: Arc<HostState>,
    plugin: String,
    version: String,
}

impl Services for InProcess {
    fn running_tasks(&self) -> u64 {
        self.state.running_tasks()
    }

    fn subtask_enter(&self) {
        counters::up(self.state.counters.host());
    }

    fn subtask_exit(&self) {
        counters::down(self.state.counters.host());
    }

    fn log_enabled(&self, level: LogLevel) -> bool {
        plugin_log_enabled(level)
    }

    fn log(&self, level: LogLevel, target: &str, message: &str) {
        emit_plugin_log(&self.plugin, &self.version, level, target, message);
    }
}

/// Services for one plugin version loaded in this process.
pub(crate) fn services_for(state: &Arc<HostState>, plugin: &str, version: &str) -> HostServices {
    leak_services(InProcess {
        state: Arc::clone(state),
        plugin: plugin.to_owned(),
        version: version.to_owned(),
    })
}

/// The target every plugin record is emitted under: filter plugin logs with
/// `RUST_LOG=taskit::plugin=debug`, or one plugin with
/// `RUST_LOG='taskit::plugin[{plugin=demo}]=debug'`.
pub const PLUGIN_LOG_TARGET: &str = "taskit::plugin";

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
                module = %Printable(target),
                "{}",
                // Escaped: a plugin's record is one line, whatever it holds.
                Printable(message)
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

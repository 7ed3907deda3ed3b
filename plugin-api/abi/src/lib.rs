//! The FFI-safe boundary between the TaskIt host and a plugin, and nothing
//! else.
//!
//! Everything here is `#[repr(C)]` and derives `StableAbi`, so that the host
//! can compare the layout a plugin was compiled against with its own before
//! it calls anything. Nothing else crosses the boundary: task arguments and
//! results travel as encoded bytes, errors as a type name plus JSON text.
//!
//! This crate has a version of its own, [`ABI_VERSION`], apart from the rest
//! of TaskIt: `abi_stable` records the version of the crate that defines each
//! type in its layout, so a type kept in a crate that changes for other
//! reasons (the frontend, the codecs) would refuse every deployed plugin at
//! each release. Here the version moves only when these types do.
//!
//! Plugin authors never use this crate directly: `taskit-plugin-api`'s
//! `export_plugin!` writes the plugin side, and the host's loader the other.

#![warn(missing_docs)]

use std::ffi::c_void;
use std::sync::atomic::AtomicBool;

use abi_stable::library::RootModule;
use abi_stable::sabi_types::VersionStrings;
use abi_stable::std_types::{RResult, RSlice, RStr, RString, RVec};
use abi_stable::{declare_root_module_statics, package_version_strings, StableAbi};

/// The plugin ABI version: this crate's own version, which moves only when
/// a type of this crate changes. A host accepts a plugin whose ABI has the
/// same major version (1.x); `abi_stable` then compares the layouts of every
/// type, field by field.
pub const ABI_VERSION: VersionStrings = package_version_strings!();

/// The root module every plugin exports: who it is, what it serves, and the
/// two entry points the host calls.
///
/// It is a prefix type: a later `plugin-api` may append fields, and a host
/// built against it can still load plugins that lack them.
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = PluginModRef)))]
#[sabi(missing_field(option))]
pub struct PluginMod {
    /// The plugin's name, as given to `export_plugin!`.
    pub name: RStr<'static>,
    /// The plugin's version, its Cargo package version unless overridden.
    pub version: RStr<'static>,
    /// The task ids it serves. A task's index in this slice is the `task`
    /// argument of [`PluginMod::call`].
    pub tasks: RSlice<'static, RStr<'static>>,
    /// Called once, after the layout checks and before any call, with the
    /// services the host offers this plugin version. An `RErr` refuses the
    /// load with its message.
    pub init: extern "C" fn(host: HostServices) -> RResult<(), RString>,
    /// Runs one task. Never unwinds: a panic comes back as an `RErr` whose
    /// type is `Panic`.
    #[sabi(last_prefix_field)]
    pub call: extern "C" fn(request: &CallRequest<'_>) -> RResult<RVec<u8>, RTaskError>,
}

impl RootModule for PluginModRef {
    declare_root_module_statics! {PluginModRef}
    const BASE_NAME: &'static str = "taskit_plugin";
    const NAME: &'static str = "taskit plugin";
    const VERSION_STRINGS: VersionStrings = ABI_VERSION;
}

/// One call into a plugin.
#[repr(C)]
#[derive(StableAbi)]
pub struct CallRequest<'a> {
    /// Index into [`PluginMod::tasks`].
    pub task: usize,
    /// Name of the codec of `args` and of the result (`json`, `bincode`).
    pub codec: RStr<'a>,
    /// The positional arguments, encoded with `codec` as a sequence.
    pub args: RSlice<'a, u8>,
    /// The keyword arguments as a JSON object, or empty for none.
    pub kwargs: RSlice<'a, u8>,
    /// Set by the host when it wants the call to give up early (drain,
    /// timeout). Tasks read it through their context.
    pub cancelled: &'a AtomicBool,
    /// The host's services, valid for as long as the plugin stays loaded.
    pub host: HostServices,
}

/// A remote error as it crosses the boundary: TaskIt's `{type, args}`.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq, Eq)]
pub struct RTaskError {
    /// The error's type, e.g. `Panic`, `TypeError`, `AssertionError`.
    pub kind: RString,
    /// The error's arguments as the text of a JSON array.
    pub args_json: RString,
}

/// The host's side of the boundary: counters and logging, reached through
/// plain function pointers.
///
/// Only [`HostServices::new`] makes one, and its contract is that `data`
/// outlives every use a plugin can make of it (the host never frees it while
/// the plugin is mapped), so a plugin may keep a copy in a static or move one
/// into a thread it spawns, and the safe methods below are sound.
#[repr(C)]
#[derive(StableAbi, Copy, Clone)]
pub struct HostServices {
    data: *const c_void,
    vtable: HostVTableRef,
}

// SAFETY: `data` points to a host structure that is itself `Send + Sync`
// (atomics and immutable strings) and is never freed while a plugin can see
// it (the contract of `HostServices::new`).
unsafe impl Send for HostServices {}
unsafe impl Sync for HostServices {}

impl HostServices {
    /// Services whose functions are `vtable`'s, called with `data`.
    ///
    /// # Safety
    ///
    /// `data` must be what `vtable`'s functions expect, and stay valid for
    /// as long as any copy of the returned value may be used: in practice
    /// for the rest of the process, since plugins keep copies.
    pub unsafe fn new(data: *const c_void, vtable: HostVTableRef) -> Self {
        Self { data, vtable }
    }

    /// Tasks running in the host right now, subtasks included.
    pub fn running_tasks(&self) -> u64 {
        // SAFETY: the contract of `new`.
        unsafe { (self.vtable.running_tasks())(self.data) }
    }

    /// Counts one more piece of background work as a running task.
    pub fn subtask_enter(&self) {
        // SAFETY: the contract of `new`.
        unsafe { (self.vtable.subtask_enter())(self.data) }
    }

    /// Ends what [`subtask_enter`](Self::subtask_enter) began.
    pub fn subtask_exit(&self) {
        // SAFETY: the contract of `new`.
        unsafe { (self.vtable.subtask_exit())(self.data) }
    }

    /// Whether the host would keep a record at `level`.
    pub fn log_enabled(&self, level: LogLevel) -> bool {
        // SAFETY: the contract of `new`.
        unsafe { (self.vtable.log_enabled())(self.data, level as u8) }
    }

    /// Hands one log record to the host.
    pub fn log(&self, level: LogLevel, target: &str, message: &str) {
        // SAFETY: the contract of `new`.
        unsafe {
            (self.vtable.log())(
                self.data,
                level as u8,
                RStr::from_str(target),
                RStr::from_str(message),
            )
        }
    }
}

/// Function table behind [`HostServices`]. A prefix type, so the host can
/// grow it without breaking plugins built earlier. Every function must be
/// called with the `data` pointer it was paired with.
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = HostVTableRef)))]
#[sabi(missing_field(option))]
pub struct HostVTable {
    /// Tasks running in the host right now, subtasks included.
    pub running_tasks: unsafe extern "C" fn(data: *const c_void) -> u64,
    /// Counts one more piece of background work as a running task.
    pub subtask_enter: unsafe extern "C" fn(data: *const c_void),
    /// Ends what `subtask_enter` began.
    pub subtask_exit: unsafe extern "C" fn(data: *const c_void),
    /// Whether the host would keep a record at this level (see [`LogLevel`]).
    pub log_enabled: unsafe extern "C" fn(data: *const c_void, level: u8) -> bool,
    /// Hands one log record to the host, which tags it with the plugin's name
    /// and version.
    #[sabi(last_prefix_field)]
    pub log:
        unsafe extern "C" fn(data: *const c_void, level: u8, target: RStr<'_>, message: RStr<'_>),
}

/// Log levels as they cross the boundary (a plain `u8`, so a level added
/// later cannot be undefined behaviour on the other side).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
#[allow(missing_docs)]
pub enum LogLevel {
    Trace = 0,
    Debug = 1,
    Info = 2,
    Warn = 3,
    Error = 4,
}

impl LogLevel {
    /// Reads a level sent by the other side; unknown values are treated as
    /// `Error`, the level least likely to be lost.
    pub fn from_u8(level: u8) -> Self {
        match level {
            0 => Self::Trace,
            1 => Self::Debug,
            2 => Self::Info,
            3 => Self::Warn,
            _ => Self::Error,
        }
    }
}

/// The symbol `#[export_root_module]` would give the root module loader.
/// `export_plugin!` writes it itself so that plugins need not depend on
/// `abi_stable` directly; a unit test keeps the two in step.
#[doc(hidden)]
#[macro_export]
macro_rules! __root_module_symbol {
    ($item:item) => {
        #[export_name = "_1as_0lib_1header_0root_bmodule_bloader"]
        $item
    };
}

#[cfg(test)]
mod tests {
    #[test]
    fn root_module_symbol_matches_abi_stable() {
        assert_eq!(
            abi_stable::library::ROOT_MODULE_LOADER_NAME,
            "_1as_0lib_1header_0root_bmodule_bloader"
        );
    }
}

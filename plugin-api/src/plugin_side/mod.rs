//! The plugin side of the boundary: what [`export_plugin!`] expands to calls
//! into here. Every `extern "C"` entry point catches panics before they can
//! reach the boundary.

mod log_bridge;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::OnceLock;

use abi_stable::prefix_type::PrefixTypeTrait;
use abi_stable::std_types::{RResult, RSlice, RStr, RString, RVec};
use taskit_plugin_abi::{CallRequest, HostServices, LogLevel, PluginMod, PluginModRef, RTaskError};

use crate::codec::CodecKind;
use crate::error::{kind, TaskError};
use crate::task::context::TaskContext;
use crate::task::run::{run_task, take_panic_message};
use crate::task::Invocation;

/// Exports a plugin: its name, optionally its version (default: the crate's
/// Cargo version) and an init function, and a map from task ids to
/// functions (see [`TaskFn`](crate::TaskFn) for the shapes accepted).
///
/// ```no_run
/// fn add(x: i64, y: i64) -> i64 { x + y }
///
/// taskit_plugin_api::export_plugin! {
///     name: "demo",
///     tasks: {
///         "add" => add,
///         "shout" => |s: String| s.to_uppercase(),
///     }
/// }
/// ```
///
/// Invoke it once, in a crate built with `crate-type = ["cdylib"]`.
#[macro_export]
macro_rules! export_plugin {
    (
        name: $name:expr,
        $(version: $version:expr,)?
        $(init: $init:expr,)?
        tasks: { $($id:literal => $func:expr),* $(,)? } $(,)?
    ) => {
        const _: () = {
            use $crate::__private as __p;

            static __TASK_IDS: &[__p::RStr<'static>] = &[$(__p::RStr::from_str($id)),*];
            static __TASKS: &[__p::RawTask] = &[$(
                |ctx, call, codec| __p::invoke(&$func, ctx, call, codec)
            ),*];

            extern "C" fn __call(
                request: &__p::CallRequest<'_>,
            ) -> __p::RResult<__p::RVec<u8>, __p::RTaskError> {
                __p::dispatch(__TASK_IDS, __TASKS, request)
            }

            extern "C" fn __init(host: __p::HostServices) -> __p::RResult<(), __p::RString> {
                let user: ::std::option::Option<__p::UserInit> = None $(.or(Some($init)))?;
                __p::init(host, user)
            }

            fn __root_module() -> __p::PluginModRef {
                let version: &'static str = {
                    let _version: &'static str = env!("CARGO_PKG_VERSION");
                    $(let _version: &'static str = $version;)?
                    _version
                };
                __p::root_module($name, version, __TASK_IDS, __init, __call)
            }

            extern "C" fn __root_module_loader() -> __p::RootModuleResult {
                __p::call_root_module_loader(__root_module)
            }

            __p::__root_module_symbol! {
                pub static __TASKIT_ROOT_MODULE: __p::LibHeader = unsafe {
                    __p::LibHeader::from_constructor::<__p::PluginModRef>(
                        __root_module_loader,
                        __p::CheckTypeLayout::Yes,
                    )
                };
            }
        };
    };
}

/// One task, with its function's shape erased: what the macro stores.
pub type RawTask = fn(&TaskContext<'_>, &Invocation<'_>, CodecKind) -> Result<Vec<u8>, TaskError>;

/// A plugin's own start-up code; an `Err` refuses the load with its message.
pub type UserInit = fn() -> Result<(), String>;

pub use crate::task::run::invoke;

/// The body of a plugin's `call` entry point.
pub fn dispatch(
    ids: &[RStr<'static>],
    tasks: &[RawTask],
    request: &CallRequest<'_>,
) -> RResult<RVec<u8>, RTaskError> {
    // Even the lookups run under a catch: nothing may unwind into the host.
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        let (Some(task), Some(id)) = (tasks.get(request.task), ids.get(request.task)) else {
            return Err(TaskError::msg(
                kind::UNKNOWN_TASK,
                format!("task index {}", request.task),
            ));
        };
        let codec = CodecKind::from_name(request.codec.as_str())
            .ok_or_else(|| TaskError::msg(kind::UNSUPPORTED_CODEC, request.codec.as_str()))?;
        let call = Invocation {
            task: id.as_str(),
            args: request.args.as_slice(),
            kwargs: request.kwargs.as_slice(),
        };
        run_task(task, request.host, request.cancelled, &call, codec)
    }));
    let outcome = outcome
        .unwrap_or_else(|payload| Err(TaskError::msg(kind::PANIC, take_panic_message(payload))));
    match outcome {
        Ok(bytes) => RResult::ROk(RVec::from(bytes)),
        Err(err) => RResult::RErr(err.into_ffi()),
    }
}

/// The services of the host this copy of the plugin was loaded by. Statics
/// are per loaded copy, so each version of a plugin has its own.
static HOST: OnceLock<HostServices> = OnceLock::new();

/// The host this plugin runs in, once `init` has run.
pub(crate) fn host() -> Option<&'static HostServices> {
    HOST.get()
}

/// The body of a plugin's `init` entry point.
pub fn init(host: HostServices, user: Option<UserInit>) -> RResult<(), RString> {
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        let _ = HOST.set(host);
        log_bridge::install(host);
        std::panic::set_hook(Box::new(|info| {
            log_bridge::send(LogLevel::Error, "panic", &info.to_string());
        }));
        match user {
            Some(f) => f(),
            None => Ok(()),
        }
    }));
    match outcome {
        Ok(Ok(())) => RResult::ROk(()),
        Ok(Err(message)) => RResult::RErr(format!("init failed: {message}").into()),
        Err(payload) => {
            RResult::RErr(format!("init panicked: {}", take_panic_message(payload)).into())
        }
    }
}

/// Builds the root module (once per loaded copy).
pub fn root_module(
    name: &'static str,
    version: &'static str,
    ids: &'static [RStr<'static>],
    init: extern "C" fn(HostServices) -> RResult<(), RString>,
    call: extern "C" fn(&CallRequest<'_>) -> RResult<RVec<u8>, RTaskError>,
) -> PluginModRef {
    PluginMod {
        name: RStr::from_str(name),
        version: RStr::from_str(version),
        tasks: RSlice::from_slice(ids),
        init,
        call,
    }
    .leak_into_prefix()
}

/// What `#[export_root_module]` would call; re-exported so plugins need not
/// depend on `abi_stable` themselves.
pub fn call_root_module_loader(f: fn() -> PluginModRef) -> abi_stable::library::RootModuleResult {
    abi_stable::library::__call_root_module_loader(f)
}

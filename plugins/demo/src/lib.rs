//! The demo plugin: the tasks TaskIt's examples call, plus a few that show
//! keyword arguments, the task context and logging.
//!
//! Build it with `cargo build -p taskit-demo` and drop
//! `target/debug/libtaskit_demo.so` into the host's plugins directory.

use std::time::Duration;

use serde::Deserialize;
use serde_json::json;
use taskit_plugin_api::{export_plugin, Kw, TaskContext, TaskError};

/// `add(x, y)`: the sum of two 64-bit integers; `OverflowError` if it
/// does not fit (never a wrapped result).
fn add(x: i64, y: i64) -> Result<i64, TaskError> {
    x.checked_add(y).ok_or_else(|| {
        TaskError::msg(
            "OverflowError",
            format!("{x} + {y} does not fit in 64 bits"),
        )
    })
}

/// `echo(s)`: its argument, unchanged.
fn echo(s: String) -> String {
    s
}

/// The longest any demo task sleeps.
const MAX_WAIT_MS: u64 = 1_000;

/// `wait-double(n)`: sleeps `n` milliseconds (at most a second), then
/// returns `2n` (`OverflowError` if it does not fit).
fn wait_double(n: u64) -> Result<u64, TaskError> {
    std::thread::sleep(Duration::from_millis(n.min(MAX_WAIT_MS)));
    n.checked_mul(2)
        .ok_or_else(|| TaskError::msg("OverflowError", format!("2 * {n} does not fit in 64 bits")))
}

/// `get-error()`: always fails, with an `AssertionError` as TaskIt's demo did.
fn get_error() -> Result<(), TaskError> {
    Err(TaskError::new(
        "AssertionError",
        vec![json!("this task always fails")],
    ))
}

/// `version()`: the plugin's Cargo version.
fn version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}

/// `wait-version(ms)`: sleeps `ms` milliseconds (at most a second), then
/// returns the plugin's version, showing which version served a call that
/// was running while the plugin was replaced.
fn wait_version(ms: u64) -> &'static str {
    std::thread::sleep(Duration::from_millis(ms.min(MAX_WAIT_MS)));
    version()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GreetOptions {
    #[serde(default = "default_greeting")]
    greeting: String,
    #[serde(default)]
    excited: bool,
}

fn default_greeting() -> String {
    "Hello".to_owned()
}

/// `greet(name, greeting="Hello", excited=false)`: keyword arguments.
fn greet(name: String, Kw(opts): Kw<GreetOptions>) -> String {
    let end = if opts.excited { "!" } else { "." };
    format!("{}, {name}{end}", opts.greeting)
}

/// `running()`: the host's running-task count, as seen from inside a task
/// (this call included).
fn running(ctx: &TaskContext<'_>) -> u64 {
    ctx.running_tasks()
}

/// `background(ms)`: starts `ms` milliseconds (at most a second) of work on
/// another thread and returns at once; the host counts that work as a running
/// task until it ends.
fn background(ctx: &TaskContext<'_>, ms: u64) -> bool {
    let subtask = ctx.subtask();
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(ms.min(MAX_WAIT_MS)));
        drop(subtask);
    });
    true
}

/// `log(message)`: logs `message` at INFO through the host.
fn log(message: String) {
    tracing::info!(%message, "demo task says");
}

export_plugin! {
    name: "demo",
    tasks: {
        "add" => add,
        "echo" => echo,
        "wait-double" => wait_double,
        "get-error" => get_error,
        "version" => version,
        "wait-version" => wait_version,
        "greet" => greet,
        "running" => running,
        "background" => background,
        "log" => log,
    }
}

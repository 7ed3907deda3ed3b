//! A worker: a program serving its own functions by id, with the admin
//! signals (`<stop>`, `<kill>`, `<status>`, …). Run it, then `main`:
//!
//! ```sh
//! cargo run --example worker            # listens on 127.0.0.1:54543
//! cargo run --example main              # calls it, then stops it
//! ```
//!
//! The functions are ordinary Rust: nothing about them knows it is a task.

use std::sync::Arc;
use std::time::Duration;

use taskit_host::{Registry, Server, ServerConfig};
use taskit_plugin_api::TaskError;

fn add(x: i64, y: i64) -> i64 {
    x + y
}

fn echo(s: String) -> String {
    s
}

fn wait_double(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms.min(1000)));
    ms * 2
}

fn get_error() -> Result<(), TaskError> {
    Err(TaskError::msg("AssertionError", "this task always fails"))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:54543".into());
    let registry = Arc::new(Registry::new());
    registry.register("add", add)?;
    registry.register("echo", echo)?;
    registry.register("wait-double", wait_double)?;
    registry.register("get-error", get_error)?;
    let config = ServerConfig {
        binds: vec![addr.parse()?],
        ..ServerConfig::default()
    };
    let mut server = Server::start(config, registry).await?;
    println!("worker listening on {}", server.local_addrs()[0]);
    let exit = server.wait().await;
    println!("worker exiting: {exit:?}");
    Ok(())
}

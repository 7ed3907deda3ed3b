//! Loads the plugins in a directory in-process and calls a task, the way the
//! host does before any network is involved.
//!
//! ```sh
//! cargo build -p taskit-demo
//! mkdir -p plugins.d && cp target/debug/libtaskit_demo.so plugins.d/demo.so
//! cargo run --example load_and_call -- plugins.d add 4 4
//! ```

use taskit_host::{HostConfig, PluginHost, TaskCall};
use taskit_plugin_api::CodecKind;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: load_and_call PLUGINS_DIR TASK [JSON_ARG...]";
    let dir = args.next().ok_or(usage)?;
    let task = args.next().ok_or(usage)?;
    let values = args
        .map(|a| serde_json::from_str(&a))
        .collect::<Result<Vec<serde_json::Value>, _>>()?;

    let host = PluginHost::start(HostConfig::new(dir))?;
    for plugin in host.registry().plugins() {
        println!(
            "{} {} serves {}",
            plugin.name,
            plugin.version,
            plugin.tasks.join(", ")
        );
    }
    let call = TaskCall::with_args(&task, CodecKind::Json, &values)?;
    match host.registry().call(&call) {
        Ok(reply) => println!("{task} -> {}", String::from_utf8_lossy(&reply)),
        Err(err) => {
            println!("{task} failed: {err}");
            std::process::exit(1);
        }
    }
    Ok(())
}

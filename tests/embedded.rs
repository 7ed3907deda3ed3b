//! A Rust program serving its own functions, beside plugins, with the same
//! server: the embedded backend.

use std::sync::Arc;

use serde::Deserialize;
use taskit_harness::*;
use taskit_host::{HostConfig, PluginHost, RegisterError, Registry, Server, ServerConfig};
use taskit_plugin_api::frontend::{BackendAddr, FrontEnd};
use taskit_plugin_api::{CodecKind, Kw, TaskContext, TaskError};

#[derive(Deserialize)]
struct Scale {
    #[serde(default = "one")]
    factor: i64,
}

fn one() -> i64 {
    1
}

#[test]
fn own_functions_and_plugins_are_served_together() {
    let dir = demo_dir("embedded");
    let registry = Arc::new(Registry::new());
    // Ordinary functions and closures, unchanged.
    registry.register("mul", |x: i64, y: i64| x * y).unwrap();
    registry
        .register("scale", |x: i64, Kw(s): Kw<Scale>| x * s.factor)
        .unwrap();
    registry
        .register("load", |ctx: &TaskContext<'_>| ctx.running_tasks())
        .unwrap();
    registry
        .register("checked", |x: i64| -> Result<i64, TaskError> {
            if x < 0 {
                return Err(TaskError::msg("ValueError", "negative"));
            }
            Ok(x)
        })
        .unwrap();
    // It wins over the demo plugin's `add`.
    registry.register("add", |_x: i64, _y: i64| 0).unwrap();
    assert!(matches!(
        registry.register("mul", || 1),
        Err(RegisterError::Duplicate(_))
    ));
    assert!(matches!(
        registry.register("<stop>", || 1),
        Err(RegisterError::InvalidId(_))
    ));

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let plugins =
            PluginHost::start_with(HostConfig::new(dir.path()), Arc::clone(&registry)).unwrap();
        let config = ServerConfig {
            binds: vec!["127.0.0.1:0".parse().unwrap()],
            ..ServerConfig::default()
        };
        let mut server = Server::start(config, plugins).await.unwrap();
        let addr = server.local_addrs()[0];
        for backend in [
            BackendAddr::from(addr),
            BackendAddr::from(addr).codec(CodecKind::Bincode),
            BackendAddr::from(addr).taskit4(),
        ] {
            let fe = FrontEnd::new([backend]);
            assert_eq!(fe.call::<i64>("mul", &(6i64, 7i64)).await.unwrap(), 42);
            let opts = taskit_plugin_api::frontend::CallOptions::default().kw("factor", 3);
            assert_eq!(
                fe.call_with::<i64>("scale", &(5i64,), &opts).await.unwrap(),
                15
            );
            assert_eq!(fe.call::<u64>("load", &()).await.unwrap(), 1);
            let err = fe.call::<i64>("checked", &(-1i64,)).await.unwrap_err();
            assert_eq!(err.remote_type(), Some("ValueError"));
            assert_eq!(
                fe.call::<i64>("add", &(4i64, 4i64)).await.unwrap(),
                0,
                "the program's own `add` wins"
            );
            assert_eq!(
                fe.call::<u64>("wait-double", &(1u64,)).await.unwrap(),
                2,
                "plugin tasks are served too"
            );
            let plugins = fe.tasks(addr).await.unwrap();
            assert_eq!(plugins[0].name, "embedded");
            assert_eq!(
                plugins[0].tasks,
                vec!["add", "checked", "load", "mul", "scale"]
            );
            assert_eq!(plugins[1].name, "demo");
            assert!(!plugins[1].tasks.contains(&"add".to_owned()));
        }
        server.stop();
        assert_eq!(server.wait().await, taskit_host::Exit::Stopped);
    });
}

//! A plugin host inside the test process, and calls into its registry.

use std::path::Path;

use serde::de::DeserializeOwned;
use taskit_host::{HostConfig, PluginHost, Registry, TaskCall};
use taskit_plugin_api::{Codec, CodecKind, EncodeArgs, Json, TaskError};

/// A plugin host on `dir` with a private shadow directory.
pub fn start_host(dir: &Path) -> PluginHost {
    PluginHost::start(HostConfig::new(dir)).expect("start plugin host")
}

/// Calls `task` with JSON-encoded positional arguments and decodes the result.
pub fn call<T: DeserializeOwned>(
    registry: &Registry,
    task: &str,
    args: &impl EncodeArgs,
) -> Result<T, TaskError> {
    call_with::<Json, T>(registry, task, args, b"")
}

/// Calls `task` with codec `C` and keyword arguments given as JSON text.
pub fn call_with<C: Codec, T: DeserializeOwned>(
    registry: &Registry,
    task: &str,
    args: &impl EncodeArgs,
    kwargs: &[u8],
) -> Result<T, TaskError> {
    let codec = CodecKind::from_name(C::NAME).expect("built-in codec");
    let bytes = codec.encode_args(args).expect("encode args");
    let call = TaskCall::new(task, codec, bytes, kwargs.to_vec());
    let reply = registry.call(&call)?;
    Ok(C::decode(&reply).expect("decode reply"))
}

//! The TaskIt host: loads task plugins (`.so` files exporting
//! `taskit_plugin_api::export_plugin!`), keeps them in step with a watched
//! directory, and routes calls by task id.
//!
//! - [`loader`]: one plugin version, from file to checked root module.
//! - [`registry`]: task id → version, swapped atomically on reload.
//! - [`watcher`]: the directory, watched; [`PluginHost`] ties it together.
//! - [`services`]: what plugins can ask of the host across the ABI.

mod elf;
pub mod loader;
pub mod registry;
pub mod services;
pub mod watcher;

pub use loader::{LoadError, PluginVersion};
pub use registry::{Conflict, PluginInfo, RegisterError, Registry, Resolved};
pub use watcher::{HostConfig, PluginEvent, PluginHost, ReloadSummary, StartError};
pub mod server;

pub use server::{Exit, Server, ServerConfig, ServerHandle};

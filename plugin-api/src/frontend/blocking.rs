//! The blocking facade: TaskIt's `work`, `callback` and `ignore` for
//! programs that are not async.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;

use super::{BackendAddr, CallOptions, FrontEnd, FrontendConfig, FrontendError};
use crate::codec::args::EncodeArgs;
use crate::on_error::OnError;
use crate::wire::admin::{PluginSummary, ReloadReport, Reply, Signal};

/// A [`FrontEnd`] with its own small runtime, for plain threads. Do not
/// call its methods from inside async code (use the `FrontEnd` there).
pub struct BlockingFrontEnd {
    frontend: FrontEnd,
    runtime: tokio::runtime::Runtime,
    /// `callback` and `ignore` calls whose callbacks have not finished.
    outstanding: Arc<AtomicUsize>,
}

impl BlockingFrontEnd {
    /// A frontend for `backends` (see [`FrontEnd::new`]).
    pub fn new<B: Into<BackendAddr>>(
        backends: impl IntoIterator<Item = B>,
    ) -> std::io::Result<Self> {
        Self::with_config(backends, FrontendConfig::default())
    }

    /// As [`new`](Self::new), with settings.
    pub fn with_config<B: Into<BackendAddr>>(
        backends: impl IntoIterator<Item = B>,
        config: FrontendConfig,
    ) -> std::io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("taskit-frontend")
            .enable_all()
            .build()?;
        Ok(Self {
            frontend: FrontEnd::with_config(backends, config),
            runtime,
            outstanding: Arc::default(),
        })
    }

    /// The async frontend inside, sharing connections and counts.
    pub fn frontend(&self) -> &FrontEnd {
        &self.frontend
    }

    /// Calls `task` and waits for its result (TaskIt's `work`).
    pub fn work<R: DeserializeOwned>(
        &self,
        task: &str,
        args: &impl EncodeArgs,
    ) -> Result<R, FrontendError> {
        self.runtime.block_on(self.frontend.call(task, args))
    }

    /// `work` with keyword arguments and a timeout.
    pub fn work_with<R: DeserializeOwned>(
        &self,
        task: &str,
        args: &impl EncodeArgs,
        options: &CallOptions,
    ) -> Result<R, FrontendError> {
        self.runtime
            .block_on(self.frontend.call_with(task, args, options))
    }

    /// Calls `task` without waiting: `on_ok` gets the result, `on_error`
    /// decides what happens to an error; both run on another thread.
    pub fn callback<R, A>(
        &self,
        task: &str,
        args: A,
        on_ok: impl FnOnce(R) + Send + 'static,
        on_error: OnError<FrontendError>,
    ) where
        R: DeserializeOwned + Send + 'static,
        A: EncodeArgs + Send + Sync + 'static,
    {
        self.callback_with(task, args, CallOptions::default(), on_ok, on_error)
    }

    /// `callback` with keyword arguments and a timeout.
    pub fn callback_with<R, A>(
        &self,
        task: &str,
        args: A,
        options: CallOptions,
        on_ok: impl FnOnce(R) + Send + 'static,
        on_error: OnError<FrontendError>,
    ) where
        R: DeserializeOwned + Send + 'static,
        A: EncodeArgs + Send + Sync + 'static,
    {
        let frontend = self.frontend.clone();
        let task = task.to_owned();
        let outstanding = Arc::clone(&self.outstanding);
        outstanding.fetch_add(1, Ordering::AcqRel);
        self.runtime.spawn(async move {
            let result = frontend.call_with::<R>(&task, &args, &options).await;
            // Callbacks may block: keep them off the async workers.
            let _ = tokio::task::spawn_blocking(move || match result {
                Ok(value) => on_ok(value),
                Err(err) => on_error.deliver(&task, err),
            })
            .await;
            outstanding.fetch_sub(1, Ordering::AcqRel);
        });
    }

    /// Calls `task` and forgets it: result and error are dropped.
    pub fn ignore<A: EncodeArgs + Send + Sync + 'static>(&self, task: &str, args: A) {
        self.callback::<serde::de::IgnoredAny, A>(task, args, |_| {}, OnError::Silence)
    }

    /// See [`FrontEnd::get_tasks`].
    pub fn get_tasks(&self, backend: impl Into<BackendAddr>) -> Result<String, FrontendError> {
        self.runtime.block_on(self.frontend.get_tasks(backend))
    }

    /// See [`FrontEnd::send_stop`].
    pub fn send_stop(&self, backend: impl Into<BackendAddr>) -> Result<(), FrontendError> {
        self.runtime.block_on(self.frontend.send_stop(backend))
    }

    /// See [`FrontEnd::send_kill`].
    pub fn send_kill(&self, backend: impl Into<BackendAddr>) -> Result<(), FrontendError> {
        self.runtime.block_on(self.frontend.send_kill(backend))
    }

    /// See [`FrontEnd::tasks`].
    pub fn tasks(
        &self,
        backend: impl Into<BackendAddr>,
    ) -> Result<Vec<PluginSummary>, FrontendError> {
        self.runtime.block_on(self.frontend.tasks(backend))
    }

    /// See [`FrontEnd::reload`].
    pub fn reload(&self, backend: impl Into<BackendAddr>) -> Result<ReloadReport, FrontendError> {
        self.runtime.block_on(self.frontend.reload(backend))
    }

    /// See [`FrontEnd::send_signal`].
    pub fn send_signal(
        &self,
        backend: impl Into<BackendAddr>,
        signal: Signal,
    ) -> Result<Reply, FrontendError> {
        self.runtime
            .block_on(self.frontend.send_signal(backend, signal))
    }

    /// Waits up to `timeout` for calls started with `callback` and `ignore`
    /// to finish, their callbacks included. True if they all did.
    pub fn wait_idle(&self, timeout: Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        while self.outstanding.load(Ordering::Acquire) > 0 {
            if std::time::Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        true
    }
}

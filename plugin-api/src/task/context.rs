//! What a task can ask of the host it runs in: TaskIt's "pass the backend",
//! made safe to cross a plugin boundary.

use std::sync::atomic::{AtomicBool, Ordering};

use taskit_plugin_abi::HostServices;

/// Handed to a task that takes `&TaskContext` as its first parameter.
pub struct TaskContext<'a> {
    host: HostServices,
    cancelled: &'a AtomicBool,
}

impl<'a> TaskContext<'a> {
    /// A context for one call ([`run_task`](super::run::run_task) makes it).
    pub(crate) fn new(host: HostServices, cancelled: &'a AtomicBool) -> Self {
        Self { host, cancelled }
    }

    /// Tasks running in the host right now, this one and subtasks included.
    pub fn running_tasks(&self) -> u64 {
        self.host.running_tasks()
    }

    /// True once the host wants this call to end early (it is draining, or
    /// the caller gave up). A long task should check it between steps.
    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Relaxed)
    }

    /// Counts background work as a running task until the returned guard is
    /// dropped, so the host's task count includes it and a draining host
    /// waits for it. Move the guard into the thread doing the work.
    pub fn subtask(&self) -> Subtask {
        self.host.subtask_enter();
        Subtask { host: self.host }
    }
}

/// A running piece of background work, counted by the host until dropped.
#[must_use = "the subtask ends when this guard is dropped"]
pub struct Subtask {
    host: HostServices,
}

impl Drop for Subtask {
    fn drop(&mut self) {
        self.host.subtask_exit();
    }
}

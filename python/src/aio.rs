//! Calls awaited by asyncio.
//!
//! A call's reply arrives on a runtime thread, which must not wait for the
//! GIL. It is queued here instead, and the event loop is woken through an
//! eventfd it watches (`loop.add_reader`): once per batch, not per reply.
//! The loop's thread then sets the futures' results, holding the GIL
//! anyway.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::{Arc, Mutex, PoisonError};

use pyo3::exceptions::PyOSError;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyWeakrefReference;
use serde_json::Value;
use taskit_plugin_api::frontend::FrontendError;

use crate::{convert, errors};

/// A reply for a future of one event loop.
struct Done {
    /// Weakly: a reply must not keep a future nobody awaits, nor through
    /// it a closed loop, alive.
    future: Py<PyWeakrefReference>,
    result: Result<Value, FrontendError>,
}

/// The replies waiting for one event loop, and its wake-up.
pub struct Completions {
    queue: Mutex<Vec<Done>>,
    wake: OwnedFd,
}

impl Completions {
    fn new() -> std::io::Result<Self> {
        // SAFETY: eventfd has no memory preconditions; the result is checked.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Self {
            queue: Mutex::new(Vec::new()),
            // SAFETY: a new descriptor, owned by nothing else.
            wake: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    /// Queues a reply; wakes the loop if the queue was empty (a loop with
    /// replies queued has been woken already and not drained yet).
    pub fn push(&self, future: Py<PyWeakrefReference>, result: Result<Value, FrontendError>) {
        let mut queue = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        let first = queue.is_empty();
        queue.push(Done { future, result });
        drop(queue);
        if first {
            let one: u64 = 1;
            // SAFETY: writes 8 bytes from a live u64 to our own descriptor.
            // A full counter (EAGAIN) means the loop is woken already.
            unsafe { libc::write(self.wake.as_raw_fd(), (&one as *const u64).cast(), 8) };
        }
    }
}

/// The bridge between the runtime and one event loop.
#[pyclass(frozen, module = "taskit_native._native")]
pub struct LoopBridge {
    pub completions: Arc<Completions>,
    /// The loop, weakly: a bridge must not keep a closed loop alive.
    event_loop: Py<PyWeakrefReference>,
}

#[pymethods]
impl LoopBridge {
    /// The eventfd the loop watches.
    fn fileno(&self) -> i32 {
        self.completions.wake.as_raw_fd()
    }

    /// Sets the results of the futures whose replies arrived (the loop
    /// calls it when the eventfd is readable).
    fn drain(&self, py: Python<'_>) -> PyResult<()> {
        let mut count = [0u8; 8];
        // SAFETY: reads at most 8 bytes into a local buffer; EAGAIN (no
        // wake pending) is fine.
        unsafe { libc::read(self.fileno(), count.as_mut_ptr().cast(), 8) };
        let done = std::mem::take(
            &mut *self
                .completions
                .queue
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        for Done { future, result } in done {
            // Gone: nobody awaited it (and its loop may be gone too).
            let Some(future) = future.bind(py).upgrade() else {
                continue;
            };
            let future = &future;
            let value = result
                .map_err(|err| errors::to_pyerr(py, err))
                .and_then(|value| convert::to_py(py, &value));
            let outcome = match value {
                Ok(value) => future.call_method1(pyo3::intern!(py, "set_result"), (value,)),
                // The call's error, or the reply's conversion failing.
                Err(err) => {
                    future.call_method1(pyo3::intern!(py, "set_exception"), (err.into_value(py),))
                }
            };
            if let Err(err) = outcome {
                // Cancelled meanwhile (InvalidStateError): nobody waits for
                // it. Anything else is reported; the other futures are set.
                let cancelled = future
                    .call_method0(pyo3::intern!(py, "cancelled"))
                    .and_then(|c| c.is_truthy())
                    .unwrap_or(false);
                if !cancelled {
                    err.write_unraisable(py, Some(future));
                }
            }
        }
        Ok(())
    }

    fn __repr__(&self, py: Python<'_>) -> String {
        let alive = self.event_loop.bind(py).upgrade().is_some();
        format!("<LoopBridge fd={} loop_alive={alive}>", self.fileno())
    }
}

/// `asyncio.get_running_loop`.
fn get_running_loop(py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
    static GET: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    GET.import(py, "asyncio", "get_running_loop")?.call0()
}

/// The most recent bridge: found again without a dict lookup while one
/// loop makes the calls. (Never locked across a call into Python.)
static LAST: Mutex<Option<Py<LoopBridge>>> = Mutex::new(None);

/// The running loop's bridge, and a new future of that loop.
pub fn running_bridge(py: Python<'_>) -> PyResult<(Bound<'_, LoopBridge>, Bound<'_, PyAny>)> {
    let event_loop = get_running_loop(py)?;
    let last = LAST
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .as_ref()
        .map(|b| b.clone_ref(py));
    let bridge = match last {
        Some(bridge)
            if bridge
                .get()
                .event_loop
                .bind(py)
                .upgrade()
                .is_some_and(|l| l.is(&event_loop)) =>
        {
            bridge.into_bound(py)
        }
        _ => {
            let bridge = bridge_for(py, &event_loop)?;
            let previous = LAST
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .replace(bridge.clone().unbind());
            drop(previous);
            bridge
        }
    };
    let future = event_loop.call_method0(pyo3::intern!(py, "create_future"))?;
    Ok((bridge, future))
}

/// The loop's bridge, made and registered with the loop on its first call.
fn bridge_for<'py>(
    py: Python<'py>,
    event_loop: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, LoopBridge>> {
    static BRIDGES: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    let bridges = BRIDGES
        .get_or_try_init(py, || -> PyResult<_> {
            Ok(py
                .import("weakref")?
                .getattr("WeakKeyDictionary")?
                .call0()?
                .unbind())
        })?
        .bind(py);
    if let Ok(found) = bridges
        .call_method1("get", (event_loop,))?
        .cast_into::<LoopBridge>()
    {
        return Ok(found);
    }
    let completions = Completions::new()
        .map_err(|e| PyOSError::new_err(format!("cannot make an eventfd: {e}")))?;
    let bridge = Bound::new(
        py,
        LoopBridge {
            completions: Arc::new(completions),
            event_loop: PyWeakrefReference::new(event_loop)?.unbind(),
        },
    )?;
    event_loop.call_method1(
        "add_reader",
        (bridge.get().fileno(), bridge.getattr("drain")?),
    )?;
    bridges.set_item(event_loop, &bridge)?;
    Ok(bridge)
}

//! `taskit_native`: TaskIt 4.0's `FrontEnd` for Python, on the native
//! protocol, wrapping this workspace's Rust frontend.
//!
//! | file | |
//! |---|---|
//! | `lib.rs` | the `FrontEnd` class: calls, admin signals, waiting |
//! | `convert.rs` | Python values to JSON and back |
//! | `errors.rs` | frontend errors as Python exceptions |
//! | `aio.rs` | calls awaited by asyncio |
//! | `callbacks.rs` | the threads `callback`'s callbacks run on |
//! | `runtime.rs` | the runtime, who drives it, waiting without the GIL |
//!
//! Every call runs on one tokio runtime per process (`runtime.rs`); a
//! waiting Python thread lets go of the GIL, and many threads share each
//! backend's one connection.

mod aio;
mod callbacks;
mod convert;
mod errors;
mod runtime;

use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pyo3::exceptions::{PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyTuple};
use serde_json::Value;
use taskit_plugin_api::frontend::{
    BackendAddr, CallOptions, FrontEnd as RustFrontEnd, FrontendConfig, FrontendError,
};
use taskit_plugin_api::tls::ClientTlsOptions;
use taskit_plugin_api::wire::admin::{Reply, Signal};
use taskit_plugin_api::wire::DEFAULT_PORT;
use taskit_plugin_api::CodecKind;

use runtime::{callback_pool, runtime, submit, wait};

/// What every view of one frontend shares.
struct Shared {
    /// Replaced whole by `add_backends` (calls in flight keep the one
    /// they started on). Never dropped in a forked child (see `Drop`).
    frontend: std::mem::ManuallyDrop<std::sync::RwLock<RustFrontEnd>>,
    /// Its settings, for a replacement.
    config: FrontendConfig,
    /// The process that made it (`runtime::generation`): its connections
    /// are that process's.
    generation: u64,
    default_port: u16,
    /// `protocol="taskit4"`: speak TaskIt 4.0's protocol to every backend.
    taskit4: bool,
    codec: CodecKind,
    /// `callback` and `ignore` calls not finished, callbacks included.
    outstanding: AtomicUsize,
}

impl Drop for Shared {
    fn drop(&mut self) {
        // In a forked child the connections are the parent's, and dropping
        // them would wake the parent's runtime (its eventfd, the locks its
        // threads may have held at the fork): left alone, leaked.
        if runtime::generation() == self.generation {
            // SAFETY: dropped once, here, and never used again.
            unsafe { std::mem::ManuallyDrop::drop(&mut self.frontend) };
        }
    }
}

/// Counts a `callback` or `ignore` call as outstanding until dropped
/// (finished, or dropped unfinished).
struct Tracked(Arc<Shared>);

impl Drop for Tracked {
    fn drop(&mut self) {
        self.0.outstanding.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Shared {
    /// Refuses a frontend inherited across `os.fork()`: its connections
    /// are shared with the parent, whose replies the child would read.
    fn check_process(&self) -> PyResult<()> {
        if runtime::generation() == self.generation {
            return Ok(());
        }
        Err(PyRuntimeError::new_err(
            "this FrontEnd was made before os.fork(): make a new one in the child process",
        ))
    }

    fn frontend(&self) -> RustFrontEnd {
        self.frontend
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

/// A call, ready to run on the runtime.
type Call = std::pin::Pin<Box<dyn Future<Output = Result<Value, FrontendError>> + Send>>;

/// Calls tasks by id on one or many backends (TaskIt 4.0's
/// ``taskit.frontend.FrontEnd``, on the native protocol).
///
/// ``backends`` are ``"host"``, ``"host:port"``, ``(host, port)`` or
/// ``"dns:NAME[:PORT]"`` (every address the name resolves to). Each call
/// goes to the backend with the fewest calls in flight from this client;
/// one that cannot be reached is skipped for the next.
///
/// Keyword-only settings: ``timeout`` (seconds, for every call),
/// ``idempotent``, ``protocol`` (``"native"`` or ``"taskit4"`` for original
/// TaskIt 4.0 backends), ``admin_token``, ``call_token``,
/// ``connect_timeout``, ``max_reply``, ``discover_names``,
/// ``resolve_every``, and TLS: ``tls``, ``tls_ca``, ``tls_cert``,
/// ``tls_key``, ``tls_server_name``. ``logger`` is accepted for TaskIt 4.0
/// code and not used.
#[pyclass(frozen, subclass, module = "taskit_native")]
struct FrontEnd {
    shared: Arc<Shared>,
    /// This view's call options (no keyword arguments).
    options: CallOptions,
}

fn seconds(name: &str, value: Option<f64>) -> PyResult<Option<Duration>> {
    value
        .map(|s| {
            Duration::try_from_secs_f64(s)
                .ok()
                .filter(|d| !d.is_zero())
                .ok_or_else(|| {
                    PyValueError::new_err(format!(
                        "{name} must be a positive number of seconds, not {s}"
                    ))
                })
        })
        .transpose()
}

impl FrontEnd {
    /// A backend as given from Python: a string or a `(host, port)` pair.
    fn addr(&self, backend: &Bound<'_, PyAny>) -> PyResult<BackendAddr> {
        parse_backend(
            backend,
            self.shared.default_port,
            self.shared.taskit4,
            self.shared.codec,
        )
    }

    /// The call `task(*args, **kwargs)` with this view's options, ready to
    /// run on the runtime.
    fn start(
        &self,
        task: &str,
        args: &Bound<'_, PyTuple>,
        kwargs: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Call> {
        self.shared.check_process()?;
        let args = convert::args_to_values(args)?;
        let mut options = self.options.clone();
        options.kwargs = convert::kwargs_to_value(kwargs)?;
        let frontend = self.shared.frontend();
        let task = task.to_owned();
        // Boxed at once: the call's state is kilobytes, and moving it
        // through the wrappers that run it cost 12% of asyncio's time.
        Ok(Box::pin(async move {
            frontend.call_with::<Value>(&task, &args, &options).await
        }))
    }

    /// Runs an admin request to its end and converts its result.
    fn admin<T: Send + 'static>(
        &self,
        py: Python<'_>,
        work: impl Future<Output = Result<T, FrontendError>> + Send + 'static,
    ) -> PyResult<T> {
        self.shared.check_process()?;
        wait(py, work, timed_out)?.map_err(|e| errors::to_pyerr(py, e))
    }

    /// Counts a `callback` or `ignore` call until the guard is dropped.
    fn track(&self) -> Tracked {
        self.shared.outstanding.fetch_add(1, Ordering::AcqRel);
        Tracked(Arc::clone(&self.shared))
    }
}

/// The codec a `FrontEnd` was given: `None`, a name, or TaskIt 4.0's
/// `JSONCodec` class (what code written for `taskit.frontend` passes).
fn codec_named(codec: Option<&Bound<'_, PyAny>>) -> PyResult<CodecKind> {
    let Some(codec) = codec.filter(|c| !c.is_none()) else {
        return Ok(CodecKind::Json);
    };
    if let Ok(name) = codec.extract::<String>() {
        return CodecKind::from_name(&name).ok_or_else(|| {
            PyValueError::new_err(format!("codec is \"json\" or \"bincode\", not {name:?}"))
        });
    }
    let taskit4_json = codec
        .getattr("__name__")
        .and_then(|n| n.extract::<String>())
        .is_ok_and(|n| n == "JSONCodec");
    if taskit4_json {
        return Ok(CodecKind::Json);
    }
    Err(PyTypeError::new_err(format!(
        "codec is \"json\" (or TaskIt 4.0's JSONCodec), not {}",
        codec.repr()?
    )))
}

fn parse_backend(
    backend: &Bound<'_, PyAny>,
    default_port: u16,
    taskit4: bool,
    codec: CodecKind,
) -> PyResult<BackendAddr> {
    let addr = if let Ok(text) = backend.extract::<String>() {
        let bare = !text.contains(':') && !text.starts_with('[');
        if bare {
            BackendAddr::new(text, default_port)
        } else {
            let mut addr: BackendAddr = text
                .parse()
                .map_err(|e| PyValueError::new_err(format!("{e}")))?;
            if text.starts_with("dns:") && !text["dns:".len()..].contains(':') {
                addr.port = default_port;
            }
            addr
        }
    } else if let Ok((host, port)) = backend.extract::<(String, u16)>() {
        BackendAddr::new(host, port)
    } else {
        return Err(PyTypeError::new_err(format!(
            "a backend is \"host\", \"host:port\", \"dns:NAME[:PORT]\" or (host, port), not {}",
            backend.repr()?
        )));
    };
    let addr = addr.codec(codec);
    Ok(if taskit4 { addr.taskit4() } else { addr })
}

#[pymethods]
impl FrontEnd {
    #[new]
    #[pyo3(signature = (
        backends = None, default_port = DEFAULT_PORT, logger = None, codec = None, *,
        protocol = "native", timeout = None, idempotent = false, admin_token = None,
        call_token = None, connect_timeout = 5.0, max_reply = None, discover_names = false,
        resolve_every = 5.0, tls = false, tls_ca = None, tls_cert = None, tls_key = None,
        tls_server_name = None
    ))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        backends: Option<&Bound<'_, PyAny>>,
        default_port: u16,
        logger: Option<&Bound<'_, PyAny>>,
        codec: Option<&Bound<'_, PyAny>>,
        protocol: &str,
        timeout: Option<f64>,
        idempotent: bool,
        admin_token: Option<String>,
        call_token: Option<String>,
        connect_timeout: f64,
        max_reply: Option<usize>,
        discover_names: bool,
        resolve_every: f64,
        tls: bool,
        tls_ca: Option<Vec<PathBuf>>,
        tls_cert: Option<PathBuf>,
        tls_key: Option<PathBuf>,
        tls_server_name: Option<String>,
    ) -> PyResult<Self> {
        let _ = logger;
        let codec = codec_named(codec)?;
        if codec == CodecKind::Bincode {
            return Err(PyValueError::new_err(
                "codec=\"bincode\" needs the reply's type, which Python values do not carry; use \"json\"",
            ));
        }
        let taskit4 = match protocol {
            "native" => false,
            "taskit4" => true,
            other => {
                return Err(PyValueError::new_err(format!(
                    "protocol is \"native\" or \"taskit4\", not {other:?}"
                )))
            }
        };
        let mut config = FrontendConfig {
            admin_token,
            call_token,
            discover_names,
            ..FrontendConfig::default()
        };
        if let Some(max) = max_reply {
            config.max_reply = max;
        }
        config.connect_timeout =
            seconds("connect_timeout", Some(connect_timeout))?.unwrap_or_default();
        config.resolve_every = seconds("resolve_every", Some(resolve_every))?.unwrap_or_default();
        let tls = tls || tls_ca.is_some() || tls_cert.is_some() || tls_server_name.is_some();
        if tls {
            let identity = match (tls_cert, tls_key) {
                (Some(cert), Some(key)) => Some((cert, key)),
                (None, None) => None,
                _ => return Err(PyValueError::new_err("tls_cert and tls_key go together")),
            };
            let ca_files = tls_ca.unwrap_or_default();
            let options = ClientTlsOptions {
                system_roots: ca_files.is_empty(),
                ca_files,
                identity,
                server_name: tls_server_name,
            };
            config.tls = Some(
                options
                    .load()
                    .map_err(|e| PyValueError::new_err(e.to_string()))?,
            );
        }
        let mut addrs = Vec::new();
        if let Some(backends) = backends {
            for backend in backends.try_iter()? {
                addrs.push(parse_backend(&backend?, default_port, taskit4, codec)?);
            }
        }
        let options = CallOptions {
            kwargs: None,
            timeout: seconds("timeout", timeout)?,
            idempotent,
        };
        Ok(Self {
            shared: Arc::new(Shared {
                frontend: std::mem::ManuallyDrop::new(std::sync::RwLock::new(
                    RustFrontEnd::with_config(addrs, config.clone()),
                )),
                config,
                generation: runtime::generation(),
                default_port,
                taskit4,
                codec,
                outstanding: AtomicUsize::new(0),
            }),
            options,
        })
    }

    /// A view of this frontend whose calls have other options; it shares
    /// the connections and counts. ``timeout`` in seconds (``None``: no
    /// limit); ``idempotent=True``: the task may safely run twice, so a
    /// call whose backend is lost mid-call is sent to another.
    #[pyo3(signature = (**settings))]
    fn with_options(&self, settings: Option<&Bound<'_, PyDict>>) -> PyResult<Self> {
        let mut options = self.options.clone();
        for (name, value) in settings.into_iter().flat_map(|s| s.iter()) {
            match name.extract::<String>()?.as_str() {
                "timeout" => options.timeout = seconds("timeout", value.extract()?)?,
                "idempotent" => options.idempotent = value.extract()?,
                other => {
                    return Err(PyTypeError::new_err(format!(
                        "with_options() takes timeout and idempotent, not {other:?}"
                    )))
                }
            }
        }
        Ok(Self {
            shared: Arc::clone(&self.shared),
            options,
        })
    }

    /// Calls ``task(*args, **kwargs)`` on a backend and returns its result.
    ///
    /// Raises ``BackendProcessingError`` (``.type``, ``.args``) when the task
    /// raised, ``BackendNotAvailableError`` when no backend took the call,
    /// ``CallTimeoutError``, ``ConnectionLostError``; ``TypeError`` for
    /// arguments JSON cannot carry (bytes among them).
    #[pyo3(signature = (task, *args, **kwargs))]
    fn work(
        &self,
        py: Python<'_>,
        task: &str,
        args: &Bound<'_, PyTuple>,
        kwargs: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Py<PyAny>> {
        let call = self.start(task, args, kwargs)?;
        match wait(py, call, timed_out)? {
            Ok(value) => Ok(convert::to_py(py, &value)?.unbind()),
            Err(err) => Err(errors::to_pyerr(py, err)),
        }
    }

    /// Calls ``task(item)`` for each item of ``iterable``, up to
    /// ``in_flight`` calls at a time, and returns the results in order
    /// (as ``multiprocessing.Pool.map`` does). The first failed call's
    /// error is raised, unless ``return_exceptions=True`` puts each error in
    /// the list in its call's place. Much faster than a loop of ``work``:
    /// the calls share round trips, and Python is only needed to convert
    /// the values.
    #[pyo3(signature = (task, iterable, *, in_flight = 1024, return_exceptions = false))]
    fn map<'py>(
        &self,
        py: Python<'py>,
        task: &str,
        iterable: &Bound<'py, PyAny>,
        in_flight: usize,
        return_exceptions: bool,
    ) -> PyResult<Bound<'py, PyList>> {
        let mut calls = Vec::new();
        for item in iterable.try_iter()? {
            calls.push(vec![convert::to_value(&item?)?]);
        }
        self.run_many(py, task, calls, in_flight, return_exceptions)
    }

    /// As ``map``, each item being a tuple (or list) of positional
    /// arguments: ``fe.starmap("add", [(1, 2), (3, 4)])`` is ``[3, 7]``.
    #[pyo3(signature = (task, iterable, *, in_flight = 1024, return_exceptions = false))]
    fn starmap<'py>(
        &self,
        py: Python<'py>,
        task: &str,
        iterable: &Bound<'py, PyAny>,
        in_flight: usize,
        return_exceptions: bool,
    ) -> PyResult<Bound<'py, PyList>> {
        let mut calls = Vec::new();
        for item in iterable.try_iter()? {
            let item = item?;
            let args = if let Ok(tuple) = item.cast::<PyTuple>() {
                convert::args_to_values(tuple)?
            } else if let Ok(list) = item.cast::<PyList>() {
                convert::args_to_values(&list.to_tuple())?
            } else {
                return Err(PyTypeError::new_err(format!(
                    "starmap's items are tuples of arguments, not {}",
                    item.get_type().name()?
                )));
            };
            calls.push(args);
        }
        self.run_many(py, task, calls, in_flight, return_exceptions)
    }

    /// Calls ``task(*args, **kwargs)`` without waiting: ``cb(result)`` runs
    /// on another thread when it succeeds. On failure ``error_cb(error)``
    /// runs; ``error_cb=None`` prints the error, ``False`` drops it.
    #[pyo3(signature = (task, cb, error_cb, *args, **kwargs))]
    fn callback(
        &self,
        task: &str,
        cb: Py<PyAny>,
        error_cb: Py<PyAny>,
        args: &Bound<'_, PyTuple>,
        kwargs: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<()> {
        let call = self.start(task, args, kwargs)?;
        let tracked = self.track();
        submit(async move {
            let result = call.await;
            callback_pool().run(Box::new(move || {
                // Not after the interpreter has ended (callbacks still
                // pending at exit are dropped).
                Python::try_attach(|py| deliver(py, result, cb, error_cb));
                drop(tracked);
            }));
        });
        Ok(())
    }

    /// Calls ``task(*args, **kwargs)`` and forgets it: result and error are
    /// dropped.
    #[pyo3(signature = (task, *args, **kwargs))]
    fn ignore(
        &self,
        task: &str,
        args: &Bound<'_, PyTuple>,
        kwargs: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<()> {
        let call = self.start(task, args, kwargs)?;
        let tracked = self.track();
        submit(async move {
            let _ = call.await;
            drop(tracked);
        });
        Ok(())
    }

    /// For asyncio: ``await fe.call(task, *args, **kwargs)``. Returns a
    /// future of the running loop; its result or error is ``work``'s.
    /// Cancelling it stops the wait, not the task (give a ``timeout`` for
    /// the backend to cancel it).
    #[pyo3(signature = (task, *args, **kwargs))]
    fn call<'py>(
        &self,
        py: Python<'py>,
        task: &str,
        args: &Bound<'py, PyTuple>,
        kwargs: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let (bridge, future) = aio::running_bridge(py)?;
        let call = self.start(task, args, kwargs)?;
        let completions = Arc::clone(&bridge.get().completions);
        let pending = pyo3::types::PyWeakrefReference::new(&future)?.unbind();
        submit(async move {
            let result = call.await;
            completions.push(pending, result);
        });
        Ok(future)
    }

    /// Waits until every ``callback`` and ``ignore`` call has finished, its
    /// callback included; ``timeout`` in seconds. True if they all did.
    #[pyo3(signature = (timeout = None))]
    fn wait_idle(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<bool> {
        self.shared.check_process()?;
        if callbacks::on_pool_thread() {
            return Err(PyRuntimeError::new_err(
                "wait_idle() called from a callback would wait for that callback itself",
            ));
        }
        let limit = seconds("timeout", timeout)?;
        let started = Instant::now();
        let shared = Arc::clone(&self.shared);
        wait(
            py,
            async move {
                while shared.outstanding.load(Ordering::Acquire) > 0 {
                    if limit.is_some_and(|l| started.elapsed() >= l) {
                        return false;
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                true
            },
            |_| false,
        )
    }

    /// TaskIt's ``get_tasks``: the backend's running-task count as a
    /// string (the status call counts itself), or ``"down"``.
    fn get_tasks(&self, py: Python<'_>, backend: &Bound<'_, PyAny>) -> PyResult<String> {
        let (frontend, addr) = (self.shared.frontend(), self.addr(backend)?);
        self.admin(py, async move { frontend.get_tasks(addr).await })
    }

    /// Asks a backend to stop: it answers every call it accepted, then exits.
    fn send_stop(&self, py: Python<'_>, backend: &Bound<'_, PyAny>) -> PyResult<()> {
        let (frontend, addr) = (self.shared.frontend(), self.addr(backend)?);
        self.admin(py, async move { frontend.send_stop(addr).await })
    }

    /// Asks a backend to exit now.
    fn send_kill(&self, py: Python<'_>, backend: &Bound<'_, PyAny>) -> PyResult<()> {
        let (frontend, addr) = (self.shared.frontend(), self.addr(backend)?);
        self.admin(py, async move { frontend.send_kill(addr).await })
    }

    /// Sends a signal (``"<status>"``, ``"<tasks>"``, ``"<reload>"``,
    /// ``"<stop>"``, ``"<kill>"``) to a backend and returns its reply.
    fn send_signal(
        &self,
        py: Python<'_>,
        backend: &Bound<'_, PyAny>,
        signal: &str,
    ) -> PyResult<Py<PyAny>> {
        let signal = Signal::parse(signal).ok_or_else(|| {
            PyValueError::new_err(format!(
                "{signal:?} is not a signal (<status>, <tasks>, <reload>, <stop>, <kill>)"
            ))
        })?;
        let (frontend, addr) = (self.shared.frontend(), self.addr(backend)?);
        let reply = self.admin(py, async move { frontend.send_signal(addr, signal).await })?;
        let value = match reply {
            Reply::Status(count) => Value::String(count),
            Reply::Tasks(plugins) => serde_json::to_value(plugins).unwrap_or_default(),
            Reply::Reload(report) => serde_json::to_value(report).unwrap_or_default(),
            Reply::Done => Value::Null,
        };
        Ok(convert::to_py(py, &value)?.unbind())
    }

    /// The plugins a backend serves: a list of dicts with ``name``,
    /// ``version``, ``file``, ``tasks`` (the ids), ``isolation`` and
    /// ``workers``.
    fn tasks(&self, py: Python<'_>, backend: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        let (frontend, addr) = (self.shared.frontend(), self.addr(backend)?);
        let plugins = self.admin(py, async move { frontend.tasks(addr).await })?;
        let value = serde_json::to_value(plugins).unwrap_or_default();
        Ok(convert::to_py(py, &value)?.unbind())
    }

    /// Asks a backend to rescan its plugins directory now; returns a dict of
    /// the files ``loaded``, ``refused`` and ``removed``, and how many were
    /// ``unchanged``.
    fn reload(&self, py: Python<'_>, backend: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        let (frontend, addr) = (self.shared.frontend(), self.addr(backend)?);
        let report = self.admin(py, async move { frontend.reload(addr).await })?;
        let value = serde_json::to_value(report).unwrap_or_default();
        Ok(convert::to_py(py, &value)?.unbind())
    }

    /// TaskIt 4.0's ``add_backends``: more backends, given as to the
    /// constructor. The frontend starts over with the old and new ones:
    /// new connections, fresh counts (calls in flight finish where they
    /// are).
    #[pyo3(signature = (*backends))]
    fn add_backends(&self, backends: &Bound<'_, PyTuple>) -> PyResult<()> {
        self.shared.check_process()?;
        let given = backends
            .iter()
            .map(|b| self.addr(&b))
            .collect::<PyResult<Vec<_>>>()?;
        // One change at a time: two threads adding at once both count.
        let mut frontend = self
            .shared
            .frontend
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut addrs = frontend.backends();
        for addr in given {
            let known = addrs
                .iter()
                .any(|a| a.host == addr.host && a.port == addr.port);
            if !known {
                addrs.push(addr);
            }
        }
        *frontend = RustFrontEnd::with_config(addrs, self.shared.config.clone());
        Ok(())
    }

    /// The backends as given, as ``(host, port)`` pairs.
    #[getter]
    fn backends(&self) -> PyResult<Vec<(String, u16)>> {
        self.shared.check_process()?;
        Ok(self
            .shared
            .frontend()
            .backends()
            .into_iter()
            .map(|b| (b.host, b.port))
            .collect())
    }

    /// The backends calls go to now (names resolved), each a dict of
    /// ``host``, ``port``, ``in_flight`` (this client's calls) and
    /// ``answered``.
    fn routes<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        self.shared.check_process()?;
        let list = PyList::empty(py);
        for route in self.shared.frontend().routes() {
            let d = PyDict::new(py);
            d.set_item("host", route.addr.host)?;
            d.set_item("port", route.addr.port)?;
            d.set_item("in_flight", route.in_flight)?;
            d.set_item("answered", route.answered)?;
            list.append(d)?;
        }
        Ok(list)
    }

    /// This view's timeout in seconds (``None``: none).
    #[getter]
    fn timeout(&self) -> Option<f64> {
        self.options.timeout.map(|t| t.as_secs_f64())
    }

    /// Whether this view's calls may run twice.
    #[getter]
    fn idempotent(&self) -> bool {
        self.options.idempotent
    }

    fn __repr__(&self) -> String {
        if self.shared.check_process().is_err() {
            return "FrontEnd(<made before os.fork()>)".to_owned();
        }
        let backends: Vec<String> = self
            .shared
            .frontend()
            .backends()
            .iter()
            .map(ToString::to_string)
            .collect();
        format!("FrontEnd({backends:?})")
    }
}

impl FrontEnd {
    /// Runs `calls` of `task`, at most `in_flight` at once, and lists
    /// their results in order.
    fn run_many<'py>(
        &self,
        py: Python<'py>,
        task: &str,
        calls: Vec<Vec<Value>>,
        in_flight: usize,
        return_exceptions: bool,
    ) -> PyResult<Bound<'py, PyList>> {
        self.shared.check_process()?;
        let frontend = self.shared.frontend();
        let options = Arc::new(self.options.clone());
        let task: Arc<str> = task.into();
        let window = Arc::new(tokio::sync::Semaphore::new(in_flight.max(1)));
        // Driven on the runtime, where spawning is cheap; aborted with its
        // calls if the wait is interrupted.
        let driver = runtime().spawn(async move {
            let count = calls.len();
            let mut running = tokio::task::JoinSet::new();
            for (i, args) in calls.into_iter().enumerate() {
                let Ok(permit) = Arc::clone(&window).acquire_owned().await else {
                    break;
                };
                let (frontend, options, task) =
                    (frontend.clone(), Arc::clone(&options), Arc::clone(&task));
                running.spawn(async move {
                    let result = frontend.call_with::<Value>(&task, &args, &options).await;
                    drop(permit);
                    (i, result)
                });
            }
            let mut results: Vec<Option<Result<Value, FrontendError>>> = vec![None; count];
            while let Some(done) = running.join_next().await {
                if let Ok((i, result)) = done {
                    results[i] = Some(result);
                }
            }
            results
        });
        let results = wait(py, AbortOnDrop(Some(driver)), |_| true)?
            .map_err(|e| PyRuntimeError::new_err(format!("the calls' driver failed: {e}")))?;
        let list = PyList::empty(py);
        for result in results {
            let result = result.unwrap_or(Err(FrontendError::BackendNotAvailable));
            match result {
                Ok(value) => list.append(convert::to_py(py, &value)?)?,
                Err(err) if return_exceptions => {
                    list.append(errors::to_pyerr(py, err).into_value(py))?
                }
                Err(err) => return Err(errors::to_pyerr(py, err)),
            }
        }
        Ok(list)
    }
}

/// A task's handle that aborts the task when dropped.
struct AbortOnDrop<T>(Option<tokio::task::JoinHandle<T>>);

impl<T> Future for AbortOnDrop<T> {
    type Output = Result<T, tokio::task::JoinError>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        match self.0.as_mut() {
            Some(handle) => std::pin::Pin::new(handle).poll(cx),
            None => std::task::Poll::Pending,
        }
    }
}

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        if let Some(handle) = self.0.take() {
            handle.abort();
        }
    }
}

/// Whether a call ended by its timeout, which queued a cancel for the
/// backend (see `runtime::wait`).
fn timed_out<T>(result: &Result<T, FrontendError>) -> bool {
    matches!(result, Err(FrontendError::Timeout(_)))
}

/// Hands a `callback` call's outcome to its callbacks, as TaskIt 4.0 did:
/// `cb(result)`; on an error, `error_cb(error)` if `error_cb` is truthy,
/// the error shown through `sys.excepthook` if it is `None`, nothing if it
/// is any other false value. A reply that cannot be converted is an error
/// like the others; an exception raised by a callback is reported as
/// unraisable, naming the callback.
fn deliver(
    py: Python<'_>,
    result: Result<Value, FrontendError>,
    cb: Py<PyAny>,
    error_cb: Py<PyAny>,
) {
    let (cb, error_cb) = (cb.bind(py), error_cb.bind(py));
    let value = result
        .map_err(|err| errors::to_pyerr(py, err))
        .and_then(|value| convert::to_py(py, &value));
    let (outcome, called) = match value {
        Ok(value) => (cb.call1((value,)).map(drop), cb),
        Err(err) if error_cb.is_none() => (show(py, err), error_cb),
        Err(err) => match error_cb.is_truthy() {
            Ok(true) => (error_cb.call1((err.into_value(py),)).map(drop), error_cb),
            Ok(false) => (Ok(()), error_cb),
            Err(bad) => (Err(bad), error_cb),
        },
    };
    if let Err(err) = outcome {
        err.write_unraisable(py, Some(called));
    }
}

/// Shows an error as an uncaught one would be: through `sys.excepthook`.
fn show(py: Python<'_>, err: PyErr) -> PyResult<()> {
    let kind = err.get_type(py);
    let value = err.value(py).clone();
    let traceback = err.traceback(py);
    py.import("sys")?
        .getattr("excepthook")?
        .call1((kind, value, traceback))
        .map(drop)
}

#[pymodule(gil_used = true)]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<FrontEnd>()?;
    m.add_class::<aio::LoopBridge>()?;
    m.add("DEFAULT_PORT", DEFAULT_PORT)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("MAX_DEPTH", convert::MAX_DEPTH)?;
    m.add("MAX_CALLBACK_THREADS", callbacks::MAX_THREADS)?;
    Ok(())
}

//! Frontend errors as the Python exceptions of `taskit_native._errors`.

use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyType;
use taskit_plugin_api::frontend::FrontendError;

use crate::convert;

macro_rules! error_classes {
    ($($name:ident => $class:literal),* $(,)?) => {
        $(
            fn $name(py: Python<'_>) -> PyResult<&Bound<'_, PyType>> {
                static CLASS: PyOnceLock<Py<PyType>> = PyOnceLock::new();
                CLASS.import(py, "taskit_native._errors", $class)
            }
        )*
    };
}

error_classes! {
    not_available => "BackendNotAvailableError",
    stopping => "BackendStoppingError",
    resolve => "ResolveError",
    tls => "TlsError",
    processing => "BackendProcessingError",
    timeout => "CallTimeoutError",
    lost => "ConnectionLostError",
    protocol => "ProtocolError",
    unknown_backend => "UnknownBackendError",
    decode => "DecodeError",
}

/// The Python exception for `err`.
pub fn to_pyerr(py: Python<'_>, err: FrontendError) -> PyErr {
    match make(py, &err) {
        Ok(e) => e,
        Err(e) => e,
    }
}

fn make(py: Python<'_>, err: &FrontendError) -> PyResult<PyErr> {
    let message = err.to_string();
    let instance = match err {
        FrontendError::BackendNotAvailable => not_available(py)?.call1((message,))?,
        FrontendError::BackendProcessing { kind, args } => {
            let args = args
                .iter()
                .map(|a| convert::to_py(py, a))
                .collect::<PyResult<Vec<_>>>()?;
            processing(py)?.call1((kind.as_str(), args))?
        }
        FrontendError::Timeout(_) => timeout(py)?.call1((message,))?,
        FrontendError::Stopping(_) => stopping(py)?.call1((message,))?,
        FrontendError::ConnectionLost(_) => lost(py)?.call1((message,))?,
        FrontendError::Encode(_) => return Ok(PyTypeError::new_err(message)),
        FrontendError::Decode(_) => decode(py)?.call1((message,))?,
        FrontendError::Protocol { .. } => protocol(py)?.call1((message,))?,
        FrontendError::Tls { .. } => tls(py)?.call1((message,))?,
        FrontendError::Resolve { .. } => resolve(py)?.call1((message,))?,
        FrontendError::UnknownBackend(_) => unknown_backend(py)?.call1((message,))?,
    };
    Ok(PyErr::from_value(instance))
}

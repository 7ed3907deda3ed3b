//! Python values to JSON values and back, as TaskIt 4.0's JSON codec
//! would write and read them.
//!
//! What crosses: `None`, `bool`, `int` (64 bits), `float` (finite), `str`,
//! `list` and `tuple` (as lists), `dict` (keys `str`, or `int`, `float`,
//! `bool` and `None` written as JSON writes them). `bytes` are refused
//! with a `TypeError` that says why: JSON has no bytes.

use pyo3::exceptions::{PyOverflowError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{
    PyBool, PyByteArray, PyBytes, PyDict, PyFloat, PyInt, PyList, PyMemoryView, PyString, PyTuple,
};
use serde_json::{Map, Number, Value};

/// How deep values may nest: what the JSON reader on the other side
/// accepts (serde_json's limit), and what keeps a list that contains
/// itself from recursing without end.
pub const MAX_DEPTH: usize = 128;

/// A Python value as JSON.
pub fn to_value(obj: &Bound<'_, PyAny>) -> PyResult<Value> {
    to_value_at(obj, 0)
}

/// The positional arguments of a call.
pub fn args_to_values(args: &Bound<'_, PyTuple>) -> PyResult<Vec<Value>> {
    args.iter().map(|a| to_value_at(&a, 1)).collect()
}

/// Keyword arguments, as a JSON object (`None` when there are none).
pub fn kwargs_to_value(kwargs: Option<&Bound<'_, PyDict>>) -> PyResult<Option<Value>> {
    match kwargs {
        Some(kw) if !kw.is_empty() => dict_to_value(kw, 0).map(Some),
        _ => Ok(None),
    }
}

fn to_value_at(obj: &Bound<'_, PyAny>, depth: usize) -> PyResult<Value> {
    if depth > MAX_DEPTH {
        return Err(PyValueError::new_err(format!(
            "the value nests more than {MAX_DEPTH} levels deep (or contains itself)"
        )));
    }
    if obj.is_none() {
        return Ok(Value::Null);
    }
    // bool before int: True is an int in Python.
    if let Ok(b) = obj.cast::<PyBool>() {
        return Ok(Value::Bool(b.is_true()));
    }
    if let Ok(s) = obj.cast::<PyString>() {
        return Ok(Value::String(s.to_str()?.to_owned()));
    }
    if obj.cast::<PyInt>().is_ok() {
        return int_to_value(obj);
    }
    if let Ok(f) = obj.cast::<PyFloat>() {
        return float_to_value(f.value());
    }
    if let Ok(list) = obj.cast::<PyList>() {
        let mut out = Vec::with_capacity(list.len());
        for item in list.iter() {
            out.push(to_value_at(&item, depth + 1)?);
        }
        return Ok(Value::Array(out));
    }
    if let Ok(tuple) = obj.cast::<PyTuple>() {
        let mut out = Vec::with_capacity(tuple.len());
        for item in tuple.iter() {
            out.push(to_value_at(&item, depth + 1)?);
        }
        return Ok(Value::Array(out));
    }
    if let Ok(dict) = obj.cast::<PyDict>() {
        return dict_to_value(dict, depth);
    }
    if obj.cast::<PyBytes>().is_ok()
        || obj.cast::<PyByteArray>().is_ok()
        || obj.cast::<PyMemoryView>().is_ok()
    {
        return Err(PyTypeError::new_err(format!(
            "cannot send {}: calls carry JSON, which has no bytes type \
             (send text, a list of ints, or base64)",
            type_name(obj)
        )));
    }
    Err(PyTypeError::new_err(format!(
        "Object of type {} is not JSON serializable",
        type_name(obj)
    )))
}

fn int_to_value(obj: &Bound<'_, PyAny>) -> PyResult<Value> {
    if let Ok(i) = obj.extract::<i64>() {
        return Ok(Value::from(i));
    }
    if let Ok(u) = obj.extract::<u64>() {
        return Ok(Value::from(u));
    }
    Err(PyOverflowError::new_err(format!(
        "{} does not fit in 64 bits, the largest integer a call carries",
        obj.repr()?
    )))
}

fn float_to_value(f: f64) -> PyResult<Value> {
    Number::from_f64(f).map(Value::Number).ok_or_else(|| {
        PyValueError::new_err(format!("{f} cannot be sent: JSON has no NaN or infinity"))
    })
}

fn dict_to_value(dict: &Bound<'_, PyDict>, depth: usize) -> PyResult<Value> {
    let mut map = Map::new();
    for (key, value) in dict.iter() {
        map.insert(key_string(&key)?, to_value_at(&value, depth + 1)?);
    }
    Ok(Value::Object(map))
}

/// A dict key as JSON writes it: strings as they are; numbers, booleans
/// and `None` as their JSON text.
fn key_string(key: &Bound<'_, PyAny>) -> PyResult<String> {
    if let Ok(s) = key.cast::<PyString>() {
        return Ok(s.to_str()?.to_owned());
    }
    let scalar = key.is_none()
        || key.cast::<PyBool>().is_ok()
        || key.cast::<PyInt>().is_ok()
        || key.cast::<PyFloat>().is_ok();
    if scalar {
        return Ok(to_value(key)?.to_string());
    }
    Err(PyTypeError::new_err(format!(
        "keys must be str, int, float, bool or None, not {}",
        type_name(key)
    )))
}

fn type_name(obj: &Bound<'_, PyAny>) -> String {
    obj.get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "?".to_owned())
}

/// A JSON value as Python objects.
pub fn to_py<'py>(py: Python<'py>, value: &Value) -> PyResult<Bound<'py, PyAny>> {
    Ok(match value {
        Value::Null => py.None().into_bound(py),
        Value::Bool(b) => PyBool::new(py, *b).to_owned().into_any(),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                i.into_pyobject(py)?.into_any()
            } else if let Some(u) = n.as_u64() {
                u.into_pyobject(py)?.into_any()
            } else {
                n.as_f64().unwrap_or(f64::NAN).into_pyobject(py)?.into_any()
            }
        }
        Value::String(s) => PyString::new(py, s).into_any(),
        Value::Array(items) => {
            let list = PyList::empty(py);
            for item in items {
                list.append(to_py(py, item)?)?;
            }
            list.into_any()
        }
        Value::Object(map) => {
            let dict = PyDict::new(py);
            for (k, v) in map {
                dict.set_item(k, to_py(py, v)?)?;
            }
            dict.into_any()
        }
    })
}

//! Ordinary Rust functions as tasks.
//!
//! [`TaskFn`] is implemented for functions and closures of these shapes, with
//! up to 12 positional parameters `A…` that serde can decode:
//!
//! | shape | receives |
//! |---|---|
//! | `fn(A…) -> R` | positional arguments |
//! | `fn(A…, Kw<K>) -> R` | positional, then keyword arguments decoded into `K` |
//! | `fn(&TaskContext, A…) -> R` | the host's context, then positional |
//! | `fn(&TaskContext, A…, Kw<K>) -> R` | all three |
//!
//! `R` is any [`IntoReply`]: common serializable types directly, or
//! `Result<T, E>` where `E` becomes an error reply.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::marker::PhantomData;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::codec::args::{decode_args, DecodeArgs};
use crate::codec::{Codec, CodecError, CodecErrorKind};
use crate::error::{kind, IntoTaskError, TaskError};
use context::TaskContext;

pub(crate) mod context;
pub(crate) mod run;

/// Keyword arguments, decoded into `K` (usually a struct deriving
/// `Deserialize`, with `#[serde(default)]` on optional fields). Must be the
/// task function's last parameter.
///
/// Keyword arguments travel as a JSON object in every codec: names only mean
/// something in a self-describing format.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Kw<K>(pub K);

/// What one task invocation gets: its id (for messages) and the raw
/// argument bytes. Built by the host and by `export_plugin!`, never by
/// plugin code.
#[doc(hidden)]
pub struct Invocation<'a> {
    /// The task id, for error messages.
    pub task: &'a str,
    /// Positional arguments, a sequence in the call's codec.
    pub args: &'a [u8],
    /// Keyword arguments as a JSON object, or empty for none.
    pub kwargs: &'a [u8],
}

/// A function that can serve as a task. `M` is a marker that tells the
/// shapes apart; callers never name it.
pub trait TaskFn<M>: Send + Sync + 'static {
    /// Decodes the arguments with `C`, runs the function and encodes its
    /// result with `C`.
    #[doc(hidden)]
    fn invoke<C: Codec>(
        &self,
        ctx: &TaskContext<'_>,
        call: &Invocation<'_>,
    ) -> Result<Vec<u8>, TaskError>;
}

/// A task's return value turned into reply bytes or an error reply.
pub trait IntoReply {
    /// Encodes the value with `C`, or turns it into an error reply.
    fn into_reply<C: Codec>(self) -> Result<Vec<u8>, TaskError>;
}

fn encode_reply<C: Codec, T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, TaskError> {
    C::encode(value).map_err(|e| TaskError::msg(kind::ENCODE_ERROR, e))
}

impl<T: Serialize, E: IntoTaskError> IntoReply for Result<T, E> {
    fn into_reply<C: Codec>(self) -> Result<Vec<u8>, TaskError> {
        match self {
            Ok(value) => encode_reply::<C, T>(&value),
            Err(err) => Err(err.into_task_error()),
        }
    }
}

/// Wraps any serializable value as a reply, for types [`IntoReply`] does not
/// cover directly (your own structs): `fn f() -> Reply<MyStruct>`.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply<T>(pub T);

impl<T: Serialize> IntoReply for Reply<T> {
    fn into_reply<C: Codec>(self) -> Result<Vec<u8>, TaskError> {
        encode_reply::<C, T>(&self.0)
    }
}

macro_rules! reply_types {
    ($($t:ty),* $(,)?) => {$(
        impl IntoReply for $t {
            fn into_reply<C: Codec>(self) -> Result<Vec<u8>, TaskError> {
                encode_reply::<C, $t>(&self)
            }
        }
    )*};
}

reply_types!(
    (),
    bool,
    char,
    i8,
    i16,
    i32,
    i64,
    i128,
    isize,
    u8,
    u16,
    u32,
    u64,
    u128,
    usize,
    f32,
    f64,
    String,
    &'static str,
    serde_json::Value,
);

macro_rules! generic_reply_types {
    ($([$($g:ident),*] $t:ty),* $(,)?) => {$(
        impl<$($g: Serialize),*> IntoReply for $t {
            fn into_reply<C: Codec>(self) -> Result<Vec<u8>, TaskError> {
                encode_reply::<C, $t>(&self)
            }
        }
    )*};
}

generic_reply_types!(
    [T] Vec<T>, [T] VecDeque<T>, [T] Option<T>, [T] Box<T>, [T] BTreeSet<T>, [T] HashSet<T>,
    [K, V] BTreeMap<K, V>, [K, V] HashMap<K, V>,
    [T1, T2] (T1, T2), [T1, T2, T3] (T1, T2, T3), [T1, T2, T3, T4] (T1, T2, T3, T4),
);

fn decode_error(task: &str, err: CodecError) -> TaskError {
    let kind = match err.kind {
        CodecErrorKind::Syntax => kind::DECODE_ERROR,
        CodecErrorKind::Data => kind::TYPE_ERROR,
    };
    // Python's own words for arity ("add() takes 2 positional arguments
    // but 1 was given"); anything else after a colon.
    let sep = if ["takes ", "got ", "missing "]
        .iter()
        .any(|verb| err.message.starts_with(verb))
    {
        " "
    } else {
        ": "
    };
    TaskError::msg(kind, format!("{task}(){sep}{}", err.message))
}

fn positional<C: Codec, T: DecodeArgs>(call: &Invocation<'_>) -> Result<T, TaskError> {
    decode_args::<C, T>(call.args).map_err(|e| decode_error(call.task, e))
}

/// A task without keyword parameters refuses keyword arguments, as Python
/// does, rather than silently dropping them.
fn no_kwargs(call: &Invocation<'_>) -> Result<(), TaskError> {
    if call.kwargs.is_empty() {
        return Ok(());
    }
    let map: BTreeMap<String, serde::de::IgnoredAny> = serde_json::from_slice(call.kwargs)
        .map_err(|e| {
            TaskError::msg(
                kind::DECODE_ERROR,
                format!("{}() keyword arguments: {e}", call.task),
            )
        })?;
    match map.keys().next() {
        None => Ok(()),
        Some(name) => Err(TaskError::msg(
            kind::TYPE_ERROR,
            format!(
                "{}() got an unexpected keyword argument '{name}'",
                call.task
            ),
        )),
    }
}

fn keywords<K: DeserializeOwned>(call: &Invocation<'_>) -> Result<Kw<K>, TaskError> {
    let bytes: &[u8] = if call.kwargs.is_empty() {
        b"{}"
    } else {
        call.kwargs
    };
    serde_json::from_slice(bytes).map(Kw).map_err(|e| {
        let kind = match e.classify() {
            serde_json::error::Category::Data => kind::TYPE_ERROR,
            _ => kind::DECODE_ERROR,
        };
        TaskError::msg(kind, format!("{}() keyword arguments: {e}", call.task))
    })
}

/// Marker shapes for [`TaskFn`].
#[doc(hidden)]
pub mod shape {
    use super::PhantomData;
    pub struct Plain<A>(PhantomData<A>);
    pub struct Keywords<A, K>(PhantomData<(A, K)>);
    pub struct Ctx<A>(PhantomData<A>);
    pub struct CtxKeywords<A, K>(PhantomData<(A, K)>);
}

macro_rules! task_fn_impls {
    ($($A:ident $a:ident),*) => {
        impl<F, R, $($A,)*> TaskFn<shape::Plain<($($A,)*)>> for F
        where
            F: Fn($($A),*) -> R + Send + Sync + 'static,
            R: IntoReply,
            $($A: DeserializeOwned,)*
        {
            fn invoke<C: Codec>(&self, _ctx: &TaskContext<'_>, call: &Invocation<'_>) -> Result<Vec<u8>, TaskError> {
                no_kwargs(call)?;
                let ($($a,)*) = positional::<C, ($($A,)*)>(call)?;
                self($($a),*).into_reply::<C>()
            }
        }

        impl<F, R, K, $($A,)*> TaskFn<shape::Keywords<($($A,)*), K>> for F
        where
            F: Fn($($A,)* Kw<K>) -> R + Send + Sync + 'static,
            R: IntoReply,
            K: DeserializeOwned,
            $($A: DeserializeOwned,)*
        {
            fn invoke<C: Codec>(&self, _ctx: &TaskContext<'_>, call: &Invocation<'_>) -> Result<Vec<u8>, TaskError> {
                let kw = keywords::<K>(call)?;
                let ($($a,)*) = positional::<C, ($($A,)*)>(call)?;
                self($($a,)* kw).into_reply::<C>()
            }
        }

        impl<F, R, $($A,)*> TaskFn<shape::Ctx<($($A,)*)>> for F
        where
            F: for<'c, 'd> Fn(&'c TaskContext<'d>, $($A),*) -> R + Send + Sync + 'static,
            R: IntoReply,
            $($A: DeserializeOwned,)*
        {
            fn invoke<C: Codec>(&self, ctx: &TaskContext<'_>, call: &Invocation<'_>) -> Result<Vec<u8>, TaskError> {
                no_kwargs(call)?;
                let ($($a,)*) = positional::<C, ($($A,)*)>(call)?;
                self(ctx, $($a),*).into_reply::<C>()
            }
        }

        impl<F, R, K, $($A,)*> TaskFn<shape::CtxKeywords<($($A,)*), K>> for F
        where
            F: for<'c, 'd> Fn(&'c TaskContext<'d>, $($A,)* Kw<K>) -> R + Send + Sync + 'static,
            R: IntoReply,
            K: DeserializeOwned,
            $($A: DeserializeOwned,)*
        {
            fn invoke<C: Codec>(&self, ctx: &TaskContext<'_>, call: &Invocation<'_>) -> Result<Vec<u8>, TaskError> {
                let kw = keywords::<K>(call)?;
                let ($($a,)*) = positional::<C, ($($A,)*)>(call)?;
                self(ctx, $($a,)* kw).into_reply::<C>()
            }
        }
    };
}

task_fn_impls!();
task_fn_impls!(A1 a1);
task_fn_impls!(A1 a1, A2 a2);
task_fn_impls!(A1 a1, A2 a2, A3 a3);
task_fn_impls!(A1 a1, A2 a2, A3 a3, A4 a4);
task_fn_impls!(A1 a1, A2 a2, A3 a3, A4 a4, A5 a5);
task_fn_impls!(A1 a1, A2 a2, A3 a3, A4 a4, A5 a5, A6 a6);
task_fn_impls!(A1 a1, A2 a2, A3 a3, A4 a4, A5 a5, A6 a6, A7 a7);
task_fn_impls!(A1 a1, A2 a2, A3 a3, A4 a4, A5 a5, A6 a6, A7 a7, A8 a8);
task_fn_impls!(A1 a1, A2 a2, A3 a3, A4 a4, A5 a5, A6 a6, A7 a7, A8 a8, A9 a9);
task_fn_impls!(A1 a1, A2 a2, A3 a3, A4 a4, A5 a5, A6 a6, A7 a7, A8 a8, A9 a9, A10 a10);
task_fn_impls!(A1 a1, A2 a2, A3 a3, A4 a4, A5 a5, A6 a6, A7 a7, A8 a8, A9 a9, A10 a10, A11 a11);

//! Codecs: how arguments and results are written as bytes.
//!
//! A codec is a type implementing [`Codec`]; two come built in, JSON (what
//! TaskIt 4.0 speaks) and bincode 2 (compact, for Rust-to-Rust calls). The
//! trait is static (generic methods), so a task's decoding is monomorphised
//! per codec and costs no dynamic dispatch.

pub(crate) mod args;

use serde::de::DeserializeSeed;
use serde::Serialize;

use args::EncodeArgs;

/// How a decoding failure should be reported: bytes that are not valid in
/// the codec at all (`Syntax`), or valid bytes of the wrong shape (`Data`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodecErrorKind {
    /// The bytes are not valid in the codec at all (broken JSON, bytes missing).
    Syntax,
    /// Valid bytes of the wrong shape or type.
    Data,
}

/// A failure to encode or decode a value.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct CodecError {
    /// Whether the bytes were malformed or of the wrong shape.
    pub kind: CodecErrorKind,
    /// What the codec said.
    pub message: String,
}

impl CodecError {
    fn data(message: impl ToString) -> Self {
        Self {
            kind: CodecErrorKind::Data,
            message: message.to_string(),
        }
    }
}

/// A wire format for task arguments and results.
pub trait Codec: Send + Sync + 'static {
    /// The name that selects this codec on the wire and across the plugin ABI.
    const NAME: &'static str;

    /// Writes `value`.
    fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CodecError>;

    /// Reads one value with `seed`, refusing trailing bytes.
    fn decode_seed<'de, S: DeserializeSeed<'de>>(
        bytes: &'de [u8],
        seed: S,
    ) -> Result<S::Value, CodecError>;

    /// Reads one value of type `T`, refusing trailing bytes.
    fn decode<'de, T: serde::Deserialize<'de>>(bytes: &'de [u8]) -> Result<T, CodecError> {
        Self::decode_seed(bytes, std::marker::PhantomData::<T>)
    }
}

/// JSON (`serde_json`), the TaskIt 4.0 codec.
#[derive(Debug, Clone, Copy, Default)]
pub struct Json;

impl Codec for Json {
    const NAME: &'static str = "json";

    fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CodecError> {
        serde_json::to_vec(value).map_err(CodecError::data)
    }

    fn decode_seed<'de, S: DeserializeSeed<'de>>(
        bytes: &'de [u8],
        seed: S,
    ) -> Result<S::Value, CodecError> {
        let mut de = serde_json::Deserializer::from_slice(bytes);
        let value = seed.deserialize(&mut de).map_err(json_error)?;
        // Said as bincode says it: the same mistake reads the same in
        // every codec.
        de.end()
            .map_err(|_| trailing_bytes(bytes.len() - trailing_start(bytes)))?;
        Ok(value)
    }
}

/// Where the bytes after a JSON value begin, for the message: after the
/// first value's end (a best guess good enough to count them).
fn trailing_start(bytes: &[u8]) -> usize {
    let mut stream =
        serde_json::Deserializer::from_slice(bytes).into_iter::<serde::de::IgnoredAny>();
    let _ = stream.next();
    stream.byte_offset()
}

/// The error for `n` bytes after the value (both codecs).
fn trailing_bytes(n: usize) -> CodecError {
    CodecError {
        kind: CodecErrorKind::Syntax,
        message: format!("{n} trailing bytes after the value"),
    }
}

fn json_error(err: serde_json::Error) -> CodecError {
    let kind = match err.classify() {
        serde_json::error::Category::Data => CodecErrorKind::Data,
        _ => CodecErrorKind::Syntax,
    };
    let text = err.to_string();
    // A wrong type or arity is about the arguments, not where in the text
    // it was noticed: said as bincode says it, without the position.
    let message = match kind {
        CodecErrorKind::Data => {
            let at = format!(" at line {} column {}", err.line(), err.column());
            text.strip_suffix(&at).map(str::to_owned).unwrap_or(text)
        }
        CodecErrorKind::Syntax => text,
    };
    CodecError { kind, message }
}

/// A bincode decode error in words (bincode prints its own as Rust debug
/// output), and whether the bytes were malformed or of the wrong shape.
fn bincode_error(err: bincode::error::DecodeError) -> CodecError {
    use bincode::error::DecodeError as E;
    let (kind, message) = match err {
        E::UnexpectedEnd { additional } => (
            CodecErrorKind::Syntax,
            format!("the bytes end too early: {additional} more were expected"),
        ),
        E::OtherString(message) => (CodecErrorKind::Data, message),
        E::Other(message) => (CodecErrorKind::Data, message.to_owned()),
        E::Utf8 { .. } => (
            CodecErrorKind::Syntax,
            "a string is not valid UTF-8".to_owned(),
        ),
        E::InvalidCharEncoding(_) => (
            CodecErrorKind::Syntax,
            "a character is not valid UTF-8".to_owned(),
        ),
        E::InvalidBooleanValue(v) => (
            CodecErrorKind::Data,
            format!("{v} is not a boolean (0 or 1)"),
        ),
        E::LimitExceeded => (
            CodecErrorKind::Syntax,
            format!("a length claims more than the decode limit of {BINCODE_DECODE_LIMIT} bytes"),
        ),
        E::OutsideUsizeRange(n) => (CodecErrorKind::Data, format!("{n} is too large a length")),
        E::UnexpectedVariant {
            type_name, found, ..
        } => (
            CodecErrorKind::Data,
            format!("{found} is not a variant of {type_name}"),
        ),
        E::InvalidIntegerType { expected, found } => (
            CodecErrorKind::Data,
            format!("expected an integer of type {expected:?}, found {found:?}"),
        ),
        other => (CodecErrorKind::Data, format!("{other:?}")),
    };
    CodecError { kind, message }
}

/// bincode 2 with its standard configuration (little endian, varint
/// integers), through serde. It is not self-describing: both sides must
/// agree on types, which is what makes it compact and fast.
#[derive(Debug, Clone, Copy, Default)]
pub struct Bincode;

/// The most a bincode decode may claim for strings and containers. bincode
/// allocates a declared length before reading it, so without a limit eleven
/// bytes can ask for terabytes and abort the process. Claims beyond the
/// input are refused before any allocation; within the limit, an allocation
/// for bytes that are not there is never touched and is freed at once.
pub const BINCODE_DECODE_LIMIT: usize = 256 << 20;

type BincodeConfig = bincode::config::Configuration<
    bincode::config::LittleEndian,
    bincode::config::Varint,
    bincode::config::Limit<BINCODE_DECODE_LIMIT>,
>;

fn bincode_config() -> BincodeConfig {
    bincode::config::standard().with_limit::<BINCODE_DECODE_LIMIT>()
}

impl Codec for Bincode {
    const NAME: &'static str = "bincode";

    fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CodecError> {
        bincode::serde::encode_to_vec(value, bincode_config()).map_err(CodecError::data)
    }

    fn decode_seed<'de, S: DeserializeSeed<'de>>(
        bytes: &'de [u8],
        seed: S,
    ) -> Result<S::Value, CodecError> {
        let (value, used) = bincode::serde::seed_decode_from_slice(seed, bytes, bincode_config())
            .map_err(bincode_error)?;
        if used != bytes.len() {
            return Err(trailing_bytes(bytes.len() - used));
        }
        Ok(value)
    }
}

/// The built-in codecs, for code that picks one at run time by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CodecKind {
    /// [`Json`].
    Json,
    /// [`Bincode`].
    Bincode,
}

impl CodecKind {
    /// The codec called `name`, if it is built in.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            Json::NAME => Some(Self::Json),
            Bincode::NAME => Some(Self::Bincode),
            _ => None,
        }
    }

    /// The codec's wire name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Json => Json::NAME,
            Self::Bincode => Bincode::NAME,
        }
    }

    /// Encodes `value` with this codec.
    pub fn encode<T: Serialize + ?Sized>(self, value: &T) -> Result<Vec<u8>, CodecError> {
        match self {
            Self::Json => Json::encode(value),
            Self::Bincode => Bincode::encode(value),
        }
    }

    /// Encodes `args` as a call's positional arguments (see
    /// [`encode_args`](crate::encode_args)) with this codec.
    pub fn encode_args<A: EncodeArgs + ?Sized>(self, args: &A) -> Result<Vec<u8>, CodecError> {
        match self {
            Self::Json => args::encode_args::<Json, A>(args),
            Self::Bincode => args::encode_args::<Bincode, A>(args),
        }
    }

    /// Decodes a `T` with this codec.
    pub fn decode<T: serde::de::DeserializeOwned>(self, bytes: &[u8]) -> Result<T, CodecError> {
        match self {
            Self::Json => Json::decode(bytes),
            Self::Bincode => Bincode::decode(bytes),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_codecs_round_trip_and_refuse_trailing_bytes() {
        for codec in [CodecKind::Json, CodecKind::Bincode] {
            let bytes = codec.encode(&("hi", 7u32)).unwrap();
            assert_eq!(
                codec.decode::<(String, u32)>(&bytes).unwrap(),
                ("hi".into(), 7)
            );
            let mut longer = bytes.clone();
            longer.extend_from_slice(b"00");
            assert!(codec.decode::<(String, u32)>(&longer).is_err());
        }
    }

    #[test]
    fn a_huge_declared_bincode_length_is_refused_not_allocated() {
        // A string whose length prefix claims 2^44 bytes.
        let mut bytes = vec![0xFD];
        bytes.extend_from_slice(&(1u64 << 44).to_le_bytes());
        let err = Bincode::decode::<String>(&bytes).unwrap_err();
        assert!(err.message.to_lowercase().contains("limit"), "{err}");
        // Sequences are read element by element (serde caps preallocation).
        assert!(Bincode::decode::<Vec<u8>>(&bytes).is_err());
    }

    #[test]
    fn json_errors_are_classified() {
        assert_eq!(
            Json::decode::<Vec<u32>>(b"[1,").unwrap_err().kind,
            CodecErrorKind::Syntax
        );
        assert_eq!(
            Json::decode::<u32>(b"\"x\"").unwrap_err().kind,
            CodecErrorKind::Data
        );
    }
}

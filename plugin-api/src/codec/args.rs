//! Positional arguments on the wire: always a sequence with a known length,
//! in every codec, so that a task can tell "wrong number of arguments" from
//! "wrong type" even in bincode, which is not self-describing.
//!
//! Callers encode with [`encode_args`]; the plugin side decodes into the
//! task function's parameter tuple with [`decode_args`].

use std::fmt;
use std::marker::PhantomData;

use serde::de::{DeserializeOwned, DeserializeSeed, Error as _, IgnoredAny, SeqAccess, Visitor};
use serde::ser::{SerializeSeq, Serializer};
use serde::Serialize;

use super::{Codec, CodecError};

/// Something that can be sent as a call's positional arguments: a tuple of
/// serializable values (up to 12), or a slice, array or `Vec` of one type.
pub trait EncodeArgs {
    /// Writes the arguments as a sequence.
    fn serialize_args<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error>;
}

/// Encodes `args` as a call's positional arguments with codec `C`.
pub fn encode_args<C: Codec, A: EncodeArgs + ?Sized>(args: &A) -> Result<Vec<u8>, CodecError> {
    C::encode(&AsSeq(args))
}

struct AsSeq<'a, A: ?Sized>(&'a A);

impl<A: EncodeArgs + ?Sized> Serialize for AsSeq<'_, A> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize_args(serializer)
    }
}

impl<T: Serialize> EncodeArgs for [T] {
    fn serialize_args<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self)
    }
}

impl<T: Serialize> EncodeArgs for Vec<T> {
    fn serialize_args<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self)
    }
}

impl<T: Serialize, const N: usize> EncodeArgs for [T; N] {
    fn serialize_args<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self)
    }
}

/// A task's positional parameters, decoded from the argument sequence.
/// Implemented for tuples of up to 12 `DeserializeOwned` types.
pub trait DecodeArgs: Sized {
    /// How many positional arguments the task takes.
    const ARITY: usize;

    #[doc(hidden)]
    fn pull<'de, A: SeqAccess<'de>>(seq: &mut A) -> Result<Self, A::Error>;
}

/// Decodes a task's positional arguments, checking their number.
///
/// A count mismatch reads like Python's: "takes 2 positional arguments but
/// 3 were given".
pub fn decode_args<C: Codec, T: DecodeArgs>(bytes: &[u8]) -> Result<T, CodecError> {
    C::decode_seed(bytes, ArgsSeed::<T>(PhantomData))
}

fn arity_message(expected: usize, given: usize) -> String {
    let plural = if expected == 1 { "" } else { "s" };
    let verb = if given == 1 { "was" } else { "were" };
    format!("takes {expected} positional argument{plural} but {given} {verb} given")
}

struct ArgsSeed<T>(PhantomData<T>);

impl<'de, T: DecodeArgs> DeserializeSeed<'de> for ArgsSeed<T> {
    type Value = T;
    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<T, D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de, T: DecodeArgs> Visitor<'de> for ArgsSeed<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a sequence of {} positional arguments", T::ARITY)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<T, A::Error> {
        // Length-prefixed codecs tell the count up front; JSON is counted as
        // it is read.
        let known = seq.size_hint();
        if let Some(given) = known {
            if given != T::ARITY {
                return Err(A::Error::custom(arity_message(T::ARITY, given)));
            }
        }
        let value = T::pull(&mut seq)?;
        if known.is_none() {
            let mut extra = 0;
            while seq.next_element::<IgnoredAny>()?.is_some() {
                extra += 1;
            }
            if extra > 0 {
                return Err(A::Error::custom(arity_message(T::ARITY, T::ARITY + extra)));
            }
        }
        Ok(value)
    }
}

macro_rules! tuple_args {
    ($n:expr; $($T:ident $v:ident),*) => {
        impl<$($T: Serialize),*> EncodeArgs for ($($T,)*) {
            fn serialize_args<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                let ($($v,)*) = self;
                #[allow(unused_mut)]
                let mut seq = serializer.serialize_seq(Some($n))?;
                $(seq.serialize_element($v)?;)*
                seq.end()
            }
        }

        impl<$($T: DeserializeOwned),*> DecodeArgs for ($($T,)*) {
            const ARITY: usize = $n;

            #[allow(unused_variables, unused_mut, unused_assignments)]
            fn pull<'de, Sq: SeqAccess<'de>>(seq: &mut Sq) -> Result<Self, Sq::Error> {
                let mut given = 0usize;
                Ok(($({
                    let $v: $T = seq
                        .next_element()?
                        .ok_or_else(|| Sq::Error::custom(arity_message($n, given)))?;
                    given += 1;
                    $v
                },)*))
            }
        }
    };
}

tuple_args!(0;);
tuple_args!(1; A a);
tuple_args!(2; A a, B b);
tuple_args!(3; A a, B b, C c);
tuple_args!(4; A a, B b, C c, D d);
tuple_args!(5; A a, B b, C c, D d, E e);
tuple_args!(6; A a, B b, C c, D d, E e, F f);
tuple_args!(7; A a, B b, C c, D d, E e, F f, G g);
tuple_args!(8; A a, B b, C c, D d, E e, F f, G g, H h);
tuple_args!(9; A a, B b, C c, D d, E e, F f, G g, H h, I i);
tuple_args!(10; A a, B b, C c, D d, E e, F f, G g, H h, I i, J j);
tuple_args!(11; A a, B b, C c, D d, E e, F f, G g, H h, I i, J j, K k);
tuple_args!(12; A a, B b, C c, D d, E e, F f, G g, H h, I i, J j, K k, L l);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{Bincode, Json};

    fn round_trip<C: Codec>() {
        let bytes = encode_args::<C, _>(&(4i64, "x")).unwrap();
        let (a, b): (i64, String) = decode_args::<C, _>(&bytes).unwrap();
        assert_eq!((a, b.as_str()), (4, "x"));

        let three = encode_args::<C, _>(&(1, 2, 3)).unwrap();
        let err = decode_args::<C, (i64, i64)>(&three).unwrap_err();
        assert!(
            err.message
                .contains("takes 2 positional arguments but 3 were given"),
            "{err}"
        );

        let one = encode_args::<C, _>(&(1,)).unwrap();
        let err = decode_args::<C, (i64, i64)>(&one).unwrap_err();
        assert!(err.message.contains("but 1 was given"), "{err}");

        let none = encode_args::<C, _>(&()).unwrap();
        decode_args::<C, ()>(&none).unwrap();
    }

    #[test]
    fn json_args() {
        round_trip::<Json>();
        assert_eq!(encode_args::<Json, _>(&(4, 4)).unwrap(), b"[4,4]");
        let err = decode_args::<Json, (i64,)>(b"[\"x\"]").unwrap_err();
        assert!(err.message.contains("invalid type"), "{err}");
    }

    #[test]
    fn bincode_args() {
        round_trip::<Bincode>();
        // A vector of values encodes exactly like a tuple of the same values.
        assert_eq!(
            encode_args::<Bincode, _>(&vec![4u8, 4]).unwrap(),
            encode_args::<Bincode, _>(&(4u8, 4u8)).unwrap()
        );
    }
}

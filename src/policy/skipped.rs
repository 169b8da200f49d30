//! Whether serde skipped a mapping key while reading the policy.
//!
//! serde's derive reads the value of a key a struct does not declare as
//! `IgnoredAny`, so a deserializer that sees `deserialize_ignored_any` has
//! seen an unknown key. This wrapper raises one flag when that happens and
//! does nothing else; `keys::unknown_keys` then finds and names the keys.
//! (The `serde_ignored` crate does the same with the key's path, which costs
//! a `String` for every key read, and the location wrapper around each rule
//! reads several keys: that made a 100,000-rule compile about 30 % slower.)
//!
//! serde-saphyr's `Spanned` is read as a synthetic mapping whose first
//! entry is a marker its reader skips on purpose; that skip is not a key of
//! the policy and does not raise the flag.

use std::cell::Cell;
use std::fmt;

use serde::de::{
    self, DeserializeSeed, Deserializer, EnumAccess, MapAccess, SeqAccess, VariantAccess, Visitor,
};

/// The newtype name under which serde-saphyr hands a `Spanned` value its
/// synthetic mapping (a private name of serde-saphyr 2: if it changes, the
/// tests below fail, and so does every policy load, closed).
const SPANNED: &str = "__yaml_spanned";

/// Reads a `T` from `de`, with whether a mapping key was skipped on the way.
pub(crate) fn deserialize<'de, D, T>(de: D) -> Result<(T, bool), D::Error>
where
    D: Deserializer<'de>,
    T: de::Deserialize<'de>,
{
    let skipped = Cell::new(false);
    let value = T::deserialize(Tracked {
        inner: de,
        skipped: &skipped,
        place: Place::Data,
    })?;
    Ok((value, skipped.get()))
}

/// What is being read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Place {
    /// The policy's own YAML.
    Data,
    /// A `Spanned` value's synthetic mapping.
    Spanned,
    /// The marker entry of that mapping, which its reader skips.
    Marker,
}

struct Tracked<'a, D> {
    inner: D,
    skipped: &'a Cell<bool>,
    place: Place,
}

impl<'a, D> Tracked<'a, D> {
    fn wrap<V>(&self, visitor: V) -> Wrap<'a, V> {
        let place = match self.place {
            Place::Spanned => Place::Spanned,
            Place::Data | Place::Marker => Place::Data,
        };
        Wrap {
            inner: visitor,
            skipped: self.skipped,
            place,
        }
    }
}

/// Forwards `deserialize_*` methods with the visitor wrapped.
macro_rules! forward {
    ($($method:ident($($arg:ident: $ty:ty),*);)*) => {$(
        fn $method<V: Visitor<'de>>(self, $($arg: $ty,)* visitor: V) -> Result<V::Value, D::Error> {
            let visitor = self.wrap(visitor);
            self.inner.$method($($arg,)* visitor)
        }
    )*};
}

impl<'de, D: Deserializer<'de>> Deserializer<'de> for Tracked<'_, D> {
    type Error = D::Error;

    forward! {
        deserialize_any();
        deserialize_bool();
        deserialize_i8();
        deserialize_i16();
        deserialize_i32();
        deserialize_i64();
        deserialize_i128();
        deserialize_u8();
        deserialize_u16();
        deserialize_u32();
        deserialize_u64();
        deserialize_u128();
        deserialize_f32();
        deserialize_f64();
        deserialize_char();
        deserialize_str();
        deserialize_string();
        deserialize_bytes();
        deserialize_byte_buf();
        deserialize_option();
        deserialize_unit();
        deserialize_unit_struct(name: &'static str);
        deserialize_seq();
        deserialize_tuple(len: usize);
        deserialize_tuple_struct(name: &'static str, len: usize);
        deserialize_map();
        deserialize_struct(name: &'static str, fields: &'static [&'static str]);
        deserialize_enum(name: &'static str, variants: &'static [&'static str]);
        deserialize_identifier();
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        let mut visitor = self.wrap(visitor);
        if name == SPANNED {
            visitor.place = Place::Spanned;
        }
        self.inner.deserialize_newtype_struct(name, visitor)
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
        if self.place != Place::Marker {
            self.skipped.set(true);
        }
        self.inner.deserialize_ignored_any(visitor)
    }

    fn is_human_readable(&self) -> bool {
        self.inner.is_human_readable()
    }
}

struct Wrap<'a, V> {
    inner: V,
    skipped: &'a Cell<bool>,
    place: Place,
}

/// Forwards `visit_*` methods that carry a plain value.
macro_rules! visit {
    ($($method:ident($ty:ty);)*) => {$(
        fn $method<E: de::Error>(self, v: $ty) -> Result<V::Value, E> {
            self.inner.$method(v)
        }
    )*};
}

impl<'de, V: Visitor<'de>> Visitor<'de> for Wrap<'_, V> {
    type Value = V::Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.expecting(f)
    }

    visit! {
        visit_bool(bool);
        visit_i8(i8);
        visit_i16(i16);
        visit_i32(i32);
        visit_i64(i64);
        visit_i128(i128);
        visit_u8(u8);
        visit_u16(u16);
        visit_u32(u32);
        visit_u64(u64);
        visit_u128(u128);
        visit_f32(f32);
        visit_f64(f64);
        visit_char(char);
        visit_str(&str);
        visit_borrowed_str(&'de str);
        visit_string(String);
        visit_bytes(&[u8]);
        visit_borrowed_bytes(&'de [u8]);
        visit_byte_buf(Vec<u8>);
    }

    fn visit_none<E: de::Error>(self) -> Result<V::Value, E> {
        self.inner.visit_none()
    }

    fn visit_unit<E: de::Error>(self) -> Result<V::Value, E> {
        self.inner.visit_unit()
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<V::Value, D::Error> {
        self.inner.visit_some(Tracked {
            inner: d,
            skipped: self.skipped,
            place: Place::Data,
        })
    }

    fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> Result<V::Value, D::Error> {
        self.inner.visit_newtype_struct(Tracked {
            inner: d,
            skipped: self.skipped,
            place: self.place,
        })
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<V::Value, A::Error> {
        self.inner.visit_seq(Seq {
            inner: seq,
            skipped: self.skipped,
        })
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<V::Value, A::Error> {
        self.inner.visit_map(Map {
            inner: map,
            skipped: self.skipped,
            marker_next: self.place == Place::Spanned,
        })
    }

    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<V::Value, A::Error> {
        self.inner.visit_enum(Enum {
            inner: data,
            skipped: self.skipped,
        })
    }
}

/// A value read through the wrapper.
struct Seed<'a, S> {
    inner: S,
    skipped: &'a Cell<bool>,
    place: Place,
}

impl<'de, S: DeserializeSeed<'de>> DeserializeSeed<'de> for Seed<'_, S> {
    type Value = S::Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<S::Value, D::Error> {
        self.inner.deserialize(Tracked {
            inner: d,
            skipped: self.skipped,
            place: self.place,
        })
    }
}

struct Seq<'a, A> {
    inner: A,
    skipped: &'a Cell<bool>,
}

impl<'de, A: SeqAccess<'de>> SeqAccess<'de> for Seq<'_, A> {
    type Error = A::Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, A::Error> {
        self.inner.next_element_seed(Seed {
            inner: seed,
            skipped: self.skipped,
            place: Place::Data,
        })
    }

    fn size_hint(&self) -> Option<usize> {
        self.inner.size_hint()
    }
}

struct Map<'a, A> {
    inner: A,
    skipped: &'a Cell<bool>,
    /// The next value is a `Spanned` mapping's marker (always its first entry).
    marker_next: bool,
}

impl<'de, A: MapAccess<'de>> MapAccess<'de> for Map<'_, A> {
    type Error = A::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, A::Error> {
        self.inner.next_key_seed(seed)
    }

    fn next_value_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<T::Value, A::Error> {
        let place = if std::mem::take(&mut self.marker_next) {
            Place::Marker
        } else {
            Place::Data
        };
        self.inner.next_value_seed(Seed {
            inner: seed,
            skipped: self.skipped,
            place,
        })
    }

    fn size_hint(&self) -> Option<usize> {
        self.inner.size_hint()
    }
}

struct Enum<'a, A> {
    inner: A,
    skipped: &'a Cell<bool>,
}

impl<'a, 'de, A: EnumAccess<'de>> EnumAccess<'de> for Enum<'a, A> {
    type Error = A::Error;
    type Variant = Variant<'a, A::Variant>;

    fn variant_seed<S: DeserializeSeed<'de>>(
        self,
        seed: S,
    ) -> Result<(S::Value, Self::Variant), A::Error> {
        let (value, variant) = self.inner.variant_seed(seed)?;
        let variant = Variant {
            inner: variant,
            skipped: self.skipped,
        };
        Ok((value, variant))
    }
}

struct Variant<'a, A> {
    inner: A,
    skipped: &'a Cell<bool>,
}

impl<'de, A: VariantAccess<'de>> VariantAccess<'de> for Variant<'_, A> {
    type Error = A::Error;

    fn unit_variant(self) -> Result<(), A::Error> {
        self.inner.unit_variant()
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, A::Error> {
        self.inner.newtype_variant_seed(Seed {
            inner: seed,
            skipped: self.skipped,
            place: Place::Data,
        })
    }

    fn tuple_variant<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value, A::Error> {
        let visitor = Wrap {
            inner: visitor,
            skipped: self.skipped,
            place: Place::Data,
        };
        self.inner.tuple_variant(len, visitor)
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, A::Error> {
        let visitor = Wrap {
            inner: visitor,
            skipped: self.skipped,
            place: Place::Data,
        };
        self.inner.struct_variant(fields, visitor)
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;
    use serde_saphyr::Spanned;

    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct Inner {
        name: Spanned<String>,
        #[serde(default)]
        kind: Option<Kind>,
    }

    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    enum Kind {
        A,
        B { port: u16 },
    }

    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct Outer {
        items: Vec<Spanned<Inner>>,
        #[serde(default)]
        tag: Option<Spanned<String>>,
    }

    fn skipped(yaml: &str) -> bool {
        serde_saphyr::with_deserializer_from_str(yaml, |de| super::deserialize::<_, Outer>(de))
            .unwrap()
            .1
    }

    #[test]
    fn spanned_values_of_known_keys_skip_nothing() {
        assert!(!skipped(
            "items:\n  - name: a\n  - name: b\n    kind: A\ntag: x\n"
        ));
        assert!(!skipped("items:\n  - name: a\n    kind: {B: {port: 1}}\n"));
    }

    #[test]
    fn an_unknown_key_at_any_depth_is_seen() {
        assert!(skipped("items: []\ntypo: 1\n"));
        assert!(skipped("items:\n  - name: a\n    typo: [1, 2]\n"));
        assert!(skipped(
            "items:\n  - name: a\n    kind: {B: {port: 1, typo: 2}}\n"
        ));
    }
}

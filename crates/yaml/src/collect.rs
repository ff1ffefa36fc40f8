//! Decoding that goes on past the first error, so that one run reports
//! every field that is wrong rather than the first one serde meets.
//!
//! serde stops at the first error. To find the next, the document is
//! decoded again with every entry that failed so far passed over: the
//! mapping entry (key and value) or list element at the path of each error.
//! An unknown field is passed over with its value; a value that does not
//! parse with its key. Each pass finds at most one new error, at its own
//! line, until a pass decodes what is left.
//!
//! Passing over an entry can never make a document valid: a value is only
//! returned by a pass that passed over nothing, which is an ordinary strict
//! decode.
//!
//! Map keys are read as strings (`deserialize_str`) and handed to the
//! type's key as such: right for struct fields and string-keyed maps, the
//! only keys the formats using this have.

use std::{
    cell::RefCell,
    collections::HashSet,
    fmt,
    hash::{Hash, Hasher},
    rc::Rc,
};

use serde::de::{
    self,
    value::{BorrowedStrDeserializer, StrDeserializer},
    DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor,
};

/// Where a value sits in a document: `spec.rules[0].to`, `.` for the root.
/// Spelled as `serde_path_to_error` spells it, so messages read the same
/// whichever decoder found the error.
///
/// Every value decoded gets one, so a child shares its parent's steps
/// rather than copying them: cloning is a reference count.
#[derive(Clone, Default)]
pub(crate) struct FieldPath(Option<Rc<Step>>);

struct Step {
    parent: FieldPath,
    segment: Segment,
}

#[derive(Debug, PartialEq, Eq, Hash)]
enum Segment {
    Key(String),
    Index(usize),
    /// The value of a key that is not a string.
    Other,
}

/// How one pass ended.
pub(crate) enum Pass<T, E> {
    Decoded(T),
    /// The first error not passed over, and the path it belongs to (the
    /// innermost value that failed).
    Failed(E, FieldPath),
}

/// Shared by every wrapper of one pass.
struct State<'s> {
    skip: &'s HashSet<FieldPath>,
    /// Set by the innermost wrapper an error passes through.
    failed_at: RefCell<Option<FieldPath>>,
}

/// A deserializer that tracks the path of what it decodes.
struct Tracked<'s, D> {
    de: D,
    path: FieldPath,
    state: &'s State<'s>,
}

/// The visitor of a [`Tracked`] value: wraps the maps, lists and options
/// it is handed so their contents are tracked (and skipped) too.
struct Track<'s, V> {
    visitor: V,
    path: FieldPath,
    state: &'s State<'s>,
}

/// A value's seed, run under its path.
struct TrackedSeed<'s, S> {
    seed: S,
    path: FieldPath,
    state: &'s State<'s>,
}

/// List elements, with those to skip passed over.
struct Elements<'s, A> {
    seq: A,
    path: FieldPath,
    index: usize,
    state: &'s State<'s>,
}

/// Mapping entries, with those to skip passed over.
struct Entries<'s, A> {
    map: A,
    path: FieldPath,
    /// The key just read, for the value that follows.
    key: Option<String>,
    state: &'s State<'s>,
}

/// Reads a key as a string and decides, before the type's own key seed
/// sees it, whether the entry is passed over.
struct KeyProbe<'a, 's, K> {
    seed: &'a mut Option<K>,
    key: &'a mut Option<String>,
    parent: &'a FieldPath,
    state: &'s State<'s>,
}

enum Probed<T> {
    Key(T),
    Skipped,
}

/// One strict decode of `T` from `de`, passing over the entries at `skip`.
pub(crate) fn pass<'de, T, D>(de: D, skip: &HashSet<FieldPath>) -> Pass<T, D::Error>
where
    T: de::Deserialize<'de>,
    D: Deserializer<'de>,
{
    let state = State {
        skip,
        failed_at: RefCell::new(None),
    };
    let tracked = Tracked {
        de,
        path: FieldPath::default(),
        state: &state,
    };
    match T::deserialize(tracked) {
        Ok(value) => Pass::Decoded(value),
        Err(e) => Pass::Failed(e, state.failed_at.take().unwrap_or_default()),
    }
}

impl FieldPath {
    pub(crate) fn is_root(&self) -> bool {
        self.0.is_none()
    }

    /// The path of field `key` of this value.
    pub(crate) fn key(&self, key: &str) -> Self {
        self.child(Segment::Key(key.to_owned()))
    }

    fn child(&self, segment: Segment) -> Self {
        let parent = self.clone();
        Self(Some(Rc::new(Step { parent, segment })))
    }

    /// From the root down.
    fn segments(&self) -> Vec<&Segment> {
        let mut segments = Vec::new();
        let mut at = self;
        while let Some(step) = &at.0 {
            segments.push(&step.segment);
            at = &step.parent;
        }
        segments.reverse();
        segments
    }
}

impl PartialEq for FieldPath {
    fn eq(&self, other: &Self) -> bool {
        self.segments() == other.segments()
    }
}

impl Eq for FieldPath {}

impl Hash for FieldPath {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.segments().hash(state);
    }
}

impl fmt::Debug for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FieldPath({self})")
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let segments = self.segments();
        if segments.is_empty() {
            return f.write_str(".");
        }
        for (i, segment) in segments.into_iter().enumerate() {
            match segment {
                Segment::Index(index) => write!(f, "[{index}]")?,
                Segment::Key(_) | Segment::Other if i > 0 => f.write_str(".")?,
                _ => {}
            }
            match segment {
                Segment::Key(key) => f.write_str(key)?,
                Segment::Other => f.write_str("?")?,
                Segment::Index(_) => {}
            }
        }
        Ok(())
    }
}

impl State<'_> {
    /// Whether the entry at `path` is passed over; `path` is only built
    /// when something is (never in the first pass).
    fn skips(&self, path: impl FnOnce() -> FieldPath) -> bool {
        !self.skip.is_empty() && self.skip.contains(&path())
    }

    /// Notes `path` as where the pass failed, unless an inner value was
    /// noted first.
    fn fail<E>(&self, path: &FieldPath, error: E) -> E {
        self.failed_at
            .borrow_mut()
            .get_or_insert_with(|| path.clone());
        error
    }
}

/// `deserialize_*` methods: forward with a [`Track`] visitor, note the
/// path of an error.
macro_rules! forward_deserialize {
    ($($method:ident($($arg:ident: $ty:ty),*);)*) => {$(
        fn $method<V: Visitor<'de>>(self, $($arg: $ty,)* visitor: V) -> Result<V::Value, D::Error> {
            let Tracked { de, path, state } = self;
            let visitor = Track { visitor, path: path.clone(), state };
            de.$method($($arg,)* visitor).map_err(|e| state.fail(&path, e))
        }
    )*};
}

impl<'de, D: Deserializer<'de>> Deserializer<'de> for Tracked<'_, D> {
    type Error = D::Error;

    forward_deserialize! {
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
        deserialize_newtype_struct(name: &'static str);
        deserialize_seq();
        deserialize_tuple(len: usize);
        deserialize_tuple_struct(name: &'static str, len: usize);
        deserialize_map();
        deserialize_struct(name: &'static str, fields: &'static [&'static str]);
        deserialize_enum(name: &'static str, variants: &'static [&'static str]);
        deserialize_identifier();
        deserialize_ignored_any();
    }

    fn is_human_readable(&self) -> bool {
        self.de.is_human_readable()
    }
}

/// `visit_*` methods that carry a plain value: forward as they are.
macro_rules! forward_visit {
    ($($method:ident($ty:ty);)*) => {$(
        fn $method<E: de::Error>(self, v: $ty) -> Result<V::Value, E> {
            self.visitor.$method(v)
        }
    )*};
}

impl<'de, 's, V: Visitor<'de>> Visitor<'de> for Track<'s, V> {
    type Value = V::Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.visitor.expecting(f)
    }

    forward_visit! {
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
        self.visitor.visit_none()
    }

    fn visit_unit<E: de::Error>(self) -> Result<V::Value, E> {
        self.visitor.visit_unit()
    }

    fn visit_some<D: Deserializer<'de>>(self, de: D) -> Result<V::Value, D::Error> {
        let (path, state) = (self.path, self.state);
        self.visitor.visit_some(Tracked { de, path, state })
    }

    fn visit_newtype_struct<D: Deserializer<'de>>(self, de: D) -> Result<V::Value, D::Error> {
        let (path, state) = (self.path, self.state);
        self.visitor
            .visit_newtype_struct(Tracked { de, path, state })
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<V::Value, A::Error> {
        let (path, state) = (self.path, self.state);
        self.visitor.visit_seq(Elements {
            seq,
            path,
            index: 0,
            state,
        })
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<V::Value, A::Error> {
        let (path, state) = (self.path, self.state);
        self.visitor.visit_map(Entries {
            map,
            path,
            key: None,
            state,
        })
    }

    /// Enums are passed on as they are: errors inside one are noted at the
    /// enum's own path, and nothing inside one is passed over.
    fn visit_enum<A: de::EnumAccess<'de>>(self, data: A) -> Result<V::Value, A::Error> {
        self.visitor.visit_enum(data)
    }
}

impl<'de, S: DeserializeSeed<'de>> DeserializeSeed<'de> for TrackedSeed<'_, S> {
    type Value = S::Value;

    fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<S::Value, D::Error> {
        let TrackedSeed { seed, path, state } = self;
        let tracked = Tracked {
            de,
            path: path.clone(),
            state,
        };
        seed.deserialize(tracked).map_err(|e| state.fail(&path, e))
    }
}

impl<'de, A: SeqAccess<'de>> SeqAccess<'de> for Elements<'_, A> {
    type Error = A::Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, A::Error> {
        let state = self.state;
        loop {
            let path = self.path.child(Segment::Index(self.index));
            self.index += 1;
            if !state.skips(|| path.clone()) {
                let seed = TrackedSeed { seed, path, state };
                let next = self.seq.next_element_seed(seed);
                return next.map_err(|e| state.fail(&self.path, e));
            }
            let skipped = self.seq.next_element::<IgnoredAny>();
            if skipped.map_err(|e| state.fail(&self.path, e))?.is_none() {
                return Ok(None);
            }
        }
    }

    fn size_hint(&self) -> Option<usize> {
        self.seq.size_hint()
    }
}

impl<'de, A: MapAccess<'de>> MapAccess<'de> for Entries<'_, A> {
    type Error = A::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, A::Error> {
        let state = self.state;
        let mut seed = Some(seed);
        loop {
            self.key = None;
            let probe = KeyProbe {
                seed: &mut seed,
                key: &mut self.key,
                parent: &self.path,
                state,
            };
            match self.map.next_key_seed(probe) {
                Ok(None) => return Ok(None),
                Ok(Some(Probed::Key(key))) => return Ok(Some(key)),
                Ok(Some(Probed::Skipped)) => {
                    let value = self.map.next_value::<IgnoredAny>();
                    value.map_err(|e| state.fail(&self.value_path(), e))?;
                }
                Err(e) => return Err(state.fail(&self.value_path(), e)),
            }
        }
    }

    fn next_value_seed<S: DeserializeSeed<'de>>(&mut self, seed: S) -> Result<S::Value, A::Error> {
        let path = self.value_path();
        let state = self.state;
        let seed = TrackedSeed { seed, path, state };
        self.map
            .next_value_seed(seed)
            .map_err(|e| state.fail(&self.path, e))
    }

    fn size_hint(&self) -> Option<usize> {
        self.map.size_hint()
    }
}

impl<A> Entries<'_, A> {
    fn value_path(&self) -> FieldPath {
        match &self.key {
            Some(key) => self.path.key(key),
            None => self.path.child(Segment::Other),
        }
    }
}

impl<'de, K: DeserializeSeed<'de>> DeserializeSeed<'de> for KeyProbe<'_, '_, K> {
    type Value = Probed<K::Value>;

    fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<Self::Value, D::Error> {
        de.deserialize_str(self)
    }
}

impl<'de, K: DeserializeSeed<'de>> Visitor<'de> for KeyProbe<'_, '_, K> {
    type Value = Probed<K::Value>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<Self::Value, E> {
        self.hand_over(key, StrDeserializer::new(key))
    }

    fn visit_borrowed_str<E: de::Error>(self, key: &'de str) -> Result<Self::Value, E> {
        self.hand_over(key, BorrowedStrDeserializer::new(key))
    }
}

impl<'de, K: DeserializeSeed<'de>> KeyProbe<'_, '_, K> {
    /// Passes the entry over, or gives its key to the type's seed.
    fn hand_over<E, D>(self, key: &str, de: D) -> Result<Probed<K::Value>, E>
    where
        E: de::Error,
        D: Deserializer<'de, Error = E>,
    {
        *self.key = Some(key.to_owned());
        if self.state.skips(|| self.parent.key(key)) {
            return Ok(Probed::Skipped);
        }
        match self.seed.take() {
            Some(seed) => seed.deserialize(de).map(Probed::Key),
            None => Err(E::custom("internal error: a key seed was used twice")),
        }
    }
}

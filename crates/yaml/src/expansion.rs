//! A bound on what YAML aliases expand to, checked before decoding.
//!
//! serde_norway follows an alias by replaying its anchor's events, and
//! allows 100 alias jumps per event of the document; it does not count
//! what a jump replays. A file of a few kB whose anchors nest (the
//! "billion laughs" shape: a list of aliases of a list of aliases of a
//! list of strings) thus decodes into billions of strings: gigabytes, and
//! minutes of CPU, before any field is checked. Here the document is
//! walked once through every alias without building anything, and refused
//! once it has expanded well beyond what its own text could hold.

use std::{cell::Cell, fmt};

use serde::de::{self, DeserializeSeed, Visitor};

/// What a document may expand to beyond twice its own size: a value
/// costs 1, a scalar its length besides. Text without aliases always
/// fits in twice its size; 1 MiB more is plenty for anchors that share a
/// list, and bounds both the walk and the decode after it.
pub const ALIAS_BUDGET: usize = 1 << 20;

/// Marks the walk's own error among serde_norway's.
const EXCEEDED: &str = "nodeward: alias expansion over budget";

/// Where a document's expansion went over the budget.
#[derive(Debug)]
pub struct Exceeded {
    pub line: usize,
    pub column: usize,
}

/// Walks every document in `text`, following aliases, and fails once the
/// expanded size passes `2 * text.len() + ALIAS_BUDGET`. Other errors are
/// left to the decode that follows.
pub fn check(text: &str) -> Result<(), Exceeded> {
    // No alias without a `*`: most files skip the walk.
    if !text.contains('*') {
        return Ok(());
    }
    let left = Cell::new(text.len().saturating_mul(2).saturating_add(ALIAS_BUDGET));
    for document in serde_norway::Deserializer::from_str(text) {
        match (Meter { left: &left }).deserialize(document) {
            Ok(()) => {}
            Err(e) if e.to_string().contains(EXCEEDED) => {
                let (line, column) = e.location().map_or((1, 1), |l| (l.line(), l.column()));
                return Err(Exceeded { line, column });
            }
            // A syntax or type error: the decode reports it properly.
            Err(_) => return Ok(()),
        }
    }
    Ok(())
}

/// Counts what it visits, building nothing.
#[derive(Clone, Copy)]
struct Meter<'a> {
    left: &'a Cell<usize>,
}

impl Meter<'_> {
    fn spend<E: de::Error>(self, cost: usize) -> Result<(), E> {
        match self.left.get().checked_sub(cost.saturating_add(1)) {
            Some(left) => {
                self.left.set(left);
                Ok(())
            }
            None => Err(E::custom(EXCEEDED)),
        }
    }
}

impl<'de> DeserializeSeed<'de> for Meter<'_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Meter<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML value")
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        self.spend(0)
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        self.spend(0)
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        self.spend(0)
    }

    fn visit_i128<E: de::Error>(self, _: i128) -> Result<(), E> {
        self.spend(0)
    }

    fn visit_u128<E: de::Error>(self, _: u128) -> Result<(), E> {
        self.spend(0)
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        self.spend(0)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        self.spend(v.len())
    }

    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<(), E> {
        self.spend(v.len())
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.spend(0)
    }

    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        self.spend(0)
    }

    fn visit_some<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        self.spend(0)?;
        self.deserialize(d)
    }

    fn visit_newtype_struct<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        self.spend(0)?;
        self.deserialize(d)
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        self.spend(0)?;
        while seq.next_element_seed(self)?.is_some() {}
        Ok(())
    }

    fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        self.spend(0)?;
        while map.next_key_seed(self)?.is_some() {
            map.next_value_seed(self)?;
        }
        Ok(())
    }

    /// A tagged value (`!tag value`).
    fn visit_enum<A: de::EnumAccess<'de>>(self, data: A) -> Result<(), A::Error> {
        use de::VariantAccess;
        self.spend(0)?;
        let ((), variant) = data.variant_seed(self)?;
        variant.newtype_variant_seed(self)
    }
}

//! Resource and node names (PROTOCOL.md §4.1): 1..=64 bytes of printable ASCII, no spaces.

use std::fmt;

use bytes::{BufMut, BytesMut};

use crate::wire::Reader;
use crate::Error;

/// Longest allowed name.
pub const NAME_LEN_BYTES_MAX: usize = 64;

/// A validated resource or node name. Ordered byte-wise (the connect collision rule, §1.3).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Name(String);

impl Name {
    /// Validates `name`: non-empty, at most 64 bytes, ASCII `!`..=`~` only.
    pub fn new(name: impl Into<String>) -> Result<Self, Error> {
        let name = name.into();
        if name.is_empty() {
            return Err(Error::InvalidName { reason: "empty" });
        }
        if name.len() > NAME_LEN_BYTES_MAX {
            return Err(Error::InvalidName {
                reason: "longer than 64 bytes",
            });
        }
        if !name.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(Error::InvalidName {
                reason: "only printable ASCII without spaces is allowed",
            });
        }
        Ok(Name(name))
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub(crate) fn encoded_len_bytes(&self) -> usize {
        1 + self.0.len()
    }

    pub(crate) fn put(&self, out: &mut BytesMut) {
        // Invariant of `Name`: the length fits in a u8.
        let len = u8::try_from(self.0.len()).unwrap_or(u8::MAX);
        out.put_u8(len);
        out.put_slice(self.0.as_bytes());
    }

    pub(crate) fn take(r: &mut Reader, field: &'static str) -> Result<Self, Error> {
        let len = r.u8(field)?;
        let bytes = r.bytes(usize::from(len), field)?;
        let text = std::str::from_utf8(&bytes).map_err(|_| Error::InvalidName {
            reason: "not ASCII",
        })?;
        Name::new(text)
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for Name {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        Name::new(s)
    }
}

impl AsRef<str> for Name {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // PROTOCOL.md §4.1: naming rules.
    #[test]
    fn name_rules() {
        assert!(Name::new("r0").is_ok());
        assert!(Name::new("node-a.example:1").is_ok());
        assert!(Name::new("x".repeat(64)).is_ok());
        assert_eq!(Name::new(""), Err(Error::InvalidName { reason: "empty" }));
        assert!(Name::new("x".repeat(65)).is_err());
        assert!(Name::new("has space").is_err());
        assert!(Name::new("tab\t").is_err());
        assert!(Name::new("é").is_err());
    }

    // PROTOCOL.md §1.3: names compare byte-wise.
    #[test]
    fn names_order_bytewise() {
        let a = Name::new("alpha").unwrap();
        let b = Name::new("beta").unwrap();
        let upper = Name::new("Zulu").unwrap();
        assert!(a < b);
        assert!(upper < a, "uppercase sorts before lowercase, byte-wise");
    }
}

//! `wire_enum!`: an enum whose variants have fixed wire values, with `TryFrom` (unknown value →
//! [`crate::Error::UnknownValue`]), `From` back to the integer, `Display`/`FromStr` by name.

macro_rules! wire_enum {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident : $repr:ty, kind = $kind:literal {
            $( $(#[$vmeta:meta])* $variant:ident = $value:literal => $text:literal, )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[repr($repr)]
        $vis enum $name {
            $( $(#[$vmeta])* $variant = $value, )+
        }

        impl $name {
            /// Every variant, in wire-value order.
            pub const ALL: &'static [Self] = &[$(Self::$variant,)+];

            /// The display name (DRBD's spelling where DRBD has one).
            pub const fn as_str(self) -> &'static str {
                match self {
                    $( Self::$variant => $text, )+
                }
            }

            /// The value on the wire.
            pub const fn to_wire(self) -> $repr {
                self as $repr
            }
        }

        impl TryFrom<$repr> for $name {
            type Error = crate::Error;

            fn try_from(value: $repr) -> Result<Self, crate::Error> {
                match value {
                    $( $value => Ok(Self::$variant), )+
                    other => Err(crate::Error::UnknownValue { kind: $kind, value: u64::from(other) }),
                }
            }
        }

        impl From<$name> for $repr {
            fn from(value: $name) -> $repr {
                value.to_wire()
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::str::FromStr for $name {
            type Err = crate::Error;

            fn from_str(s: &str) -> Result<Self, crate::Error> {
                Self::ALL
                    .iter()
                    .copied()
                    .find(|v| v.as_str() == s)
                    .ok_or_else(|| crate::Error::UnknownName { kind: $kind, name: s.to_owned() })
            }
        }
    };
}

pub(crate) use wire_enum;

/// `wire_flags!`: a bit set over an unsigned integer where only named bits are allowed.
/// `from_bits` refuses undefined bits with [`crate::Error::UnknownValue`].
macro_rules! wire_flags {
    (
        $(#[$meta:meta])*
        $vis:vis struct $name:ident : $repr:ty, kind = $kind:literal {
            $( $(#[$vmeta:meta])* const $flag:ident = $value:expr; )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
        $vis struct $name($repr);

        impl $name {
            $( $(#[$vmeta])* pub const $flag: Self = Self($value); )+

            /// Every defined bit.
            pub const ALL_BITS: $repr = 0 $( | $value )+;

            /// No flag set.
            pub const fn empty() -> Self {
                Self(0)
            }

            /// The raw bits.
            pub const fn bits(self) -> $repr {
                self.0
            }

            /// Accepts `bits` only if every set bit is defined.
            pub const fn from_bits(bits: $repr) -> Result<Self, crate::Error> {
                if bits & !Self::ALL_BITS == 0 {
                    Ok(Self(bits))
                } else {
                    // Lossless widening; `u64::from` is not const.
                    Err(crate::Error::UnknownValue { kind: $kind, value: bits as u64 })
                }
            }

            /// True if every bit of `other` is set in `self`.
            pub const fn contains(self, other: Self) -> bool {
                self.0 & other.0 == other.0
            }

            /// True if no bit is set.
            pub const fn is_empty(self) -> bool {
                self.0 == 0
            }

            /// Sets the bits of `other`.
            pub fn insert(&mut self, other: Self) {
                self.0 |= other.0;
            }
        }

        impl std::ops::BitOr for $name {
            type Output = Self;

            fn bitor(self, rhs: Self) -> Self {
                Self(self.0 | rhs.0)
            }
        }
    };
}

pub(crate) use wire_flags;

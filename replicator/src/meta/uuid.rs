//! New generation UUIDs from the OS random number generator.

use urbd_protocol::{UUID_JUST_CREATED, UUID_PRIMARY_BIT};

use crate::error::Error;

/// A fresh random generation UUID: never 0, never `UUID_JUST_CREATED` (also with the primary
/// bit), bit 0 ("was primary") clear.
pub fn try_new_uuid() -> Result<u64, Error> {
    loop {
        let mut b = [0u8; 8];
        getrandom::fill(&mut b).map_err(|e| Error::MetaRandom(e.to_string()))?;
        let v = u64::from_be_bytes(b) & !UUID_PRIMARY_BIT;
        if v != 0 && v != UUID_JUST_CREATED {
            return Ok(v);
        }
    }
}

/// As [`try_new_uuid`]; panics if the OS random number generator fails (on Linux the
/// `getrandom` syscall does not fail once the pool is initialised).
pub fn new_uuid() -> u64 {
    match try_new_uuid() {
        Ok(v) => v,
        Err(e) => panic!("{e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_are_valid_and_distinct() {
        let a: Vec<u64> = (0..1000).map(|_| new_uuid()).collect();
        for &u in &a {
            assert!(u != 0 && u != UUID_JUST_CREATED && u & UUID_PRIMARY_BIT == 0);
        }
        let mut s = a.clone();
        s.sort_unstable();
        s.dedup();
        assert_eq!(s.len(), a.len());
    }
}

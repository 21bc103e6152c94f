//! The NBD error set. Only these values go on the wire; OS errnos are mapped here.

/// An error a client receives in a reply (NBD's errno set, `doc/proto.md` "Error values").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Errno {
    Perm,
    Io,
    NoMem,
    Inval,
    NoSpc,
    Overflow,
    NotSup,
    Shutdown,
}

impl Errno {
    /// The value on the wire.
    pub fn code(self) -> u32 {
        match self {
            Errno::Perm => 1,
            Errno::Io => 5,
            Errno::NoMem => 12,
            Errno::Inval => 22,
            Errno::NoSpc => 28,
            Errno::Overflow => 75,
            Errno::NotSup => 95,
            Errno::Shutdown => 108,
        }
    }

    /// Maps an OS errno (from a failed disk operation) onto NBD's set.
    pub fn from_os(errno: i32) -> Errno {
        match errno {
            libc_errno::EPERM | libc_errno::EACCES | libc_errno::EROFS => Errno::Perm,
            libc_errno::ENOMEM => Errno::NoMem,
            libc_errno::EINVAL => Errno::Inval,
            libc_errno::ENOSPC | libc_errno::EDQUOT | libc_errno::EFBIG => Errno::NoSpc,
            libc_errno::EOVERFLOW => Errno::Overflow,
            libc_errno::EOPNOTSUPP => Errno::NotSup,
            libc_errno::ESHUTDOWN => Errno::Shutdown,
            _ => Errno::Io,
        }
    }
}

impl std::fmt::Display for Errno {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match self {
            Errno::Perm => "EPERM",
            Errno::Io => "EIO",
            Errno::NoMem => "ENOMEM",
            Errno::Inval => "EINVAL",
            Errno::NoSpc => "ENOSPC",
            Errno::Overflow => "EOVERFLOW",
            Errno::NotSup => "ENOTSUP",
            Errno::Shutdown => "ESHUTDOWN",
        };
        f.write_str(name)
    }
}

/// Linux errno values we map (kept here so the codec needs no libc).
mod libc_errno {
    pub const EPERM: i32 = 1;
    pub const ENOMEM: i32 = 12;
    pub const EACCES: i32 = 13;
    pub const EINVAL: i32 = 22;
    pub const EFBIG: i32 = 27;
    pub const ENOSPC: i32 = 28;
    pub const EROFS: i32 = 30;
    pub const EOVERFLOW: i32 = 75;
    pub const EOPNOTSUPP: i32 = 95;
    pub const ESHUTDOWN: i32 = 108;
    pub const EDQUOT: i32 = 122;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_errors_never_pass_through_raw() {
        // ENOENT (2) is not in NBD's set: it must become EIO.
        assert_eq!(Errno::from_os(2), Errno::Io);
        assert_eq!(Errno::from_os(122).code(), 28);
        assert_eq!(Errno::from_os(95), Errno::NotSup);
        for os in 0..200 {
            let code = Errno::from_os(os).code();
            assert!([1, 5, 12, 22, 28, 75, 95, 108].contains(&code));
        }
    }
}

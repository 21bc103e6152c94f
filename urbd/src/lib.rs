//! The urbd binaries' shared code: subcommands of `urbd` and `urbdadm`.

pub mod listen;
pub mod serve;
pub mod signals;

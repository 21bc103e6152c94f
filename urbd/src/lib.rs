//! The urbd binaries' shared code: subcommands of `urbd` and `urbdadm`.

pub mod adm;
pub mod config;
pub mod control;
pub mod daemon;
pub mod listen;
pub mod peer;
pub mod serve;
pub mod signals;

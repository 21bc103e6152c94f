//! Harness for multi-process tests.
//!
//! The scenario tests (see `tests/scenarios/`) start the real `urbd serve`
//! binary ([`server::Server`]) and drive it with NBD clients that nobody on
//! the project wrote (qemu-io, qemu-img, nbdinfo, nbdcopy, fio, nbdfuse +
//! the kernel's ext4), plus a hand-rolled hostile client ([`nbdraw`]).
//!
//! Set `URBD_TEST_SERVER=qemu-nbd` to run the same scenarios against
//! `qemu-nbd` instead; that is how the tests themselves are validated
//! (urbd-specific assertions are then skipped, see [`server::Server::is_urbd`]).

pub mod clients;
pub mod json;
pub mod nbdraw;
pub mod server;
pub mod tools;
pub mod util;

pub use json::Json;
pub use server::{Listen, Server};
pub use tools::{require_root, require_tool, run_ok, run_output, Cmd};
pub use util::{make_sparse_disk, read_at, Prng, TempDir, MIB};

//! The control socket between `urbdadm` and the `urbd` daemon of one resource.
//!
//! The daemon listens on the Unix socket `<run-dir>/<resource>.sock` ([`socket_path`]), mode
//! 0600, and refuses peers of another uid ([`peer_uid_allowed`]). The protocol is
//! newline-delimited JSON: one [`Request`] per line, one [`Response`] per line, in order.
//! All JSON names are kebab-case.
//!
//! ```text
//! → {"cmd":"status"}
//! ← {"ok":true,"status":{"resource":"r0","node":"alpha","role":"Primary",…}}
//! → {"cmd":"primary","force":false}
//! ← {"ok":false,"error":"refusing to become Primary: the peer is Primary; run `urbdadm secondary r0` on beta first"}
//! → {"cmd":"connect","discard-my-data":true}
//! ← {"ok":true}
//! ```
//!
//! `{"cmd":"events"}` turns the connection into a stream: the daemon answers one [`Response`]
//! line (`{"ok":true}`), then writes [`Event`] lines (`{"what":"exists","object":"resource",…}`)
//! until either side closes: first the current state as `exists` events ending with
//! `{"what":"exists","object":"-"}`, then `change`/`create`/`destroy`/`call`/`response` events
//! as they happen. Requests sent on an events connection are ignored.
//!
//! A line is at most [`MAX_LINE_BYTES`]; the daemon answers a longer one with an error and
//! closes the connection. Unparsable requests get `{"ok":false,"error":…}` (see
//! [`Request::parse_line`]) and the connection stays usable.

mod client;
mod event;
mod status;

#[cfg(test)]
mod tests;

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use client::{Client, ControlError, Events, CALL_TIMEOUT};
pub use event::{Event, EventObject, EventWhat};
pub use status::{
    format_uuid, parse_uuid, Generation, NbdStatus, PeerStatus, ResyncProgress, ResyncSummary,
    Status, VerifyStatus,
};

/// Longest request, response or event line accepted, newline excluded.
pub const MAX_LINE_BYTES: usize = 1 << 20;

/// `<run-dir>/<resource>.sock`.
pub fn socket_path(run_dir: &Path, resource: &str) -> PathBuf {
    run_dir.join(format!("{resource}.sock"))
}

/// `<run-dir>/<resource>.log`: the daemon's stdout and stderr when started by `urbdadm up`.
pub fn log_path(run_dir: &Path, resource: &str) -> PathBuf {
    run_dir.join(format!("{resource}.log"))
}

/// One request line. `{"cmd":"…", …}`; absent booleans are `false`, absent offsets `null`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    tag = "cmd",
    rename_all = "kebab-case",
    rename_all_fields = "kebab-case"
)]
pub enum Request {
    /// The current [`Status`].
    Status,
    /// Become Primary. `force`: even with an Inconsistent/Outdated disk or no peer to ask
    /// (starts a new data generation; the first `primary --force` starts the initial sync).
    Primary {
        /// `--force`.
        #[serde(default)]
        force: bool,
    },
    /// Become Secondary. `force`: even with NBD clients connected (they are disconnected).
    Secondary {
        /// `--force`.
        #[serde(default)]
        force: bool,
    },
    /// Connect to the peer (leave StandAlone).
    Connect {
        /// Accept to become SyncTarget of a split brain: this node's changes are discarded.
        #[serde(default)]
        discard_my_data: bool,
    },
    /// Disconnect from the peer and stay StandAlone.
    Disconnect,
    /// Start a new data generation (current UUID := random).
    NewCurrentUuid {
        /// Also clear the bitmap (skip the initial sync of two identical, fresh disks).
        #[serde(default)]
        clear_bitmap: bool,
    },
    /// Shut the resource down: the daemon answers, then exits.
    Down,
    /// Discard the local data: full resync from the peer.
    Invalidate,
    /// Discard the peer's data: full resync to the peer.
    InvalidateRemote,
    /// Pause the resync.
    PauseSync,
    /// Resume a paused resync.
    ResumeSync,
    /// Online verify of `[start_bytes, stop_bytes)` (`null`: from the start / to the end).
    Verify {
        /// First byte to verify.
        #[serde(default)]
        start_bytes: Option<u64>,
        /// End of the range to verify (exclusive).
        #[serde(default)]
        stop_bytes: Option<u64>,
        /// Resync the mismatches from this node once the pass is over (they are marked out of
        /// sync, counted and logged either way).
        #[serde(default)]
        repair: bool,
    },
    /// Subscribe to [`Event`]s on this connection.
    Events,
}

impl Request {
    /// The command word, e.g. `"new-current-uuid"`.
    pub fn cmd(&self) -> &'static str {
        match self {
            Request::Status => "status",
            Request::Primary { .. } => "primary",
            Request::Secondary { .. } => "secondary",
            Request::Connect { .. } => "connect",
            Request::Disconnect => "disconnect",
            Request::NewCurrentUuid { .. } => "new-current-uuid",
            Request::Down => "down",
            Request::Invalidate => "invalidate",
            Request::InvalidateRemote => "invalidate-remote",
            Request::PauseSync => "pause-sync",
            Request::ResumeSync => "resume-sync",
            Request::Verify { .. } => "verify",
            Request::Events => "events",
        }
    }

    /// Parses one request line (daemon side). The error is the text of the error
    /// [`Response`] to send back.
    pub fn parse_line(line: &str) -> Result<Request, String> {
        if line.len() > MAX_LINE_BYTES {
            return Err(format!(
                "request line longer than {MAX_LINE_BYTES} bytes; send one JSON object per line"
            ));
        }
        serde_json::from_str(line.trim_end_matches(['\n', '\r'])).map_err(|e| {
            format!(
                "bad request: {e}; send one JSON object per line like {{\"cmd\":\"status\"}} \
                 (urbdadm speaks this protocol)"
            )
        })
    }

    /// The request as one JSON line, newline included.
    pub fn to_line(&self) -> String {
        to_line(self)
    }
}

/// One response line: `{"ok":true}`, `{"ok":true,"status":{…}}` or
/// `{"ok":false,"error":"one line: why, and what to do"}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Response {
    /// Whether the request was carried out.
    pub ok: bool,
    /// The status, for `status`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
    /// Why not, and what to do, in one line, when `ok` is false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Response {
    /// `{"ok":true}`.
    pub fn ok() -> Self {
        Response {
            ok: true,
            status: None,
            error: None,
        }
    }

    /// `{"ok":true,"status":{…}}`.
    pub fn with_status(status: Status) -> Self {
        Response {
            ok: true,
            status: Some(status),
            error: None,
        }
    }

    /// `{"ok":false,"error":"…"}`; newlines in `message` become spaces (one line).
    pub fn error(message: impl AsRef<str>) -> Self {
        Response {
            ok: false,
            status: None,
            error: Some(one_line(message.as_ref())),
        }
    }

    /// `Ok(status)` or `Err(error text)`.
    pub fn into_result(self) -> Result<Option<Status>, String> {
        if self.ok {
            Ok(self.status)
        } else {
            Err(self
                .error
                .unwrap_or_else(|| "refused (the daemon gave no reason)".to_string()))
        }
    }

    /// The response as one JSON line, newline included.
    pub fn to_line(&self) -> String {
        to_line(self)
    }
}

pub(crate) fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn to_line<T: Serialize>(value: &T) -> String {
    // Serializing these types cannot fail: no maps with non-string keys, no custom Serialize.
    let mut line = serde_json::to_string(value)
        .unwrap_or_else(|e| format!("{{\"ok\":false,\"error\":\"cannot encode: {e}\"}}"));
    line.push('\n');
    line
}

/// Whether the process at the other end of a control connection may use it: same effective
/// uid as this process, or root. Any error (not a Unix socket, no credentials) → `false`.
/// Works for `std` and `tokio` `UnixStream`s.
pub fn peer_uid_allowed(stream: &impl AsFd) -> bool {
    match peer_uid(stream) {
        // SAFETY: geteuid has no preconditions and cannot fail.
        Some(uid) => uid == 0 || uid == unsafe { libc::geteuid() },
        None => false,
    }
}

/// The uid of the process at the other end of a Unix socket (`SO_PEERCRED`).
pub fn peer_uid(stream: &impl AsFd) -> Option<u32> {
    use std::os::fd::AsRawFd;
    let fd = stream.as_fd().as_raw_fd();
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `fd` is a valid descriptor borrowed for the call; `cred` and `len` are valid,
    // writable and `len` holds the size of `cred`.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    (rc == 0 && len as usize == std::mem::size_of::<libc::ucred>()).then_some(cred.uid)
}

/// Daemon side: binds `<run-dir>/<resource>.sock` with mode 0600, creating `run_dir` (0755)
/// when missing. A socket file nobody answers on (left by a crashed daemon) is replaced; a live
/// one is an error ("already up"). Returns a blocking std listener: call
/// `set_nonblocking(true)` and `tokio::net::UnixListener::from_std` to use it with tokio.
pub fn bind_socket(
    run_dir: &Path,
    resource: &str,
) -> std::io::Result<std::os::unix::net::UnixListener> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    use std::os::unix::net::{UnixListener, UnixStream};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(run_dir)?;
    let path = socket_path(run_dir, resource);
    if std::fs::symlink_metadata(&path).is_ok() {
        if UnixStream::connect(&path).is_ok() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                format!(
                    "resource {resource} is already up on this node ({} answers); run \
                     `urbdadm down {resource}` first",
                    path.display()
                ),
            ));
        }
        std::fs::remove_file(&path)?;
    }
    let listener = UnixListener::bind(&path)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

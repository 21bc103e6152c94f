//! The blocking control-socket client used by `urbdadm`.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{log_path, socket_path, Event, Request, Response, Status, MAX_LINE_BYTES};

/// How long [`Client::call`] waits for a response by default. State changes can wait for the
/// peer (`timeout-ms`), so this is generous.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a control request did not get an answer (or got a refusal). `Display` is one line
/// with what to do.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// No socket: the daemon is not running.
    #[error("resource {resource} is not up on this node (no {}); run `urbdadm up {resource}`", socket.display())]
    NotUp {
        /// Resource name.
        resource: String,
        /// The socket that does not exist.
        socket: PathBuf,
    },
    /// A socket file nobody listens on: the daemon died without cleaning up.
    #[error("resource {resource} is not up on this node ({} exists but nobody answers: the daemon died; see {}); run `urbdadm up {resource}`", socket.display(), log.display())]
    Stale {
        /// Resource name.
        resource: String,
        /// The stale socket.
        socket: PathBuf,
        /// The daemon's log.
        log: PathBuf,
    },
    /// Not allowed to connect.
    #[error("cannot connect to {}: permission denied; run urbdadm as the user that runs urbd (usually root)", socket.display())]
    PermissionDenied {
        /// The socket.
        socket: PathBuf,
    },
    /// No response in time.
    #[error("no answer from the urbd daemon of {resource} within {} s; it may be stuck, see {}", timeout.as_secs(), log.display())]
    Timeout {
        /// Resource name.
        resource: String,
        /// How long we waited.
        timeout: Duration,
        /// The daemon's log.
        log: PathBuf,
    },
    /// The daemon closed the connection before answering.
    #[error("the urbd daemon of {resource} closed the control connection (is it going down?); see {}", log.display())]
    Closed {
        /// Resource name.
        resource: String,
        /// The daemon's log.
        log: PathBuf,
    },
    /// The daemon refused the request: its one-line reason and what to do.
    #[error("{message}")]
    Refused {
        /// The daemon's error text.
        message: String,
    },
    /// A line that is not valid JSON of the expected shape.
    #[error("the urbd daemon of {resource} sent an unreadable line ({detail}); are urbdadm and urbd the same version?")]
    Protocol {
        /// Resource name.
        resource: String,
        /// What was wrong.
        detail: String,
    },
    /// Another I/O error on the socket.
    #[error("control socket {}: {source}", socket.display())]
    Io {
        /// The socket.
        socket: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

impl ControlError {
    /// The daemon is not running (no socket, or a stale one).
    pub fn is_not_up(&self) -> bool {
        matches!(
            self,
            ControlError::NotUp { .. } | ControlError::Stale { .. }
        )
    }
}

/// A connection to one resource's daemon.
pub struct Client {
    resource: String,
    socket: PathBuf,
    log: PathBuf,
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    timeout: Duration,
}

impl Client {
    /// Connects to `<run_dir>/<resource>.sock`.
    pub fn connect(run_dir: &Path, resource: &str) -> Result<Client, ControlError> {
        let socket = socket_path(run_dir, resource);
        let log = log_path(run_dir, resource);
        let stream = match UnixStream::connect(&socket) {
            Ok(s) => s,
            Err(e) => {
                return Err(match e.kind() {
                    std::io::ErrorKind::NotFound => ControlError::NotUp {
                        resource: resource.to_string(),
                        socket,
                    },
                    std::io::ErrorKind::ConnectionRefused => ControlError::Stale {
                        resource: resource.to_string(),
                        socket,
                        log,
                    },
                    std::io::ErrorKind::PermissionDenied => {
                        ControlError::PermissionDenied { socket }
                    }
                    _ => ControlError::Io { socket, source: e },
                })
            }
        };
        let writer = stream.try_clone().map_err(|e| ControlError::Io {
            socket: socket.clone(),
            source: e,
        })?;
        Ok(Client {
            resource: resource.to_string(),
            socket,
            log,
            reader: BufReader::new(stream),
            writer,
            timeout: CALL_TIMEOUT,
        })
    }

    /// Sets the response timeout of [`Client::call`] (default [`CALL_TIMEOUT`]).
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    fn io(&self, e: std::io::Error) -> ControlError {
        match e.kind() {
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
                ControlError::Timeout {
                    resource: self.resource.clone(),
                    timeout: self.timeout,
                    log: self.log.clone(),
                }
            }
            std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset => {
                ControlError::Closed {
                    resource: self.resource.clone(),
                    log: self.log.clone(),
                }
            }
            _ => ControlError::Io {
                socket: self.socket.clone(),
                source: e,
            },
        }
    }

    fn send(&mut self, request: &Request) -> Result<(), ControlError> {
        let line = request.to_line();
        let _ = self.writer.set_write_timeout(Some(self.timeout));
        self.writer
            .write_all(line.as_bytes())
            .map_err(|e| self.io(e))
    }

    /// One line, or `None` at EOF.
    fn read_line(&mut self, timeout: Option<Duration>) -> Result<Option<String>, ControlError> {
        let _ = self.reader.get_ref().set_read_timeout(timeout);
        let mut line = String::new();
        let n = (&mut self.reader)
            .take(MAX_LINE_BYTES as u64 + 1)
            .read_line(&mut line)
            .map_err(|e| self.io(e))?;
        if n == 0 {
            return Ok(None);
        }
        if !line.ends_with('\n') {
            if line.len() > MAX_LINE_BYTES {
                return Err(ControlError::Protocol {
                    resource: self.resource.clone(),
                    detail: format!("a line longer than {MAX_LINE_BYTES} bytes"),
                });
            }
            // EOF in the middle of a line.
            return Ok(None);
        }
        Ok(Some(line))
    }

    fn read_response(&mut self) -> Result<Response, ControlError> {
        let Some(line) = self.read_line(Some(self.timeout))? else {
            return Err(ControlError::Closed {
                resource: self.resource.clone(),
                log: self.log.clone(),
            });
        };
        serde_json::from_str(&line).map_err(|e| ControlError::Protocol {
            resource: self.resource.clone(),
            detail: format!("response: {e}"),
        })
    }

    /// Sends one request and waits (up to the timeout) for its response. A refusal is an
    /// `Ok(Response { ok: false, .. })`; see [`Client::request`] for the `Result` form.
    pub fn call(&mut self, request: &Request) -> Result<Response, ControlError> {
        self.send(request)?;
        self.read_response()
    }

    /// [`Client::call`], a refusal turned into [`ControlError::Refused`].
    pub fn request(&mut self, request: &Request) -> Result<Option<Status>, ControlError> {
        self.call(request)?
            .into_result()
            .map_err(|message| ControlError::Refused { message })
    }

    /// The daemon's [`Status`].
    pub fn status(&mut self) -> Result<Status, ControlError> {
        self.request(&Request::Status)?
            .ok_or_else(|| ControlError::Protocol {
                resource: self.resource.clone(),
                detail: "status response without \"status\"".to_string(),
            })
    }

    /// Subscribes to events: the connection becomes an event stream (no timeout), ending when
    /// the daemon closes it.
    pub fn events(mut self) -> Result<Events, ControlError> {
        self.request(&Request::Events)?;
        Ok(Events { client: self })
    }
}

/// The event stream of [`Client::events`]: `Ok(event)` items until the daemon closes the
/// connection; an error item ends the stream.
pub struct Events {
    client: Client,
}

impl Iterator for Events {
    type Item = Result<Event, ControlError>;

    fn next(&mut self) -> Option<Self::Item> {
        let line = match self.client.read_line(None) {
            Ok(Some(line)) => line,
            Ok(None) => return None,
            Err(e) => return Some(Err(e)),
        };
        Some(
            serde_json::from_str(&line).map_err(|e| ControlError::Protocol {
                resource: self.client.resource.clone(),
                detail: format!("event: {e}"),
            }),
        )
    }
}

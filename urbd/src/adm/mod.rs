//! `urbdadm`, the admin CLI (modelled on drbdadm): argument parsing ([`Cli`]), the commands,
//! and status rendering ([`render`]). The binary (`src/bin/urbdadm.rs`) only calls [`main`].
//!
//! Exit codes: 0 ok, 1 refused or failed (one line on stderr: why and what to do), 2 usage,
//! 3 timeout in `wait-connect` / `wait-sync`.

pub mod md;
pub mod render;
mod up;
mod wait;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};

use crate::config::{Config, ConfigError, ResourceConfig};
use crate::control::{self, Client, ControlError, Request};

/// Success.
pub const EXIT_OK: u8 = 0;
/// Refused or failed.
pub const EXIT_FAILED: u8 = 1;
/// Bad usage (clap's code too).
pub const EXIT_USAGE: u8 = 2;
/// `wait-connect` / `wait-sync` timed out.
pub const EXIT_TIMEOUT: u8 = 3;

/// urbdadm: administer urbd replicated resources.
#[derive(Debug, Parser)]
#[command(
    name = "urbdadm",
    version,
    about = "urbdadm: administer urbd replicated resources"
)]
pub struct Cli {
    /// Directory of the resource files (`RES.toml`).
    #[arg(
        long,
        global = true,
        env = "URBD_CONFIG_DIR",
        default_value = "/etc/urbd"
    )]
    pub config_dir: PathBuf,
    /// This node's name in the resource files [default: the hostname].
    #[arg(long, global = true, env = "URBD_NODE")]
    pub node: Option<String>,
    /// Directory of the daemons' control sockets and logs.
    #[arg(long, global = true, env = "URBD_RUN_DIR", default_value = "/run/urbd")]
    pub run_dir: PathBuf,
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands (names as in drbdadm).
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Write fresh metadata to this node's disk (the data becomes Inconsistent).
    CreateMd {
        /// Resource.
        resource: String,
        /// Overwrite existing urbd metadata (discards it).
        #[arg(long)]
        force: bool,
    },
    /// Print this node's metadata (UUIDs, flags, bitmap summary).
    DumpMd {
        /// Resource.
        resource: String,
    },
    /// Start the resource's daemon on this node (attach the disk, connect to the peer).
    Up {
        /// Resource.
        resource: String,
    },
    /// Stop the resource's daemon on this node.
    Down {
        /// Resource.
        resource: String,
    },
    /// Become Primary (serve the NBD export).
    Primary {
        /// Resource.
        resource: String,
        /// Even with Inconsistent/Outdated data or no peer (starts a new data generation).
        #[arg(long)]
        force: bool,
    },
    /// Become Secondary (stop serving the NBD export).
    Secondary {
        /// Resource.
        resource: String,
        /// Even with NBD clients connected (they are disconnected).
        #[arg(long)]
        force: bool,
    },
    /// Connect to the peer.
    Connect {
        /// Resource.
        resource: String,
        /// Resolve a split brain by discarding this node's changes.
        #[arg(long)]
        discard_my_data: bool,
    },
    /// Disconnect from the peer (StandAlone).
    Disconnect {
        /// Resource.
        resource: String,
    },
    /// Start a new data generation.
    NewCurrentUuid {
        /// Resource.
        resource: String,
        /// Also clear the bitmap (skip the initial sync of identical fresh disks).
        #[arg(long)]
        clear_bitmap: bool,
    },
    /// Show the state of one resource, or of all in the config dir.
    Status {
        /// Resource [default: all].
        resource: Option<String>,
        /// JSON: an object for one resource, an array for all.
        #[arg(long)]
        json: bool,
    },
    /// Stream state changes, one line each (like drbdsetup events2).
    Events {
        /// Resource.
        resource: String,
        /// JSON lines instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Wait until the peer is connected.
    WaitConnect {
        /// Resource.
        resource: String,
        /// Give up after this many seconds (exit code 3) [default: wait forever].
        #[arg(long)]
        timeout_s: Option<u64>,
    },
    /// Wait until both disks are UpToDate and in sync, showing the resync's progress.
    WaitSync {
        /// Resource.
        resource: String,
        /// Give up after this many seconds (exit code 3) [default: wait forever].
        #[arg(long)]
        timeout_s: Option<u64>,
    },
    /// Discard this node's data: full resync from the peer.
    Invalidate {
        /// Resource.
        resource: String,
    },
    /// Discard the peer's data: full resync to the peer.
    InvalidateRemote {
        /// Resource.
        resource: String,
    },
    /// Pause the resync.
    PauseSync {
        /// Resource.
        resource: String,
    },
    /// Resume the resync.
    ResumeSync {
        /// Resource.
        resource: String,
    },
    /// Compare this node's data with the peer's (online verify).
    Verify {
        /// Resource.
        resource: String,
        /// Start offset (bytes; K, M, G, T suffixes are powers of 1024).
        #[arg(long, value_parser = parse_size)]
        start: Option<u64>,
        /// Stop offset (exclusive) [default: the end].
        #[arg(long, value_parser = parse_size)]
        stop: Option<u64>,
        /// Resync the blocks found different.
        #[arg(long)]
        repair: bool,
    },
    /// Print a ready-to-use config for a local two-node test pair (nodes alpha and beta).
    ExampleConfig {
        /// Resource.
        resource: String,
        /// Directory of the two disk images.
        #[arg(long, default_value = "/var/lib/urbd")]
        dir: PathBuf,
    },
}

/// A failed command: the exit code and one line for stderr (plus optional detail lines).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdmError {
    /// Exit code.
    pub code: u8,
    /// One line: why, and what to do.
    pub message: String,
    /// More lines (e.g. the daemon's log tail), printed after the message.
    pub detail: Option<String>,
}

impl AdmError {
    /// Exit code 1.
    pub fn failed(message: impl Into<String>) -> Self {
        AdmError {
            code: EXIT_FAILED,
            message: message.into(),
            detail: None,
        }
    }

    /// Exit code 3.
    pub fn timeout(message: impl Into<String>) -> Self {
        AdmError {
            code: EXIT_TIMEOUT,
            message: message.into(),
            detail: None,
        }
    }
}

impl From<ConfigError> for AdmError {
    fn from(e: ConfigError) -> Self {
        AdmError::failed(e.to_string())
    }
}

impl From<ControlError> for AdmError {
    fn from(e: ControlError) -> Self {
        AdmError::failed(e.to_string())
    }
}

/// The global options, resolved.
#[derive(Debug, Clone)]
pub struct Globals {
    /// `--config-dir`.
    pub config_dir: PathBuf,
    /// `--node`, or the hostname.
    pub node: String,
    /// `--run-dir`.
    pub run_dir: PathBuf,
}

impl Globals {
    fn load(&self, resource: &str) -> Result<ResourceConfig, AdmError> {
        let cfg = Config::load(&self.config_dir, resource)?;
        Ok(cfg)
    }

    fn connect(&self, resource: &str) -> Result<Client, AdmError> {
        check_resource_name(resource)?;
        Ok(Client::connect(&self.run_dir, resource)?)
    }
}

fn check_resource_name(resource: &str) -> Result<(), AdmError> {
    if resource.contains('/') || urbd_protocol::Name::new(resource).is_err() {
        return Err(AdmError {
            code: EXIT_USAGE,
            message: format!(
                "resource name \"{resource}\" is not valid; use printable ASCII without spaces \
                 or '/', e.g. r0"
            ),
            detail: None,
        });
    }
    Ok(())
}

/// This machine's hostname (`gethostname`), the default `--node`.
pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: `buf` is valid and writable for `buf.len()` bytes; gethostname writes at most that.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "localhost".to_string();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// Parses a size: bytes, or with a K/M/G/T suffix (powers of 1024; `KiB`, `k`, `KB` alike).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let digits_end = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, suffix) = t.split_at(digits_end);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("\"{s}\" is not a size; write bytes like 4096 or 4K, 1M, 2G"))?;
    let shift = match suffix.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => return Err(format!("\"{s}\" has an unknown unit; use K, M, G or T")),
    };
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| format!("\"{s}\" is too large"))
}

/// Writes to stdout; a closed stdout (`| head`) is not an error worth a message.
fn out(text: &str) -> Result<(), AdmError> {
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Err(AdmError {
            code: EXIT_OK,
            message: String::new(),
            detail: None,
        }),
        Err(e) => Err(AdmError::failed(format!("cannot write to stdout: {e}"))),
    }
}

/// Parses the arguments, runs the command, prints errors; returns the exit code.
pub fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let code = match run(cli) {
        Ok(()) => EXIT_OK,
        Err(e) => {
            if !e.message.is_empty() {
                eprintln!("urbdadm: {}", e.message);
            }
            if let Some(detail) = &e.detail {
                eprintln!("{}", detail.trim_end());
            }
            e.code
        }
    };
    std::process::ExitCode::from(code)
}

/// Runs one parsed command.
pub fn run(cli: Cli) -> Result<(), AdmError> {
    let g = Globals {
        config_dir: cli.config_dir,
        node: cli.node.unwrap_or_else(hostname),
        run_dir: cli.run_dir,
    };
    match cli.command {
        Command::CreateMd { resource, force } => create_md(&g, &resource, force),
        Command::DumpMd { resource } => {
            let cfg = g.load(&resource)?;
            let (local, _) = cfg.local_and_peer(&g.node)?;
            out(&md::dump(&cfg, local)?)
        }
        Command::Up { resource } => up::up(&g, &resource),
        Command::Down { resource } => down(&g, &resource),
        Command::Primary { resource, force } => simple(&g, &resource, Request::Primary { force }),
        Command::Secondary { resource, force } => {
            simple(&g, &resource, Request::Secondary { force })
        }
        Command::Connect {
            resource,
            discard_my_data,
        } => simple(&g, &resource, Request::Connect { discard_my_data }),
        Command::Disconnect { resource } => simple(&g, &resource, Request::Disconnect),
        Command::NewCurrentUuid {
            resource,
            clear_bitmap,
        } => simple(&g, &resource, Request::NewCurrentUuid { clear_bitmap }),
        Command::Invalidate { resource } => simple(&g, &resource, Request::Invalidate),
        Command::InvalidateRemote { resource } => simple(&g, &resource, Request::InvalidateRemote),
        Command::PauseSync { resource } => simple(&g, &resource, Request::PauseSync),
        Command::ResumeSync { resource } => simple(&g, &resource, Request::ResumeSync),
        Command::Verify {
            resource,
            start,
            stop,
            repair,
        } => {
            if let (Some(a), Some(b)) = (start, stop) {
                if a >= b {
                    return Err(AdmError {
                        code: EXIT_USAGE,
                        message: format!("--start {a} is not below --stop {b}; swap them"),
                        detail: None,
                    });
                }
            }
            simple(
                &g,
                &resource,
                Request::Verify {
                    start_bytes: start,
                    stop_bytes: stop,
                    repair,
                },
            )
        }
        Command::Status { resource, json } => status(&g, resource.as_deref(), json),
        Command::Events { resource, json } => events(&g, &resource, json),
        Command::WaitConnect {
            resource,
            timeout_s,
        } => wait::wait_connect(&g, &resource, timeout_s.map(Duration::from_secs)),
        Command::WaitSync {
            resource,
            timeout_s,
        } => wait::wait_sync(&g, &resource, timeout_s.map(Duration::from_secs)),
        Command::ExampleConfig { resource, dir } => {
            check_resource_name(&resource)?;
            out(&ResourceConfig::example(&resource, &dir))
        }
    }
}

/// A request whose only answer is ok or a refusal.
fn simple(g: &Globals, resource: &str, request: Request) -> Result<(), AdmError> {
    let mut client = g.connect(resource)?;
    client
        .request(&request)
        .map_err(|e| match e {
            ControlError::Refused { message } => AdmError::failed(format!("{resource}: {message}")),
            e => e.into(),
        })
        .map(|_| ())
}

fn create_md(g: &Globals, resource: &str, force: bool) -> Result<(), AdmError> {
    let cfg = g.load(resource)?;
    let (local, peer) = cfg.local_and_peer(&g.node)?;
    if let Ok(mut c) = Client::connect(&g.run_dir, resource) {
        if c.status().is_ok() {
            return Err(AdmError::failed(format!(
                "resource {resource} is up on this node; run `urbdadm down {resource}` before \
                 create-md"
            )));
        }
    }
    let msg = md::create(&cfg, local, peer, force)?;
    out(&msg)
}

fn down(g: &Globals, resource: &str) -> Result<(), AdmError> {
    check_resource_name(resource)?;
    let mut client = match Client::connect(&g.run_dir, resource) {
        Ok(c) => c,
        Err(ControlError::NotUp { .. }) => return Ok(()),
        Err(ControlError::Stale { socket, .. }) => {
            // Nothing runs; remove the dead daemon's socket.
            let _ = std::fs::remove_file(socket);
            return Ok(());
        }
        Err(e) => return Err(e.into()),
    };
    match client.request(&Request::Down) {
        Ok(_) | Err(ControlError::Closed { .. }) => {}
        Err(ControlError::Refused { message }) => {
            return Err(AdmError::failed(format!("{resource}: {message}")))
        }
        Err(e) => return Err(e.into()),
    }
    drop(client);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match Client::connect(&g.run_dir, resource) {
            Err(e) if e.is_not_up() => return Ok(()),
            _ if Instant::now() >= deadline => {
                return Err(AdmError::failed(format!(
                    "resource {resource} accepted `down` but its daemon still answers after 10 \
                     s; see {}",
                    control::log_path(&g.run_dir, resource).display()
                )))
            }
            _ => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

fn status(g: &Globals, resource: Option<&str>, json: bool) -> Result<(), AdmError> {
    if let Some(resource) = resource {
        let status = g.connect(resource)?.status()?;
        let text = if json {
            let mut s = serde_json::to_string_pretty(&status)
                .map_err(|e| AdmError::failed(e.to_string()))?;
            s.push('\n');
            s
        } else {
            render::render_status(&status)
        };
        return out(&text);
    }
    // All resources of the config dir that are up; errors other than "not up" are reported.
    let mut statuses = Vec::new();
    let mut failed = None;
    for resource in Config::list(&g.config_dir)? {
        match Client::connect(&g.run_dir, &resource).and_then(|mut c| c.status()) {
            Ok(s) => statuses.push(s),
            Err(e) if e.is_not_up() => {}
            Err(e) => {
                eprintln!("urbdadm: {resource}: {e}");
                failed = Some(AdmError {
                    code: EXIT_FAILED,
                    message: String::new(),
                    detail: None,
                });
            }
        }
    }
    let text = if json {
        let mut s =
            serde_json::to_string_pretty(&statuses).map_err(|e| AdmError::failed(e.to_string()))?;
        s.push('\n');
        s
    } else {
        statuses
            .iter()
            .map(render::render_status)
            .collect::<Vec<_>>()
            .join("\n")
    };
    out(&text)?;
    failed.map_or(Ok(()), Err)
}

fn events(g: &Globals, resource: &str, json: bool) -> Result<(), AdmError> {
    let events = g.connect(resource)?.events()?;
    for event in events {
        let event = event?;
        let line = if json {
            event.to_line()
        } else {
            format!("{event}\n")
        };
        out(&line)?;
    }
    Ok(())
}

/// The last `n` lines of `path` after byte `from` (for error reports).
fn log_tail(path: &Path, from: u64, n: usize) -> Option<String> {
    let bytes = std::fs::read(path).ok()?;
    let start = usize::try_from(from).unwrap_or(0).min(bytes.len());
    let text = String::from_utf8_lossy(&bytes[start..]);
    let lines: Vec<&str> = text.lines().collect();
    if lines.is_empty() {
        return None;
    }
    let tail = lines[lines.len().saturating_sub(n)..].join("\n");
    Some(format!("--- last lines of {} ---\n{tail}", path.display()))
}

#[cfg(test)]
mod tests;

//! Resource configuration: one TOML file per resource, `<config-dir>/<resource>.toml`.
//!
//! Key names are kebab-case and are a contract (scripts and docs use them). Unknown keys are
//! errors. Every error is one line naming the file (and the line when known), the key and the
//! fix; see [`ConfigError`].
//!
//! ```toml
//! protocol = "C"                 # A | B | C (default C)
//! secret = "…"                   # shared by both nodes; HMAC peer authentication
//! auto-promote = false
//! [[node]]                       # exactly two
//! name = "alpha"                 # matched against --node (default: the hostname)
//! address = "127.0.0.1:7789"     # replication endpoint, HOST:PORT
//! disk = "/var/lib/urbd/r0-alpha.img"
//! meta-disk = "internal"         # "internal" (default) or an absolute path
//! nbd = "127.0.0.1:10809"        # NBD export when Primary: HOST:PORT or unix:/path
//! [net]  [disk]  [resync]  [split-brain]  [handlers]   # all optional, see the structs
//! [testing]                                           # tests only: disk fault injection
//! ```

mod locate;

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use locate::Locator;

/// File name suffix of a resource configuration.
pub const CONFIG_SUFFIX: &str = ".toml";
/// The placeholder secret of the documentation; accepted with a warning.
pub const PLACEHOLDER_SECRET: &str = "change-me";
/// Default activity-log size in extents (the metadata module's).
pub const AL_EXTENTS_DEFAULT: u32 = urbd_replicator::meta::AL_EXTENTS_DEFAULT;
/// Smallest accepted `al-extents`.
pub const AL_EXTENTS_MIN: u32 = 1;
/// Largest accepted `al-extents` (one activity-log block).
pub const AL_EXTENTS_MAX: u32 = urbd_replicator::meta::AL_EXTENTS_MAX;
/// Default bitmap granularity.
pub const BYTES_PER_BIT_DEFAULT: u32 = urbd_replicator::meta::BYTES_PER_BIT_DEFAULT;
/// Smallest accepted `bytes-per-bit`.
pub const BYTES_PER_BIT_MIN: u32 = urbd_replicator::meta::layout::BYTES_PER_BIT_MIN;
/// Largest accepted `bytes-per-bit`.
pub const BYTES_PER_BIT_MAX: u32 = urbd_replicator::meta::layout::BYTES_PER_BIT_MAX;
const MIB: u64 = 1 << 20;

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// What kind of configuration error (for callers and tests; the text is in the message).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigErrorKind {
    /// The configuration directory does not exist or cannot be listed.
    NoConfigDir,
    /// The resource's file does not exist.
    NotFound,
    /// The file exists but cannot be read.
    Io,
    /// The resource name is not usable (empty, too long, spaces, `/`).
    BadResourceName,
    /// TOML syntax error.
    Syntax,
    /// A key that is not part of the schema (usually a typo).
    UnknownKey,
    /// A required key is absent.
    MissingKey,
    /// A value has the wrong type or is not one of the allowed words.
    BadValue,
    /// Values parse but do not make sense together (or alone): validation.
    Invalid,
    /// `--node` names no `[[node]]` of the file.
    UnknownNode,
}

/// A configuration error: one line, `FILE[:LINE]: what is wrong; how to fix it`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// What went wrong, coarsely.
    pub kind: ConfigErrorKind,
    /// The file (or directory) concerned.
    pub path: PathBuf,
    /// 1-based line in the file, when known.
    pub line: Option<usize>,
    /// One line: the key, what is wrong, the fix.
    pub message: String,
}

impl ConfigError {
    fn new(kind: ConfigErrorKind, path: &Path, line: Option<usize>, message: String) -> Self {
        // Always one line, whatever the source of the text.
        let message = message.split_whitespace().collect::<Vec<_>>().join(" ");
        ConfigError {
            kind,
            path: path.to_path_buf(),
            line,
            message,
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{}: {}", self.path.display(), line, self.message),
            None => write!(f, "{}: {}", self.path.display(), self.message),
        }
    }
}

impl std::error::Error for ConfigError {}

// ---------------------------------------------------------------------------------------------
// Schema
// ---------------------------------------------------------------------------------------------

/// When a write completes to the application (DRBD protocols A, B, C).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Protocol {
    /// Local write done and the data handed to the local send buffer.
    A,
    /// Local write done and the peer has received the data.
    B,
    /// Local write done and the peer has written the data (default).
    #[default]
    C,
}

impl Protocol {
    /// The protocol crate's value.
    pub fn to_wire(self) -> urbd_protocol::ReplicationProtocol {
        match self {
            Protocol::A => urbd_protocol::ReplicationProtocol::A,
            Protocol::B => urbd_protocol::ReplicationProtocol::B,
            Protocol::C => urbd_protocol::ReplicationProtocol::C,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::A => "A",
            Protocol::B => "B",
            Protocol::C => "C",
        })
    }
}

/// One resource, as read from `<config-dir>/<resource>.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ResourceConfig {
    /// The resource name (the file name without `.toml`); not a key of the file.
    #[serde(skip)]
    pub resource: String,
    /// The file it was read from; not a key of the file.
    #[serde(skip)]
    pub path: PathBuf,
    /// Replication protocol, default C.
    #[serde(default)]
    pub protocol: Protocol,
    /// Shared secret for HMAC peer authentication. Required, non-empty.
    pub secret: String,
    /// Become Primary automatically when an NBD client connects (default false).
    #[serde(default)]
    pub auto_promote: bool,
    /// Exactly two nodes (`[[node]]`).
    #[serde(rename = "node")]
    pub nodes: Vec<NodeConfig>,
    /// `[net]`.
    #[serde(default)]
    pub net: NetConfig,
    /// `[disk]`.
    #[serde(default)]
    pub disk: DiskConfig,
    /// `[resync]`.
    #[serde(default)]
    pub resync: ResyncConfig,
    /// `[split-brain]`.
    #[serde(default)]
    pub split_brain: SplitBrainConfig,
    /// `[handlers]`.
    #[serde(default)]
    pub handlers: HandlersConfig,
    /// `[testing]`: fault injection for the test suite; never set in production.
    #[serde(default, skip_serializing_if = "TestingConfig::is_unset")]
    pub testing: TestingConfig,
}

/// `[testing]`: hooks the test suite selects in its own configs (absent by default; the daemon
/// logs a warning at start when one is set).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct TestingConfig {
    /// A disk fault plan file (EIO on ranges, slow writes), re-read when it changes; format in
    /// `replicator/src/disk/faults.rs` and docs/OPERATIONS.md.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disk_fault_plan: Option<PathBuf>,
}

impl TestingConfig {
    pub fn is_unset(&self) -> bool {
        self.disk_fault_plan.is_none()
    }
}

/// One `[[node]]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct NodeConfig {
    /// Node name; `--node` (default: the hostname) selects the local one.
    pub name: String,
    /// Replication endpoint, `HOST:PORT` (the node listens there, the peer connects there).
    pub address: String,
    /// Backing block device or file (absolute path).
    pub disk: PathBuf,
    /// `"internal"` (metadata at the end of `disk`, the default) or an absolute path.
    #[serde(default = "default_meta_disk")]
    pub meta_disk: String,
    /// Where this node serves the NBD export while Primary: `HOST:PORT` or `unix:/path`.
    pub nbd: String,
}

fn default_meta_disk() -> String {
    "internal".to_string()
}

/// Where the metadata lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetaDisk<'a> {
    /// At the end of the data disk.
    Internal,
    /// In a separate file or device.
    External(&'a Path),
}

/// An NBD listening endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NbdEndpoint {
    /// `HOST:PORT`.
    Tcp(String),
    /// `unix:/path`.
    Unix(PathBuf),
}

impl NodeConfig {
    /// The metadata location.
    pub fn meta_disk(&self) -> MetaDisk<'_> {
        if self.meta_disk == "internal" {
            MetaDisk::Internal
        } else {
            MetaDisk::External(Path::new(&self.meta_disk))
        }
    }

    /// The NBD endpoint (validated at load).
    pub fn nbd_endpoint(&self) -> NbdEndpoint {
        match self.nbd.strip_prefix("unix:") {
            Some(path) => NbdEndpoint::Unix(PathBuf::from(path)),
            None => NbdEndpoint::Tcp(self.nbd.clone()),
        }
    }
}

/// `[net]`: liveness and transport limits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct NetConfig {
    /// Send a ping after this long without traffic on the meta connection (default 2000).
    pub ping_interval_ms: u64,
    /// A ping must be answered this soon, else the link is dead (default 1000).
    pub ping_timeout_ms: u64,
    /// A write the peer has not acked in this time → the peer is considered lost (default 6000).
    pub timeout_ms: u64,
    /// Wait this long between connection attempts (default 1000).
    pub connect_interval_ms: u64,
    /// Largest accepted frame, header and crc included (default 1 MiB + 36).
    pub max_frame_bytes: u32,
    /// Replicated writes in flight to the peer at most (default 1024).
    pub max_inflight_writes: u32,
    /// `SO_SNDBUF` of the peer sockets; unset: the kernel's autotuning.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sndbuf_bytes: Option<u32>,
    /// `SO_RCVBUF` of the peer sockets; unset: the kernel's autotuning.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rcvbuf_bytes: Option<u32>,
}

impl Default for NetConfig {
    fn default() -> Self {
        NetConfig {
            ping_interval_ms: 2000,
            ping_timeout_ms: 1000,
            timeout_ms: 6000,
            connect_interval_ms: 1000,
            max_frame_bytes: urbd_protocol::MAX_FRAME_BYTES_DEFAULT,
            max_inflight_writes: 1024,
            sndbuf_bytes: None,
            rcvbuf_bytes: None,
        }
    }
}

impl NetConfig {
    /// `ping-interval-ms` as a duration.
    pub fn ping_interval(&self) -> Duration {
        Duration::from_millis(self.ping_interval_ms)
    }
    /// `ping-timeout-ms` as a duration.
    pub fn ping_timeout(&self) -> Duration {
        Duration::from_millis(self.ping_timeout_ms)
    }
    /// `timeout-ms` as a duration.
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }
    /// `connect-interval-ms` as a duration.
    pub fn connect_interval(&self) -> Duration {
        Duration::from_millis(self.connect_interval_ms)
    }
    /// The decoder limits for the peer connections (validated at load).
    pub fn decode_limits(&self) -> urbd_protocol::DecodeLimits {
        urbd_protocol::DecodeLimits::new(self.max_frame_bytes).unwrap_or_default()
    }
}

/// What to do on a local disk I/O error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnIoError {
    /// A node that is not Primary stops using a failing disk and goes on Diskless, connected
    /// (default; PROTOCOL.md §5.6). A Primary's read errors are retried from the peer.
    #[default]
    Detach,
    /// Report the error to the application.
    PassOn,
}

/// `[disk]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct DiskConfig {
    /// Bitmap granularity: bytes covered by one bit (power of two, default 4096).
    pub bytes_per_bit: u32,
    /// Activity-log extents (default [`AL_EXTENTS_DEFAULT`]).
    pub al_extents: u32,
    /// `detach` (default) or `pass-on`.
    pub on_io_error: OnIoError,
}

impl Default for DiskConfig {
    fn default() -> Self {
        DiskConfig {
            bytes_per_bit: BYTES_PER_BIT_DEFAULT,
            al_extents: AL_EXTENTS_DEFAULT,
            on_io_error: OnIoError::Detach,
        }
    }
}

/// Checksum-based resync (PROTOCOL.md §7.6.4): for full resyncs the SyncSource sends a
/// digest of each block first, and the data only where the SyncTarget's block differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CsumsAlg {
    /// Send every out-of-sync block (default).
    #[default]
    None,
    /// crc32c digests.
    Crc32c,
    /// sha256 digests.
    Sha256,
}

/// Online-verify digest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum VerifyAlg {
    /// crc32c (default).
    #[default]
    Crc32c,
    /// sha256.
    Sha256,
}

/// `[resync]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct ResyncConfig {
    /// Resync rate ceiling (default 200 MiB/s).
    pub rate_bytes_per_s_max: u64,
    /// Resync rate floor under application I/O (default 10 MiB/s).
    pub rate_bytes_per_s_min: u64,
    /// `none` (default), `crc32c`, `sha256`.
    pub csums_alg: CsumsAlg,
    /// `crc32c` (default), `sha256`.
    pub verify_alg: VerifyAlg,
}

impl Default for ResyncConfig {
    fn default() -> Self {
        ResyncConfig {
            rate_bytes_per_s_max: 200 * MIB,
            rate_bytes_per_s_min: 10 * MIB,
            csums_alg: CsumsAlg::None,
            verify_alg: VerifyAlg::Crc32c,
        }
    }
}

/// Split-brain recovery with no Primary (`after-sb-0pri`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum AfterSb0Pri {
    /// Drop the connection, StandAlone (default).
    #[default]
    Disconnect,
    /// The node that became Primary later loses its changes.
    DiscardYoungerPrimary,
    /// The node that became Primary earlier loses its changes.
    DiscardOlderPrimary,
    /// A node without changes becomes SyncTarget; both changed → disconnect.
    DiscardZeroChanges,
    /// The node with fewer changed blocks loses them.
    DiscardLeastChanges,
    /// The named node loses its changes (`discard-node-NAME`).
    DiscardNode(String),
}

const AFTER_SB_0PRI_WORDS: &str = "disconnect, discard-younger-primary, discard-older-primary, \
     discard-zero-changes, discard-least-changes, discard-node-NAME";

impl TryFrom<String> for AfterSb0Pri {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        Ok(match s.as_str() {
            "disconnect" => AfterSb0Pri::Disconnect,
            "discard-younger-primary" => AfterSb0Pri::DiscardYoungerPrimary,
            "discard-older-primary" => AfterSb0Pri::DiscardOlderPrimary,
            "discard-zero-changes" => AfterSb0Pri::DiscardZeroChanges,
            "discard-least-changes" => AfterSb0Pri::DiscardLeastChanges,
            other => match other.strip_prefix("discard-node-") {
                Some(name) if !name.is_empty() => AfterSb0Pri::DiscardNode(name.to_string()),
                _ => {
                    return Err(format!(
                        "\"{s}\" is not valid; use one of: {AFTER_SB_0PRI_WORDS}"
                    ))
                }
            },
        })
    }
}

impl From<AfterSb0Pri> for String {
    fn from(p: AfterSb0Pri) -> String {
        match p {
            AfterSb0Pri::Disconnect => "disconnect".into(),
            AfterSb0Pri::DiscardYoungerPrimary => "discard-younger-primary".into(),
            AfterSb0Pri::DiscardOlderPrimary => "discard-older-primary".into(),
            AfterSb0Pri::DiscardZeroChanges => "discard-zero-changes".into(),
            AfterSb0Pri::DiscardLeastChanges => "discard-least-changes".into(),
            AfterSb0Pri::DiscardNode(name) => format!("discard-node-{name}"),
        }
    }
}

/// Split-brain recovery with one Primary (`after-sb-1pri`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AfterSb1Pri {
    /// Drop the connection, StandAlone (default).
    #[default]
    Disconnect,
    /// Apply the after-sb-0pri verdict only if it discards the Secondary; else disconnect.
    Consensus,
    /// The Secondary loses its changes.
    DiscardSecondary,
}

/// Split-brain recovery with two Primaries (`after-sb-2pri`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AfterSb2Pri {
    /// Drop the connection, StandAlone (the only choice, and the default).
    #[default]
    Disconnect,
}

/// `[split-brain]`: automatic recovery policies; all default to `disconnect`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct SplitBrainConfig {
    /// With no Primary.
    #[serde(rename = "after-sb-0pri")]
    pub after_sb_0pri: AfterSb0Pri,
    /// With one Primary.
    #[serde(rename = "after-sb-1pri")]
    pub after_sb_1pri: AfterSb1Pri,
    /// With two Primaries.
    #[serde(rename = "after-sb-2pri")]
    pub after_sb_2pri: AfterSb2Pri,
}

/// `[handlers]`: shell commands run (`sh -c`) on events, with `URBD_RESOURCE`, `URBD_NODE`,
/// `URBD_PEER` … in the environment.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct HandlersConfig {
    /// Run when a split brain is detected.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub split_brain: Option<String>,
    /// Run to fence the peer before a Primary goes on without it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fence_peer: Option<String>,
    /// Run before this node becomes SyncTarget.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub before_resync_target: Option<String>,
    /// Run after this node finished a resync as SyncTarget.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub after_resync_target: Option<String>,
}

// ---------------------------------------------------------------------------------------------
// Loading
// ---------------------------------------------------------------------------------------------

/// Namespace for finding and loading resource configurations.
pub struct Config;

impl Config {
    /// `<config_dir>/<resource>.toml`.
    pub fn path(config_dir: &Path, resource: &str) -> PathBuf {
        config_dir.join(format!("{resource}{CONFIG_SUFFIX}"))
    }

    /// Reads, parses and validates `<config_dir>/<resource>.toml`.
    pub fn load(config_dir: &Path, resource: &str) -> Result<ResourceConfig, ConfigError> {
        let path = Self::path(config_dir, resource);
        check_resource_name(resource, &path)?;
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let hint = if config_dir.is_dir() {
                    format!(
                        "no such file; create it (e.g. `urbdadm example-config {resource} > {}`) \
                         or pass --config-dir",
                        path.display()
                    )
                } else {
                    format!(
                        "no such file (directory {} does not exist); pass --config-dir or set \
                         URBD_CONFIG_DIR",
                        config_dir.display()
                    )
                };
                return Err(ConfigError::new(
                    ConfigErrorKind::NotFound,
                    &path,
                    None,
                    hint,
                ));
            }
            Err(e) => {
                return Err(ConfigError::new(
                    ConfigErrorKind::Io,
                    &path,
                    None,
                    format!("cannot read: {e}; check the permissions"),
                ))
            }
        };
        ResourceConfig::parse(&text, &path, resource)
    }

    /// The resources configured in `config_dir` (file names ending in `.toml`), sorted.
    pub fn list(config_dir: &Path) -> Result<Vec<String>, ConfigError> {
        let entries = std::fs::read_dir(config_dir).map_err(|e| {
            ConfigError::new(
                ConfigErrorKind::NoConfigDir,
                config_dir,
                None,
                format!(
                    "cannot list the configuration directory: {e}; pass --config-dir or set \
                     URBD_CONFIG_DIR"
                ),
            )
        })?;
        let mut names: Vec<String> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().into_string().ok())
            .filter_map(|n| n.strip_suffix(CONFIG_SUFFIX).map(str::to_string))
            .filter(|n| !n.is_empty() && !n.starts_with('.'))
            .collect();
        names.sort();
        Ok(names)
    }
}

fn check_resource_name(resource: &str, path: &Path) -> Result<(), ConfigError> {
    if resource.contains('/') || urbd_protocol::Name::new(resource).is_err() {
        return Err(ConfigError::new(
            ConfigErrorKind::BadResourceName,
            path,
            None,
            format!(
                "resource name \"{resource}\" is not valid; use 1 to {} printable ASCII \
                 characters without spaces or '/', e.g. r0",
                urbd_protocol::NAME_LEN_BYTES_MAX
            ),
        ));
    }
    Ok(())
}

impl ResourceConfig {
    /// Parses and validates the text of `path` (the file of `resource`).
    pub fn parse(text: &str, path: &Path, resource: &str) -> Result<ResourceConfig, ConfigError> {
        check_resource_name(resource, path)?;
        let locator = Locator::new(text);
        let mut cfg: ResourceConfig =
            toml::from_str(text).map_err(|e| map_toml_error(&e, &locator, path))?;
        cfg.resource = resource.to_string();
        cfg.path = path.to_path_buf();
        cfg.validate_with(&locator)?;
        Ok(cfg)
    }

    /// Checks the values (the rules that serde cannot express). [`Config::load`] and
    /// [`ResourceConfig::parse`] call it; use it after building a config in code.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_with(&Locator::new(""))
    }

    fn validate_with(&self, loc: &Locator) -> Result<(), ConfigError> {
        let path = &self.path;
        let invalid = |table: Option<(&str, usize)>, key: &str, message: String| {
            ConfigError::new(
                ConfigErrorKind::Invalid,
                path,
                loc.find_key(table, key),
                message,
            )
        };
        if self.secret.is_empty() {
            return Err(invalid(
                None,
                "secret",
                "secret is empty; set the same long random string on both nodes, e.g. \
                 secret = \"$(head -c 24 /dev/urandom | base64)\""
                    .into(),
            ));
        }
        if self.nodes.len() != 2 {
            return Err(invalid(
                None,
                "node",
                format!(
                    "{} [[node]] tables found, exactly 2 are needed (this node and its peer); \
                     add or remove [[node]] tables",
                    self.nodes.len()
                ),
            ));
        }
        for (i, node) in self.nodes.iter().enumerate() {
            let at = Some(("node", i));
            if urbd_protocol::Name::new(node.name.as_str()).is_err() {
                return Err(invalid(
                    at,
                    "name",
                    format!(
                        "node[{i}].name \"{}\" is not valid; use 1 to {} printable ASCII \
                         characters without spaces, e.g. \"alpha\"",
                        node.name,
                        urbd_protocol::NAME_LEN_BYTES_MAX
                    ),
                ));
            }
            if parse_host_port(&node.address).is_none() {
                return Err(invalid(
                    at,
                    "address",
                    format!(
                        "node[{i}].address \"{}\" is not HOST:PORT; write e.g. \"{}\"",
                        node.address,
                        host_port_example(&node.address, 7789 + i as u16)
                    ),
                ));
            }
            if !node.disk.is_absolute() {
                return Err(invalid(
                    at,
                    "disk",
                    format!(
                        "node[{i}].disk \"{}\" is not an absolute path; write e.g. \
                         \"/var/lib/urbd/{}-{}.img\"",
                        node.disk.display(),
                        self.resource,
                        node.name
                    ),
                ));
            }
            if node.meta_disk != "internal" && !Path::new(&node.meta_disk).is_absolute() {
                return Err(invalid(
                    at,
                    "meta-disk",
                    format!(
                        "node[{i}].meta-disk \"{}\" is neither \"internal\" nor an absolute path; \
                         write meta-disk = \"internal\" or e.g. \"/var/lib/urbd/{}-{}.md\"",
                        node.meta_disk, self.resource, node.name
                    ),
                ));
            }
            let nbd_ok = match node.nbd.strip_prefix("unix:") {
                Some(p) => Path::new(p).is_absolute(),
                None => parse_host_port(&node.nbd).is_some(),
            };
            if !nbd_ok {
                return Err(invalid(
                    at,
                    "nbd",
                    format!(
                        "node[{i}].nbd \"{}\" is neither HOST:PORT nor unix:/absolute/path; \
                         write e.g. \"{}\" or \"unix:/run/urbd/{}.nbd\"",
                        node.nbd,
                        host_port_example(&node.nbd, 10809 + i as u16),
                        self.resource
                    ),
                ));
            }
            if node.nbd == node.address {
                return Err(invalid(
                    at,
                    "nbd",
                    format!(
                        "node[{i}].nbd \"{}\" is the node's replication address; give the NBD \
                         export its own port, e.g. \"{}\"",
                        node.nbd,
                        host_port_example(&node.nbd, 10809 + i as u16)
                    ),
                ));
            }
        }
        let (a, b) = (&self.nodes[0], &self.nodes[1]);
        if a.name == b.name {
            return Err(invalid(
                Some(("node", 1)),
                "name",
                format!(
                    "node[0].name and node[1].name are both \"{}\"; give each node its own name \
                     (its hostname, or what it passes as --node)",
                    a.name
                ),
            ));
        }
        if a.address == b.address {
            return Err(invalid(
                Some(("node", 1)),
                "address",
                format!(
                    "node[0].address and node[1].address are both \"{}\"; each node needs its \
                     own replication endpoint, e.g. \"{}\"",
                    a.address,
                    host_port_example(&b.address, 7790)
                ),
            ));
        }
        if b.nbd == a.address || a.nbd == b.address {
            return Err(invalid(
                None,
                "nbd",
                "a node's nbd address is the other node's replication address; use distinct \
                 ports"
                    .into(),
            ));
        }
        if a.disk == b.disk && a.address_host() == b.address_host() {
            return Err(invalid(
                Some(("node", 1)),
                "disk",
                format!(
                    "node[0].disk and node[1].disk are both \"{}\" on the same host; give each \
                     node its own disk",
                    a.disk.display()
                ),
            ));
        }
        self.validate_net(loc)?;
        self.validate_disk(loc)?;
        self.validate_resync(loc)?;
        if let AfterSb0Pri::DiscardNode(name) = &self.split_brain.after_sb_0pri {
            if !self.nodes.iter().any(|n| &n.name == name) {
                return Err(invalid(
                    Some(("split-brain", 0)),
                    "after-sb-0pri",
                    format!(
                        "split-brain.after-sb-0pri \"discard-node-{name}\" names no node; use \
                         discard-node-{} or discard-node-{}",
                        a.name, b.name
                    ),
                ));
            }
        }
        let handlers = [
            ("split-brain", &self.handlers.split_brain),
            ("fence-peer", &self.handlers.fence_peer),
            ("before-resync-target", &self.handlers.before_resync_target),
            ("after-resync-target", &self.handlers.after_resync_target),
        ];
        for (key, value) in handlers {
            if value.as_deref().is_some_and(|v| v.trim().is_empty()) {
                return Err(invalid(
                    Some(("handlers", 0)),
                    key,
                    format!("handlers.{key} is empty; remove the key or give a command"),
                ));
            }
        }
        Ok(())
    }

    fn validate_net(&self, loc: &Locator) -> Result<(), ConfigError> {
        let net = &self.net;
        let err = |key: &str, message: String| {
            ConfigError::new(
                ConfigErrorKind::Invalid,
                &self.path,
                loc.find_key(Some(("net", 0)), key),
                message,
            )
        };
        for (key, value, default) in [
            ("ping-interval-ms", net.ping_interval_ms, 2000),
            ("ping-timeout-ms", net.ping_timeout_ms, 1000),
            ("timeout-ms", net.timeout_ms, 6000),
            ("connect-interval-ms", net.connect_interval_ms, 1000),
        ] {
            if value == 0 {
                return Err(err(
                    key,
                    format!("net.{key} is 0; it must be > 0 (default {default})"),
                ));
            }
            if value > 86_400_000 {
                return Err(err(
                    key,
                    format!("net.{key} {value} is more than a day; use e.g. {default}"),
                ));
            }
        }
        if net.ping_timeout_ms >= net.timeout_ms {
            return Err(err(
                "ping-timeout-ms",
                format!(
                    "net.ping-timeout-ms {} must be less than net.timeout-ms {}; lower \
                     ping-timeout-ms (default 1000) or raise timeout-ms (default 6000)",
                    net.ping_timeout_ms, net.timeout_ms
                ),
            ));
        }
        if urbd_protocol::DecodeLimits::new(net.max_frame_bytes).is_err() {
            return Err(err(
                "max-frame-bytes",
                format!(
                    "net.max-frame-bytes {} is out of range; use {}..={} (default {})",
                    net.max_frame_bytes,
                    urbd_protocol::MAX_FRAME_BYTES_LOWER_BOUND,
                    urbd_protocol::MAX_FRAME_BYTES_UPPER_BOUND,
                    urbd_protocol::MAX_FRAME_BYTES_DEFAULT
                ),
            ));
        }
        if net.max_inflight_writes == 0 {
            return Err(err(
                "max-inflight-writes",
                "net.max-inflight-writes is 0; it must be > 0 (default 1024)".into(),
            ));
        }
        for (key, value) in [
            ("sndbuf-bytes", net.sndbuf_bytes),
            ("rcvbuf-bytes", net.rcvbuf_bytes),
        ] {
            if value == Some(0) {
                return Err(err(
                    key,
                    format!(
                        "net.{key} is 0; remove the key for the kernel's autotuning or give a \
                         size, e.g. 4194304"
                    ),
                ));
            }
        }
        Ok(())
    }

    fn validate_disk(&self, loc: &Locator) -> Result<(), ConfigError> {
        let disk = &self.disk;
        let err = |key: &str, message: String| {
            ConfigError::new(
                ConfigErrorKind::Invalid,
                &self.path,
                loc.find_key(Some(("disk", 0)), key),
                message,
            )
        };
        let (min, max) = (BYTES_PER_BIT_MIN, BYTES_PER_BIT_MAX);
        if !disk.bytes_per_bit.is_power_of_two() || !(min..=max).contains(&disk.bytes_per_bit) {
            return Err(err(
                "bytes-per-bit",
                format!(
                    "disk.bytes-per-bit {} must be a power of two in {min}..={max}; use e.g. \
                     {BYTES_PER_BIT_DEFAULT}",
                    disk.bytes_per_bit
                ),
            ));
        }
        if !(AL_EXTENTS_MIN..=AL_EXTENTS_MAX).contains(&disk.al_extents) {
            return Err(err(
                "al-extents",
                format!(
                    "disk.al-extents {} is out of range; use {AL_EXTENTS_MIN}..={AL_EXTENTS_MAX} \
                     (default {AL_EXTENTS_DEFAULT})",
                    disk.al_extents
                ),
            ));
        }
        Ok(())
    }

    fn validate_resync(&self, loc: &Locator) -> Result<(), ConfigError> {
        let r = &self.resync;
        let err = |key: &str, message: String| {
            ConfigError::new(
                ConfigErrorKind::Invalid,
                &self.path,
                loc.find_key(Some(("resync", 0)), key),
                message,
            )
        };
        if r.rate_bytes_per_s_max == 0 {
            return Err(err(
                "rate-bytes-per-s-max",
                format!(
                    "resync.rate-bytes-per-s-max is 0; it must be > 0 (default {})",
                    200 * MIB
                ),
            ));
        }
        if r.rate_bytes_per_s_min > r.rate_bytes_per_s_max {
            return Err(err(
                "rate-bytes-per-s-min",
                format!(
                    "resync.rate-bytes-per-s-min {} is above rate-bytes-per-s-max {}; lower it",
                    r.rate_bytes_per_s_min, r.rate_bytes_per_s_max
                ),
            ));
        }
        Ok(())
    }

    /// Things that work but are probably mistakes, one line each (print them as warnings).
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.secret == PLACEHOLDER_SECRET {
            out.push(format!(
                "{}: secret is the placeholder \"{PLACEHOLDER_SECRET}\"; set the same long random \
                 string on both nodes",
                self.path.display()
            ));
        } else if self.secret.len() < 16 {
            out.push(format!(
                "{}: secret is only {} characters; use at least 16 random characters",
                self.path.display(),
                self.secret.len()
            ));
        }
        out
    }

    /// `(this node, its peer)` for the local node name (`--node`, default the hostname).
    pub fn local_and_peer(
        &self,
        node_name: &str,
    ) -> Result<(&NodeConfig, &NodeConfig), ConfigError> {
        match self.nodes.iter().position(|n| n.name == node_name) {
            Some(i) if self.nodes.len() == 2 => Ok((&self.nodes[i], &self.nodes[1 - i])),
            _ => {
                let names: Vec<String> = self
                    .nodes
                    .iter()
                    .map(|n| format!("\"{}\"", n.name))
                    .collect();
                Err(ConfigError::new(
                    ConfigErrorKind::UnknownNode,
                    &self.path,
                    None,
                    format!(
                        "no [[node]] is named \"{node_name}\" (this node's name: --node, \
                         URBD_NODE, default the hostname); the nodes are {}; pass --node with \
                         one of them",
                        names.join(", ")
                    ),
                ))
            }
        }
    }

    /// The node named `name`.
    pub fn node(&self, name: &str) -> Option<&NodeConfig> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// The configuration as TOML (for `urbdadm dump-config`-like uses and round trips).
    pub fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }

    /// A ready-to-use two-node configuration for a local test pair: nodes `alpha` and `beta` on
    /// 127.0.0.1 (replication ports 7789/7790, NBD 10809/10810), disks `DIR/RES-alpha.img` and
    /// `DIR/RES-beta.img`, a random secret. Use `urbdadm --node alpha …` and `--node beta`.
    pub fn example(resource: &str, dir: &Path) -> String {
        Self::example_with_ports(resource, dir, [7789, 7790, 10809, 10810])
    }

    /// [`ResourceConfig::example`] with other ports: `[alpha, beta, alpha nbd, beta nbd]`.
    pub fn example_with_ports(resource: &str, dir: &Path, ports: [u16; 4]) -> String {
        let dir = if dir.is_absolute() {
            dir.to_path_buf()
        } else {
            std::env::current_dir()
                .map(|cwd| cwd.join(dir))
                .unwrap_or_else(|_| dir.to_path_buf())
        };
        let disk = |node: &str| {
            toml_string(
                &dir.join(format!("{resource}-{node}.img"))
                    .display()
                    .to_string(),
            )
        };
        let [pa, pb, na, nb] = ports;
        format!(
            r#"# urbd resource "{resource}": a local test pair (two nodes on this host).
# Start with: urbdadm --node alpha create-md {resource}; urbdadm --node beta create-md {resource}
#             urbdadm --node alpha up {resource};        urbdadm --node beta up {resource}
#             urbdadm --node alpha primary --force {resource}   (first time: alpha's data wins)
protocol = "C"              # A | B | C
secret = "{secret}"
auto-promote = false

[[node]]
name = "alpha"
address = "127.0.0.1:{pa}"
disk = {disk_a}
meta-disk = "internal"
nbd = "127.0.0.1:{na}"

[[node]]
name = "beta"
address = "127.0.0.1:{pb}"
disk = {disk_b}
meta-disk = "internal"
nbd = "127.0.0.1:{nb}"

[net]
ping-interval-ms = 2000
ping-timeout-ms = 1000
timeout-ms = 6000
connect-interval-ms = 1000

[disk]
bytes-per-bit = 4096
on-io-error = "detach"

[resync]
rate-bytes-per-s-max = 209715200
rate-bytes-per-s-min = 10485760
csums-alg = "none"
verify-alg = "crc32c"

[split-brain]
after-sb-0pri = "disconnect"
after-sb-1pri = "disconnect"
after-sb-2pri = "disconnect"

[handlers]
# split-brain = "logger -t urbd split brain on $URBD_RESOURCE"
"#,
            secret = random_secret(),
            disk_a = disk("alpha"),
            disk_b = disk("beta"),
        )
    }
}

impl NodeConfig {
    fn address_host(&self) -> Option<&str> {
        parse_host_port(&self.address).map(|(h, _)| h)
    }
}

/// A TOML basic string literal.
fn toml_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn random_secret() -> String {
    let mut bytes = [0u8; 18];
    if getrandom::fill(&mut bytes).is_err() {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = (nanos >> ((i % 16) * 8)) as u8 ^ (std::process::id() as u8).wrapping_mul(i as u8);
        }
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Splits `HOST:PORT` (IPv6 as `[addr]:PORT`); the port must be 1..=65535.
pub fn parse_host_port(s: &str) -> Option<(&str, u16)> {
    let (host, port) = s.rsplit_once(':')?;
    let port: u16 = port.parse().ok()?;
    if port == 0 || host.is_empty() || host.chars().any(char::is_whitespace) {
        return None;
    }
    if let Some(inner) = host.strip_prefix('[') {
        let inner = inner.strip_suffix(']')?;
        inner.parse::<std::net::Ipv6Addr>().ok()?;
        return Some((host, port));
    }
    if host.contains(':') || host.contains('[') || host.contains(']') || host.contains('/') {
        return None;
    }
    Some((host, port))
}

/// A corrected example for a bad `HOST:PORT` value: keep its host when there is one.
fn host_port_example(bad: &str, port: u16) -> String {
    let host = bad.rsplit_once(':').map(|(h, _)| h).unwrap_or(bad).trim();
    let host = if host.is_empty() || host.contains(['/', ' ']) || host.starts_with("unix") {
        "127.0.0.1"
    } else {
        host
    };
    format!("{host}:{port}")
}

// ---------------------------------------------------------------------------------------------
// toml errors → one line
// ---------------------------------------------------------------------------------------------

/// Words between backticks in a serde message: "unknown field `x`, expected one of `a`, `b`".
fn backticked(s: &str) -> Vec<&str> {
    s.split('`').skip(1).step_by(2).collect()
}

fn map_toml_error(e: &toml::de::Error, loc: &Locator, path: &Path) -> ConfigError {
    let msg = e.message().trim();
    let at = e.span().map(|span| loc.at(span.start));
    let line = at.as_ref().map(|a| a.line);
    let table = at
        .as_ref()
        .map(|a| a.table_label())
        .unwrap_or_else(|| "the top level".to_string());
    let key = at.as_ref().and_then(|a| a.qualified_key());

    if let Some(rest) = msg.strip_prefix("unknown field") {
        let words = backticked(rest);
        let bad = words.first().copied().unwrap_or("?");
        let known = &words[1.min(words.len())..];
        let suggestion = closest(bad, known)
            .map(|k| format!("did you mean \"{k}\"? "))
            .unwrap_or_default();
        let known = if known.is_empty() {
            "none".to_string()
        } else {
            known.join(", ")
        };
        return ConfigError::new(
            ConfigErrorKind::UnknownKey,
            path,
            line,
            format!("unknown key \"{bad}\" in {table}; {suggestion}known keys: {known}"),
        );
    }
    if let Some(rest) = msg.strip_prefix("missing field") {
        let field = backticked(rest).first().copied().unwrap_or("?").to_string();
        let fix = match field.as_str() {
            "secret" => "add e.g. secret = \"a long random string, the same on both nodes\"",
            "node" => "add two [[node]] tables (name, address, disk, nbd)",
            "name" => "add e.g. name = \"alpha\" (the node's hostname or its --node)",
            "address" => "add e.g. address = \"192.0.2.1:7789\"",
            "disk" => "add e.g. disk = \"/var/lib/urbd/r0.img\"",
            "nbd" => "add e.g. nbd = \"127.0.0.1:10809\" (or \"unix:/run/urbd/r0.nbd\")",
            _ => "add it",
        };
        // The span of a missing field is the table it is missing from.
        let table = if field == "secret" || field == "node" {
            "the top level".to_string()
        } else {
            table
        };
        return ConfigError::new(
            ConfigErrorKind::MissingKey,
            path,
            line,
            format!("missing key \"{field}\" in {table}; {fix}"),
        );
    }
    let key_name = key.unwrap_or_else(|| "value".to_string());
    if let Some(rest) = msg.strip_prefix("unknown variant") {
        let words = backticked(rest);
        let bad = words.first().copied().unwrap_or("?");
        let allowed = words[1.min(words.len())..].join(", ");
        return ConfigError::new(
            ConfigErrorKind::BadValue,
            path,
            line,
            format!("{key_name} \"{bad}\" is not valid; use one of: {allowed}"),
        );
    }
    if msg.starts_with("invalid type") || msg.starts_with("invalid value") {
        return ConfigError::new(
            ConfigErrorKind::BadValue,
            path,
            line,
            format!("{key_name}: {msg}; fix the value's type (numbers and booleans without quotes, words in quotes)"),
        );
    }
    if msg.starts_with('"') && msg.contains("is not valid; use") {
        // Our own TryFrom messages.
        return ConfigError::new(
            ConfigErrorKind::BadValue,
            path,
            line,
            format!("{key_name} {msg}"),
        );
    }
    ConfigError::new(
        ConfigErrorKind::Syntax,
        path,
        line,
        format!("TOML syntax error: {msg}; fix the syntax at this line"),
    )
}

/// The known key closest to `bad` (edit distance ≤ 3), for "did you mean".
fn closest<'a>(bad: &str, known: &[&'a str]) -> Option<&'a str> {
    known
        .iter()
        .map(|k| (edit_distance(bad, k), *k))
        .filter(|(d, _)| *d <= 3)
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests;

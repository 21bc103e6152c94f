//! `urbd run RES`: the daemon of one replicated resource (one process per resource, in the
//! foreground, for systemd; `urbdadm up` starts it detached). It wires the replication core
//! (`engine`) to the local disk (io_uring), the metadata, the peer link, the NBD export and
//! the control socket.

mod control_server;
mod device;
mod engine;
mod handlers;
mod meta;
mod status;
mod wire;

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio::sync::{mpsc, watch};
use urbd_replicator::core::{decision, Core, CoreConfig};
use urbd_replicator::disk::{DiskConfig, LocalDisk};

use crate::config::{Config, MetaDisk};
use crate::control::Request;
use crate::listen::ListenAddr;
use crate::peer::{Connector, LocalHello, PeerConfig};
use engine::{Engine, EngineInput, HelloState};

/// Engine inputs waiting at most (clients wait when it is full).
const ENGINE_QUEUE_INPUTS: usize = 4096;
const TICK_MS: u64 = 100;

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Directory of `<resource>.toml` files.
    #[arg(long, env = "URBD_CONFIG_DIR", default_value = "/etc/urbd")]
    pub config_dir: PathBuf,
    /// This node's name in the config (default: the hostname).
    #[arg(long, env = "URBD_NODE")]
    pub node: Option<String>,
    /// Where the control socket lives.
    #[arg(long, env = "URBD_RUN_DIR", default_value = "/run/urbd")]
    pub run_dir: PathBuf,
    /// The resource to run.
    pub resource: String,
}

fn resolve(addr: &str) -> Result<SocketAddr> {
    addr.to_socket_addrs()
        .with_context(|| format!("cannot resolve {addr}"))?
        .next()
        .with_context(|| format!("{addr} resolves to nothing"))
}

pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "localhost".into())
}

pub async fn run(args: RunArgs) -> Result<()> {
    let node = args.node.clone().unwrap_or_else(hostname);
    let cfg = Config::load(&args.config_dir, &args.resource)?;
    for w in cfg.warnings() {
        tracing::warn!("{w}");
    }
    let (local, peer) = cfg.local_and_peer(&node)?;
    if local.meta_disk() != MetaDisk::Internal {
        bail!(
            "{}: only meta-disk = \"internal\" is supported by this version",
            cfg.path.display()
        );
    }
    let attached = meta::Metadata::attach(&local.disk).with_context(|| {
        format!(
            "resource {}: cannot attach {}",
            cfg.resource,
            local.disk.display()
        )
    })?;
    let disk_cfg = DiskConfig {
        fault_plan: cfg.testing.disk_fault_plan.clone(),
        ..DiskConfig::default()
    };
    let disk = Arc::new(LocalDisk::open(&local.disk, &disk_cfg)?);
    let data_size_bytes = attached.data_size_bytes;
    let limits = cfg.net.decode_limits();
    let core_cfg = CoreConfig {
        node_name: local.name.clone(),
        peer_name: peer.name.clone(),
        protocol: cfg.protocol.to_wire(),
        data_size_bytes,
        bytes_per_bit: attached.bytes_per_bit,
        timeout_ms: cfg.net.timeout_ms,
        ping_interval_ms: cfg.net.ping_interval_ms,
        ping_timeout_ms: cfg.net.ping_timeout_ms,
        resync_chunk_bytes: resync_chunk_bytes(
            limits.max_data_bytes() as u64,
            attached.bytes_per_bit,
        ),
        resync_inflight_max: 8,
        conflicts_waiting_max: 1 << 16,
        al_extents: attached.al_extents as usize,
        al_extent_bytes: attached.al_extent_bytes,
        uuid_seed: urbd_replicator::meta::new_uuid(),
        split_brain: split_brain_policy(&cfg.split_brain),
        resync_rate_max_bytes_per_s: cfg.resync.rate_bytes_per_s_max,
        resync_rate_min_bytes_per_s: cfg.resync.rate_bytes_per_s_min,
        verify_alg: match cfg.resync.verify_alg {
            crate::config::VerifyAlg::Crc32c => urbd_protocol::DigestAlgorithm::Crc32c,
            crate::config::VerifyAlg::Sha256 => urbd_protocol::DigestAlgorithm::Sha256,
        },
        csums_alg: match cfg.resync.csums_alg {
            crate::config::CsumsAlg::None => None,
            crate::config::CsumsAlg::Crc32c => Some(urbd_protocol::DigestAlgorithm::Crc32c),
            crate::config::CsumsAlg::Sha256 => Some(urbd_protocol::DigestAlgorithm::Sha256),
        },
        on_io_error_detach: cfg.disk.on_io_error == crate::config::OnIoError::Detach,
    };
    warn_unimplemented(&cfg);
    let core = Core::new(core_cfg, attached.restored);
    let (tx, rx) = mpsc::channel(ENGINE_QUEUE_INPUTS);

    // The NBD export (served while Primary; a Secondary refuses clients with a message).
    let nbd_addr: ListenAddr = local.nbd.parse().map_err(|e: String| {
        anyhow::anyhow!("{}: node {} nbd: {e}", cfg.path.display(), local.name)
    })?;
    let (nbd_listener, uri) = nbd_addr
        .bind(&cfg.resource)
        .await
        .with_context(|| format!("cannot listen for NBD clients on {nbd_addr}"))?;
    let write_chunk_bytes = largest_power_of_two_at_most(limits.max_data_bytes() as u64);
    let device = Arc::new(device::ReplicatedDevice {
        disk: disk.clone(),
        engine: tx.clone(),
        data_size_bytes,
        write_chunk_bytes,
    });
    let nbd_cfg = nbd_frontend::ServerConfig {
        export_name: cfg.resource.clone(),
        description: format!("urbd resource {} on {}", cfg.resource, local.name),
        ..Default::default()
    };
    let (_stop_nbd, nbd_stopped) = watch::channel(false);
    tokio::spawn(async move {
        if let Err(e) = nbd_frontend::run(nbd_listener, device, nbd_cfg, nbd_stopped).await {
            tracing::error!("NBD server stopped: {e}");
        }
    });

    // The control socket.
    let control = control_server::bind(&args.run_dir, &cfg.resource)?;
    tokio::spawn(control_server::serve(control, tx.clone()));

    // Ticks.
    let tick_tx = tx.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_millis(TICK_MS));
        loop {
            every.tick().await;
            if tick_tx.send(EngineInput::Tick).await.is_err() {
                return;
            }
        }
    });

    // SIGTERM / SIGINT: a clean `down`.
    let sig_tx = tx.clone();
    tokio::spawn(async move {
        let (stop, mut stopped) = watch::channel(false);
        tokio::spawn(crate::signals::stop_on_signal(stop));
        let _ = stopped.changed().await;
        let (done, _) = tokio::sync::oneshot::channel();
        let _ = sig_tx
            .send(EngineInput::Admin {
                req: Request::Down,
                done,
            })
            .await;
    });

    // The peer link.
    let peer_cfg = PeerConfig {
        resource: cfg.resource.clone(),
        local_name: local.name.clone(),
        peer_name: peer.name.clone(),
        listen: resolve(&local.address)?,
        peer_addr: resolve(&peer.address)?,
        secret: cfg.secret.as_bytes().to_vec(),
        limits,
        connect_interval_ms: cfg.net.connect_interval_ms,
        handshake_timeout_ms: 5000,
        send_queue_frames_max: 4096,
        recv_queue_frames_max: 4096,
    };
    // Bound now, so that an address in use fails `urbdadm up` with the reason, rather than a
    // daemon that never listens.
    let connector = Connector::try_start(peer_cfg).map_err(|e| {
        anyhow::anyhow!(
            "resource {}: {e}; stop whatever uses it (`ss -ltnp`) or change this node's \
             `address` in {}",
            cfg.resource,
            cfg.path.display()
        )
    })?;
    let connector = Arc::new(tokio::sync::Mutex::new(connector));
    let protocol = cfg.protocol.to_wire();
    let bytes_per_bit = attached.bytes_per_bit;
    let max_frame_bytes = limits.max_frame_bytes();
    let connect = Box::new(
        move |engine: mpsc::Sender<EngineInput>, hello: watch::Receiver<HelloState>| {
            let connector = connector.clone();
            tokio::spawn(async move {
                let mut c = connector.lock().await;
                let view = hello.borrow().view;
                let local_hello = LocalHello {
                    params: urbd_protocol::Params {
                        size_bytes: data_size_bytes,
                        protocol,
                        bitmap_granularity_bytes: bytes_per_bit,
                        max_frame_bytes,
                    },
                    state: wire::state_of(&view),
                };
                let input = match c.connect(local_hello).await {
                    Ok(est) => EngineInput::PeerUp(Box::new(est)),
                    Err(e) => EngineInput::ConnectFailed(e.to_string()),
                };
                let _ = engine.send(input).await;
            })
            .abort_handle()
        },
    );

    let info = status::StatusInfo::new(
        &cfg.resource,
        &local.name,
        &peer.name,
        &cfg.protocol.to_wire().to_string(),
        &local.nbd,
    );
    let (hello_tx, _) = watch::channel(HelloState { view: core.view() });
    let mut engine = Engine::new(
        core,
        disk,
        attached.meta,
        tx,
        hello_tx,
        info,
        cfg.auto_promote,
        connect,
    );
    engine.inflight_writes_max = cfg.net.max_inflight_writes.max(1) as usize;
    engine.connect_interval_ms = cfg.net.connect_interval_ms.max(1);
    engine.handlers = handlers::Handlers {
        split_brain: cfg.handlers.split_brain.clone(),
        before_resync_target: cfg.handlers.before_resync_target.clone(),
        after_resync_target: cfg.handlers.after_resync_target.clone(),
        resource: cfg.resource.clone(),
        node: local.name.clone(),
        peer: peer.name.clone(),
    };
    println!(
        "urbd: resource {} on node {} up; NBD export {uri} (served while Primary)",
        cfg.resource, local.name
    );
    use std::io::Write;
    std::io::stdout().flush().ok();
    engine.run(rx).await;
    tracing::info!("resource {} down", cfg.resource);
    Ok(())
}

fn largest_power_of_two_at_most(n: u64) -> u32 {
    assert!(n >= 4096, "frame limit too small for data");
    let p = 1u64 << (63 - n.leading_zeros());
    p.min(32 << 20) as u32
}

/// Resync requests: as large as a frame carries, a multiple of the bitmap granularity.
fn resync_chunk_bytes(max_data_bytes: u64, bytes_per_bit: u32) -> u32 {
    let chunk = u64::from(largest_power_of_two_at_most(max_data_bytes)).min(1 << 20);
    chunk.max(u64::from(bytes_per_bit)) as u32
}

fn split_brain_policy(c: &crate::config::SplitBrainConfig) -> decision::SplitBrainPolicy {
    use crate::config::{AfterSb0Pri as C0, AfterSb1Pri as C1, AfterSb2Pri as C2};
    use decision::{After0Pri as P0, After1Pri as P1, After2Pri as P2};
    decision::SplitBrainPolicy {
        after_sb_0pri: match &c.after_sb_0pri {
            C0::Disconnect => P0::Disconnect,
            C0::DiscardYoungerPrimary => P0::DiscardYoungerPrimary,
            C0::DiscardOlderPrimary => P0::DiscardOlderPrimary,
            C0::DiscardZeroChanges => P0::DiscardZeroChanges,
            C0::DiscardLeastChanges => P0::DiscardLeastChanges,
            C0::DiscardNode(n) => P0::DiscardNode(n.clone()),
        },
        after_sb_1pri: match c.after_sb_1pri {
            C1::Disconnect => P1::Disconnect,
            C1::Consensus => P1::Consensus,
            C1::DiscardSecondary => P1::DiscardSecondary,
        },
        after_sb_2pri: match c.after_sb_2pri {
            C2::Disconnect => P2::Disconnect,
        },
        always_asbp: false,
    }
}

/// Keys this version parses but does not act on yet: say so once at start, never silently.
fn warn_unimplemented(cfg: &crate::config::ResourceConfig) {
    let path = cfg.path.display();
    let h = &cfg.handlers;
    // split-brain, before-resync-target and after-resync-target are run (handlers.rs);
    // fencing (freezing I/O until fence-peer answers) is not implemented.
    let handlers = [("fence-peer", &h.fence_peer)];
    for (key, value) in handlers {
        if value.is_some() {
            tracing::warn!("{path}: [handlers] {key} is not run by this version of urbd (events and the log report the same state changes)");
        }
    }
}

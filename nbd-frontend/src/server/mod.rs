//! The NBD server loop: accepts connections, negotiates, then serves requests on a BlockDevice.

mod negotiate;
mod stream;
mod transmit;

use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{watch, Semaphore};

pub use negotiate::Session;
pub use stream::SplitStream;

use crate::device::BlockDevice;

/// Limits and naming of one export.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub export_name: String,
    pub description: String,
    /// Largest request (and write payload) accepted, advertised as the maximum block size.
    pub request_bytes_max: u32,
    /// Requests a single connection may have in flight.
    pub inflight_requests_max: u32,
    /// Payload bytes a single connection may have in flight.
    pub inflight_bytes_max: u64,
    /// Options a client may send before it must pick an export.
    pub handshake_options_max: u32,
    /// Largest option data accepted in the handshake.
    pub option_bytes_max: u32,
    pub handshake_timeout_ms: u64,
    /// Connections served at once; more wait in the listen backlog.
    pub connections_max: u32,
}

impl Default for ServerConfig {
    fn default() -> ServerConfig {
        ServerConfig {
            export_name: "urbd".into(),
            description: "urbd".into(),
            request_bytes_max: 32 << 20,
            inflight_requests_max: 256,
            inflight_bytes_max: 128 << 20,
            handshake_options_max: 64,
            option_bytes_max: 64 << 10,
            handshake_timeout_ms: 30_000,
            connections_max: 256,
        }
    }
}

/// Where the server listens.
pub enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener),
}

/// Serves `device` on `listener` until `shutdown` becomes true. Connection errors are logged and
/// end only that connection.
pub async fn run<D: BlockDevice>(
    listener: Listener,
    device: Arc<D>,
    config: ServerConfig,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    assert!(
        config.request_bytes_max >= 1 << 20,
        "maximum block size below 1 MiB"
    );
    assert!(u64::from(config.request_bytes_max) <= config.inflight_bytes_max);
    let config = Arc::new(config);
    let slots = Arc::new(Semaphore::new(config.connections_max as usize));
    loop {
        let permit = tokio::select! {
            _ = shutdown.changed() => return Ok(()),
            p = slots.clone().acquire_owned() => p.expect("semaphore never closed"),
        };
        let accepted = tokio::select! {
            _ = shutdown.changed() => return Ok(()),
            a = accept(&listener) => a,
        };
        let (stream, peer) = match accepted {
            Ok(s) => s,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!("accept failed: {e}; retrying in 100 ms");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let device = device.clone();
        let config = config.clone();
        tokio::spawn(async move {
            serve_connection(stream, &peer, device, &config).await;
            drop(permit);
        });
    }
}

async fn accept(listener: &Listener) -> std::io::Result<(stream::AnyStream, String)> {
    match listener {
        Listener::Tcp(l) => {
            let (s, addr) = l.accept().await?;
            s.set_nodelay(true)?;
            Ok((stream::AnyStream::Tcp(s), addr.to_string()))
        }
        Listener::Unix(l) => {
            let (s, _) = l.accept().await?;
            Ok((stream::AnyStream::Unix(s), "unix socket client".into()))
        }
    }
}

/// Negotiates and serves one connection; every error ends here with a log line naming the peer.
pub async fn serve_connection<S: SplitStream, D: BlockDevice>(
    mut stream: S,
    peer: &str,
    device: Arc<D>,
    config: &ServerConfig,
) {
    let timeout = Duration::from_millis(config.handshake_timeout_ms);
    let negotiated =
        tokio::time::timeout(timeout, negotiate::negotiate(&mut stream, &*device, config)).await;
    let session = match negotiated {
        Ok(Ok(Some(session))) => session,
        Ok(Ok(None)) => {
            tracing::debug!(peer, "client ended the handshake");
            return;
        }
        Ok(Err(e)) => {
            tracing::warn!(peer, "closing NBD connection during handshake: {e}");
            return;
        }
        Err(_) => {
            tracing::warn!(
                peer,
                "closing NBD connection: handshake not finished within {} ms",
                config.handshake_timeout_ms
            );
            return;
        }
    };
    tracing::info!(peer, structured = session.structured, "NBD client attached");
    let result = transmit::serve(stream, peer, device.clone(), config, session).await;
    device.detach_client();
    match result {
        Ok(()) => tracing::info!(peer, "NBD client detached"),
        Err(e) => tracing::warn!(peer, "closing NBD connection: {e}"),
    }
}

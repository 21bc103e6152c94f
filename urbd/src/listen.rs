//! Listen addresses: TCP `host:port` or `unix:/path`.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;

use nbd_frontend::Listener;

/// Where an NBD server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl FromStr for ListenAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<ListenAddr, String> {
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err("unix: needs a socket path, e.g. unix:/run/urbd/r0.nbd".into());
            }
            return Ok(ListenAddr::Unix(PathBuf::from(path)));
        }
        s.parse::<SocketAddr>().map(ListenAddr::Tcp).map_err(|_| {
            format!("{s:?} is not an address: use HOST:PORT (e.g. 127.0.0.1:10809) or unix:/path")
        })
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddr::Tcp(a) => write!(f, "{a}"),
            ListenAddr::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

impl ListenAddr {
    /// Binds, returning the listener and the NBD URI clients use for `export`.
    pub async fn bind(&self, export: &str) -> std::io::Result<(Listener, String)> {
        match self {
            ListenAddr::Tcp(addr) => {
                let l = tokio::net::TcpListener::bind(addr).await?;
                let local = l.local_addr()?;
                let host = match local {
                    SocketAddr::V4(a) => a.ip().to_string(),
                    SocketAddr::V6(a) => format!("[{}]", a.ip()),
                };
                let uri = format!("nbd://{host}:{}/{export}", local.port());
                Ok((Listener::Tcp(l), uri))
            }
            ListenAddr::Unix(path) => {
                remove_stale_socket(path)?;
                let l = tokio::net::UnixListener::bind(path)?;
                let uri = format!("nbd+unix:///{export}?socket={}", path.display());
                Ok((Listener::Unix(l), uri))
            }
        }
    }
}

/// A socket file left by a previous run would make bind fail; other files are never removed.
fn remove_stale_socket(path: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => std::fs::remove_file(path),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_tcp_and_unix() {
        assert_eq!(
            "127.0.0.1:0".parse::<ListenAddr>(),
            Ok(ListenAddr::Tcp("127.0.0.1:0".parse().expect("addr")))
        );
        assert_eq!(
            "unix:/tmp/x.sock".parse::<ListenAddr>(),
            Ok(ListenAddr::Unix("/tmp/x.sock".into()))
        );
        assert!("unix:".parse::<ListenAddr>().is_err());
        assert!("localhost".parse::<ListenAddr>().is_err());
    }
}

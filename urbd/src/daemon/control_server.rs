//! The control socket `<run-dir>/<resource>.sock` (mode 0600, same uid or root only): one
//! JSON request per line, one JSON response per line; `events` streams event lines.

use std::path::Path;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};

use super::engine::EngineInput;
use crate::control::{self, Request, Response, MAX_LINE_BYTES};

/// Bound on queued event lines per subscriber; a subscriber that does not read loses lines.
const EVENT_QUEUE_LINES: usize = 1024;

pub fn bind(run_dir: &Path, resource: &str) -> anyhow::Result<UnixListener> {
    let std_listener = control::bind_socket(run_dir, resource)?;
    std_listener.set_nonblocking(true)?;
    Ok(UnixListener::from_std(std_listener)?)
}

pub async fn serve(listener: UnixListener, engine: mpsc::Sender<EngineInput>) {
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!("control socket accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        if !control::peer_uid_allowed(&stream) {
            tracing::warn!("refusing a control connection from another user");
            continue;
        }
        let engine = engine.clone();
        tokio::spawn(async move {
            if let Err(e) = connection(stream, engine).await {
                tracing::debug!("control connection ended: {e}");
            }
        });
    }
}

async fn connection(stream: UnixStream, engine: mpsc::Sender<EngineInput>) -> std::io::Result<()> {
    let (rd, mut wr) = stream.into_split();
    let mut lines = BufReader::new(rd);
    let mut line = String::new();
    loop {
        line.clear();
        let n = (&mut lines)
            .take(MAX_LINE_BYTES as u64 + 1)
            .read_line(&mut line)
            .await?;
        if n == 0 {
            return Ok(());
        }
        if n > MAX_LINE_BYTES {
            wr.write_all(
                Response::error("request line too long")
                    .to_line()
                    .as_bytes(),
            )
            .await?;
            return Ok(());
        }
        let req = match Request::parse_line(line.trim_end()) {
            Ok(r) => r,
            Err(e) => {
                wr.write_all(Response::error(e).to_line().as_bytes())
                    .await?;
                continue;
            }
        };
        if req == Request::Events {
            let (tx, mut rx) = mpsc::channel(EVENT_QUEUE_LINES);
            if engine.send(EngineInput::Subscribe(tx)).await.is_err() {
                return Ok(());
            }
            wr.write_all(Response::ok().to_line().as_bytes()).await?;
            while let Some(mut ev) = rx.recv().await {
                ev.push('\n');
                wr.write_all(ev.as_bytes()).await?;
            }
            return Ok(());
        }
        let (done, wait) = oneshot::channel();
        if engine.send(EngineInput::Admin { req, done }).await.is_err() {
            return Ok(());
        }
        let resp = wait
            .await
            .unwrap_or_else(|_| Response::error("the resource went down"));
        wr.write_all(resp.to_line().as_bytes()).await?;
    }
}

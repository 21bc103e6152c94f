//! `[handlers]`: operator commands run on state changes, like DRBD's handlers. Each runs as
//! `sh -c COMMAND` with the resource in the environment (`URBD_RESOURCE`, `URBD_NODE`,
//! `URBD_PEER`, `URBD_HANDLER`), detached from the engine (it never waits for them), bounded by
//! a timeout after which the command is killed; its exit code goes to the log.

use std::time::Duration;

use tokio::process::Command;

/// A handler that runs longer is killed.
const HANDLER_TIMEOUT_S: u64 = 120;

/// The configured commands.
#[derive(Debug, Clone, Default)]
pub struct Handlers {
    pub split_brain: Option<String>,
    pub before_resync_target: Option<String>,
    pub after_resync_target: Option<String>,
    pub resource: String,
    pub node: String,
    pub peer: String,
}

impl Handlers {
    /// Runs the handler `name` (the config key) if one is configured.
    pub fn run(&self, name: &'static str) {
        let command = match name {
            "split-brain" => &self.split_brain,
            "before-resync-target" => &self.before_resync_target,
            "after-resync-target" => &self.after_resync_target,
            _ => &None,
        };
        let Some(command) = command.clone() else {
            return;
        };
        let (resource, node, peer) = (self.resource.clone(), self.node.clone(), self.peer.clone());
        tokio::spawn(async move {
            tracing::info!("running the {name} handler: {command}");
            let child = Command::new("sh")
                .arg("-c")
                .arg(&command)
                .env("URBD_RESOURCE", &resource)
                .env("URBD_NODE", &node)
                .env("URBD_PEER", &peer)
                .env("URBD_HANDLER", name)
                .kill_on_drop(true)
                .status();
            match tokio::time::timeout(Duration::from_secs(HANDLER_TIMEOUT_S), child).await {
                Ok(Ok(status)) => {
                    tracing::info!("the {name} handler exited with {status}")
                }
                Ok(Err(e)) => tracing::warn!("cannot run the {name} handler `{command}`: {e}"),
                Err(_) => tracing::warn!(
                    "the {name} handler `{command}` ran over {HANDLER_TIMEOUT_S} s and was killed"
                ),
            }
        });
    }
}

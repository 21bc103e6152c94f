//! `create-md` and `dump-md`: thin calls into `urbd_replicator::meta`.

use std::fs::{File, OpenOptions};

use urbd_replicator::meta::{CreateOptions, MetaStore};

use super::AdmError;
use crate::config::{MetaDisk, NodeConfig, ResourceConfig};

fn meta_error(cfg: &ResourceConfig, e: urbd_replicator::Error) -> AdmError {
    AdmError::failed(format!(
        "{}: {}",
        cfg.resource,
        e.to_string().replace("<res>", &cfg.resource)
    ))
}

fn open_disk(cfg: &ResourceConfig, local: &NodeConfig, write: bool) -> Result<File, AdmError> {
    if let MetaDisk::External(path) = local.meta_disk() {
        return Err(AdmError::failed(format!(
            "{}: meta-disk \"{}\" (external metadata) is not supported yet; set meta-disk = \
             \"internal\" in {}",
            cfg.resource,
            path.display(),
            cfg.path.display()
        )));
    }
    OpenOptions::new()
        .read(true)
        .write(write)
        .open(&local.disk)
        .map_err(|e| {
            let hint = if e.kind() == std::io::ErrorKind::NotFound {
                format!(
                    "create it (e.g. `truncate -s 1G {}` for an image file) or fix node \"{}\" \
                     disk in {}",
                    local.disk.display(),
                    local.name,
                    cfg.path.display()
                )
            } else {
                "check the path and the permissions".to_string()
            };
            AdmError::failed(format!(
                "{}: cannot open disk {}: {e}; {hint}",
                cfg.resource,
                local.disk.display()
            ))
        })
}

/// `create-md`: fresh metadata at the end of this node's disk (data Inconsistent, UUIDs
/// just-created). Returns the text to print.
pub fn create(
    cfg: &ResourceConfig,
    local: &NodeConfig,
    peer: &NodeConfig,
    force: bool,
) -> Result<String, AdmError> {
    let file = open_disk(cfg, local, true)?;
    let store = MetaStore::create(
        file,
        CreateOptions {
            bytes_per_bit: cfg.disk.bytes_per_bit,
            al_extents: cfg.disk.al_extents,
            node_name: local.name.clone(),
            peer_name: peer.name.clone(),
            force,
        },
    )
    .map_err(|e| meta_error(cfg, e))?;
    Ok(format!(
        "{res}: metadata created on {disk} ({data} data bytes); start it with `urbdadm up {res}` \
         on both nodes, then `urbdadm primary --force {res}` on the node whose data wins\n",
        res = cfg.resource,
        disk = local.disk.display(),
        data = store.layout().data_size_bytes,
    ))
}

/// `dump-md`: the metadata as `key: value` lines.
pub fn dump(cfg: &ResourceConfig, local: &NodeConfig) -> Result<String, AdmError> {
    let file = open_disk(cfg, local, false)?;
    let (store, sb, bitmap, hot) = MetaStore::open(file).map_err(|e| meta_error(cfg, e))?;
    Ok(store.dump(&sb, &bitmap, &hot))
}

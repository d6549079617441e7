//! What the executor needs from the worker's host around its containers: the workspace
//! directory handed to the run's user, the directory of the model proxy's Unix socket, the
//! address of the Docker bridge, and this host's name and processes (which tell the sweep whose
//! containers were left behind).

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

use bollard::query_parameters::InspectNetworkOptions;
use bollard::Docker;
use tokio_util::sync::CancellationToken;

use super::spec::RELAY_SOCKET;
use super::DockerSetupError;
use crate::executor::ExecError;
use crate::model_proxy::ModelProxy;

/// Creates the workspace and hands it (and everything in it) to the run's user, so a
/// workspace written by the local executor or restored by the worker stays writable.
pub(super) async fn prepare_workspace(dir: &Path, uid: u32, gid: u32) -> Result<(), ExecError> {
    let dir = dir.to_path_buf();
    tokio::task::spawn_blocking(move || {
        std::fs::create_dir_all(&dir).map_err(|err| {
            ExecError::Setup(format!("cannot create workspace {}: {err}", dir.display()))
        })?;
        if nix::unistd::geteuid().is_root() {
            chown_tree(&dir, uid, gid).map_err(|err| {
                ExecError::Setup(format!(
                    "cannot hand workspace {} to uid {uid}: {err}",
                    dir.display()
                ))
            })?;
        }
        Ok(())
    })
    .await
    .map_err(|err| ExecError::Setup(format!("preparing the workspace: {err}")))?
}

/// Hands a run's private directory (its MCP configuration) to the run's user, who alone may
/// read it.
pub(super) async fn hand_to_run_user(dir: &Path, uid: u32, gid: u32) -> Result<(), ExecError> {
    if !nix::unistd::geteuid().is_root() {
        return Ok(());
    }
    let dir = dir.to_path_buf();
    tokio::task::spawn_blocking(move || chown_tree(&dir, uid, gid))
        .await
        .map_err(|err| ExecError::Setup(format!("handing over the MCP configuration: {err}")))?
        .map_err(|err| {
            ExecError::Setup(format!(
                "cannot hand the MCP configuration to uid {uid}: {err}"
            ))
        })
}

/// Hands `path`, and everything under it, to `uid:gid`.
fn chown_tree(path: &Path, uid: u32, gid: u32) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::symlink_metadata(path)?;
    if meta.uid() != uid || meta.gid() != gid {
        // Never follows a symlink: a link planted in the workspace must not hand over its target.
        std::os::unix::fs::lchown(path, Some(uid), Some(gid))?;
    }
    if meta.is_dir() {
        for entry in std::fs::read_dir(path)? {
            chown_tree(&entry?.path(), uid, gid)?;
        }
    }
    Ok(())
}

/// This host's name, as the labels of its containers carry it (empty when it has none).
pub(super) fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|name| name.into_string().ok())
        .unwrap_or_default()
}

/// Whether process `pid` exists on this host.
pub(super) fn process_alive(pid: i32) -> bool {
    // Signal 0 checks for existence; EPERM means it exists under another user.
    match nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None) {
        Ok(()) => true,
        Err(nix::errno::Errno::EPERM) => true,
        Err(_) => false,
    }
}

/// The host's address on Docker network `network` (its gateway), if the engine has that
/// network and tells.
pub async fn gateway(docker: &Docker, network: &str) -> Option<IpAddr> {
    let inspect = docker
        .inspect_network(network, None::<InspectNetworkOptions>)
        .await
        .ok()?;
    inspect.ipam?.config?.into_iter().find_map(|config| {
        match config.gateway {
            Some(gateway) => gateway.parse().ok(),
            // The default bridge does not list its gateway: by convention it is the subnet's
            // first address.
            None => first_host(config.subnet.as_deref()?),
        }
    })
}

/// The first host address of IPv4 network `subnet` (`a.b.c.d/len`).
fn first_host(subnet: &str) -> Option<IpAddr> {
    let (network, _) = subnet.split_once('/')?;
    let network: Ipv4Addr = network.parse().ok()?;
    Some(IpAddr::V4(Ipv4Addr::from(
        u32::from(network).checked_add(1)?,
    )))
}

/// A directory holding the proxy's Unix socket, which any user may connect to (a container's
/// user is not the worker's; the token is what admits a run).
pub(super) async fn relay_dir(
    proxy: &ModelProxy,
    stop: &CancellationToken,
) -> Result<tempfile::TempDir, DockerSetupError> {
    use std::os::unix::fs::PermissionsExt;
    let failed = |err: std::io::Error| {
        DockerSetupError(format!("cannot set up the model proxy's socket: {err}"))
    };
    let dir = tempfile::Builder::new()
        .prefix("autopilot-relay-")
        .tempdir()
        .map_err(failed)?;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).map_err(failed)?;
    let socket = dir.path().join(RELAY_SOCKET);
    proxy
        .listen_unix(&socket, stop.clone())
        .await
        .map_err(failed)?;
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666)).map_err(failed)?;
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_host_of_a_subnet_follows_its_network_address() {
        assert_eq!(
            first_host("172.17.0.0/16"),
            Some(IpAddr::V4(Ipv4Addr::new(172, 17, 0, 1)))
        );
        assert_eq!(
            first_host("10.0.3.0/24"),
            Some(IpAddr::V4(Ipv4Addr::new(10, 0, 3, 1)))
        );
        assert_eq!(first_host("172.17.0.0"), None, "no prefix length");
        assert_eq!(first_host("fd00::/64"), None, "IPv6 is not looked at");
        assert_eq!(
            first_host("255.255.255.255/32"),
            None,
            "no address after it"
        );
    }
}

//! Realistic requests for tests, benches and the built-in host: a CreateSandbox and a
//! CreateContainer as the Go shim sends them for `ctr run ... ARGS`, and the termination-log
//! mount Kubernetes adds.

use crate::protocols::{agent, oci};

/// A CreateSandbox as the runtimes send it: the sandbox's `/dev/shm` as an ephemeral storage.
pub fn create_sandbox(sandbox_id: &str) -> agent::CreateSandboxRequest {
    agent::CreateSandboxRequest {
        sandbox_id: sandbox_id.into(),
        storages: vec![agent::Storage {
            driver: "ephemeral".into(),
            source: "shm".into(),
            fstype: "tmpfs".into(),
            mount_point: "/run/kata-containers/sandbox/shm".into(),
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// Where the runtimes put a container's rootfs in the guest.
pub fn rootfs_path(container_id: &str) -> String {
    format!("/run/kata-containers/shared/containers/{container_id}/rootfs")
}

/// An OCI spec like the Go shim's for `ctr run ... ARGS`: capabilities present, no PATH, a
/// `/proc` mount, the rootfs where the runtimes put it.
pub fn spec(container_id: &str, args: &[&str]) -> oci::Spec {
    let caps = ["CAP_CHOWN", "CAP_KILL", "CAP_NET_BIND_SERVICE"]
        .map(String::from)
        .to_vec();
    let capabilities = oci::LinuxCapabilities {
        Bounding: caps.clone(),
        Effective: caps.clone(),
        Permitted: caps,
        ..Default::default()
    };
    let process = oci::Process {
        Args: args.iter().map(|s| s.to_string()).collect(),
        Env: vec!["HOSTNAME=vm".into()],
        Cwd: "/".into(),
        Capabilities: Some(capabilities).into(),
        NoNewPrivileges: true,
        ..Default::default()
    };
    oci::Spec {
        Version: "1.1.0".into(),
        Process: Some(process).into(),
        Root: Some(oci::Root {
            Path: rootfs_path(container_id),
            ..Default::default()
        })
        .into(),
        Mounts: vec![oci::Mount {
            destination: "/proc".into(),
            source: "proc".into(),
            type_: "proc".into(),
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// A CreateContainer request for `args`, with exec id = container id as the Go shim sends it.
pub fn create_container(container_id: &str, args: &[&str]) -> agent::CreateContainerRequest {
    agent::CreateContainerRequest {
        container_id: container_id.into(),
        exec_id: container_id.into(),
        OCI: Some(spec(container_id, args)).into(),
        ..Default::default()
    }
}

/// Adds Kubernetes' termination-message mount (`/dev/termination-log`, bound from the guest
/// file `source`) and its annotation to a request.
pub fn with_termination_log(
    mut req: agent::CreateContainerRequest,
    source: &str,
) -> agent::CreateContainerRequest {
    let spec = req.OCI.mut_or_insert_default();
    spec.Annotations.insert(
        "io.kubernetes.container.terminationMessagePath".into(),
        "/dev/termination-log".into(),
    );
    spec.Mounts.push(oci::Mount {
        destination: "/dev/termination-log".into(),
        source: source.into(),
        type_: "bind".into(),
        options: vec!["rbind".into(), "rw".into()],
        ..Default::default()
    });
    req
}

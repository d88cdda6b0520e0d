//! The Kata configuration a shim run writes from its scenario, and how it reaches the shim.
//!
//! The two runtimes read different keys for the same thing (docs/real-runtimes.md):
//!
//! | | Go shim | runtime-rs |
//! |---|---|---|
//! | hypervisor socket | `[hypervisor.remote] remote_hypervisor_socket` | `[hypervisor.remote] hypervisor_socket` (must exist at Create) |
//! | StartVM deadline | `remote_hypervisor_timeout` (s) | `hypervisor_timeout` (s) |
//! | shared filesystem | none, whatever `shared_fs` says | `shared_fs` |
//! | agent dial | `[agent.kata] dial_timeout` (s) | `dial_timeout_ms`, `reconnect_timeout_ms` |
//! | runtime | `internetworking_model = "none"` with `disable_new_netns` | `[runtime] name`, `hypervisor_name`, `agent_name` (required) |
//! | CreateContainer deadline | `[runtime] create_container_timeout` (s; the shipped template's 60: without it the deadline is 0 and every CreateContainer "timed out") | `[agent.kata] create_container_timeout` (s, default 30) |
//! | cgroups | | `sandbox_cgroup_only = true` (the shipped template's; without it runtime-rs makes an overhead cgroup and fails its Create with "hypervisor cannot be moved to sandbox cgroup": a remote VM has no threads to move) |
//!
//! Both take the file's path in the Create request's options (`runtimeoptions.v1.Options`,
//! what containerd's CRI plugin sends for a runtime's `ConfigPath`): runtime-rs accepts
//! `KATA_CONF_FILE` only when it names a shipped path, and the Go shim reads the options first.

use std::path::Path;

use containerd_shim_protos::protobuf::well_known_types::any::Any;

use super::launch::Flavor;
use crate::schema::{Scenario, SharedFs};

/// The options' type, as containerd's CRI plugin names it.
pub const OPTIONS_TYPE: &str = "runtimeoptions.v1.Options";

/// A TOML basic string (JSON's escapes are TOML's).
fn quoted(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

/// The configuration for a run of `s` on `flavor`, its remote hypervisor at `socket`.
pub fn render(flavor: &Flavor, socket: &Path, s: &Scenario) -> String {
    let socket = quoted(&socket.display().to_string());
    match flavor {
        Flavor::KataRs(_) => {
            let shared_fs = match s.config.shared_fs {
                SharedFs::None => "none",
                SharedFs::VirtioFs => "virtio-fs",
            };
            format!(
                "# Written by kata-sim for scenario {name} (runtime-rs key names).\n\
                 [hypervisor.remote]\n\
                 hypervisor_socket = {socket}\n\
                 hypervisor_timeout = 600\n\
                 shared_fs = \"{shared_fs}\"\n\n\
                 [agent.kata]\n\
                 dial_timeout_ms = 10\n\
                 reconnect_timeout_ms = 30000\n\n\
                 [runtime]\n\
                 name = \"virt_container\"\n\
                 hypervisor_name = \"remote\"\n\
                 agent_name = \"kata\"\n\
                 sandbox_cgroup_only = true\n\
                 disable_guest_seccomp = true\n\
                 static_sandbox_resource_mgmt = true\n",
                name = s.name
            )
        }
        _ => format!(
            "# Written by kata-sim for scenario {name} (Go shim key names; the remote hypervisor\n\
             # has no shared filesystem).\n\
             [hypervisor.remote]\n\
             remote_hypervisor_socket = {socket}\n\
             remote_hypervisor_timeout = 600\n\n\
             [agent.kata]\n\
             dial_timeout = 30\n\n\
             [runtime]\n\
             internetworking_model = \"none\"\n\
             disable_new_netns = true\n\
             disable_guest_seccomp = true\n\
             static_sandbox_resource_mgmt = true\n\
             create_container_timeout = 60\n",
            name = s.name
        ),
    }
}

/// The Create options naming the configuration file: `runtimeoptions.v1.Options` with
/// `config_path` (field 2).
pub fn create_options(path: &Path) -> Any {
    let path = path.display().to_string();
    let mut value = vec![0x12];
    let mut n = path.len();
    while n >= 0x80 {
        value.push((n as u8 & 0x7f) | 0x80);
        n >>= 7;
    }
    value.push(n as u8);
    value.extend_from_slice(path.as_bytes());
    let mut any = Any::new();
    any.type_url = OPTIONS_TYPE.into();
    any.value = value;
    any
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_options_carry_the_path_as_field_2() {
        // As containerd sent it in real-lifecycle-rs/term-utf8 (the Create's options).
        let a = create_options(Path::new(
            "/run/kata-sim/config/configuration-remote-rs.toml",
        ));
        assert_eq!(a.type_url, "runtimeoptions.v1.Options");
        assert_eq!(&a.value[..2], &[0x12, 49]);
        assert!(a.value.ends_with(b"configuration-remote-rs.toml"));
        let long = "x".repeat(200);
        let a = create_options(Path::new(&long));
        assert_eq!(&a.value[..3], &[0x12, 0xc8, 0x01]);
    }
}

//! The wire surface as a Rust trait: one typed method per ttrpc RPC.
//!
//! [`AgentRpc`] is the seam between the host-side [`crate::Agent`] logic and whatever answers
//! the RPCs: the in-process [`crate::SimAgent`] (fault engine, then guest model) or a ttrpc
//! client ([`crate::RemoteAgent`]). The table in `for_each_rpc!` is the single list of RPCs;
//! the trait, the [`Method`] enum, the server and the client are all generated from it.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::error::Result;
use crate::protocols::{agent, csi, health, types};
use protobuf::well_known_types::empty::Empty;

/// Calls `$m!` with the table of every RPC the agent serves, one tuple per RPC:
/// `(snake_name, WireName, Service, Request, Response)`, `grpc.AgentService` first.
#[macro_export]
#[doc(hidden)]
macro_rules! for_each_rpc {
    ($m:ident) => {
        $crate::rpc_table! { all $m }
    };
}

/// Like `for_each_rpc!`, for the `grpc.AgentService` RPCs only.
#[macro_export]
#[doc(hidden)]
macro_rules! for_each_agent_service_rpc {
    ($m:ident) => {
        $crate::rpc_table! { agent $m }
    };
}

/// The single table of RPCs; see `for_each_rpc!`.
#[macro_export]
#[doc(hidden)]
macro_rules! rpc_table {
    ($mode:ident $m:ident) => {
        $crate::rpc_table_apply! { $mode $m [
            (create_container, CreateContainer, AgentService, agent::CreateContainerRequest, Empty),
            (start_container, StartContainer, AgentService, agent::StartContainerRequest, Empty),
            (remove_container, RemoveContainer, AgentService, agent::RemoveContainerRequest, Empty),
            (exec_process, ExecProcess, AgentService, agent::ExecProcessRequest, Empty),
            (signal_process, SignalProcess, AgentService, agent::SignalProcessRequest, Empty),
            (wait_process, WaitProcess, AgentService, agent::WaitProcessRequest, agent::WaitProcessResponse),
            (update_container, UpdateContainer, AgentService, agent::UpdateContainerRequest, Empty),
            (update_ephemeral_mounts, UpdateEphemeralMounts, AgentService, agent::UpdateEphemeralMountsRequest, Empty),
            (stats_container, StatsContainer, AgentService, agent::StatsContainerRequest, agent::StatsContainerResponse),
            (pause_container, PauseContainer, AgentService, agent::PauseContainerRequest, Empty),
            (resume_container, ResumeContainer, AgentService, agent::ResumeContainerRequest, Empty),
            (remove_stale_virtiofs_share_mounts, RemoveStaleVirtiofsShareMounts, AgentService, agent::RemoveStaleVirtiofsShareMountsRequest, Empty),
            (get_diagnostic_data, GetDiagnosticData, AgentService, agent::GetDiagnosticDataRequest, agent::GetDiagnosticDataResponse),
            (write_stdin, WriteStdin, AgentService, agent::WriteStreamRequest, agent::WriteStreamResponse),
            (read_stdout, ReadStdout, AgentService, agent::ReadStreamRequest, agent::ReadStreamResponse),
            (read_stderr, ReadStderr, AgentService, agent::ReadStreamRequest, agent::ReadStreamResponse),
            (close_stdin, CloseStdin, AgentService, agent::CloseStdinRequest, Empty),
            (tty_win_resize, TtyWinResize, AgentService, agent::TtyWinResizeRequest, Empty),
            (update_interface, UpdateInterface, AgentService, agent::UpdateInterfaceRequest, types::Interface),
            (update_routes, UpdateRoutes, AgentService, agent::UpdateRoutesRequest, agent::Routes),
            (list_interfaces, ListInterfaces, AgentService, agent::ListInterfacesRequest, agent::Interfaces),
            (list_routes, ListRoutes, AgentService, agent::ListRoutesRequest, agent::Routes),
            (add_arp_neighbors, AddARPNeighbors, AgentService, agent::AddARPNeighborsRequest, Empty),
            (get_ip_tables, GetIPTables, AgentService, agent::GetIPTablesRequest, agent::GetIPTablesResponse),
            (set_ip_tables, SetIPTables, AgentService, agent::SetIPTablesRequest, agent::SetIPTablesResponse),
            (get_metrics, GetMetrics, AgentService, agent::GetMetricsRequest, agent::Metrics),
            (mem_agent_memcg_set, MemAgentMemcgSet, AgentService, agent::MemAgentMemcgConfig, Empty),
            (mem_agent_compact_set, MemAgentCompactSet, AgentService, agent::MemAgentCompactConfig, Empty),
            (create_sandbox, CreateSandbox, AgentService, agent::CreateSandboxRequest, Empty),
            (destroy_sandbox, DestroySandbox, AgentService, agent::DestroySandboxRequest, Empty),
            (online_cpu_mem, OnlineCPUMem, AgentService, agent::OnlineCPUMemRequest, Empty),
            (reseed_random_dev, ReseedRandomDev, AgentService, agent::ReseedRandomDevRequest, Empty),
            (get_guest_details, GetGuestDetails, AgentService, agent::GuestDetailsRequest, agent::GuestDetailsResponse),
            (mem_hotplug_by_probe, MemHotplugByProbe, AgentService, agent::MemHotplugByProbeRequest, Empty),
            (set_guest_date_time, SetGuestDateTime, AgentService, agent::SetGuestDateTimeRequest, Empty),
            (copy_file, CopyFile, AgentService, agent::CopyFileRequest, Empty),
            (get_oom_event, GetOOMEvent, AgentService, agent::GetOOMEventRequest, agent::OOMEvent),
            (add_swap, AddSwap, AgentService, agent::AddSwapRequest, Empty),
            (add_swap_path, AddSwapPath, AgentService, agent::AddSwapPathRequest, Empty),
            (get_volume_stats, GetVolumeStats, AgentService, agent::VolumeStatsRequest, csi::VolumeStatsResponse),
            (resize_volume, ResizeVolume, AgentService, agent::ResizeVolumeRequest, Empty),
            (set_policy, SetPolicy, AgentService, agent::SetPolicyRequest, Empty),
        ] [
            (check, Check, Health, health::CheckRequest, health::HealthCheckResponse),
            (version, Version, Health, health::CheckRequest, health::VersionCheckResponse),
        ] }
    };
}

#[macro_export]
#[doc(hidden)]
macro_rules! rpc_table_apply {
    (all $m:ident [$($a:tt)*] [$($h:tt)*]) => { $m! { $($a)* $($h)* } };
    (agent $m:ident [$($a:tt)*] [$($h:tt)*]) => { $m! { $($a)* } };
}

/// The ttrpc service an RPC belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Service {
    /// `grpc.AgentService`.
    AgentService,
    /// `grpc.Health`.
    Health,
}

impl Service {
    /// The service name on the wire.
    pub fn wire_name(self) -> &'static str {
        match self {
            Service::AgentService => "grpc.AgentService",
            Service::Health => "grpc.Health",
        }
    }
}

macro_rules! define_method {
    ($(($snake:ident, $variant:ident, $svc:ident, $req:ty, $resp:ty)),* $(,)?) => {
        /// Every RPC of `grpc.AgentService` and `grpc.Health`, named as on the wire.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum Method {
            $(
                #[doc = concat!("`", stringify!($variant), "`")]
                $variant,
            )*
        }

        impl Method {
            /// Every method, in the order of the upstream schema.
            pub const ALL: &'static [Method] = &[$(Method::$variant),*];

            /// The method name on the wire (`CreateContainer`).
            pub fn wire_name(self) -> &'static str {
                match self { $(Method::$variant => stringify!($variant)),* }
            }

            /// The service that serves it.
            pub fn service(self) -> Service {
                match self { $(Method::$variant => Service::$svc),* }
            }

            /// Looks a method up by its wire name (case-sensitive, as ttrpc is).
            pub fn from_wire_name(name: &str) -> Option<Method> {
                match name { $(stringify!($variant) => Some(Method::$variant),)* _ => None }
            }
        }

        /// One typed method per RPC. Implemented by [`crate::SimAgent`] (in-process, through
        /// the fault engine into the guest model) and [`crate::RemoteAgent`] (over ttrpc).
        #[async_trait::async_trait]
        pub trait AgentRpc: Send + Sync {
            /// The host-side state of the Go runtime's `kataAgent` (dead flag, URL, config)
            /// that the host-local methods of [`crate::Agent`] read and write.
            fn host(&self) -> &crate::agent::HostState;
            $(
                #[doc = concat!("Sends `", stringify!($variant), "`.")]
                async fn $snake(&self, req: $req, opts: CallOpts) -> Result<$resp>;
            )*
        }
    };
}
for_each_rpc!(define_method);

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.wire_name())
    }
}

/// What travels with one call besides its request: the ttrpc deadline, the metadata and, on
/// the server side, which connection it came from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CallOpts {
    /// The deadline the caller sets (`timeout_nano`); `None` waits forever.
    pub timeout: Option<Duration>,
    /// ttrpc request metadata.
    pub metadata: BTreeMap<String, Vec<String>>,
    /// The server connection the call arrived on; `None` in-process.
    pub conn: Option<u64>,
}

impl CallOpts {
    /// Options with a deadline.
    pub fn with_timeout(timeout: Duration) -> Self {
        CallOpts {
            timeout: Some(timeout),
            ..Default::default()
        }
    }
}

/// The fields of a request that identify what it acts on. They feed the trace and the fault
/// engine's filters (`container_id=c1`), always in the same order.
pub trait KeyFields {
    /// `(name, value)` pairs in a fixed order.
    fn key_fields(&self) -> Vec<(&'static str, String)>;
}

macro_rules! key_fields {
    ($($ty:ty => [$($field:ident),*]);* $(;)?) => {
        $(impl KeyFields for $ty {
            fn key_fields(&self) -> Vec<(&'static str, String)> {
                vec![$((stringify!($field), self.$field.to_string())),*]
            }
        })*
    };
}

key_fields! {
    agent::CreateContainerRequest => [container_id, exec_id];
    agent::StartContainerRequest => [container_id];
    agent::RemoveContainerRequest => [container_id, timeout];
    agent::ExecProcessRequest => [container_id, exec_id];
    agent::SignalProcessRequest => [container_id, exec_id, signal];
    agent::WaitProcessRequest => [container_id, exec_id];
    agent::UpdateContainerRequest => [container_id];
    agent::UpdateEphemeralMountsRequest => [];
    agent::StatsContainerRequest => [container_id];
    agent::PauseContainerRequest => [container_id];
    agent::ResumeContainerRequest => [container_id];
    agent::RemoveStaleVirtiofsShareMountsRequest => [];
    agent::GetDiagnosticDataRequest => [log_type, container_id];
    agent::ReadStreamRequest => [container_id, exec_id, len];
    agent::CloseStdinRequest => [container_id, exec_id];
    agent::TtyWinResizeRequest => [container_id, exec_id, row, column];
    agent::UpdateInterfaceRequest => [];
    agent::UpdateRoutesRequest => [];
    agent::ListInterfacesRequest => [];
    agent::ListRoutesRequest => [];
    agent::AddARPNeighborsRequest => [];
    agent::GetIPTablesRequest => [is_ipv6];
    agent::SetIPTablesRequest => [is_ipv6];
    agent::GetMetricsRequest => [];
    agent::MemAgentMemcgConfig => [];
    agent::MemAgentCompactConfig => [];
    agent::CreateSandboxRequest => [sandbox_id, hostname];
    agent::DestroySandboxRequest => [];
    agent::OnlineCPUMemRequest => [wait, nb_cpus, cpu_only];
    agent::ReseedRandomDevRequest => [];
    agent::GuestDetailsRequest => [mem_block_size, mem_hotplug_probe];
    agent::MemHotplugByProbeRequest => [];
    agent::SetGuestDateTimeRequest => [Sec, Usec];
    agent::GetOOMEventRequest => [];
    agent::AddSwapRequest => [];
    agent::AddSwapPathRequest => [path];
    agent::VolumeStatsRequest => [volume_guest_path];
    agent::ResizeVolumeRequest => [volume_guest_path, size];
    agent::SetPolicyRequest => [];
    health::CheckRequest => [service];
}

impl KeyFields for agent::WriteStreamRequest {
    fn key_fields(&self) -> Vec<(&'static str, String)> {
        vec![
            ("container_id", self.container_id.clone()),
            ("exec_id", self.exec_id.clone()),
            ("len", self.data.len().to_string()),
        ]
    }
}

impl KeyFields for agent::CopyFileRequest {
    fn key_fields(&self) -> Vec<(&'static str, String)> {
        vec![
            ("path", self.path.clone()),
            ("offset", self.offset.to_string()),
            ("file_size", self.file_size.to_string()),
        ]
    }
}

/// Keeps the `Empty` import used by the macro table in this module.
#[allow(dead_code)]
fn _empty(_: Empty) {}

//! The guest model: sandbox, containers, processes, OOM events, networking and the
//! filesystem, and the RPCs that act on the sandbox as a whole.
//!
//! Container and process RPCs live in `containers.rs`. Every handler returns the status and
//! message the real agent returns for the same request (upstream `src/agent/src/rpc.rs`).

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};

use protobuf::well_known_types::empty::Empty;
use ttrpc::Code;

use super::fs::{GuestFs, HOST_SAFE_MODE_MASK, SHARED_CONTAINERS_DIR, WriteMode};
use super::process::Proc;
use super::program::{Behaviour, Builtin, ProcessScript, ProgramCtx, program_name};
use super::shell::{ContainerView, MountView};
use super::{ScriptMatch, SimConfig};
use crate::error::{AgentError, Result};
use crate::protocols::{agent, csi, health, oci, types};
use crate::rpc::Method;
use crate::trace::Trace;

/// The annotation that names a container's termination-message path.
pub const TERMINATION_MESSAGE_PATH: &str = "io.kubernetes.container.terminationMessagePath";
/// The most bytes of a termination message the agent returns.
pub const MAX_TERMINATION_MSG: usize = 4096;

/// What `GetGuestDetails` and `Health.Version` report, as the real 4.1.0 agent does by default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestDetailsProfile {
    /// `agent_details.version` and `Health.Version`'s `agent_version`.
    pub agent_version: String,
    /// `Health.Version`'s `grpc_version`.
    pub grpc_version: String,
    /// `/sys/devices/system/memory/block_size_bytes`.
    pub mem_block_size_bytes: u64,
    /// Whether `/sys/devices/system/memory/probe` exists.
    pub support_mem_hotplug_probe: bool,
    /// Whether the agent is PID 1.
    pub init_daemon: bool,
    /// Device handlers.
    pub device_handlers: Vec<String>,
    /// Storage drivers the agent handles.
    pub storage_handlers: Vec<String>,
    /// Whether seccomp is supported.
    pub supports_seccomp: bool,
    /// Build features (`agent-policy`, `seccomp`).
    pub extra_features: Vec<String>,
    /// vCPUs the guest can bring online.
    pub max_vcpus: u32,
}

impl Default for GuestDetailsProfile {
    fn default() -> Self {
        GuestDetailsProfile {
            agent_version: "4.1.0".into(),
            grpc_version: "0.0.1".into(),
            mem_block_size_bytes: 128 << 20,
            support_mem_hotplug_probe: false,
            init_daemon: false,
            device_handlers: Vec::new(),
            storage_handlers: [
                "nvdimm",
                "scsi",
                "watchable-bind",
                "overlayfs",
                "image_guest_pull",
                "blk",
                "erofs.multi-layer",
                "mmioblk",
                "ephemeral",
                "local",
                "virtio-fs",
            ]
            .map(String::from)
            .to_vec(),
            supports_seccomp: true,
            extra_features: vec!["seccomp".into()],
            max_vcpus: 8,
        }
    }
}

/// What `CreateSandbox` recorded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SandboxInfo {
    /// `sandbox_id`.
    pub id: String,
    /// `hostname`.
    pub hostname: String,
    /// `dns` lines.
    pub dns: Vec<String>,
    /// `driver:mount_point` of each storage.
    pub storages: Vec<String>,
    /// `sandbox_pidns`.
    pub sandbox_pidns: bool,
}

/// Where a container is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ContainerStatus {
    Created,
    Running,
    Paused,
    Stopped,
}

/// One container.
#[derive(Debug)]
pub(crate) struct Container {
    pub spec: oci::Spec,
    pub status: ContainerStatus,
    pub init_pid: u32,
    pub processes: BTreeMap<String, Arc<Proc>>,
    pub resources: Option<oci::LinuxResources>,
    /// The guest path of the image root the model made for it (no rootfs was there): it goes
    /// when the container does, as the real agent unmounts a container's storages.
    pub image_root: Option<String>,
}

#[derive(Debug, Default)]
pub(crate) struct State {
    pub sandbox: Option<SandboxInfo>,
    pub containers: BTreeMap<String, Container>,
    pub oom_events: VecDeque<String>,
    pub terminated: bool,
    /// The VM under the guest died: nothing answers any more.
    pub dead: bool,
    /// The VM's vCPUs are stopped: calls wait until it resumes.
    pub paused: bool,
    /// Bumped by every agent restart; calls and connections of an older epoch end.
    pub epoch: u64,
    pub next_pid: u32,
    pub interfaces: BTreeMap<String, types::Interface>,
    pub routes: Vec<types::Route>,
    pub arp_neighbors: Vec<types::ARPNeighbor>,
    pub iptables: [Vec<u8>; 2],
    pub policy: Option<String>,
    pub online_vcpus: u32,
    pub memory_onlined: u32,
    pub probed_memory: Vec<u64>,
    pub random_seeded_bytes: u64,
    pub guest_time: Option<(i64, i64)>,
    pub swaps: Vec<String>,
    pub ephemeral_mounts: Vec<String>,
    pub scripts: Vec<(ScriptMatch, ProcessScript)>,
}

/// The guest behind one agent.
#[derive(Debug)]
pub(crate) struct Guest {
    pub fs: GuestFs,
    pub config: SimConfig,
    pub trace: Trace,
    state: Mutex<State>,
    changed: tokio::sync::Notify,
}

impl Guest {
    pub fn new(config: SimConfig, trace: Trace) -> std::io::Result<Self> {
        let fs = match &config.guest_root {
            Some(p) => GuestFs::at(p.clone())?,
            None => match &config.temp_dir {
                Some(parent) => GuestFs::temp_in(parent)?,
                None => GuestFs::temp()?,
            },
        };
        let online_vcpus = 1;
        Ok(Guest {
            fs,
            config,
            trace,
            state: Mutex::new(State {
                next_pid: 100,
                online_vcpus,
                ..Default::default()
            }),
            changed: tokio::sync::Notify::new(),
        })
    }

    pub fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn notify(&self) {
        self.changed.notify_waiters();
    }

    pub fn sandbox(&self) -> Option<SandboxInfo> {
        self.lock().sandbox.clone()
    }

    pub fn container_ids(&self) -> Vec<String> {
        self.lock().containers.keys().cloned().collect()
    }

    pub fn is_dead(&self) -> bool {
        self.lock().dead
    }

    /// The guest dies with its VM: first every caller learns it, then every process is gone.
    pub fn kill(&self) {
        let procs: Vec<Arc<Proc>> = {
            let mut st = self.lock();
            if st.dead {
                return;
            }
            st.dead = true;
            st.containers
                .values()
                .flat_map(|c| c.processes.values().cloned())
                .collect()
        };
        self.notify();
        for p in procs {
            p.exit(128 + 9);
        }
    }

    pub fn set_paused(&self, paused: bool) {
        self.lock().paused = paused;
        self.notify();
    }

    pub async fn running(&self) {
        loop {
            let n = self.changed.notified();
            tokio::pin!(n);
            n.as_mut().enable();
            if !self.lock().paused {
                return;
            }
            n.await;
        }
    }

    pub fn epoch(&self) -> u64 {
        self.lock().epoch
    }

    /// The agent restarts: its state (sandbox, containers, queued events) is lost, and the
    /// processes it started go with it (it is the guest's init).
    pub fn restart(&self) {
        let procs: Vec<Arc<Proc>> = {
            let mut st = self.lock();
            let old = std::mem::take(&mut *st);
            st.epoch = old.epoch + 1;
            st.next_pid = old.next_pid;
            st.online_vcpus = old.online_vcpus;
            st.paused = old.paused;
            st.scripts = old.scripts;
            old.containers
                .into_values()
                .flat_map(|c| c.processes.into_values())
                .collect()
        };
        self.notify();
        for p in procs {
            p.exit(128 + 9);
        }
    }

    /// Resolves once the agent restarted after `epoch`.
    pub async fn restarted(&self, epoch: u64) {
        loop {
            let n = self.changed.notified();
            tokio::pin!(n);
            n.as_mut().enable();
            if self.epoch() != epoch {
                return;
            }
            n.await;
        }
    }

    pub async fn died(&self) {
        loop {
            let n = self.changed.notified();
            tokio::pin!(n);
            n.as_mut().enable();
            if self.is_dead() {
                return;
            }
            n.await;
        }
    }

    pub fn is_terminated(&self) -> bool {
        self.lock().terminated
    }

    pub async fn terminated(&self) {
        loop {
            let n = self.changed.notified();
            tokio::pin!(n);
            n.as_mut().enable();
            if self.is_terminated() {
                return;
            }
            n.await;
        }
    }

    pub fn add_script(&self, m: ScriptMatch, s: ProcessScript) {
        self.lock().scripts.push((m, s));
    }

    /// The behaviour of a new process: the newest matching script, else the built-ins.
    pub fn behaviour_for(&self, cid: &str, eid: &str, args: &[String]) -> Behaviour {
        let st = self.lock();
        let prog = args.first().map(|a| program_name(a).to_string());
        let found = st.scripts.iter().rev().find(|(m, _)| {
            m.container_id.as_deref().is_none_or(|c| c == cid)
                && m.exec_id.as_deref().is_none_or(|e| e == eid)
                && m.program
                    .as_deref()
                    .is_none_or(|p| Some(p) == prog.as_deref())
        });
        match found {
            Some((_, s)) => Behaviour::Script(s.clone()),
            None => Behaviour::Builtin(Builtin::parse(args)),
        }
    }

    /// What a process of this container starts with: the trace, the container's view of the
    /// guest filesystem (its rootfs and bind mounts), and a seed derived from its pid.
    pub fn program_ctx(&self, seq: u64, spec: &oci::Spec, cwd: &str, pid: u32) -> ProgramCtx {
        let trace = self.trace.clone();
        let rootfs = spec
            .Root
            .as_ref()
            .map(|r| r.Path.clone())
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| "/".into());
        let mounts = spec
            .Mounts
            .iter()
            .map(|m| MountView {
                destination: m.destination.clone(),
                source: m.source.clone(),
                bind: m.type_ == "bind" || m.options.iter().any(|o| o == "bind" || o == "rbind"),
            })
            .collect();
        ProgramCtx {
            note: Arc::new(move |n| trace.note(seq, n)),
            view: ContainerView {
                guest: Arc::clone(self.fs.confined()),
                rootfs,
                mounts,
                cwd: if cwd.is_empty() {
                    "/".into()
                } else {
                    cwd.into()
                },
            },
            seed: mix_seed(self.config.seed, u64::from(pid)),
        }
    }

    pub fn alloc_pid(st: &mut State) -> u32 {
        st.next_pid += 1;
        st.next_pid
    }

    pub fn push_oom(&self, cid: &str) {
        self.lock().oom_events.push_back(cid.to_string());
        self.notify();
    }

    pub fn oom_kill(&self, cid: &str) -> Result<()> {
        let init = {
            let st = self.lock();
            let c = st
                .containers
                .get(cid)
                .ok_or_else(|| AgentError::internal(format!("Invalid container id {cid}")))?;
            c.processes.values().find(|p| p.pid == c.init_pid).cloned()
        };
        if let Some(p) = init {
            p.exit(137);
        }
        self.push_oom(cid);
        Ok(())
    }

    /// The guest path of a container's termination message (the source of the mount whose
    /// destination is the annotated path), with the real agent's errors.
    ///
    /// The two are compared as paths, as the agent does (`Path == Path` in
    /// `do_read_termination_log`, src/agent/src/rpc.rs): components, so `/dev//termination-log`
    /// and `/dev/./termination-log/` name `/dev/termination-log`, but `..` is not resolved.
    pub fn termination_log_source(&self, cid: &str) -> Result<String> {
        let st = self.lock();
        let c = st
            .containers
            .get(cid)
            .ok_or_else(|| AgentError::internal(format!("Invalid container id: {cid}")))?;
        let path = c
            .spec
            .Annotations
            .get(TERMINATION_MESSAGE_PATH)
            .ok_or_else(|| AgentError::internal("No terminationMessagePath annotation"))?;
        c.spec
            .Mounts
            .iter()
            .find(|m| std::path::Path::new(&m.destination) == std::path::Path::new(path))
            .map(|m| m.source.clone())
            .ok_or_else(|| {
                AgentError::internal(format!("termination message mount not found for {path}"))
            })
    }

    pub fn write_termination_message(&self, cid: &str, data: &[u8]) -> Result<()> {
        let source = self.termination_log_source(cid)?;
        self.fs
            .write(&source, data)
            .map_err(|e| AgentError::internal(e.to_string()))
    }

    pub fn check_policy(&self, method: Method, request_name: &str) -> Result<()> {
        if self.config.deny.contains(&method) {
            return Err(AgentError::quoted(
                Code::PERMISSION_DENIED,
                &format!("{request_name} is blocked by policy: denied by the kata-sim policy"),
            ));
        }
        Ok(())
    }

    // ---- sandbox ----

    pub async fn create_sandbox(
        &self,
        req: agent::CreateSandboxRequest,
        _seq: u64,
    ) -> Result<Empty> {
        // The agent wipes its runtime directory on every CreateSandbox.
        self.fs
            .remove_all("/run/kata-containers")
            .map_err(io_internal)?;
        self.fs
            .mkdir_all(SHARED_CONTAINERS_DIR)
            .map_err(io_internal)?;
        for s in &req.storages {
            self.mount_storage(s)?;
        }
        let mut st = self.lock();
        st.sandbox = Some(SandboxInfo {
            id: req.sandbox_id.clone(),
            hostname: req.hostname.clone(),
            dns: req.dns.clone(),
            storages: req
                .storages
                .iter()
                .map(|s| format!("{}:{}", s.driver, s.mount_point))
                .collect(),
            sandbox_pidns: req.sandbox_pidns,
        });
        Ok(Empty::new())
    }

    /// Handles one storage: its driver must be known; its mount point appears in the guest.
    pub fn mount_storage(&self, s: &agent::Storage) -> Result<()> {
        if !self.config.details.storage_handlers.contains(&s.driver) {
            return Err(AgentError::internal(format!(
                "Failed to find the storage handler {}",
                s.driver
            )));
        }
        if !s.mount_point.is_empty() {
            self.fs.mkdir_all(&s.mount_point).map_err(io_internal)?;
        }
        Ok(())
    }

    pub async fn destroy_sandbox(
        &self,
        _req: agent::DestroySandboxRequest,
        _seq: u64,
    ) -> Result<Empty> {
        let procs: Vec<Arc<Proc>> = {
            let mut st = self.lock();
            let procs = st
                .containers
                .values()
                .flat_map(|c| c.processes.values().cloned())
                .collect();
            st.containers.clear();
            st.terminated = true;
            procs
        };
        for p in procs {
            p.exit(137);
        }
        self.notify();
        Ok(Empty::new())
    }

    pub async fn get_guest_details(
        &self,
        req: agent::GuestDetailsRequest,
        _seq: u64,
    ) -> Result<agent::GuestDetailsResponse> {
        let d = &self.config.details;
        let mut resp = agent::GuestDetailsResponse::new();
        if req.mem_block_size {
            resp.mem_block_size_bytes = d.mem_block_size_bytes;
        }
        if req.mem_hotplug_probe {
            resp.support_mem_hotplug_probe = d.support_mem_hotplug_probe;
        }
        resp.agent_details = Some(agent::AgentDetails {
            version: d.agent_version.clone(),
            init_daemon: d.init_daemon,
            device_handlers: d.device_handlers.clone(),
            storage_handlers: d.storage_handlers.clone(),
            supports_seccomp: d.supports_seccomp,
            extra_features: d.extra_features.clone(),
            ..Default::default()
        })
        .into();
        Ok(resp)
    }

    pub async fn check(
        &self,
        _req: health::CheckRequest,
        _seq: u64,
    ) -> Result<health::HealthCheckResponse> {
        let mut resp = health::HealthCheckResponse::new();
        resp.status = health::health_check_response::ServingStatus::SERVING.into();
        Ok(resp)
    }

    pub async fn version(
        &self,
        _req: health::CheckRequest,
        _seq: u64,
    ) -> Result<health::VersionCheckResponse> {
        Ok(health::VersionCheckResponse {
            grpc_version: self.config.details.grpc_version.clone(),
            agent_version: self.config.details.agent_version.clone(),
            ..Default::default()
        })
    }

    pub async fn get_oom_event(
        &self,
        _req: agent::GetOOMEventRequest,
        _seq: u64,
    ) -> Result<agent::OOMEvent> {
        loop {
            let n = self.changed.notified();
            tokio::pin!(n);
            n.as_mut().enable();
            {
                let mut st = self.lock();
                if st.terminated {
                    return Err(AgentError::quoted(Code::INTERNAL, ""));
                }
                if let Some(cid) = st.oom_events.pop_front() {
                    return Ok(agent::OOMEvent {
                        container_id: cid,
                        ..Default::default()
                    });
                }
            }
            n.await;
        }
    }

    pub async fn get_diagnostic_data(
        &self,
        req: agent::GetDiagnosticDataRequest,
        _seq: u64,
    ) -> Result<agent::GetDiagnosticDataResponse> {
        if req.log_type != "termination_log" {
            return Err(AgentError::quoted(
                Code::INVALID_ARGUMENT,
                &format!("unsupported diagnostic log_type: {}", req.log_type),
            ));
        }
        let source = self.termination_log_source(&req.container_id)?;
        let data = match self
            .fs
            .confined()
            .read_at_most(&source, MAX_TERMINATION_MSG)
        {
            Ok(buf) => String::from_utf8_lossy(&buf).into_owned(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => {
                return Err(AgentError::internal(format!(
                    "Failed to read termination log: {e}"
                )));
            }
        };
        Ok(agent::GetDiagnosticDataResponse {
            data,
            ..Default::default()
        })
    }

    pub async fn copy_file(&self, req: agent::CopyFileRequest, _seq: u64) -> Result<Empty> {
        copy_file(&self.fs, self.config.disk_size(), &req)?;
        Ok(Empty::new())
    }

    // ---- resources ----

    pub async fn online_cpu_mem(
        &self,
        req: agent::OnlineCPUMemRequest,
        _seq: u64,
    ) -> Result<Empty> {
        let max = self.config.details.max_vcpus;
        let mut st = self.lock();
        if req.nb_cpus > 0 {
            if st.online_vcpus + req.nb_cpus > max {
                return Err(AgentError::internal(format!(
                    "failed to online {} CPUs: only {} of {} are offline",
                    req.nb_cpus,
                    max - st.online_vcpus,
                    max
                )));
            }
            st.online_vcpus += req.nb_cpus;
        }
        if !req.cpu_only {
            st.memory_onlined += 1;
        }
        Ok(Empty::new())
    }

    pub async fn mem_hotplug_by_probe(
        &self,
        req: agent::MemHotplugByProbeRequest,
        _seq: u64,
    ) -> Result<Empty> {
        if !self.config.details.support_mem_hotplug_probe {
            return Err(AgentError::internal(
                "No such file or directory (os error 2)",
            ));
        }
        self.lock()
            .probed_memory
            .extend(req.memHotplugProbeAddr.iter().copied());
        Ok(Empty::new())
    }

    pub async fn reseed_random_dev(
        &self,
        req: agent::ReseedRandomDevRequest,
        _seq: u64,
    ) -> Result<Empty> {
        self.lock().random_seeded_bytes += req.data.len() as u64;
        Ok(Empty::new())
    }

    pub async fn set_guest_date_time(
        &self,
        req: agent::SetGuestDateTimeRequest,
        _seq: u64,
    ) -> Result<Empty> {
        if req.Usec < 0 || req.Usec >= 1_000_000 {
            return Err(AgentError::internal("EINVAL: Invalid argument"));
        }
        self.lock().guest_time = Some((req.Sec, req.Usec));
        Ok(Empty::new())
    }

    pub async fn add_swap(&self, req: agent::AddSwapRequest, _seq: u64) -> Result<Empty> {
        if req.PCIPath.is_empty() {
            return Err(AgentError::internal("empty PCI path for swap device"));
        }
        let path: Vec<String> = req.PCIPath.iter().map(|s| format!("{s:02x}")).collect();
        self.lock().swaps.push(format!("pci:{}", path.join("/")));
        Ok(Empty::new())
    }

    pub async fn add_swap_path(&self, req: agent::AddSwapPathRequest, _seq: u64) -> Result<Empty> {
        if !self.fs.exists(&req.path) {
            return Err(AgentError::internal(
                "No such file or directory (os error 2)",
            ));
        }
        self.lock().swaps.push(format!("file:{}", req.path));
        Ok(Empty::new())
    }

    pub async fn update_ephemeral_mounts(
        &self,
        req: agent::UpdateEphemeralMountsRequest,
        _seq: u64,
    ) -> Result<Empty> {
        for s in &req.storages {
            self.mount_storage(s)?;
        }
        self.lock()
            .ephemeral_mounts
            .extend(req.storages.iter().map(|s| s.mount_point.clone()));
        Ok(Empty::new())
    }

    pub async fn remove_stale_virtiofs_share_mounts(
        &self,
        _req: agent::RemoveStaleVirtiofsShareMountsRequest,
        _seq: u64,
    ) -> Result<Empty> {
        // The model has no virtio-fs mounts that could go stale.
        Ok(Empty::new())
    }

    pub async fn get_metrics(
        &self,
        _req: agent::GetMetricsRequest,
        _seq: u64,
    ) -> Result<agent::Metrics> {
        let st = self.lock();
        let procs: usize = st.containers.values().map(|c| c.processes.len()).sum();
        let mut calls: BTreeMap<&'static str, u64> = BTreeMap::new();
        for e in self.trace.events() {
            *calls.entry(e.method.name()).or_default() += 1;
        }
        let mut text = String::new();
        text.push_str("# HELP kata_agent_containers Containers in the guest.\n");
        text.push_str("# TYPE kata_agent_containers gauge\n");
        text.push_str(&format!("kata_agent_containers {}\n", st.containers.len()));
        text.push_str("# HELP kata_agent_processes Processes not yet reaped.\n");
        text.push_str("# TYPE kata_agent_processes gauge\n");
        text.push_str(&format!("kata_agent_processes {procs}\n"));
        text.push_str("# HELP kata_guest_online_vcpus Online vCPUs.\n");
        text.push_str("# TYPE kata_guest_online_vcpus gauge\n");
        text.push_str(&format!("kata_guest_online_vcpus {}\n", st.online_vcpus));
        text.push_str("# HELP kata_agent_rpc_calls_total RPCs received, by method.\n");
        text.push_str("# TYPE kata_agent_rpc_calls_total counter\n");
        for (m, n) in calls {
            text.push_str(&format!(
                "kata_agent_rpc_calls_total{{method=\"{m}\"}} {n}\n"
            ));
        }
        Ok(agent::Metrics {
            metrics: text,
            ..Default::default()
        })
    }

    pub async fn get_volume_stats(
        &self,
        req: agent::VolumeStatsRequest,
        _seq: u64,
    ) -> Result<csi::VolumeStatsResponse> {
        let used = match self.fs.confined().tree_size(&req.volume_guest_path) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(AgentError::internal(
                    "No such file or directory (os error 2)",
                ));
            }
            Err(e) => return Err(io_internal(e)),
        };
        const CAPACITY: u64 = 1 << 30;
        let mut usage = csi::VolumeUsage::new();
        usage.total = CAPACITY;
        usage.used = used;
        usage.available = CAPACITY.saturating_sub(used);
        usage.unit = csi::volume_usage::Unit::BYTES.into();
        Ok(csi::VolumeStatsResponse {
            usage: vec![usage],
            ..Default::default()
        })
    }

    pub async fn resize_volume(
        &self,
        _req: agent::ResizeVolumeRequest,
        _seq: u64,
    ) -> Result<Empty> {
        Err(AgentError::quoted(
            Code::UNIMPLEMENTED,
            "resize_volume is not implemented in kata-agent",
        ))
    }

    pub async fn set_policy(&self, req: agent::SetPolicyRequest, _seq: u64) -> Result<Empty> {
        if !self.config.policy_enabled {
            return Err(AgentError::status(
                Code::NOT_FOUND,
                "/grpc.AgentService/SetPolicy is not supported",
            ));
        }
        if req.policy.trim().is_empty() {
            return Err(AgentError::quoted(
                Code::INVALID_ARGUMENT,
                "failed to set policy: empty policy",
            ));
        }
        self.lock().policy = Some(req.policy);
        Ok(Empty::new())
    }

    pub async fn mem_agent_memcg_set(
        &self,
        _req: agent::MemAgentMemcgConfig,
        _seq: u64,
    ) -> Result<Empty> {
        Err(AgentError::internal("mem-agent is disabled"))
    }

    pub async fn mem_agent_compact_set(
        &self,
        _req: agent::MemAgentCompactConfig,
        _seq: u64,
    ) -> Result<Empty> {
        Err(AgentError::internal("mem-agent is disabled"))
    }

    // ---- networking ----

    pub async fn update_interface(
        &self,
        req: agent::UpdateInterfaceRequest,
        _seq: u64,
    ) -> Result<types::Interface> {
        let iface = req.interface.into_option().ok_or_else(|| {
            AgentError::quoted(Code::INVALID_ARGUMENT, "empty update interface request")
        })?;
        self.lock()
            .interfaces
            .insert(iface.name.clone(), iface.clone());
        Ok(iface)
    }

    pub async fn list_interfaces(
        &self,
        _req: agent::ListInterfacesRequest,
        _seq: u64,
    ) -> Result<agent::Interfaces> {
        let st = self.lock();
        Ok(agent::Interfaces {
            Interfaces: st.interfaces.values().cloned().collect(),
            ..Default::default()
        })
    }

    pub async fn update_routes(
        &self,
        req: agent::UpdateRoutesRequest,
        _seq: u64,
    ) -> Result<agent::Routes> {
        let routes = req.routes.into_option().ok_or_else(|| {
            AgentError::quoted(Code::INVALID_ARGUMENT, "empty update routes request")
        })?;
        let mut st = self.lock();
        for r in &routes.Routes {
            if !r.device.is_empty() && !st.interfaces.contains_key(&r.device) {
                return Err(AgentError::internal(format!(
                    "Link not found: {}",
                    r.device
                )));
            }
        }
        st.routes = routes.Routes.clone();
        Ok(routes)
    }

    pub async fn list_routes(
        &self,
        _req: agent::ListRoutesRequest,
        _seq: u64,
    ) -> Result<agent::Routes> {
        Ok(agent::Routes {
            Routes: self.lock().routes.clone(),
            ..Default::default()
        })
    }

    pub async fn add_arp_neighbors(
        &self,
        req: agent::AddARPNeighborsRequest,
        _seq: u64,
    ) -> Result<Empty> {
        if let Some(list) = req.neighbors.into_option() {
            self.lock().arp_neighbors.extend(list.ARPNeighbors);
        }
        Ok(Empty::new())
    }

    pub async fn get_ip_tables(
        &self,
        req: agent::GetIPTablesRequest,
        _seq: u64,
    ) -> Result<agent::GetIPTablesResponse> {
        let data = self.lock().iptables[usize::from(req.is_ipv6)].clone();
        Ok(agent::GetIPTablesResponse {
            data,
            ..Default::default()
        })
    }

    pub async fn set_ip_tables(
        &self,
        req: agent::SetIPTablesRequest,
        _seq: u64,
    ) -> Result<agent::SetIPTablesResponse> {
        self.lock().iptables[usize::from(req.is_ipv6)] = req.data.clone();
        Ok(agent::SetIPTablesResponse {
            data: req.data,
            ..Default::default()
        })
    }
}

pub(crate) fn io_internal(e: std::io::Error) -> AgentError {
    AgentError::internal(format!("{e}"))
}

/// Mode bits the agent keeps on files and directories it creates.
const FILE_PERMISSION_MASK: u32 = 0o7777;
const IMPLICIT_DIRECTORY_PERMISSION_MASK: u32 = 0o777;
const S_IFMT: u32 = 0o170000;
const S_IFDIR: u32 = 0o040000;
const S_IFLNK: u32 = 0o120000;

/// CopyFile as the real agent performs it, confined to the shared containers directory (the
/// agent resolves every path of it in a root at that directory; so does this, through
/// [`super::fs::Confined`]). The file is written to `<path>.tmp` and renamed into place when
/// it has `file_size` bytes; setuid and setgid bits are dropped (the guest is on the host),
/// and an offset or size beyond the guest disk fails as a full disk does.
pub(crate) fn copy_file(fs: &GuestFs, disk_size: u64, req: &agent::CopyFileRequest) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let shared = SHARED_CONTAINERS_DIR.trim_end_matches('/');
    let rel = std::path::Path::new(&req.path)
        .strip_prefix(shared)
        .map_err(|_| {
            AgentError::internal(format!(
                "removing {shared:?} prefix from {}\n\nCaused by:\n    prefix not found",
                req.path
            ))
        })?;
    // A path that would climb out of the shared directory is refused before anything is
    // written (inside it, `..` and symlinks are resolved by the kernel in the root).
    let mut depth = 0usize;
    let mut parts: Vec<String> = Vec::new();
    for c in rel.components() {
        match c {
            std::path::Component::Normal(p) => {
                depth += 1;
                parts.push(p.to_string_lossy().into_owned());
            }
            std::path::Component::ParentDir => {
                if depth == 0 {
                    return Err(AgentError::internal(format!(
                        "renameat {}\n\nCaused by:\n    ENOENT: No such file or directory",
                        req.path
                    )));
                }
                depth -= 1;
                parts.push("..".into());
            }
            _ => {}
        }
    }
    if depth == 0 {
        return Err(AgentError::internal(
            "create_file\n\nCaused by:\n    EISDIR: Is a directory",
        ));
    }
    let target = format!("/{}", parts.join("/"));
    let root = match fs.confined().subdir(shared) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            fs.mkdir_all(SHARED_CONTAINERS_DIR).map_err(io_internal)?;
            fs.confined().subdir(shared)
        }
        other => other,
    }
    .map_err(io_internal)?;
    let set_mode = |f: &std::fs::File, mode: u32| {
        f.set_permissions(std::fs::Permissions::from_mode(mode & HOST_SAFE_MODE_MASK))
            .map_err(io_internal)
    };
    let parent = std::path::Path::new(&target)
        .parent()
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_else(|| "/".into());
    if !root.exists(&parent) {
        let dir = root.mkdir_all(&parent, req.dir_mode).map_err(|e| {
            AgentError::internal(format!("mkdir_all parent\n\nCaused by:\n    {e}"))
        })?;
        set_mode(&dir, req.dir_mode & IMPLICIT_DIRECTORY_PERMISSION_MASK)?;
    }
    match req.file_mode & S_IFMT {
        S_IFDIR => {
            let dir = root.mkdir_all(&target, req.file_mode).map_err(|e| {
                AgentError::internal(format!("mkdir_all dir\n\nCaused by:\n    {e}"))
            })?;
            set_mode(&dir, req.file_mode & FILE_PERMISSION_MASK)?;
            return Ok(());
        }
        S_IFLNK => {
            if req.offset == 0 {
                let _ = root.remove_file(&target);
            }
            let link_target = String::from_utf8_lossy(&req.data).into_owned();
            root.symlink(&target, &link_target).map_err(|e| {
                AgentError::internal(format!("create symlink\n\nCaused by:\n    {e}"))
            })?;
            return Ok(());
        }
        _ => {}
    }
    if req.offset == 0 {
        match root.remove_file(&target) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io_internal(e)),
            _ => {}
        }
    }
    if req.offset < 0 {
        return Err(AgentError::internal(
            "write_all_at\n\nCaused by:\n    EINVAL: Invalid argument",
        ));
    }
    // The guest disk is bounded: a chunk or a declared size past it fails as a full disk
    // does, before a (sparse) host file of that size exists.
    let end = (req.offset as u64).checked_add(req.data.len() as u64);
    if end.is_none_or(|end| end > disk_size)
        || req.file_size > 0 && req.file_size as u64 > disk_size
    {
        return Err(AgentError::internal(
            "write_all_at\n\nCaused by:\n    ENOSPC: No space left on device",
        ));
    }
    let tmp = std::path::Path::new(&target)
        .with_extension("tmp")
        .to_string_lossy()
        .into_owned();
    let how = if req.offset == 0 {
        WriteMode::Truncate
    } else {
        WriteMode::Update
    };
    let file = root
        .open_write(&tmp, how, 0o644)
        .map_err(|e| AgentError::internal(format!("create_file\n\nCaused by:\n    {e}")))?;
    {
        use std::os::unix::fs::FileExt;
        file.write_all_at(&req.data, req.offset as u64)
            .map_err(|e| AgentError::internal(format!("write_all_at\n\nCaused by:\n    {e}")))?;
    }
    let size = file.metadata().map_err(io_internal)?.len();
    if size as i64 != req.file_size {
        return Ok(());
    }
    set_mode(&file, req.file_mode & FILE_PERMISSION_MASK)?;
    root.rename(&tmp, &target)
        .map_err(|e| AgentError::internal(format!("renameat\n\nCaused by:\n    {e}")))?;
    Ok(())
}

/// Derives an independent seed for one consumer (a process's `/dev/urandom`) from the run's
/// seed (splitmix64's finaliser over both).
pub fn mix_seed(seed: u64, salt: u64) -> u64 {
    let mut z = seed ^ salt.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

//! Container and process RPCs: create, start, exec, signal, wait, remove, pause, resume,
//! update, stats, and the stdio calls.

use std::sync::{Arc, LazyLock};

use protobuf::well_known_types::empty::Empty;
use regex::Regex;
use ttrpc::Code;

use super::guest::{Container, ContainerStatus, Guest, io_internal};
use super::process::{Delivery, Proc, ProcStatus, SIGKILL, SIGTERM, Stream};
use crate::error::{AgentError, LookupError, Result};
use crate::protocols::{agent, oci};

/// The container id rule of `kata_sys_util::validate::verify_id`.
static ID_RE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]+$").expect("valid regex"));

/// The directories of a busybox image's rootfs, presented when no rootfs was provided.
const IMAGE_SKELETON: &[&str] = &[
    "bin", "dev", "etc", "home", "proc", "root", "sys", "tmp", "usr/bin", "var",
];

fn invalid_container_internal() -> AgentError {
    AgentError::internal("Invalid container id")
}

fn einval() -> AgentError {
    AgentError::internal("EINVAL: Invalid argument")
}

impl Guest {
    /// The exit status of a process that has exited and not been reaped yet.
    pub fn exit_status(&self, cid: &str, eid: &str) -> Option<i32> {
        self.find_process(cid, eid).ok()?.exit_status()
    }

    /// `find_container_process` of the real agent.
    fn find_process(&self, cid: &str, eid: &str) -> Result<Arc<Proc>, LookupError> {
        let st = self.lock();
        let c = st
            .containers
            .get(cid)
            .ok_or(LookupError::InvalidContainerId)?;
        if eid.is_empty() {
            return c
                .processes
                .values()
                .find(|p| p.pid == c.init_pid)
                .cloned()
                .ok_or(LookupError::InitProcessNotFound);
        }
        c.processes
            .get(eid)
            .cloned()
            .ok_or(LookupError::InvalidExecId)
    }

    pub async fn create_container(
        &self,
        req: agent::CreateContainerRequest,
        seq: u64,
    ) -> Result<Empty> {
        let cid = req.container_id.clone();
        if !ID_RE.is_match(&cid) {
            return Err(AgentError::internal(format!("invalid container ID {cid}")));
        }
        let spec = req.OCI.clone().into_option().ok_or_else(einval)?;
        for s in &req.storages {
            self.mount_storage(s)?;
        }
        let process = spec.Process.clone().into_option().ok_or_else(einval)?;
        if process.Capabilities.is_none() {
            return Err(AgentError::internal("missing process capabilities"));
        }
        {
            let mut st = self.lock();
            if st.containers.contains_key(&cid) {
                // The real agent's rollback of the failed create destroys the original too.
                if let Some(old) = st.containers.remove(&cid) {
                    for p in old.processes.values() {
                        p.exit(128 + SIGKILL as i32);
                    }
                }
                return Err(AgentError::internal("exec fifo exists"));
            }
        }
        // Bind-mount sources must exist in the guest (the runtime copies them first).
        for m in &spec.Mounts {
            let bind = m.type_ == "bind" || m.options.iter().any(|o| o == "bind" || o == "rbind");
            if bind && !m.source.is_empty() && !self.fs.exists(&m.source) {
                return Err(AgentError::internal(
                    "No such file or directory (os error 2)",
                ));
            }
        }
        let mut image_root = None;
        if let Some(root) = spec.Root.as_ref().filter(|r| !r.Path.is_empty()) {
            // Nothing is pulled or mounted: a missing rootfs is presented as an empty busybox
            // image (its directories), so that one-liners writing to /tmp work as on a guest.
            if self
                .fs
                .create_tree(&root.Path, IMAGE_SKELETON)
                .map_err(io_internal)?
            {
                image_root = Some(root.Path.clone());
            }
        }
        let mut st = self.lock();
        let pid = Guest::alloc_pid(&mut st);
        let proc = Arc::new(Proc::new(
            req.exec_id.clone(),
            pid,
            true,
            process.Terminal,
            process.Args.clone(),
        ));
        let mut processes = std::collections::BTreeMap::new();
        processes.insert(req.exec_id.clone(), proc);
        st.containers.insert(
            cid,
            Container {
                spec,
                status: ContainerStatus::Created,
                init_pid: pid,
                processes,
                resources: None,
                image_root,
            },
        );
        let _ = seq;
        Ok(Empty::new())
    }

    pub async fn start_container(
        &self,
        req: agent::StartContainerRequest,
        seq: u64,
    ) -> Result<Empty> {
        let cid = req.container_id;
        let (proc, args) = {
            let mut st = self.lock();
            let c = st
                .containers
                .get_mut(&cid)
                .ok_or_else(invalid_container_internal)?;
            if c.status != ContainerStatus::Created {
                // The real agent blocks forever here (it reopens the exec FIFO with no reader);
                // kata-sim answers an error instead so that the mistake is visible.
                return Err(AgentError::internal(format!(
                    "container {cid} was already started (the real agent would block here)"
                )));
            }
            c.status = ContainerStatus::Running;
            let p = c.processes.values().find(|p| p.pid == c.init_pid).cloned();
            let ctx = self.program_ctx(seq, &c.spec, &c.spec.Process.Cwd, c.init_pid);
            (p.map(|p| (p, ctx)), c.spec.Process.Args.clone())
        };
        if let Some((p, ctx)) = proc {
            let behaviour = self.behaviour_for(&cid, &p.exec_id, &args);
            p.start(behaviour, ctx);
        }
        Ok(Empty::new())
    }

    pub async fn exec_process(&self, req: agent::ExecProcessRequest, seq: u64) -> Result<Empty> {
        let process = req.process.into_option().ok_or_else(|| {
            AgentError::internal("Unable to parse process from ExecProcessRequest")
        })?;
        let proc = {
            let mut st = self.lock();
            let pid = Guest::alloc_pid(&mut st);
            let c = st
                .containers
                .get_mut(&req.container_id)
                .ok_or_else(invalid_container_internal)?;
            if c.processes.contains_key(&req.exec_id) {
                return Err(AgentError::internal(format!(
                    "exec_id '{}' already exists",
                    req.exec_id
                )));
            }
            if c.status == ContainerStatus::Stopped {
                return Err(AgentError::internal("ESRCH: No such process"));
            }
            let p = Arc::new(Proc::new(
                req.exec_id.clone(),
                pid,
                false,
                process.Terminal,
                process.Args.clone(),
            ));
            c.processes.insert(req.exec_id.clone(), Arc::clone(&p));
            (p, self.program_ctx(seq, &c.spec, &process.Cwd, pid))
        };
        let (proc, ctx) = proc;
        let behaviour = self.behaviour_for(&req.container_id, &req.exec_id, &process.Args);
        proc.start(behaviour, ctx);
        Ok(Empty::new())
    }

    pub async fn signal_process(
        &self,
        req: agent::SignalProcessRequest,
        _seq: u64,
    ) -> Result<Empty> {
        let all = req.exec_id.is_empty() && req.signal == SIGKILL;
        if all {
            let procs: Vec<Arc<Proc>> = {
                let st = self.lock();
                let c = st.containers.get(&req.container_id).ok_or_else(|| {
                    AgentError::internal(format!("Invalid container id {}", req.container_id))
                })?;
                c.processes.values().cloned().collect()
            };
            for p in procs {
                p.signal(SIGKILL);
            }
            self.update_container_status(&req.container_id);
            return Ok(Empty::new());
        }
        let p = self
            .find_process(&req.container_id, &req.exec_id)
            .map_err(LookupError::to_rpc)?;
        let sig = if p.init && req.signal == SIGTERM {
            SIGKILL
        } else {
            req.signal
        };
        // ESRCH (exited but not reaped) is swallowed, as the real agent does.
        let _: Delivery = p.signal(sig);
        self.update_container_status(&req.container_id);
        Ok(Empty::new())
    }

    /// A container whose init process exited is stopped.
    fn update_container_status(&self, cid: &str) {
        let mut st = self.lock();
        if let Some(c) = st.containers.get_mut(cid) {
            let init_exited = c
                .processes
                .values()
                .find(|p| p.pid == c.init_pid)
                .is_none_or(|p| matches!(p.status(), ProcStatus::Exited(_)));
            if init_exited && c.status != ContainerStatus::Created {
                c.status = ContainerStatus::Stopped;
            }
        }
    }

    pub async fn wait_process(
        &self,
        req: agent::WaitProcessRequest,
        _seq: u64,
    ) -> Result<agent::WaitProcessResponse> {
        let p = self
            .find_process(&req.container_id, &req.exec_id)
            .map_err(LookupError::to_rpc)?;
        let status = p.wait().await;
        let mut st = self.lock();
        let c = st
            .containers
            .get_mut(&req.container_id)
            .ok_or_else(invalid_container_internal)?;
        // The first waiter to finish reaps the process; later calls get NOT_FOUND.
        c.processes.retain(|_, q| q.pid != p.pid);
        if p.pid == c.init_pid && c.status != ContainerStatus::Created {
            c.status = ContainerStatus::Stopped;
        }
        Ok(agent::WaitProcessResponse {
            status,
            ..Default::default()
        })
    }

    pub async fn remove_container(
        &self,
        req: agent::RemoveContainerRequest,
        _seq: u64,
    ) -> Result<Empty> {
        let removed = self
            .lock()
            .containers
            .remove(&req.container_id)
            .ok_or_else(invalid_container_internal)?;
        for p in removed.processes.values() {
            p.signal(SIGKILL);
        }
        if let Some(root) = removed.image_root {
            // The real agent logs a storage it fails to remove and goes on.
            if let Err(e) = self.fs.discard(&root) {
                tracing::warn!(container = %req.container_id, error = %e, "removing its image root");
            }
        }
        Ok(Empty::new())
    }

    pub async fn pause_container(
        &self,
        req: agent::PauseContainerRequest,
        _seq: u64,
    ) -> Result<Empty> {
        let mut st = self.lock();
        let c = st
            .containers
            .get_mut(&req.container_id)
            .ok_or_else(|| AgentError::quoted(Code::INVALID_ARGUMENT, "invalid container id"))?;
        if c.status != ContainerStatus::Running && c.status != ContainerStatus::Created {
            return Err(AgentError::internal(format!(
                "failed to pause container: current status is: {:?}",
                c.status
            )));
        }
        c.status = ContainerStatus::Paused;
        Ok(Empty::new())
    }

    pub async fn resume_container(
        &self,
        req: agent::ResumeContainerRequest,
        _seq: u64,
    ) -> Result<Empty> {
        let mut st = self.lock();
        let c = st
            .containers
            .get_mut(&req.container_id)
            .ok_or_else(|| AgentError::quoted(Code::INVALID_ARGUMENT, "invalid container id"))?;
        if c.status != ContainerStatus::Paused {
            return Err(AgentError::internal(format!(
                "container status is: {:?}, not paused",
                c.status
            )));
        }
        c.status = ContainerStatus::Running;
        Ok(Empty::new())
    }

    pub async fn update_container(
        &self,
        req: agent::UpdateContainerRequest,
        _seq: u64,
    ) -> Result<Empty> {
        let mut st = self.lock();
        let c = st
            .containers
            .get_mut(&req.container_id)
            .ok_or_else(|| AgentError::quoted(Code::INVALID_ARGUMENT, "invalid container id"))?;
        if let Some(r) = req.resources.into_option() {
            c.resources = Some(r);
        }
        Ok(Empty::new())
    }

    pub async fn stats_container(
        &self,
        req: agent::StatsContainerRequest,
        _seq: u64,
    ) -> Result<agent::StatsContainerResponse> {
        let st = self.lock();
        let c = st
            .containers
            .get(&req.container_id)
            .ok_or_else(|| AgentError::quoted(Code::INVALID_ARGUMENT, "invalid container id"))?;
        let live = c
            .processes
            .values()
            .filter(|p| !matches!(p.status(), ProcStatus::Exited(_)))
            .count() as u64;
        let limit = c
            .resources
            .as_ref()
            .and_then(|r| r.Memory.as_ref())
            .map(|m| m.Limit as u64)
            .unwrap_or(u64::MAX);
        let mut pids = agent::PidsStats::new();
        pids.current = live;
        let mut mem = agent::MemoryStats::new();
        let mut usage = agent::MemoryData::new();
        usage.usage = live * (4 << 20);
        usage.limit = limit;
        mem.usage = Some(usage).into();
        let cgroup_stats = agent::CgroupStats {
            pids_stats: Some(pids).into(),
            memory_stats: Some(mem).into(),
            ..Default::default()
        };
        Ok(agent::StatsContainerResponse {
            cgroup_stats: Some(cgroup_stats).into(),
            ..Default::default()
        })
    }

    // ---- stdio ----

    pub async fn read_stdout(
        &self,
        req: agent::ReadStreamRequest,
        _seq: u64,
    ) -> Result<agent::ReadStreamResponse> {
        self.read_stream(req, Stream::Stdout).await
    }

    pub async fn read_stderr(
        &self,
        req: agent::ReadStreamRequest,
        _seq: u64,
    ) -> Result<agent::ReadStreamResponse> {
        self.read_stream(req, Stream::Stderr).await
    }

    async fn read_stream(
        &self,
        req: agent::ReadStreamRequest,
        stream: Stream,
    ) -> Result<agent::ReadStreamResponse> {
        let p = self
            .find_process(&req.container_id, &req.exec_id)
            .map_err(LookupError::to_rpc)?;
        let data = p.read_output(stream, req.len as usize).await;
        if data.is_empty()
            && !self
                .config
                .version
                .has(crate::profile::Feature::StreamEofEmptyOk)
        {
            return Err(AgentError::internal("eof"));
        }
        Ok(agent::ReadStreamResponse {
            data,
            ..Default::default()
        })
    }

    pub async fn write_stdin(
        &self,
        req: agent::WriteStreamRequest,
        _seq: u64,
    ) -> Result<agent::WriteStreamResponse> {
        let p = self
            .find_process(&req.container_id, &req.exec_id)
            .map_err(LookupError::to_internal)?;
        let len = req.data.len() as u32;
        if req.data.is_empty() {
            p.close_stdin();
        } else if !p
            .write_stdin_paced(&req.data, super::shell::PIPE_CAPACITY)
            .await
        {
            return Err(AgentError::internal("Broken pipe (os error 32)"));
        }
        Ok(agent::WriteStreamResponse {
            len,
            ..Default::default()
        })
    }

    pub async fn close_stdin(&self, req: agent::CloseStdinRequest, _seq: u64) -> Result<Empty> {
        let p = self
            .find_process(&req.container_id, &req.exec_id)
            .map_err(LookupError::to_rpc)?;
        p.close_stdin();
        Ok(Empty::new())
    }

    pub async fn tty_win_resize(
        &self,
        req: agent::TtyWinResizeRequest,
        _seq: u64,
    ) -> Result<Empty> {
        let p = self
            .find_process(&req.container_id, &req.exec_id)
            .map_err(LookupError::to_rpc)?;
        if !p.tty {
            return Err(AgentError::quoted(Code::UNAVAILABLE, "no tty"));
        }
        Ok(Empty::new())
    }
}

/// Keeps the oci import meaningful for readers of the signatures above.
#[allow(dead_code)]
fn _oci(_: oci::Spec) {}

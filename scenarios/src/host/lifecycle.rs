//! The host's lifecycle calls: sandbox, containers, their output, stop and teardown.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rand_chacha::rand_core::RngCore;
use sim_agent::protocols::{agent, oci};
use sim_agent::{Agent, SimAgent};
use sim_hypervisor::{Hypervisor, HypervisorConfig, Network, SimHypervisor};

use super::outcome::panic_message;
use super::persona::{
    self, BackgroundFrom, ExitPublished, FailureIs, PersonaCalls, Profile, StopPart,
    connection_gone,
};
use super::world::{Conn, Host, HostContainer, TaskBook, Transport};
use super::{OUTPUT_LIMIT, POLL_ROUND_TRIP};
use crate::conn::Connection;
use crate::record::{Level, TaskStatus, Warning};
use crate::schema::SharedFs;
use crate::words;

/// kubelet's annotation of a container's termination-message path.
pub const TERMINATION_MESSAGE_PATH: &str = "io.kubernetes.container.terminationMessagePath";
/// kubelet's annotation of a container's termination-message policy.
pub const TERMINATION_MESSAGE_POLICY: &str = "io.kubernetes.container.terminationMessagePolicy";
pub(super) const SHARED: &str = "/run/kata-containers/shared/containers";

impl<T: Transport> Host<T> {
    /// The persona's profile row.
    pub(super) fn profile(&self) -> &'static Profile {
        persona::profile(self.persona)
    }

    /// The persona's lifecycle calls over this host's connection and hypervisor.
    pub(super) fn calls(&self) -> &'static dyn PersonaCalls<Conn<T>, SimHypervisor> {
        persona::calls(self.persona)
    }

    pub(super) fn warn(&self, w: Warning) {
        self.log.lock().unwrap_or_else(|p| p.into_inner()).warn(w);
    }

    pub(super) fn tasks(&self) -> std::sync::MutexGuard<'_, TaskBook> {
        self.tasks.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Virtual time since the run started.
    pub(super) fn now(&self) -> Duration {
        self.started.elapsed()
    }

    pub(super) fn error(&self, e: String) {
        self.log
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .errors
            .push(e);
    }

    pub(super) fn agent(&self) -> Result<&Conn<T>, String> {
        self.agent
            .as_ref()
            .ok_or_else(|| "no sandbox: create_sandbox first".to_string())
    }

    pub(super) fn guest(&self) -> Result<&SimAgent, String> {
        self.guest
            .as_ref()
            .ok_or_else(|| "no sandbox: create_sandbox first".to_string())
    }

    /// Stops the background loops; one that panicked is an error of the run.
    pub(super) async fn stop_background(&mut self) {
        for (name, b) in std::mem::take(&mut self.background) {
            if b.is_finished() {
                if let Err(e) = b.await
                    && e.is_panic()
                {
                    self.error(format!(
                        "{name} panicked: {}",
                        panic_message(&*e.into_panic())
                    ));
                }
            } else {
                b.abort();
            }
        }
    }

    pub(super) fn exec_key(container: &str, exec: Option<&str>) -> String {
        match exec {
            Some(e) => format!("{container}/{e}"),
            None => container.to_string(),
        }
    }

    pub(super) async fn create_sandbox(&mut self, id: &str, hostname: &str) -> Result<(), String> {
        let mut config = HypervisorConfig::default();
        config
            .annotations
            .insert("io.kubernetes.cri.sandbox-name".into(), id.to_string());
        self.vm
            .create_vm(id.to_string(), Network::default(), config)
            .await
            .map_err(|e| format!("CreateVM: {e}"))?;
        self.vm
            .start_vm(600)
            .await
            .map_err(|e| format!("StartVM: {e}"))?;
        let guest = self.vm.agent().ok_or("the VM has no guest")?;
        self.guest = Some(guest.clone());
        let words = (self.profile().closed_words)();
        let agent = Connection::new(T::connect(&self.vm, &guest).await?, guest.clone(), words);
        self.agent = Some(agent.clone());
        self.sandbox_up = true;
        self.sandbox_id = id.to_string();
        let req = agent::CreateSandboxRequest {
            hostname: hostname.to_string(),
            ..sim_agent::requests::create_sandbox(id)
        };
        self.calls().start_sandbox(&agent, req).await?;
        // runtime-rs starts its OOM watcher and health check with the sandbox (sandbox.rs
        // `start`); the Go shim with the sandbox container's task Start (start.go:
        // `watchSandbox`, `watchOOMEvents`), see `Step::Start`.
        if self.profile().background_from == BackgroundFrom::SandboxStart {
            self.spawn_background(agent, id);
        }
        Ok(())
    }

    /// The OOM loop and the liveness monitor of the persona.
    pub(super) fn spawn_background(&mut self, agent: Conn<T>, sandbox_id: &str) {
        let persona = self.persona;
        let profile = self.profile();
        let calls = self.calls();
        let sandbox_id = sandbox_id.to_string();
        let log = Arc::clone(&self.log);
        let a = agent.clone();
        self.background.push((
            "the OOM watcher",
            tokio::spawn(async move {
                loop {
                    let pause = match Agent::get_oom_event(&a).await {
                        Ok(cid) => {
                            log.lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .warn(words::oom_event(persona, &cid));
                            POLL_ROUND_TRIP
                        }
                        // Go stops watching only on "ttrpc: closed" or "Dead agent"; runtime-rs
                        // never gives up (Profile::oom_gives_up_when_closed).
                        Err(e) if profile.oom_gives_up_when_closed && connection_gone(&e) => {
                            return;
                        }
                        Err(e) => {
                            if let Some(warning) = profile.oom_failure_warning {
                                log.lock()
                                    .unwrap_or_else(|p| p.into_inner())
                                    .warn(warning(&e));
                            }
                            profile.oom_retry
                        }
                    };
                    // Every poll waits on virtual time: a call that answers at once (a fault
                    // on GetOOMEvent) must not spin the loop on a paused clock.
                    tokio::time::sleep(pause).await;
                }
            }),
        ));
        let log = Arc::clone(&self.log);
        let vm = self.vm.clone();
        let monitor = tokio::spawn(async move {
            loop {
                tokio::time::sleep(profile.monitor_interval).await;
                if let Some(w) = calls.health_check(&agent, &vm, &sandbox_id).await {
                    if profile.monitor_marks_dead {
                        agent.mark_dead();
                    }
                    log.lock().unwrap_or_else(|p| p.into_inner()).warn(w);
                    return;
                }
            }
        });
        self.background.push(("the monitor", monitor));
    }

    pub(super) async fn create_container(
        &mut self,
        spec: &crate::schema::ContainerSpec,
    ) -> Result<(), String> {
        let agent = self.agent()?.clone();
        let cid = spec.id.clone();
        let exec_id = self.profile().exec_id.of(&cid);
        let rootfs = format!("{}/{cid}/rootfs", self.profile().rootfs_parent);
        let mut annotations = spec.annotations.clone();
        let mut mounts = vec![oci::Mount {
            destination: "/proc".into(),
            source: "proc".into(),
            type_: "proc".into(),
            ..Default::default()
        }];
        let mut host_file = None;
        let policy = spec
            .termination_message_policy
            .unwrap_or_default()
            .as_str()
            .to_string();
        // (destination, content, mode, host source)
        let mut files: Vec<(String, Vec<u8>, u32, Option<PathBuf>)> = Vec::new();
        if let Some(path) = &spec.termination_message_path {
            annotations.insert(TERMINATION_MESSAGE_PATH.into(), path.clone());
            annotations.insert(TERMINATION_MESSAGE_POLICY.into(), policy.clone());
            let file = self.host_dir.join(format!("{cid}-termination-log"));
            std::fs::write(&file, b"").map_err(|e| format!("host file: {e}"))?;
            if spec.host_file_unwritable {
                // Even root cannot write a file where a directory is.
                std::fs::remove_file(&file).map_err(|e| e.to_string())?;
                std::fs::create_dir(&file).map_err(|e| e.to_string())?;
            }
            host_file = Some(file.clone());
            // The mount's destination may be spelt apart from the annotation.
            let dest = spec
                .termination_message_mount
                .clone()
                .unwrap_or_else(|| path.clone());
            files.push((dest, Vec::new(), 0o100644, Some(file)));
        }
        for (dest, content) in &spec.mounts {
            files.push((dest.clone(), content.clone().into_bytes(), 0o100644, None));
        }
        let mut host_mounts = Vec::new();
        for (dest, content, mode, source) in files {
            // Without sharing, the runtime copies each file in and mounts the copy; with
            // virtio-fs the guest sees the shared directory (modelled as the same copy).
            let name = dest
                .rsplit('/')
                .find(|n| !n.is_empty())
                .unwrap_or("file")
                .to_string();
            let guest = format!("{SHARED}/{cid}-{:016x}-{name}", self.rng.next_u64());
            let local = self.host_dir.join(format!("copy-{cid}-{name}"));
            std::fs::write(&local, &content).map_err(|e| e.to_string())?;
            host_mounts.push((dest.clone(), source.unwrap_or_else(|| local.clone())));
            self.calls()
                .copy_file(&agent, local, guest.clone(), content, mode)
                .await
                .map_err(|e| format!("CopyFile {guest}: {e}"))?;
            mounts.push(oci::Mount {
                destination: dest,
                source: guest,
                type_: "bind".into(),
                options: vec!["rbind".into(), "rw".into()],
                ..Default::default()
            });
        }
        let caps = ["CAP_CHOWN", "CAP_KILL"].map(String::from).to_vec();
        let process = oci::Process {
            Terminal: spec.terminal,
            Args: spec.args.clone(),
            Env: vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()],
            Cwd: "/".into(),
            Capabilities: Some(oci::LinuxCapabilities {
                Bounding: caps.clone(),
                Effective: caps.clone(),
                Permitted: caps,
                ..Default::default()
            })
            .into(),
            ..Default::default()
        };
        let oci = oci::Spec {
            Version: "1.1.0".into(),
            Process: Some(process).into(),
            Root: Some(oci::Root {
                Path: rootfs,
                ..Default::default()
            })
            .into(),
            Mounts: mounts,
            Annotations: annotations.clone().into_iter().collect(),
            ..Default::default()
        };
        let oci_annotations = annotations;
        let req = agent::CreateContainerRequest {
            container_id: cid.clone(),
            exec_id: exec_id.clone(),
            OCI: Some(oci).into(),
            ..Default::default()
        };
        self.calls()
            .create_container(&agent, req)
            .await
            .map_err(|e| format!("CreateContainer {cid}: {e}"))?;
        let now = self.now();
        self.tasks().publish(&cid, TaskStatus::Created, now);
        // As upstream, the copy is decided from the container's annotations.
        let term_path = oci_annotations
            .get(TERMINATION_MESSAGE_PATH)
            .filter(|p| !p.is_empty())
            .cloned();
        let policy = oci_annotations
            .get(TERMINATION_MESSAGE_POLICY)
            .cloned()
            .unwrap_or(policy);
        self.containers.insert(
            cid,
            HostContainer {
                exec_id,
                host_file,
                host_mounts,
                term_path,
                policy,
                removed: false,
            },
        );
        Ok(())
    }

    /// Reads a process's output to its end, then reaps it.
    pub(super) fn spawn_io(&mut self, cid: &str, exec: Option<&str>, eid: String) {
        let Some(agent) = self.agent.clone() else {
            return;
        };
        let key = Self::exec_key(cid, exec);
        let persona = self.persona;
        let profile = self.profile();
        let log = Arc::clone(&self.log);
        let processes = Arc::clone(&self.processes);
        // Only a container's init process is a task containerd lists.
        let task_book = exec
            .is_none()
            .then(|| (Arc::clone(&self.tasks), self.started));
        processes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(key.clone())
            .or_default();
        let cid = cid.to_string();
        let k = key.clone();
        let task = tokio::spawn(async move {
            let len = profile.stdio_read_size;
            let reader = |stderr: bool| {
                let agent = agent.clone();
                let (cid, eid) = (cid.clone(), eid.clone());
                let processes = Arc::clone(&processes);
                let k = k.clone();
                async move {
                    let mut dropped = 0usize;
                    loop {
                        let r = if stderr {
                            Agent::read_process_stderr(&agent, cid.clone(), eid.clone(), len).await
                        } else {
                            Agent::read_process_stdout(&agent, cid.clone(), eid.clone(), len).await
                        };
                        // Empty data (4.x agents) and any error (older agents' "eof") end it,
                        // but for a runtime that reads again on empty data (Go 3.19.1), which
                        // spins on a 4.x agent: each read costs a round trip of virtual time.
                        let data = match r {
                            Ok(d) if !d.is_empty() => d,
                            Ok(_) if !profile.empty_read_ends_output => {
                                tokio::time::sleep(POLL_ROUND_TRIP).await;
                                continue;
                            }
                            _ => break,
                        };
                        let full = {
                            let mut p = processes.lock().unwrap_or_else(|p| p.into_inner());
                            let entry = p.entry(k.clone()).or_default();
                            let out = if stderr {
                                &mut entry.stderr
                            } else {
                                &mut entry.stdout
                            };
                            let room = OUTPUT_LIMIT.saturating_sub(out.len());
                            let keep = data.len().min(room);
                            out.push_str(&String::from_utf8_lossy(&data[..keep]));
                            dropped = dropped.saturating_add(data.len() - keep);
                            keep < data.len()
                        };
                        if full {
                            // An endless writer: the reads beyond what the outcome keeps each
                            // cost a round trip, so they do not spin on a paused clock.
                            tokio::time::sleep(POLL_ROUND_TRIP).await;
                        }
                    }
                    if dropped > 0 {
                        let mut p = processes.lock().unwrap_or_else(|p| p.into_inner());
                        let entry = p.entry(k.clone()).or_default();
                        let out = if stderr {
                            &mut entry.stderr
                        } else {
                            &mut entry.stdout
                        };
                        out.push_str(&format!("\n[kata-sim: {dropped} more bytes not kept]\n"));
                    }
                }
            };
            tokio::join!(reader(false), reader(true));
            let status = Agent::wait_process(&agent, cid.clone(), eid.clone()).await;
            if let Some((tasks, started)) = task_book {
                // A failed wait is exit 255 to both (wait.go's exitCode255, runtime-rs's
                // UNKNOWN_EXIT_STATUS).
                let code = status
                    .as_ref()
                    .ok()
                    .and_then(|c| u32::try_from(*c).ok())
                    .unwrap_or(255);
                let now = started.elapsed();
                let mut book = tasks.lock().unwrap_or_else(|p| p.into_inner());
                book.exited(&cid, code, now);
                if profile.exit_published == ExitPublished::AfterWait {
                    book.publish_exit(&cid, now);
                }
            }
            let code = match status {
                Ok(code) => Ok(code),
                // Both count a failed wait as exit 255; the Go shim logs it first (wait.go, `if
                // ret == 0 { ret = exitCode255 }`; fault-truth/go-h-drop-echo: ctr exit 255).
                Err(e) => {
                    if let Some((level, message)) = profile.wait_failure_logged {
                        log.lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .warn(words::said(persona, level, message, &e));
                    }
                    Ok(255)
                }
            };
            if let Ok(c) = &code {
                processes
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .entry(k)
                    .or_default()
                    .exit_code = Some(*c);
            }
            code
        });
        self.waiters.insert(key, task);
    }

    pub(super) async fn wait(&mut self, key: &str) -> Result<(), String> {
        let task = self
            .waiters
            .remove(key)
            .ok_or_else(|| format!("{key} is not started"))?;
        match task.await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(e),
            Err(e) => Err(format!("wait for {key}: {e}")),
        }
    }

    /// Stops a container; a persona that publishes the exit after the stop publishes it
    /// then, whether the stop failed or not (neither runtime holds the exit on a failed
    /// removal), unless the stop never ends.
    pub(super) async fn stop(&mut self, cid: &str) -> Result<(), String> {
        let r = self.stop_container(cid).await;
        if self.profile().exit_published == ExitPublished::AfterStop {
            let now = self.now();
            self.tasks().publish_exit(cid, now);
        }
        r
    }

    pub(super) async fn stop_container(&mut self, cid: &str) -> Result<(), String> {
        let agent = self.agent()?.clone();
        let Some(c) = self.containers.get(cid) else {
            return Err(format!("container {cid} is not created"));
        };
        if c.removed {
            return Ok(());
        }
        let copy = self.shared_fs == SharedFs::None && c.policy == "File" && c.term_path.is_some();
        let host_mounts = c.host_mounts.clone();
        let term_path = c.term_path.clone().unwrap_or_default();
        let exec_id = c.exec_id.clone();
        let calls = self.calls();
        for part in self.profile().stop_order {
            match part {
                StopPart::Kill => {
                    if let Some(w) = calls.kill(&agent, cid, &exec_id).await {
                        self.warn(w);
                    }
                }
                StopPart::Reap => self.let_waiter_reap(cid).await,
                StopPart::WaitAgain => calls.wait_again(&agent, cid, &exec_id).await,
                StopPart::CopyTerminationMessage if copy => {
                    self.copy_termination_message(&agent, cid, &term_path, &host_mounts)
                        .await;
                }
                StopPart::CopyTerminationMessage => {}
                StopPart::Remove => {
                    if let Some(w) = calls.remove_container(&agent, cid).await {
                        self.warn(w);
                    }
                }
                StopPart::RemoveStaleMounts => calls.remove_stale_mounts(&agent).await,
            }
        }
        if self.shared_fs == SharedFs::VirtioFs {
            // The shared file is the host file: what the container wrote is there.
            self.sync_shared(cid);
        }
        if let Some(c) = self.containers.get_mut(cid) {
            c.removed = true;
        }
        Ok(())
    }

    /// After a kill, the shim's waiter (output at its end, then WaitProcess) reaps the process
    /// before the stop goes on, as on a real host where the signal wakes it first. Bounded: a
    /// process that ignores the kill does not hold the stop.
    pub(super) async fn let_waiter_reap(&mut self, cid: &str) {
        if let Some(w) = self.waiters.remove(cid) {
            match tokio::time::timeout(Duration::from_secs(1), w).await {
                Ok(Ok(Err(e))) => self.error(e),
                Ok(_) => {}
                Err(_) => self.warn(Warning::once(format!(
                    "{cid} did not exit within 1 s of SIGKILL (kata-sim)"
                ))),
            }
        }
    }

    /// virtio-fs: the host file shows what the guest wrote to the shared copy.
    pub(super) fn sync_shared(&self, cid: &str) {
        let (Some(agent), Some(c)) = (self.guest.as_ref(), self.containers.get(cid)) else {
            return;
        };
        let (Some(file), Some(_)) = (&c.host_file, &c.term_path) else {
            return;
        };
        let prefix = format!("{SHARED}/{cid}-");
        let root = agent.guest_root().join(SHARED.trim_start_matches('/'));
        if let Ok(entries) = std::fs::read_dir(&root) {
            for e in entries.flatten() {
                let name = format!("{SHARED}/{}", e.file_name().to_string_lossy());
                if name.starts_with(&prefix)
                    && name.ends_with("-termination-log")
                    && let Ok(data) = std::fs::read(e.path())
                {
                    let _ = std::fs::write(file, data);
                }
            }
        }
    }

    /// The host file behind the mount whose destination is the termination-message path, as
    /// the persona matches them ([`Profile::term_path_match`]).
    pub(super) fn term_host_file<'m>(
        &self,
        path: &str,
        mounts: &'m [(String, PathBuf)],
    ) -> Option<&'m PathBuf> {
        mounts
            .iter()
            .find(|(dest, _)| self.profile().term_path_match.matches(dest, path))
            .map(|(_, file)| file)
    }

    /// Copies the termination message out of the guest (shared_fs none, policy File, a
    /// path), in the persona's order ([`Profile::term_mount_first`]).
    pub(super) async fn copy_termination_message(
        &self,
        agent: &Conn<T>,
        cid: &str,
        path: &str,
        mounts: &[(String, PathBuf)],
    ) {
        let host = self.term_host_file(path, mounts);
        let no_mount = || Warning::new(Level::Warning, words::TERM_MESSAGE_NO_HOST_MOUNT, None);
        if self.profile().term_mount_first && host.is_none() {
            self.warn(no_mount());
            return;
        }
        let r = self.calls().termination_message(agent, cid).await;
        match r {
            Ok(data) if data.is_empty() => {}
            Ok(data) => {
                let Some(file) = host else {
                    self.warn(no_mount());
                    return;
                };
                if let Err(e) = std::fs::write(file, data.as_bytes()) {
                    self.warn(Warning::new(
                        Level::Warning,
                        words::TERM_MESSAGE_WRITE_FAILED,
                        Some(words::io_error(self.persona, &e)),
                    ));
                }
            }
            Err(e) => self.warn(words::said(
                self.persona,
                Level::Warning,
                words::TERM_MESSAGE_GET_FAILED,
                &e,
            )),
        }
    }

    pub(super) async fn destroy_sandbox(&mut self) -> Result<(), String> {
        if !self.sandbox_up {
            return Ok(());
        }
        let mut first_error = None;
        let live: Vec<String> = self
            .containers
            .iter()
            .filter(|(_, c)| !c.removed)
            .map(|(id, _)| id.clone())
            .collect();
        for cid in live {
            // A forced sandbox stop goes on past a container that does not stop.
            if let Err(e) = self.stop(&cid).await {
                self.warn(Warning::once(format!(
                    "stopping {cid} during teardown: {e} (kata-sim)"
                )));
            }
        }
        if let Some(agent) = self.agent.clone()
            && let Some(w) = self.calls().stop_sandbox(&agent).await
        {
            self.warn(w);
        }
        self.stop_background().await;
        if !self.vm_stopped && self.vm.state() == Some(sim_hypervisor::VmState::Stopped) {
            self.warn(Warning::once(
                "the VM was already stopped (it died) (kata-sim)",
            ));
            self.vm_stopped = true;
        }
        if !self.vm_stopped {
            match self.vm.stop_vm(false).await {
                Ok(()) => {}
                Err(e) if self.profile().stop_vm_failure == FailureIs::Warning => {
                    self.warn(Warning::once(format!(
                        "StopVM failed (VM may already be gone): {e} (kata-sim)"
                    )))
                }
                Err(e) => {
                    first_error.get_or_insert(format!("StopVM: {e}"));
                }
            }
            self.vm_stopped = true;
        }
        self.sandbox_up = false;
        first_error.map_or(Ok(()), Err)
    }
}

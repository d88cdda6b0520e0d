//! The shim host: a [`Runtime`] that plays containerd (and kubelet) to a real shim, step by
//! step, through the task API.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use containerd_shim_protos::api;
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use sim_agent::SimAgent;
use sim_agent::fault::{FaultEngine, FaultGuard};
use sim_hypervisor::Fleet;
use tokio::task::JoinHandle;

use super::bundle::{self, BundleSpec};
use super::fifo::{LogPipe, Stdio};
use super::launch::{Flavor, Launcher};
use super::task::{TaskClient, TaskError};
use super::{Mode, StepRecord};
use crate::host::{ProcessOutcome, Runtime};
use crate::record::{TaskState, TaskStatus, Warning};
use crate::schema::{
    ContainerSpec, ExecSpec, KillSpec, ProcessRef, SandboxSpec, StdinSpec, UpdateSpec,
};

/// The deadline of a task call that answers at once (containerd gives none of its own; a
/// bound here keeps a hung shim from holding a step past its limit).
pub const CALL_LIMIT: Duration = Duration::from_secs(60);

/// How long a Wait may take (a step's bound cuts it shorter).
pub const WAIT_LIMIT: Duration = Duration::from_secs(3600);

/// runtime-rs's per-sandbox state directory (`KATA_PATH`), where its management socket is.
const RS_STATE_DIR: &str = "/run/kata";

/// How long a shim may take to exit after Shutdown.
pub const EXIT_LIMIT: Duration = Duration::from_secs(10);

const TYPE_PROCESS: &str = "types.containerd.io/opencontainers/runtime-spec/1/Process";
const TYPE_RESOURCES: &str = "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources";

/// A process the host started: its stdio, and the task waiting for its exit.
struct Proc {
    stdio: Stdio,
    waiter: Option<JoinHandle<Result<u32, TaskError>>>,
    exit: Option<i32>,
}

/// A container the host created.
struct Ctr {
    /// The connection to its shim (`None` once the host hung up, after Shutdown).
    client: Option<TaskClient>,
    bundle: PathBuf,
    host_file: Option<PathBuf>,
    deleted: bool,
}

/// The shim host of one run.
pub(super) struct ShimHost {
    pub(super) flavor: Flavor,
    pub(super) mode: Mode,
    pub(super) launcher: Launcher,
    pub(super) dir: PathBuf,
    pub(super) rootfs: bundle::Rootfs,
    /// The Create options (the Kata configuration's path), if any.
    pub(super) options: Option<Any>,
    pub(super) fleet: Option<Arc<Fleet>>,
    pub(super) engine: FaultEngine,
    pub(super) guards: Vec<(String, FaultGuard)>,
    pub(super) sandbox_id: Option<String>,
    /// The sandbox's own task (pod mode: the pause container), its client and bundle.
    pub(super) sandbox: Option<(TaskClient, PathBuf)>,
    pub(super) shim_pid: Option<u32>,
    /// Whether the first Create was followed by containerd's Connect.
    connected: bool,
    containers: BTreeMap<String, Ctr>,
    procs: BTreeMap<String, Proc>,
    /// The shims' log FIFOs, one per bundle.
    logs: Vec<LogPipe>,
    pub(super) processes: BTreeMap<String, ProcessOutcome>,
    pub(super) host_files: BTreeMap<String, Option<String>>,
    pub(super) tasks: BTreeMap<String, TaskState>,
    pub(super) errors: Vec<String>,
    pub(super) warnings: Vec<Warning>,
    pub(super) steps: Vec<StepRecord>,
    pub(super) started: tokio::time::Instant,
    /// The task call in flight, for a stuck message.
    in_flight: Option<String>,
    pub(super) torn_down: bool,
}

fn status_name(s: api::Status) -> Option<TaskStatus> {
    match s {
        api::Status::CREATED => Some(TaskStatus::Created),
        api::Status::RUNNING => Some(TaskStatus::Running),
        api::Status::PAUSED | api::Status::PAUSING => Some(TaskStatus::Paused),
        api::Status::STOPPED => Some(TaskStatus::Stopped),
        _ => None,
    }
}

fn json_any(type_url: &str, value: &impl serde::Serialize) -> Result<Any, String> {
    let mut any = Any::new();
    any.type_url = type_url.into();
    any.value = serde_json::to_vec(value).map_err(|e| e.to_string())?;
    Ok(any)
}

impl ShimHost {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        flavor: Flavor,
        mode: Mode,
        launcher: Launcher,
        dir: PathBuf,
        rootfs: bundle::Rootfs,
        options: Option<Any>,
        fleet: Option<Arc<Fleet>>,
        engine: FaultEngine,
    ) -> Self {
        ShimHost {
            flavor,
            mode,
            launcher,
            dir,
            rootfs,
            options,
            fleet,
            engine,
            guards: Vec::new(),
            sandbox_id: None,
            sandbox: None,
            shim_pid: None,
            connected: false,
            containers: BTreeMap::new(),
            procs: BTreeMap::new(),
            logs: Vec::new(),
            processes: BTreeMap::new(),
            host_files: BTreeMap::new(),
            tasks: BTreeMap::new(),
            errors: Vec::new(),
            warnings: Vec::new(),
            steps: Vec::new(),
            started: tokio::time::Instant::now(),
            in_flight: None,
            torn_down: false,
        }
    }

    fn now(&self) -> Duration {
        self.started.elapsed()
    }

    /// Runs a task call, named for stuck messages and errors.
    async fn call<T>(
        &mut self,
        what: String,
        f: impl std::future::Future<Output = Result<T, TaskError>>,
    ) -> Result<T, String> {
        self.in_flight = Some(what.clone());
        let r = f.await;
        self.in_flight = None;
        r.map_err(|e| format!("{what}: {e}"))
    }

    fn client(&self, cid: &str) -> Result<TaskClient, String> {
        self.containers
            .get(cid)
            .ok_or_else(|| format!("no container {cid}: create_container first"))?
            .client
            .clone()
            .ok_or_else(|| format!("container {cid}: the shim connection is closed"))
    }

    /// The rootfs mounts of a Create: none (the bundle's `rootfs`) but for runtime-rs, which
    /// only takes an image pulled in the guest: the mount nydus-snapshotter sends.
    fn rootfs_mounts(&self) -> Vec<api::Mount> {
        if !matches!(self.flavor, Flavor::KataRs(_)) {
            return Vec::new();
        }
        use base64::Engine as _;
        let volume = base64::engine::general_purpose::STANDARD
            .encode(br#"{"volume_type":"image_guest_pull","image_pull":{"metadata":{}}}"#);
        let mut m = api::Mount::new();
        m.type_ = "fuse.nydus-overlayfs".into();
        m.source = "overlay".into();
        m.options = vec![format!("io.katacontainers.volume={volume}")];
        vec![m]
    }

    /// Starts (or finds) the shim for task `id` in `bundle`, and connects to it.
    async fn shim_for(&mut self, id: &str, bundle: &Path) -> Result<TaskClient, String> {
        if matches!(self.flavor, Flavor::KataRs(_)) && self.sandbox_id.as_deref() == Some(id) {
            // runtime-rs binds its management socket per sandbox id and aborts (a panic, no
            // log) when the path is taken: say so rather than lose the shim.
            let mgmt = Path::new(RS_STATE_DIR).join(id).join("shim-monitor.sock");
            if mgmt.exists() {
                return Err(format!(
                    "{} exists, so runtime-rs would abort binding it: a shim of sandbox {id} \
                     runs, or an earlier one was not cleaned up (if none runs, remove {})",
                    mgmt.display(),
                    Path::new(RS_STATE_DIR).join(id).display()
                ));
            }
        }
        self.in_flight = Some(format!("the shim's start for {id}"));
        let address = self.launcher.start(id, bundle).await;
        self.in_flight = None;
        let address = address.map_err(|e| e.to_string())?;
        if self.shim_pid.is_none() {
            // The pid file the shim's `start` wrote in the bundle, as containerd reads it: the
            // shim is known (and killed at the end) even if its Create never returns.
            self.shim_pid = std::fs::read_to_string(bundle.join("shim.pid"))
                .ok()
                .and_then(|p| p.trim().parse().ok());
        }
        let client = TaskClient::connect(&address)
            .await
            .map_err(|e| format!("connecting to the shim at {address}: {e}"))?;
        Ok(client)
    }

    /// Creates task `id`: its bundle, its shim, its stdio, and the Create call.
    async fn create_task(
        &mut self,
        id: &str,
        spec: BundleSpec,
        stdio: bool,
    ) -> Result<(TaskClient, PathBuf), String> {
        let bundle = self.dir.join("bundles").join(id);
        let mut spec = spec;
        spec.cgroups_path = format!("/{}/{id}", self.launcher.namespace);
        bundle::write(&bundle, &spec, &self.rootfs)
            .map_err(|e| format!("the bundle of {id}: {e}"))?;
        // containerd's shim log: the Go shims write their log to it and block until it is
        // read (a FIFO), so it is a FIFO drained for the shim's life.
        let log = bundle.join("log");
        let _ = std::fs::remove_file(&log);
        self.logs
            .push(LogPipe::open(&log).map_err(|e| format!("the shim log of {id}: {e}"))?);
        let client = self.shim_for(id, &bundle).await?;
        let mut req = api::CreateTaskRequest {
            id: id.into(),
            bundle: bundle.display().to_string(),
            terminal: spec.terminal,
            rootfs: self.rootfs_mounts(),
            ..Default::default()
        };
        if let Some(o) = &self.options {
            req.options = Some(o.clone()).into();
        }
        if stdio {
            let io = Stdio::open(&self.dir.join("fifo"), id, true)
                .map_err(|e| format!("the stdio of {id}: {e}"))?;
            req.stdin = io.stdin.clone();
            req.stdout = io.stdout.clone();
            req.stderr = io.stderr.clone();
            self.procs.insert(
                id.to_string(),
                Proc {
                    stdio: io,
                    waiter: None,
                    exit: None,
                },
            );
        }
        let c = client.clone();
        if let Err(e) = self
            .call(format!("Create{{id={id}}}"), c.create(req, CALL_LIMIT))
            .await
        {
            // containerd 1.6 after a failed Create: the task's Delete, then Shutdown (a shim
            // with no task left exits).
            let _ = client
                .delete(
                    api::DeleteRequest {
                        id: id.into(),
                        ..Default::default()
                    },
                    Duration::from_secs(10),
                )
                .await;
            let _ = client
                .shutdown(
                    api::ShutdownRequest {
                        id: id.into(),
                        ..Default::default()
                    },
                    Duration::from_secs(3),
                )
                .await;
            return Err(e);
        }
        if !self.connected {
            // As containerd: Connect after the Create (runtime-rs has no runtime before it).
            let r = self
                .call(
                    format!("Connect{{id={id}}}"),
                    client.connect_task(
                        api::ConnectRequest {
                            id: id.into(),
                            ..Default::default()
                        },
                        CALL_LIMIT,
                    ),
                )
                .await?;
            self.shim_pid = Some(r.shim_pid);
            self.connected = true;
        }
        Ok((client, bundle))
    }

    /// The state the shim reports of task `id` (`None`: it does not know it).
    async fn state(&mut self, cid: &str) -> Option<api::StateResponse> {
        let client = self.containers.get(cid)?.client.clone()?;
        client
            .state(
                api::StateRequest {
                    id: cid.into(),
                    ..Default::default()
                },
                CALL_LIMIT,
            )
            .await
            .ok()
    }

    /// Records the state the shim reports of every container after a step.
    pub(super) async fn record_step(&mut self, step: String, settled: bool, took: Duration) {
        // A deleted task is gone from containerd's view: its last state stands.
        let ids: Vec<String> = self
            .containers
            .iter()
            .filter(|(_, c)| !c.deleted)
            .map(|(id, _)| id.clone())
            .collect();
        let mut states = BTreeMap::new();
        for cid in ids {
            let Some(st) = self.state(&cid).await else {
                continue;
            };
            let Some(status) = status_name(st.status.enum_value_or_default()) else {
                continue;
            };
            let exit = (status == TaskStatus::Stopped).then_some(st.exit_status);
            states.insert(cid.clone(), (status, exit));
            let now = self.now();
            let t = self.tasks.entry(cid).or_insert(TaskState {
                status,
                exit_status: exit,
                published_at: now,
                exited_at: None,
            });
            if t.status != status || t.exit_status != exit {
                t.status = status;
                t.exit_status = exit;
                t.published_at = now;
            }
        }
        self.steps.push(StepRecord {
            step,
            took,
            tasks: states,
            settled,
        });
    }

    fn spawn_wait(&mut self, key: &str, cid: &str, exec: Option<&str>) -> Result<(), String> {
        let client = self.client(cid)?;
        let req = api::WaitRequest {
            id: cid.into(),
            exec_id: exec.unwrap_or_default().into(),
            ..Default::default()
        };
        let waiter =
            tokio::spawn(async move { client.wait(req, WAIT_LIMIT).await.map(|r| r.exit_status) });
        if let Some(p) = self.procs.get_mut(key) {
            p.waiter = Some(waiter);
        }
        Ok(())
    }

    fn key(container: &str, exec: Option<&str>) -> String {
        match exec {
            Some(e) => format!("{container}/{e}"),
            None => container.to_string(),
        }
    }

    /// Reaps process `key`: its exit status, then all of its output.
    async fn reap(&mut self, key: &str) -> Result<(), String> {
        let Some(p) = self.procs.get_mut(key) else {
            return Err(format!("no process {key}"));
        };
        if p.waiter.is_none() && p.exit.is_none() {
            return Err(format!("{key} was not started"));
        }
        if let Some(w) = p.waiter.take() {
            self.in_flight = Some(format!("Wait{{{key}}}"));
            let r = w.await;
            self.in_flight = None;
            let code = match r {
                Ok(Ok(code)) => i32::try_from(code).unwrap_or(i32::MAX),
                Ok(Err(e)) => return Err(format!("Wait {key}: {e}")),
                Err(e) => return Err(format!("Wait {key}: {e}")),
            };
            if let Some(p) = self.procs.get_mut(key) {
                p.exit = Some(code);
            }
        }
        let Some(p) = self.procs.get_mut(key) else {
            return Ok(());
        };
        let exit = p.exit;
        // As containerd's client before its Delete: the process's IO is closed, stdin too
        // (a shim copying stdin holds a reader on the FIFO until its writer goes).
        p.stdio.close_stdin();
        self.in_flight = Some(format!("the output of {key}"));
        let out = p.stdio.output().await;
        self.in_flight = None;
        let (stdout, stderr) = out.map_err(|e| format!("the output of {key}: {e}"))?;
        let entry = self.processes.entry(key.to_string()).or_default();
        entry.exit_code = exit;
        entry
            .stdout
            .push_str(&String::from_utf8_lossy(&stdout.bytes));
        entry
            .stderr
            .push_str(&String::from_utf8_lossy(&stderr.bytes));
        Ok(())
    }

    /// Reads the host termination-message file of `cid`.
    fn read_host_file(&mut self, cid: &str) {
        if let Some(path) = self.containers.get(cid).and_then(|c| c.host_file.clone()) {
            let data = std::fs::read(&path)
                .ok()
                .map(|b| String::from_utf8_lossy(&b).into_owned());
            self.host_files.insert(cid.to_string(), data);
        }
    }

    /// kubelet's stop and removal of a container: SIGKILL if it still runs, its exit, Delete.
    async fn stop_and_delete(&mut self, cid: &str) -> Result<(), String> {
        let Some(c) = self.containers.get(cid) else {
            return Err(format!("no container {cid}"));
        };
        if c.deleted {
            return Ok(());
        }
        let client = self.client(cid)?;
        let running = self
            .procs
            .get(cid)
            .is_some_and(|p| p.exit.is_none() && p.waiter.is_some());
        if running {
            let r = client
                .kill(
                    api::KillRequest {
                        id: cid.into(),
                        signal: 9,
                        all: true,
                        ..Default::default()
                    },
                    CALL_LIMIT,
                )
                .await;
            if let Err(e) = r
                && e.code() != Some(ttrpc::proto::Code::NOT_FOUND)
            {
                self.warnings
                    .push(Warning::once(format!("Kill {cid} at its stop: {e}")));
            }
        }
        if self.procs.contains_key(cid) {
            self.reap(cid).await?;
        }
        let r = self
            .call(
                format!("Delete{{id={cid}}}"),
                client.delete(
                    api::DeleteRequest {
                        id: cid.into(),
                        ..Default::default()
                    },
                    CALL_LIMIT,
                ),
            )
            .await;
        if let Some(c) = self.containers.get_mut(cid) {
            c.deleted = true;
        }
        self.read_host_file(cid);
        r.map(drop)
    }

    /// Waits (at most [`EXIT_LIMIT`]) for the shim process to exit: its pidfd turns readable.
    async fn shim_exited(&self) -> bool {
        let Some(pid) = self
            .shim_pid
            .and_then(|p| i32::try_from(p).ok())
            .and_then(rustix::process::Pid::from_raw)
        else {
            return true;
        };
        let fd = match rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()) {
            Ok(fd) => fd,
            // ESRCH: it is gone already.
            Err(_) => return true,
        };
        tokio::task::spawn_blocking(move || {
            let limit = rustix::event::Timespec {
                tv_sec: i64::try_from(EXIT_LIMIT.as_secs()).unwrap_or(i64::MAX),
                tv_nsec: 0,
            };
            let mut fds = [rustix::event::PollFd::new(
                &fd,
                rustix::event::PollFlags::IN,
            )];
            matches!(rustix::event::poll(&mut fds, Some(&limit)), Ok(n) if n > 0)
        })
        .await
        .unwrap_or(false)
    }

    /// After the run: a shim the teardown did not end is killed, and the shim binary's
    /// `delete` cleans up each of its tasks (containerd's clean-up after a dead shim).
    pub(super) async fn cleanup(&mut self) {
        if self.torn_down {
            return;
        }
        if let Some(pid) = self.shim_pid.and_then(|p| i32::try_from(p).ok()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
            let _ = self.shim_exited().await;
        }
        let mut tasks: Vec<(String, PathBuf)> = self
            .containers
            .iter()
            .filter(|(_, c)| !c.deleted)
            .map(|(id, c)| (id.clone(), c.bundle.clone()))
            .collect();
        if let (Some((_, bundle)), Some(sid)) = (&self.sandbox, &self.sandbox_id) {
            tasks.push((sid.clone(), bundle.clone()));
        }
        for (id, bundle) in tasks {
            if let Err(e) = self.launcher.delete(&id, &bundle).await {
                self.warnings
                    .push(Warning::once(format!("cleaning up task {id}: {e}")));
            }
        }
    }

    /// The shims' log FIFOs, read to their end (call it once the shims have exited): with
    /// `warn`, the lines at warning level or worse become warnings (a Kata Go shim logs the
    /// same lines to syslog, which [`super::logs`] captures instead).
    pub(super) fn collect_logs(&mut self, warn: bool) {
        for log in std::mem::take(&mut self.logs) {
            let text = log.finish();
            if !warn {
                continue;
            }
            for line in String::from_utf8_lossy(&text).lines() {
                if let Some(w) = super::log_warning(line) {
                    self.warnings.push(w);
                }
            }
        }
    }
}

impl Runtime for ShimHost {
    const CLOCK: &'static str = "real";

    async fn create_sandbox(&mut self, spec: &SandboxSpec) -> Result<(), String> {
        let id = spec.id.clone().unwrap_or_else(|| "sandbox".into());
        self.sandbox_id = Some(id.clone());
        if self.mode == Mode::Pod {
            let mut annotations = BTreeMap::new();
            annotations.insert(bundle::CONTAINER_TYPE.into(), "sandbox".into());
            annotations.insert(bundle::SANDBOX_ID.into(), id.clone());
            annotations.insert(bundle::SANDBOX_NAME.into(), id.clone());
            annotations.insert(bundle::IMAGE_NAME.into(), bundle::PAUSE_IMAGE.into());
            let b = BundleSpec {
                args: vec![bundle::PAUSE.into()],
                annotations,
                hostname: spec.hostname.clone(),
                ..Default::default()
            };
            let (client, bundle) = self.create_task(&id, b, false).await?;
            let c = client.clone();
            self.call(
                format!("Start{{id={id}}}"),
                c.start(
                    api::StartRequest {
                        id: id.clone(),
                        ..Default::default()
                    },
                    CALL_LIMIT,
                ),
            )
            .await?;
            self.sandbox = Some((client, bundle));
        }
        Ok(())
    }

    async fn create_container(&mut self, spec: &ContainerSpec) -> Result<(), String> {
        let cid = spec.id.clone();
        let sandbox = self
            .sandbox_id
            .clone()
            .ok_or_else(|| "no sandbox: create_sandbox first".to_string())?;
        let mut annotations = spec.annotations.clone();
        annotations.insert(bundle::IMAGE_NAME.into(), bundle::IMAGE.into());
        if cid != sandbox {
            annotations.insert(bundle::CONTAINER_TYPE.into(), "container".into());
            annotations.insert(bundle::SANDBOX_ID.into(), sandbox.clone());
            annotations.insert(bundle::SANDBOX_NAME.into(), sandbox.clone());
        }
        let host_dir = self.dir.join("host");
        std::fs::create_dir_all(&host_dir).map_err(|e| format!("the host dir: {e}"))?;
        let mut binds = Vec::new();
        let mut host_file = None;
        if let Some(path) = &spec.termination_message_path {
            let policy = spec.termination_message_policy.unwrap_or_default();
            annotations.insert(crate::host::TERMINATION_MESSAGE_PATH.into(), path.clone());
            annotations.insert(
                crate::host::TERMINATION_MESSAGE_POLICY.into(),
                policy.as_str().into(),
            );
            // kubelet's file for the container, bind-mounted at the termination path.
            let file = host_dir.join(format!("{cid}-termination-log"));
            std::fs::write(&file, b"").map_err(|e| format!("host file: {e}"))?;
            if spec.host_file_unwritable {
                std::fs::remove_file(&file).map_err(|e| e.to_string())?;
                std::fs::create_dir(&file).map_err(|e| e.to_string())?;
            }
            let dest = spec
                .termination_message_mount
                .clone()
                .unwrap_or_else(|| path.clone());
            binds.push((dest, file.clone()));
            host_file = Some(file);
        }
        for (i, (dest, content)) in spec.mounts.iter().enumerate() {
            let file = host_dir.join(format!("{cid}-mount-{i}"));
            std::fs::write(&file, content).map_err(|e| format!("host file: {e}"))?;
            binds.push((dest.clone(), file));
        }
        let b = BundleSpec {
            args: spec.args.clone(),
            terminal: spec.terminal,
            annotations,
            binds,
            hostname: None,
            cgroups_path: String::new(),
        };
        let (client, bundle) = self.create_task(&cid, b, true).await?;
        self.containers.insert(
            cid,
            Ctr {
                client: Some(client),
                bundle,
                host_file,
                deleted: false,
            },
        );
        Ok(())
    }

    async fn start(&mut self, cid: &str) -> Result<(), String> {
        let client = self.client(cid)?;
        self.call(
            format!("Start{{id={cid}}}"),
            client.start(
                api::StartRequest {
                    id: cid.into(),
                    ..Default::default()
                },
                CALL_LIMIT,
            ),
        )
        .await?;
        self.spawn_wait(cid, cid, None)
    }

    async fn exec(&mut self, e: &ExecSpec) -> Result<(), String> {
        let client = self.client(&e.container)?;
        let key = Self::key(&e.container, Some(&e.id));
        let io = Stdio::open(
            &self.dir.join("fifo"),
            &format!("{}-{}", e.container, e.id),
            true,
        )
        .map_err(|err| format!("the stdio of {key}: {err}"))?;
        let process = serde_json::json!({
            "args": e.args,
            "cwd": "/",
            "user": {"uid": 0, "gid": 0},
            "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
        });
        let req = api::ExecProcessRequest {
            id: e.container.clone(),
            exec_id: e.id.clone(),
            stdin: io.stdin.clone(),
            stdout: io.stdout.clone(),
            stderr: io.stderr.clone(),
            spec: Some(json_any(TYPE_PROCESS, &process)?).into(),
            ..Default::default()
        };
        self.procs.insert(
            key.clone(),
            Proc {
                stdio: io,
                waiter: None,
                exit: None,
            },
        );
        let c = client.clone();
        self.call(
            format!("Exec{{id={}, exec_id={}}}", e.container, e.id),
            c.exec(req, CALL_LIMIT),
        )
        .await?;
        self.call(
            format!("Start{{id={}, exec_id={}}}", e.container, e.id),
            client.start(
                api::StartRequest {
                    id: e.container.clone(),
                    exec_id: e.id.clone(),
                    ..Default::default()
                },
                CALL_LIMIT,
            ),
        )
        .await?;
        self.spawn_wait(&key, &e.container, Some(&e.id))
    }

    async fn write_stdin(&mut self, w: &StdinSpec) -> Result<(), String> {
        let key = Self::key(&w.container, w.exec.as_deref());
        let p = self
            .procs
            .get_mut(&key)
            .ok_or_else(|| format!("no process {key}"))?;
        p.stdio
            .write(w.data.as_bytes())
            .await
            .map_err(|e| format!("stdin of {key}: {e}"))
    }

    async fn close_stdin(&mut self, r: &ProcessRef) -> Result<(), String> {
        let key = Self::key(&r.container, r.exec.as_deref());
        if let Some(p) = self.procs.get_mut(&key) {
            p.stdio.close_stdin();
        }
        let client = self.client(&r.container)?;
        self.call(
            format!("CloseIO{{{key}}}"),
            client.close_io(
                api::CloseIORequest {
                    id: r.container.clone(),
                    exec_id: r.exec.clone().unwrap_or_default(),
                    stdin: true,
                    ..Default::default()
                },
                CALL_LIMIT,
            ),
        )
        .await
        .map(drop)
    }

    async fn kill(&mut self, k: &KillSpec) -> Result<(), String> {
        let client = self.client(&k.container)?;
        let key = Self::key(&k.container, k.exec.as_deref());
        self.call(
            format!("Kill{{{key}}}"),
            client.kill(
                api::KillRequest {
                    id: k.container.clone(),
                    exec_id: k.exec.clone().unwrap_or_default(),
                    signal: k.signal.unwrap_or(15),
                    ..Default::default()
                },
                CALL_LIMIT,
            ),
        )
        .await
        .map(drop)
    }

    async fn wait(&mut self, key: &str) -> Result<(), String> {
        self.reap(key).await
    }

    async fn stop(&mut self, cid: &str) -> Result<(), String> {
        self.stop_and_delete(cid).await
    }

    async fn pause(&mut self, cid: &str) -> Result<(), String> {
        let client = self.client(cid)?;
        self.call(
            format!("Pause{{id={cid}}}"),
            client.pause(
                api::PauseRequest {
                    id: cid.into(),
                    ..Default::default()
                },
                CALL_LIMIT,
            ),
        )
        .await
        .map(drop)
    }

    async fn resume(&mut self, cid: &str) -> Result<(), String> {
        let client = self.client(cid)?;
        self.call(
            format!("Resume{{id={cid}}}"),
            client.resume(
                api::ResumeRequest {
                    id: cid.into(),
                    ..Default::default()
                },
                CALL_LIMIT,
            ),
        )
        .await
        .map(drop)
    }

    async fn update(&mut self, u: &UpdateSpec) -> Result<(), String> {
        let client = self.client(&u.container)?;
        let mut resources = serde_json::Map::new();
        if let Some(shares) = u.cpu_shares {
            resources.insert("cpu".into(), serde_json::json!({ "shares": shares }));
        }
        if let Some(limit) = u.memory_limit {
            resources.insert("memory".into(), serde_json::json!({ "limit": limit }));
        }
        let req = api::UpdateTaskRequest {
            id: u.container.clone(),
            resources: Some(json_any(TYPE_RESOURCES, &resources)?).into(),
            ..Default::default()
        };
        self.call(
            format!("Update{{id={}}}", u.container),
            client.update(req, CALL_LIMIT),
        )
        .await
        .map(drop)
    }

    async fn stats(&mut self, cid: &str) -> Result<(), String> {
        let client = self.client(cid)?;
        self.call(
            format!("Stats{{id={cid}}}"),
            client.stats(
                api::StatsRequest {
                    id: cid.into(),
                    ..Default::default()
                },
                CALL_LIMIT,
            ),
        )
        .await
        .map(drop)
    }

    async fn destroy_sandbox(&mut self) -> Result<(), String> {
        let Some(sid) = self.sandbox_id.clone() else {
            return Ok(());
        };
        let mut first_error = None;
        // kubelet's StopPodSandbox: the pod's containers, then its sandbox.
        let ids: Vec<String> = self
            .containers
            .iter()
            .filter(|(id, c)| !c.deleted && **id != sid)
            .map(|(id, _)| id.clone())
            .collect();
        for cid in ids {
            if let Err(e) = self.stop_and_delete(&cid).await {
                first_error.get_or_insert(e);
            }
        }
        if self.containers.get(&sid).is_some_and(|c| !c.deleted)
            && let Err(e) = self.stop_and_delete(&sid).await
        {
            first_error.get_or_insert(e);
        }
        // The sandbox task's bundle, for the shim binary's `delete` should the shim be killed.
        let sandbox_bundle = match &self.sandbox {
            Some((_, bundle)) => Some(bundle.clone()),
            None => self.containers.get(&sid).map(|c| c.bundle.clone()),
        };
        let shutdown_client = match self.sandbox.take() {
            Some((client, _bundle)) => {
                let r = client
                    .kill(
                        api::KillRequest {
                            id: sid.clone(),
                            signal: 9,
                            all: true,
                            ..Default::default()
                        },
                        CALL_LIMIT,
                    )
                    .await;
                if let Err(e) = r
                    && e.code() != Some(ttrpc::proto::Code::NOT_FOUND)
                {
                    first_error.get_or_insert(format!("Kill{{id={sid}}}: {e}"));
                }
                let _ = client
                    .wait(
                        api::WaitRequest {
                            id: sid.clone(),
                            ..Default::default()
                        },
                        CALL_LIMIT,
                    )
                    .await;
                if let Err(e) = self
                    .call(
                        format!("Delete{{id={sid}}}"),
                        client.delete(
                            api::DeleteRequest {
                                id: sid.clone(),
                                ..Default::default()
                            },
                            CALL_LIMIT,
                        ),
                    )
                    .await
                {
                    first_error.get_or_insert(e);
                }
                Some(client)
            }
            None => self.containers.get(&sid).and_then(|c| c.client.clone()),
        };
        if let Some(client) = shutdown_client {
            // containerd's Shutdown after the last Delete; the shim exits (its reply may be
            // the connection closing).
            let _ = client
                .shutdown(
                    api::ShutdownRequest {
                        id: sid.clone(),
                        now: false,
                        ..Default::default()
                    },
                    Duration::from_secs(3),
                )
                .await;
        }
        // containerd closes its connection after Shutdown; a shim may wait for that to exit.
        for c in self.containers.values_mut() {
            c.client = None;
        }
        self.in_flight = Some("the shim's exit after Shutdown".into());
        let exited = self.shim_exited().await;
        self.in_flight = None;
        if !exited {
            if let Some(pid) = self.shim_pid.and_then(|p| i32::try_from(p).ok()) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
                let _ = self.shim_exited().await;
            }
            first_error.get_or_insert(format!(
                "the shim did not exit within {} s of its Shutdown (killed)",
                EXIT_LIMIT.as_secs()
            ));
        }
        // containerd's clean-up after a dead shim: the binary's `delete` for the sandbox task.
        // runtime-rs can also exit leaving its state directory; either way its management
        // socket (/run/kata/<sandbox id>/shim-monitor.sock) would make the next shim of this
        // sandbox id abort binding it.
        let rs_leftover =
            matches!(self.flavor, Flavor::KataRs(_)) && Path::new(RS_STATE_DIR).join(&sid).exists();
        if (!exited || rs_leftover)
            && let Some(bundle) = &sandbox_bundle
            && let Err(e) = self.launcher.delete(&sid, bundle).await
        {
            self.warnings
                .push(Warning::once(format!("cleaning up task {sid}: {e}")));
        }
        self.sandbox_id = None;
        self.torn_down = first_error.is_none();
        match first_error {
            Some(e) => {
                self.errors.push(format!("teardown: {e}"));
                Err(e)
            }
            None => Ok(()),
        }
    }

    fn sandbox_up(&self) -> bool {
        self.sandbox_id.is_some()
    }

    fn guest(&self) -> Result<SimAgent, String> {
        let Some(fleet) = &self.fleet else {
            return Err(format!(
                "a guest-side step needs a Kata shim on kata-sim; {} runs no guest",
                self.flavor
            ));
        };
        let sid = self.sandbox_id.as_deref().unwrap_or_default();
        fleet
            .vm(sid)
            .and_then(|vm| vm.agent())
            .ok_or_else(|| format!("no VM for sandbox {sid} in kata-sim"))
    }

    async fn kill_guest(&mut self) -> Result<(), String> {
        let sid = self.sandbox_id.clone().unwrap_or_default();
        match self.fleet.as_ref().and_then(|f| f.vm(&sid)) {
            Some(vm) => {
                vm.kill().await;
                Ok(())
            }
            None => Err(format!("kill_guest: no VM for sandbox {sid} in kata-sim")),
        }
    }

    fn faults(&mut self) -> (&FaultEngine, &mut Vec<(String, FaultGuard)>) {
        (&self.engine, &mut self.guards)
    }

    fn error(&mut self, e: String) {
        self.errors.push(e);
    }

    async fn after_step(&mut self, step: &crate::schema::Step, took: Duration) {
        self.record_step(super::step_name(step), super::settles(step), took)
            .await;
    }

    fn stuck(&mut self, what: &str, waited: Duration) -> String {
        let secs = waited.as_secs_f64();
        let mut m = match &self.in_flight {
            Some(call) => format!("{what}: stuck in {call} after {secs} s of real time"),
            None => format!("{what}: did not finish within {secs} s of real time"),
        };
        if let Some(fleet) = &self.fleet
            && let Some(c) = crate::host::stuck_call(fleet.trace(), &mut Vec::new())
        {
            m.push_str(&format!(" (the shim waits on {})", c.short()));
        }
        m
    }
}

//! The step interpreter: each scenario step, within its bound, as calls of a [`Runtime`]: the
//! built-in host or a driver of a real runtime ([`crate::shim`]).

use std::time::Duration;

use sim_agent::Agent;
use sim_agent::SimAgent;
use sim_agent::fault::{FaultEngine, FaultGuard};
use sim_agent::protocols::{agent, oci};

use super::Limits;
use super::outcome::{Stuck, stuck_call, stuck_message};
use super::persona::BackgroundFrom;
use super::world::{Host, Transport};
use crate::record::TaskStatus;
use crate::schema::{
    ContainerSpec, ExecSpec, KillSpec, ProcessRef, SandboxSpec, Scenario, StdinSpec, Step,
    UpdateSpec,
};

/// A host runtime as the step interpreter drives it: one method per lifecycle step (what
/// containerd and kubelet ask of a runtime), the guest-side hooks kata-sim itself acts through
/// (the guest model, its VM, the fault engine), and the run's record of errors. The built-in
/// host (any persona, either transport) and the shim driver (a real shim through
/// containerd's task API, [`crate::shim`]) implement it, so a scenario's steps mean the same on
/// both. A step's error is returned in the runtime's words; [`run_body`] records it.
#[allow(
    async_fn_in_trait,
    reason = "the interpreter awaits its runtime on its own task: no Send bound is needed"
)]
pub trait Runtime {
    /// The clock the runtime's steps run on, as messages name it: `virtual` (the paused
    /// clock) or `real`.
    const CLOCK: &'static str;
    /// `create_sandbox`: the pod's sandbox (VM, agent, sandbox container).
    async fn create_sandbox(&mut self, spec: &SandboxSpec) -> Result<(), String>;
    /// `create_container`.
    async fn create_container(&mut self, spec: &ContainerSpec) -> Result<(), String>;
    /// `start`: a task Start of container `cid`.
    async fn start(&mut self, cid: &str) -> Result<(), String>;
    /// `exec`: a process in a running container, started.
    async fn exec(&mut self, spec: &ExecSpec) -> Result<(), String>;
    /// `write_stdin`.
    async fn write_stdin(&mut self, spec: &StdinSpec) -> Result<(), String>;
    /// `close_stdin`.
    async fn close_stdin(&mut self, p: &ProcessRef) -> Result<(), String>;
    /// `kill`: a signal to a process.
    async fn kill(&mut self, spec: &KillSpec) -> Result<(), String>;
    /// `wait`: until the process (`cid` or `cid/exec`) has exited and its output is read.
    async fn wait(&mut self, key: &str) -> Result<(), String>;
    /// `stop`: the container's stop (its termination-message copy included) and removal.
    async fn stop(&mut self, cid: &str) -> Result<(), String>;
    /// `pause`.
    async fn pause(&mut self, cid: &str) -> Result<(), String>;
    /// `resume`.
    async fn resume(&mut self, cid: &str) -> Result<(), String>;
    /// `update`: new resources.
    async fn update(&mut self, spec: &UpdateSpec) -> Result<(), String>;
    /// `stats`.
    async fn stats(&mut self, cid: &str) -> Result<(), String>;
    /// `destroy_sandbox`, and the teardown after the last step.
    async fn destroy_sandbox(&mut self) -> Result<(), String>;
    /// Whether a sandbox is up (the teardown then runs [`Runtime::destroy_sandbox`]).
    fn sandbox_up(&self) -> bool;
    /// The guest model of the sandbox, for guest-side steps.
    fn guest(&self) -> Result<SimAgent, String>;
    /// `kill_guest`: the VM dies.
    async fn kill_guest(&mut self) -> Result<(), String>;
    /// The fault engine and the rules installed by steps (their guards).
    fn faults(&mut self) -> (&FaultEngine, &mut Vec<(String, FaultGuard)>);
    /// Records an error of the run.
    fn error(&mut self, e: String);
    /// Where the runtime is stuck, for `what` (`steps[2]`, `teardown`) after `waited`.
    fn stuck(&mut self, what: &str, waited: Duration) -> String;
    /// Called after each step (whatever its result) with the time it took: a driver of a
    /// real runtime records the task states the runtime reports then.
    async fn after_step(&mut self, _step: &Step, _took: Duration) {}
    /// Called as step `index` starts (the teardown is index `steps.len()`), with how many
    /// faults had fired by then: the built-in host places each firing in its step.
    fn step_started(&mut self, _index: usize, _fired: u64) {}
}

/// The steps, then the teardown, each within its bound; returns whether the teardown
/// completed.
pub async fn run_body<R: Runtime>(rt: &mut R, s: &Scenario, limits: Limits) -> bool {
    let started = tokio::time::Instant::now();
    for (i, step) in s.steps.iter().enumerate() {
        let used = started.elapsed();
        let Some(left) = limits.run.checked_sub(used).filter(|l| !l.is_zero()) else {
            rt.error(format!(
                "steps[{i}]: not run: the steps used their budget of {} s of {} time",
                limits.run.as_secs(),
                R::CLOCK
            ));
            break;
        };
        let limit = limits.step.min(left);
        let fired = rt.faults().0.fired_total();
        rt.step_started(i, fired);
        let t0 = tokio::time::Instant::now();
        // A step that never ends (a hang without a deadline) ends the run's patience instead.
        match tokio::time::timeout(limit, run_step(rt, step)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => rt.error(format!("steps[{i}]: {e}")),
            Err(_) => {
                let m = rt.stuck(&format!("steps[{i}]"), t0.elapsed());
                rt.error(m);
            }
        }
        rt.after_step(step, t0.elapsed()).await;
    }
    // Whatever the steps left running is reaped, as a shim exiting would.
    if !rt.sandbox_up() {
        return true;
    }
    let fired = rt.faults().0.fired_total();
    rt.step_started(s.steps.len(), fired);
    let t0 = tokio::time::Instant::now();
    match tokio::time::timeout(limits.teardown, rt.destroy_sandbox()).await {
        Ok(r) => r.is_ok(),
        Err(_) => {
            let m = rt.stuck("teardown", t0.elapsed());
            rt.error(m);
            false
        }
    }
}

/// One step: the runtime's, or kata-sim's own on the guest side.
pub async fn run_step<R: Runtime>(rt: &mut R, step: &Step) -> Result<(), String> {
    match step {
        Step::CreateSandbox(spec) => rt.create_sandbox(spec).await,
        Step::CreateContainer(spec) => rt.create_container(spec).await,
        Step::Start(cid) => rt.start(cid).await,
        Step::Exec(e) => rt.exec(e).await,
        Step::WriteStdin(w) => rt.write_stdin(w).await,
        Step::CloseStdin(p) => rt.close_stdin(p).await,
        Step::Kill(k) => rt.kill(k).await,
        Step::Wait(key) => rt.wait(key).await,
        Step::Stop(cid) => rt.stop(cid).await,
        Step::Pause(cid) => rt.pause(cid).await,
        Step::Resume(cid) => rt.resume(cid).await,
        Step::Update(u) => rt.update(u).await,
        Step::Stats(cid) => rt.stats(cid).await,
        Step::DestroySandbox => rt.destroy_sandbox().await,
        Step::PushOom(cid) => rt
            .guest()?
            .oom_kill(cid)
            .map_err(|e| format!("push_oom {cid}: {e}")),
        Step::KillGuest => rt.kill_guest().await,
        Step::RemoveTerminationMessage(cid) => rt
            .guest()?
            .remove_termination_message(cid)
            .map_err(|e| format!("remove_termination_message: {e}")),
        Step::WriteTerminationMessage(t) => rt
            .guest()?
            .write_termination_message(&t.container, t.data.as_bytes())
            .map_err(|e| format!("write_termination_message: {e}")),
        Step::AdvanceTime(secs) => {
            // In 0..=STEP_LIMIT by its type.
            tokio::time::sleep(secs.duration()).await;
            Ok(())
        }
        Step::AddFault(rule) => {
            let (engine, guards) = rt.faults();
            let g = engine.install_rule(rule.clone());
            guards.push((rule.text.clone(), g));
            Ok(())
        }
        Step::RemoveFault(rule) => {
            let (_, guards) = rt.faults();
            guards.retain(|(r, _)| *r != rule.text);
            Ok(())
        }
    }
}

impl<T: Transport> Runtime for Host<T> {
    const CLOCK: &'static str = "virtual";

    async fn create_sandbox(&mut self, spec: &SandboxSpec) -> Result<(), String> {
        let id = spec.id.clone().unwrap_or_else(|| "sandbox".into());
        Host::create_sandbox(self, &id, spec.hostname.as_deref().unwrap_or("")).await
    }

    async fn create_container(&mut self, spec: &ContainerSpec) -> Result<(), String> {
        Host::create_container(self, spec).await
    }

    async fn start(&mut self, cid: &str) -> Result<(), String> {
        let agent = self.agent()?.clone();
        self.known(cid)?;
        self.calls()
            .start_container(&agent, cid)
            .await
            .map_err(|e| format!("StartContainer {cid}: {e}"))?;
        if self.profile().background_from == BackgroundFrom::FirstTaskStart
            && self.background.is_empty()
        {
            // Go's monitor and OOM watcher start with the first task Start (start.go;
            // fault-truth/go-i-sleep5: GetOOMEvent after StartContainer, Check 5 s later).
            let sandbox_id = self.sandbox_id.clone();
            self.spawn_background(agent.clone(), &sandbox_id);
        }
        let now = self.now();
        self.tasks().publish(cid, TaskStatus::Running, now);
        let eid = self
            .containers
            .get(cid)
            .map(|c| c.exec_id.clone())
            .unwrap_or_default();
        self.spawn_io(cid, None, eid);
        Ok(())
    }

    async fn exec(&mut self, e: &ExecSpec) -> Result<(), String> {
        let agent = self.agent()?.clone();
        self.known(&e.container)?;
        let process = oci::Process {
            Args: e.args.clone(),
            Cwd: "/".into(),
            ..Default::default()
        };
        Agent::exec(
            &agent,
            agent::ExecProcessRequest {
                container_id: e.container.clone(),
                exec_id: e.id.clone(),
                process: Some(process).into(),
                ..Default::default()
            },
        )
        .await
        .map_err(|err| format!("ExecProcess {}/{}: {err}", e.container, e.id))?;
        self.spawn_io(&e.container, Some(&e.id), e.id.clone());
        Ok(())
    }

    async fn write_stdin(&mut self, w: &StdinSpec) -> Result<(), String> {
        let agent = self.agent()?.clone();
        self.known(&w.container)?;
        let eid = process_id(self, &w.container, w.exec.as_deref());
        Agent::write_process_stdin(
            &agent,
            w.container.clone(),
            eid,
            w.data.clone().into_bytes(),
        )
        .await
        .map(|_| ())
        .map_err(|e| format!("WriteStdin: {e}"))
    }

    async fn close_stdin(&mut self, p: &ProcessRef) -> Result<(), String> {
        let agent = self.agent()?.clone();
        self.known(&p.container)?;
        let eid = process_id(self, &p.container, p.exec.as_deref());
        Agent::close_process_stdin(&agent, p.container.clone(), eid)
            .await
            .map_err(|e| format!("CloseStdin: {e}"))
    }

    async fn kill(&mut self, k: &KillSpec) -> Result<(), String> {
        let agent = self.agent()?.clone();
        self.known(&k.container)?;
        // Both runtimes signal a container's init process with exec id "" (recorded).
        let eid = k.exec.clone().unwrap_or_default();
        Agent::signal_process(
            &agent,
            k.container.clone(),
            eid,
            k.signal.unwrap_or(15),
            false,
        )
        .await
        .map_err(|e| format!("SignalProcess: {e}"))
    }

    async fn wait(&mut self, key: &str) -> Result<(), String> {
        Host::wait(self, key).await
    }

    async fn stop(&mut self, cid: &str) -> Result<(), String> {
        Host::stop(self, cid).await
    }

    async fn pause(&mut self, cid: &str) -> Result<(), String> {
        let agent = self.agent()?.clone();
        self.known(cid)?;
        Agent::pause_container(&agent, cid.to_string())
            .await
            .map_err(|e| format!("PauseContainer: {e}"))?;
        let now = self.now();
        self.tasks().publish(cid, TaskStatus::Paused, now);
        Ok(())
    }

    async fn resume(&mut self, cid: &str) -> Result<(), String> {
        let agent = self.agent()?.clone();
        self.known(cid)?;
        Agent::resume_container(&agent, cid.to_string())
            .await
            .map_err(|e| format!("ResumeContainer: {e}"))?;
        let now = self.now();
        self.tasks().publish(cid, TaskStatus::Running, now);
        Ok(())
    }

    async fn update(&mut self, u: &UpdateSpec) -> Result<(), String> {
        let agent = self.agent()?.clone();
        self.known(&u.container)?;
        let resources = oci::LinuxResources {
            CPU: Some(oci::LinuxCPU {
                Shares: u.cpu_shares.unwrap_or(0),
                ..Default::default()
            })
            .into(),
            Memory: Some(oci::LinuxMemory {
                Limit: u.memory_limit.unwrap_or(0),
                ..Default::default()
            })
            .into(),
            ..Default::default()
        };
        Agent::update_container(&agent, u.container.clone(), resources)
            .await
            .map_err(|e| format!("UpdateContainer: {e}"))
    }

    async fn stats(&mut self, cid: &str) -> Result<(), String> {
        let agent = self.agent()?.clone();
        self.known(cid)?;
        Agent::stats_container(&agent, cid.to_string())
            .await
            .map(|_| ())
            .map_err(|e| format!("StatsContainer: {e}"))
    }

    async fn destroy_sandbox(&mut self) -> Result<(), String> {
        Host::destroy_sandbox(self).await
    }

    fn sandbox_up(&self) -> bool {
        self.sandbox_up
    }

    fn guest(&self) -> Result<SimAgent, String> {
        Host::guest(self).cloned()
    }

    async fn kill_guest(&mut self) -> Result<(), String> {
        self.vm.kill().await;
        Ok(())
    }

    fn faults(&mut self) -> (&FaultEngine, &mut Vec<(String, FaultGuard)>) {
        (&self.engine, &mut self.guards)
    }

    fn step_started(&mut self, index: usize, fired: u64) {
        self.marks.push((index, fired));
    }

    fn error(&mut self, e: String) {
        Host::error(self, e);
    }

    fn stuck(&mut self, what: &str, waited: Duration) -> String {
        let call = stuck_call(&self.trace, &mut self.blamed);
        self.log
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .stuck
            .push(Stuck {
                what: what.to_string(),
                call: call.clone(),
            });
        stuck_message(what, &self.trace, call, waited, "virtual")
    }
}

impl<T: Transport> Host<T> {
    /// A task call about container `cid` reaches the agent only if the host created it (and
    /// has not removed it): the shim answers it itself otherwise, in its words.
    fn known(&self, cid: &str) -> Result<(), String> {
        match self.containers.get(cid) {
            Some(c) if !c.removed => Ok(()),
            _ => Err((self.profile().no_container)(cid)),
        }
    }
}

pub(super) fn process_id<T: Transport>(host: &Host<T>, cid: &str, exec: Option<&str>) -> String {
    match exec {
        Some(e) => e.to_string(),
        None => host
            .containers
            .get(cid)
            .map(|c| c.exec_id.clone())
            .unwrap_or_default(),
    }
}

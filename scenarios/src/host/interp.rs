//! The step interpreter: each scenario step as the host's calls, each within its bound.

use sim_agent::protocols::{agent, oci};
use sim_agent::{Agent, Trace};

use super::Limits;
use super::outcome::{stuck_call, stuck_message};
use super::persona::BackgroundFrom;
use super::world::{Host, Transport};
use crate::record::TaskStatus;
use crate::schema::{Scenario, Step};

/// The steps, then the teardown, each within its bound; returns whether the teardown
/// completed.
pub(super) async fn run_body<T: Transport>(
    host: &mut Host<T>,
    s: &Scenario,
    limits: Limits,
    trace: &Trace,
    blamed: &mut Vec<u64>,
) -> bool {
    let started = tokio::time::Instant::now();
    for (i, step) in s.steps.iter().enumerate() {
        let used = started.elapsed();
        let Some(left) = limits.run.checked_sub(used).filter(|l| !l.is_zero()) else {
            host.error(format!(
                "steps[{i}]: not run: the steps used their budget of {} s of virtual time",
                limits.run.as_secs()
            ));
            break;
        };
        let limit = limits.step.min(left);
        let t0 = tokio::time::Instant::now();
        // A step that never ends (a hang without a deadline) ends the run's patience instead.
        match tokio::time::timeout(limit, run_step(host, step)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => host.error(format!("steps[{i}]: {e}")),
            Err(_) => {
                let call = stuck_call(trace, blamed);
                host.error(stuck_message(
                    &format!("steps[{i}]"),
                    trace,
                    call,
                    t0.elapsed(),
                    "virtual",
                ));
            }
        }
    }
    // Whatever the steps left running is reaped, as a shim exiting would.
    if !host.sandbox_up {
        return true;
    }
    let t0 = tokio::time::Instant::now();
    match tokio::time::timeout(limits.teardown, host.destroy_sandbox()).await {
        Ok(r) => r.is_ok(),
        Err(_) => {
            let call = stuck_call(trace, blamed);
            host.error(stuck_message(
                "teardown",
                trace,
                call,
                t0.elapsed(),
                "virtual",
            ));
            false
        }
    }
}

pub(super) async fn run_step<T: Transport>(host: &mut Host<T>, step: &Step) -> Result<(), String> {
    match step {
        Step::CreateSandbox(spec) => {
            let id = spec.id.clone().unwrap_or_else(|| "sandbox".into());
            host.create_sandbox(&id, spec.hostname.as_deref().unwrap_or(""))
                .await
        }
        Step::CreateContainer(spec) => host.create_container(spec).await,
        Step::Start(cid) => {
            let agent = host.agent()?.clone();
            host.calls()
                .start_container(&agent, cid)
                .await
                .map_err(|e| format!("StartContainer {cid}: {e}"))?;
            if host.profile().background_from == BackgroundFrom::FirstTaskStart
                && host.background.is_empty()
            {
                // Go's monitor and OOM watcher start with the first task Start (start.go;
                // fault-truth/go-i-sleep5: GetOOMEvent after StartContainer, Check 5 s later).
                let sandbox_id = host.sandbox_id.clone();
                host.spawn_background(agent.clone(), &sandbox_id);
            }
            let now = host.now();
            host.tasks().publish(cid, TaskStatus::Running, now);
            let eid = host
                .containers
                .get(cid)
                .map(|c| c.exec_id.clone())
                .unwrap_or_default();
            host.spawn_io(cid, None, eid);
            Ok(())
        }
        Step::Exec(e) => {
            let agent = host.agent()?.clone();
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
            host.spawn_io(&e.container, Some(&e.id), e.id.clone());
            Ok(())
        }
        Step::WriteStdin(w) => {
            let agent = host.agent()?.clone();
            let eid = process_id(host, &w.container, w.exec.as_deref());
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
        Step::CloseStdin(p) => {
            let agent = host.agent()?.clone();
            let eid = process_id(host, &p.container, p.exec.as_deref());
            Agent::close_process_stdin(&agent, p.container.clone(), eid)
                .await
                .map_err(|e| format!("CloseStdin: {e}"))
        }
        Step::Kill(k) => {
            let agent = host.agent()?.clone();
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
        Step::Wait(key) => host.wait(key).await,
        Step::Stop(cid) => host.stop(cid).await,
        Step::Pause(cid) => {
            let agent = host.agent()?.clone();
            Agent::pause_container(&agent, cid.clone())
                .await
                .map_err(|e| format!("PauseContainer: {e}"))?;
            let now = host.now();
            host.tasks().publish(cid, TaskStatus::Paused, now);
            Ok(())
        }
        Step::Resume(cid) => {
            let agent = host.agent()?.clone();
            Agent::resume_container(&agent, cid.clone())
                .await
                .map_err(|e| format!("ResumeContainer: {e}"))?;
            let now = host.now();
            host.tasks().publish(cid, TaskStatus::Running, now);
            Ok(())
        }
        Step::Update(u) => {
            let agent = host.agent()?.clone();
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
        Step::Stats(cid) => {
            let agent = host.agent()?.clone();
            Agent::stats_container(&agent, cid.clone())
                .await
                .map(|_| ())
                .map_err(|e| format!("StatsContainer: {e}"))
        }
        Step::DestroySandbox => host.destroy_sandbox().await,
        Step::PushOom(cid) => host
            .guest()?
            .oom_kill(cid)
            .map_err(|e| format!("push_oom {cid}: {e}")),
        Step::KillGuest => {
            host.vm.kill().await;
            Ok(())
        }
        Step::RemoveTerminationMessage(cid) => host
            .guest()?
            .remove_termination_message(cid)
            .map_err(|e| format!("remove_termination_message: {e}")),
        Step::WriteTerminationMessage(t) => host
            .guest()?
            .write_termination_message(&t.container, t.data.as_bytes())
            .map_err(|e| format!("write_termination_message: {e}")),
        Step::AdvanceTime(secs) => {
            // In 0..=STEP_LIMIT by its type.
            tokio::time::sleep(secs.duration()).await;
            Ok(())
        }
        Step::AddFault(rule) => {
            let g = host.engine.install_rule(rule.clone());
            host.guards.push((rule.text.clone(), g));
            Ok(())
        }
        Step::RemoveFault(rule) => {
            host.guards.retain(|(r, _)| *r != rule.text);
            Ok(())
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

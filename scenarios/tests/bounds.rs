//! Every run ends, within a bound of virtual and real time and with bounded records, whatever
//! its faults; it names the call the host was stuck in; one scenario's failure (even a panic)
//! never ends the others. Each case is one of issue 13 (item 3) on the paused clock: on the old
//! code these runs never ended (or panicked).

use std::time::Duration;

use kata_sim::host::{Limits, Outcome, Wire, run_blocking, run_with_limits};
use kata_sim::schema::{Scenario, Step};
use sim_agent::{CallStatus, Method, Op};

fn scenario(text: &str) -> Scenario {
    kata_sim::load::parse(std::path::Path::new("bounds.yaml"), text)
        .unwrap_or_else(|e| panic!("{e}"))
}

/// How many calls the record stands for, and how many lines hold them.
fn calls(o: &Outcome) -> (u64, usize) {
    (o.calls.iter().map(|c| c.count).sum(), o.calls.len())
}

fn has_error(o: &Outcome, needle: &str) -> bool {
    o.errors.iter().any(|e| e.contains(needle))
}

const LIFECYCLE: &str = "
steps:
  - create_sandbox: {}
  - create_container: { id: c1, args: [sleep, \"1000\"] }
  - start: c1
  - advance_time: 60
  - wait: c1
  - stop: c1
  - destroy_sandbox
";

#[test]
fn a_hanging_wait_process_ends_and_names_the_call() {
    // The docs' own example: Go's WaitProcess has no deadline, and the teardown waits again.
    let o = run_blocking(&scenario(
        "name: wait-hang
config: { persona: go }
faults: [\"WaitProcess{container_id=c1}=hang\"]
steps:
  - create_sandbox: {}
  - create_container: { id: c1, args: [echo, hi] }
  - start: c1
  - wait: c1
",
    ));
    assert!(
        has_error(
            &o,
            "steps[3]: stuck in WaitProcess{container_id=c1, exec_id=c1} after 3600 s of virtual time"
        ),
        "{:?}",
        o.errors
    );
    assert!(
        has_error(
            &o,
            "teardown: stuck in WaitProcess{container_id=c1, exec_id=c1} after 3600 s"
        ),
        "the teardown is bounded too: {:?}",
        o.errors
    );
    assert_eq!(o.teardown, kata_sim::schema::Teardown::Incomplete);
    // Two hours of the monitor's 5 s checks fold into a few lines.
    let (n, lines) = calls(&o);
    assert!(
        n > 1000 && lines < 40,
        "{n} calls in {lines} lines: {:#?}",
        o.calls
    );
}

#[test]
fn an_oom_fault_on_the_oom_watcher_does_not_spin() {
    // Each GetOOMEvent answers at once with an event: the watcher used to spin on the paused
    // clock (1.7 GB in 5 s). Now each poll costs a round trip of virtual time.
    let o = run_blocking(&scenario(&format!(
        "name: oom-loop\nconfig: {{ persona: go }}\nfaults: [\"GetOOMEvent=oom(c1)\"]{LIFECYCLE}"
    )));
    assert!(o.errors.is_empty(), "{:?}", o.errors);
    let polls: u64 = o
        .calls
        .iter()
        .filter(|c| {
            c.op == Op::Agent(Method::GetOOMEvent)
                && c.status == CallStatus::Ok
                && c.fault.as_deref() == Some("oom(c1)")
        })
        .map(|c| c.count)
        .sum();
    // 60 s of virtual time at one poll per 10 ms round trip.
    assert!((5_000..=6_100).contains(&polls), "{polls}: {:#?}", o.calls);
    assert!(o.calls.len() < 60, "{:#?}", o.calls);
    assert!(o.warnings.len() < 10, "{:?}", o.warnings);
    assert!(
        o.warnings
            .iter()
            .any(|w| w.message.contains("OOM event for container c1") && w.count > 1)
    );
    assert!(o.faults.len() < 40, "{:?}", o.faults);
    assert_eq!(o.processes["c1"].exit_code, Some(137));
}

#[test]
fn an_oom_on_every_call_does_not_spin() {
    // `->delay(.5s)` never comes: the first term has no count.
    let o = run_blocking(&scenario(&format!(
        "name: oom-star\nconfig: {{ persona: go }}\nfaults: [\"*=oom(c1)->delay(.5s)\"]{LIFECYCLE}"
    )));
    let (n, lines) = calls(&o);
    assert!(
        n > 5_000 && lines < 80,
        "{n} calls in {lines} lines: {:#?}",
        o.calls
    );
    assert!(o.faults.len() < 80, "{:?}", o.faults);
}

#[test]
fn runtime_rs_retrying_a_failing_oom_poll_folds_its_record() {
    let o = run_blocking(&scenario(&format!(
        "name: rs-oom-error\nconfig: {{ persona: rs }}\nfaults: [\"GetOOMEvent=error(UNAVAILABLE)\"]{}",
        LIFECYCLE.replace(
            "  - wait: c1",
            "  - kill: { container: c1, signal: 9 }\n  - wait: c1"
        )
    )));
    let polls: u64 = o
        .calls
        .iter()
        .filter(|c| {
            c.op == Op::Agent(Method::GetOOMEvent)
                && c.status == CallStatus::Code(ttrpc::Code::UNAVAILABLE)
        })
        .map(|c| c.count)
        .sum();
    // runtime-rs retries at once, forever: one poll per millisecond (`RS_OOM_RETRY`, the
    // smallest step of the paused clock) for 60 s, folded into a few lines.
    assert!(
        (50_000..=61_000).contains(&polls),
        "{polls}: {:#?}",
        o.calls
    );
    assert!(
        o.warnings
            .iter()
            .any(|w| w.message == kata_sim::words::RS_OOM_EVENT_FAILED && w.count > 1),
        "{:?}",
        o.warnings
    );
    assert!(o.calls.len() < 60, "{:#?}", o.calls);
}

#[test]
fn a_hanging_stop_vm_ends_the_teardown() {
    // StopVM=hang used to idle forever: nothing else was left to move the clock.
    let o = run_blocking(&scenario(
        "name: stopvm-hang
faults: [\"StopVM=hang\"]
steps:
  - create_sandbox: {}
  - create_container: { id: c1, args: [echo, hi] }
  - start: c1
  - wait: c1
  - stop: c1
",
    ));
    assert_eq!(
        o.errors,
        ["teardown: stuck in StopVM{wait_only=false} after 3600 s of virtual time"]
    );
    assert_eq!(o.teardown, kata_sim::schema::Teardown::Incomplete);
    assert!(o.calls.len() < 40, "{:#?}", o.calls);
}

#[test]
fn the_steps_share_a_budget_of_virtual_time() {
    let mut text = String::from("name: budget\nsteps:\n");
    for _ in 0..7 {
        text.push_str("  - advance_time: 3600\n");
    }
    let o = run_blocking(&scenario(&text));
    assert_eq!(
        o.errors,
        ["steps[6]: not run: the steps used their budget of 21600 s of virtual time"]
    );
}

#[test]
fn a_time_out_of_range_cannot_be_built_even_in_code() {
    // `advance_time: 1e300` built in code, past the loader, used to panic the whole run; the
    // step's type now holds only 0 to 3600 seconds, whoever builds it.
    for bad in [1e300, f64::NAN, -1.0, f64::INFINITY, 3600.5] {
        let e = kata_sim::schema::StepSecs::try_from(bad).unwrap_err();
        assert!(
            e.ends_with("is out of range: expected 0 to 3600 seconds"),
            "{e}"
        );
    }
    let mut s = scenario("name: inf\nsteps: []\n");
    s.steps = vec![
        Step::AdvanceTime(kata_sim::schema::StepSecs::try_from(2.5).unwrap()),
        Step::CreateSandbox(Default::default()),
    ];
    let o = run_blocking(&s);
    assert!(o.errors.is_empty(), "{:?}", o.errors);
    assert!(
        o.calls
            .iter()
            .any(|c| c.op == Op::Agent(Method::CreateSandbox)),
        "the next step ran"
    );
}

#[test]
fn a_panicking_run_is_that_scenarios_error() {
    let s = scenario("name: p\nsteps: []\n");
    let o = kata_sim::runner::isolated(&s, |_| panic!("the model broke"));
    assert_eq!(o.errors, ["the run panicked: the model broke"]);
    let fine = kata_sim::runner::isolated(&s, run_blocking);
    assert!(fine.errors.is_empty(), "the next run is unaffected");
}

#[test]
fn the_real_time_watchdog_ends_a_run_on_the_real_clock() {
    // Over the wire the clock is real: the watchdog, not virtual time, ends this hang.
    let s = scenario(
        "name: wire-hang
faults: [\"StopVM=hang\"]
steps:
  - create_sandbox: {}
  - destroy_sandbox
",
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let limits = Limits {
        real: Duration::from_millis(300),
        ..Limits::default()
    };
    let started = std::time::Instant::now();
    let o = rt.block_on(run_with_limits::<Wire>(&s, limits));
    assert!(started.elapsed() < Duration::from_secs(20));
    assert!(
        has_error(
            &o,
            "the run: stuck in StopVM{wait_only=false} after 0.3 s of real time"
        ),
        "{:?}",
        o.errors
    );
}

#[test]
fn go_3_19_1_spins_on_a_4x_agents_empty_reads_at_a_round_trip_each() {
    // kata-facts 8: the 3.19.1 shim reads a 4.x agent's empty end of output again, forever,
    // and never sends WaitProcess for it; on an agent of its time the output ends.
    let text = |version: &str| {
        format!(
            "name: spin\nconfig: {{ persona: go@3.19.1, agent_version: {version} }}\nsteps:\n  \
             - create_sandbox: {{}}\n  - create_container: {{ id: c1, args: [echo, hi] }}\n  \
             - start: c1\n  - advance_time: 1\n  - destroy_sandbox\n"
        )
    };
    let reads = |o: &Outcome| -> u64 {
        o.calls
            .iter()
            .filter(|c| c.op == Op::Agent(Method::ReadStdout))
            .map(|c| c.count)
            .sum()
    };
    // The ReadStdout calls before the first WaitProcess.
    let reads_before_wait = |o: &Outcome| -> u64 {
        o.calls
            .iter()
            .take_while(|c| c.op != Op::Agent(Method::WaitProcess))
            .filter(|c| c.op == Op::Agent(Method::ReadStdout))
            .map(|c| c.count)
            .sum()
    };
    let new = run_blocking(&scenario(&text("4.1.0")));
    // At least one read per 10 ms round trip for the second the step waits, on a paused
    // clock, and WaitProcess only when the teardown ends the reads.
    assert!(reads_before_wait(&new) >= 100, "{}", reads(&new));
    let old = run_blocking(&scenario(&text("3.19.1")));
    assert!(reads(&old) <= 3, "{}", reads(&old));
    assert_eq!(reads_before_wait(&old), reads(&old));
    assert_eq!(old.processes["c1"].stdout, "hi\n");
}

//! The built-in host over real sockets (ttrpc on each VM's unix socket, real clock) sends the
//! same agent calls and gets the same results as in-process: one data path serves both.

#[test]
fn wire_and_in_process_runs_agree() {
    for name in [
        "go-happy-path",
        "rs-happy-path",
        "go-exec-stdio",
        "go-term-copied",
        "rs-fixture-term-file",
        "rs-term-mount-spelt-apart",
        "go-term-getdiag-error",
        "go-policy-denial",
    ] {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("library")
            .join(format!("{name}.yaml"));
        let s = kata_sim::load::load(&path).unwrap();
        let local = kata_sim::host::run_blocking(&s);
        let wire = kata_sim::host::run_wire_blocking(&s);
        assert_eq!(
            kata_sim::render::agent_calls(&wire),
            kata_sim::render::agent_calls(&local),
            "{name} (seed {})",
            s.seed
        );
        assert_eq!(wire.processes, local.processes, "{name}");
        assert_eq!(wire.host_files, local.host_files, "{name}");
        assert_eq!(wire.teardown, local.teardown, "{name}");
        // What containerd sees, but the times: the wire runs on the real clock.
        let seen = |o: &kata_sim::host::Outcome| -> Vec<(String, String, Option<u32>)> {
            o.tasks
                .iter()
                .map(|(id, t)| (id.clone(), t.status.name().to_string(), t.exit_status))
                .collect()
        };
        assert_eq!(seen(&wire), seen(&local), "{name}");
        assert!(
            kata_sim::check::check(&s, &wire).is_empty(),
            "{name} over the wire: {:?}",
            kata_sim::check::check(&s, &wire)
        );
    }
}

//! Nothing a guest-side request does writes outside the guest root: planted temp files,
//! symlink chains, dangling and absolute links, a rootfs full of links, the termination
//! message, and a path swapped for a symlink while it is written. Each test watches a
//! sentinel directory on the host, outside the root, that must stay exactly as it was.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

use sim_agent::protocols::agent;
use sim_agent::{Agent, AgentRpc, CallOpts, RemoteAgent, SimAgent, SimConfig};
use ttrpc::Code;

use crate::support::{TestServer, bounded, create_req, with_termination_log};

const SHARED: &str = "/run/kata-containers/shared/containers";

/// A host directory outside every guest root, with one file in it.
struct Sentinel(tempfile::TempDir);

impl Sentinel {
    fn new() -> Self {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("victim"), b"host").unwrap();
        Sentinel(d)
    }

    fn dir(&self) -> String {
        self.0.path().to_string_lossy().into_owned()
    }

    fn file(&self) -> String {
        self.0.path().join("victim").to_string_lossy().into_owned()
    }

    #[track_caller]
    fn assert_untouched(&self) {
        let entries: Vec<_> = std::fs::read_dir(self.0.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(
            entries,
            ["victim"],
            "a file appeared outside the guest root"
        );
        let m = std::fs::metadata(self.0.path().join("victim")).unwrap();
        assert_eq!(
            std::fs::read(self.0.path().join("victim")).unwrap(),
            b"host"
        );
        assert_eq!(m.permissions().mode() & 0o7000, 0, "host file chmodded");
    }
}

fn copy(path: &str, mode: u32, data: &[u8]) -> agent::CopyFileRequest {
    agent::CopyFileRequest {
        path: path.into(),
        file_mode: mode,
        file_size: if mode & 0o170000 == 0o100000 {
            data.len() as i64
        } else {
            0
        },
        dir_mode: 0o755,
        data: data.to_vec(),
        ..Default::default()
    }
}

fn link(path: &str, target: &str) -> agent::CopyFileRequest {
    copy(path, 0o120777, target.as_bytes())
}

async fn copy_file(a: &impl AgentRpc, req: agent::CopyFileRequest) -> Result<(), AgentError> {
    AgentRpc::copy_file(a, req, CallOpts::default())
        .await
        .map(drop)
}

use sim_agent::AgentError;

#[tokio::test]
async fn a_planted_temp_file_symlink_writes_nothing_outside_over_the_wire() {
    let host = Sentinel::new();
    let srv = TestServer::start(SimAgent::new().unwrap(), "unix").await;
    let a = bounded(RemoteAgent::connect(&srv.url("unix")))
        .await
        .unwrap();
    // The first CopyFile plants `<path>.tmp` as a symlink to a host file; the second one
    // writes `<path>`, whose temp file is `<path>.tmp`, at an offset, with mode 06777.
    bounded(copy_file(
        &a,
        link(&format!("{SHARED}/f.tmp"), &host.file()),
    ))
    .await
    .unwrap();
    let mut req = copy(&format!("{SHARED}/f"), 0o106777, b"pwned");
    req.offset = 2;
    req.file_size = 7;
    let _ = bounded(copy_file(&a, req)).await;
    // Through a relative link that climbs out, and a chain of links ending outside.
    bounded(copy_file(
        &a,
        link(&format!("{SHARED}/g.tmp"), "../../../../../../.."),
    ))
    .await
    .unwrap();
    let _ = bounded(copy_file(&a, copy(&format!("{SHARED}/g"), 0o100644, b"x"))).await;
    bounded(copy_file(&a, link(&format!("{SHARED}/h1"), "h2")))
        .await
        .unwrap();
    bounded(copy_file(&a, link(&format!("{SHARED}/h2"), &host.dir())))
        .await
        .unwrap();
    let _ = bounded(copy_file(
        &a,
        copy(&format!("{SHARED}/h1/new"), 0o100644, b"x"),
    ))
    .await;
    host.assert_untouched();
    // The guest itself kept working: a plain copy still lands where it should.
    bounded(copy_file(
        &a,
        copy(&format!("{SHARED}/ok"), 0o100644, b"fine"),
    ))
    .await
    .unwrap();
    let guest = srv.server.agent();
    assert_eq!(
        guest.read_guest_file(&format!("{SHARED}/ok")).unwrap(),
        b"fine"
    );
}

#[tokio::test]
async fn dangling_and_absolute_links_resolve_in_the_guest() {
    let host = Sentinel::new();
    let sim = SimAgent::new().unwrap();
    // Dangling links, a chain of them: the write creates the file at the end of the chain
    // *in the guest*, as the guest kernel would, and nothing on the host.
    copy_file(&sim, link(&format!("{SHARED}/d.tmp"), "chain1"))
        .await
        .unwrap();
    copy_file(&sim, link(&format!("{SHARED}/chain1"), "./chain2"))
        .await
        .unwrap();
    copy_file(&sim, link(&format!("{SHARED}/chain2"), "/end"))
        .await
        .unwrap();
    copy_file(&sim, copy(&format!("{SHARED}/d"), 0o100644, b"data"))
        .await
        .unwrap();
    assert_eq!(
        sim.read_guest_file(&format!("{SHARED}/end")).unwrap(),
        b"data",
        "an absolute link in CopyFile's root (the shared directory) points below it"
    );
    // The agent's root for CopyFile is the shared directory: an absolute link there points
    // below it.
    copy_file(&sim, link(&format!("{SHARED}/abs"), &host.dir()))
        .await
        .unwrap();
    let r = copy_file(&sim, copy(&format!("{SHARED}/abs/victim"), 0o100644, b"x")).await;
    assert!(
        r.is_err(),
        "the target's parent does not exist in the guest"
    );
    host.assert_untouched();
}

#[tokio::test]
async fn a_rootfs_and_a_termination_mount_of_links_stay_in_the_guest() {
    let host = Sentinel::new();
    let sim = SimAgent::new().unwrap();
    // The runtime copies the rootfs (shared_fs=none): a hostile one is all links to the host.
    let rootfs = sim_agent::requests::rootfs_path("c1");
    copy_file(&sim, copy(&rootfs, 0o040755, b"")).await.unwrap();
    // ...with the directory its link names made inside the rootfs too.
    copy_file(
        &sim,
        copy(&format!("{rootfs}{}", host.dir()), 0o040755, b""),
    )
    .await
    .unwrap();
    copy_file(&sim, link(&format!("{rootfs}/hostdir"), &host.dir()))
        .await
        .unwrap();
    copy_file(&sim, copy(&format!("{rootfs}/tmp2"), 0o040755, b""))
        .await
        .unwrap();
    copy_file(
        &sim,
        link(&format!("{rootfs}/up"), "../../../../../../../../.."),
    )
    .await
    .unwrap();
    // The termination-message file is a link to the host's file.
    let log = format!("{SHARED}/c1-termination-log");
    copy_file(&sim, link(&log, &host.file())).await.unwrap();
    // In the guest's `/`, that link names a guest file (the agent needs the mount source).
    sim.write_guest_file(&host.file(), b"guest").unwrap();
    let req = with_termination_log(
        create_req(
            "c1",
            &[
                "sh",
                "-c",
                "echo a > /hostdir/victim; echo b >> /hostdir/new; echo c > /up/tmp2/x; \
                 cat /hostdir/victim; echo msg > /dev/termination-log",
            ],
        ),
        &log,
    );
    Agent::create_container(&sim, req).await.unwrap();
    Agent::start_container(&sim, "c1".into()).await.unwrap();
    // What the guest read back is the guest's file, never the host's "host".
    let out = bounded(Agent::read_process_stdout(
        &sim,
        "c1".into(),
        "".into(),
        1024,
    ))
    .await;
    assert_eq!(out.unwrap(), b"a\n");
    let status = bounded(Agent::wait_process(&sim, "c1".into(), "".into()))
        .await
        .unwrap();
    assert_eq!(status, 0);
    host.assert_untouched();
    let msg = Agent::get_diagnostic_data(&sim, "termination_log".into(), "c1".into())
        .await
        .unwrap();
    assert_eq!(msg, "msg\n");
    assert_eq!(sim.read_guest_file(&host.file()).unwrap(), b"msg\n");
    sim.write_termination_message("c1", b"again").unwrap();
    sim.remove_termination_message("c1").unwrap();
    host.assert_untouched();
    // RemoveContainer takes the rootfs's made-up image away, never what its links point to.
    Agent::stop_container(&sim, "c1".into()).await.unwrap();
    host.assert_untouched();
}

#[tokio::test]
async fn setuid_and_setgid_bits_are_dropped() {
    let sim = SimAgent::new().unwrap();
    copy_file(&sim, copy(&format!("{SHARED}/suid"), 0o106777, b"x"))
        .await
        .unwrap();
    copy_file(&sim, copy(&format!("{SHARED}/dir"), 0o046777, b""))
        .await
        .unwrap();
    for name in ["suid", "dir"] {
        let p = sim.guest_root().join(&SHARED[1..]).join(name);
        let mode = std::fs::metadata(&p).unwrap().permissions().mode();
        assert_eq!(mode & 0o6000, 0, "{name}: {mode:o}");
        assert_eq!(mode & 0o777, 0o777, "{name}: the rest of the mode is kept");
    }
}

#[tokio::test]
async fn writes_past_the_guest_disk_fail_as_a_full_disk_does() {
    let sim = SimAgent::with_config(SimConfig {
        disk_size: Some(1 << 20),
        ..Default::default()
    })
    .unwrap();
    let full = "write_all_at\n\nCaused by:\n    ENOSPC: No space left on device";
    let mut far = copy(&format!("{SHARED}/sparse"), 0o100644, b"x");
    far.offset = 1 << 40;
    far.file_size = (1 << 40) + 1;
    let e = copy_file(&sim, far).await.unwrap_err();
    assert_eq!((e.code(), e.message()), (Some(Code::INTERNAL), Some(full)));
    let mut big = copy(&format!("{SHARED}/big"), 0o100644, b"x");
    big.file_size = 2 << 20;
    let e = copy_file(&sim, big).await.unwrap_err();
    assert_eq!(e.message(), Some(full));
    let shared = sim.guest_root().join(&SHARED[1..]);
    for name in ["sparse", "sparse.tmp", "big", "big.tmp"] {
        assert!(!shared.join(name).exists(), "{name} was created");
    }
    // Within the disk, chunks still add up to the file.
    let mut first = copy(&format!("{SHARED}/ok"), 0o100644, &[1; 512 << 10]);
    first.file_size = 1 << 20;
    copy_file(&sim, first).await.unwrap();
    let mut second = copy(&format!("{SHARED}/ok"), 0o100644, &[2; 512 << 10]);
    second.offset = 512 << 10;
    second.file_size = 1 << 20;
    copy_file(&sim, second).await.unwrap();
    assert_eq!(std::fs::metadata(shared.join("ok")).unwrap().len(), 1 << 20);
}

/// One client copies `d/sub/f` again and again while the directory `d` is swapped, atomically
/// and as fast as the host can, with an absolute symlink to the sentinel: 100,000 copies,
/// none of which may land outside.
#[test]
fn a_directory_swapped_for_a_symlink_mid_copy_never_leads_outside() {
    const COPIES: usize = 100_000;
    let host = Sentinel::new();
    let sim = SimAgent::new().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(copy_file(
        &sim,
        copy(&format!("{SHARED}/d/sub"), 0o040755, b""),
    ))
    .unwrap();
    let shared = sim.guest_root().join(&SHARED[1..]);
    // The attacker's symlink, next to `d`; both names are exchanged in one renameat2.
    std::fs::create_dir(host.0.path().join("sub")).unwrap();
    std::os::unix::fs::symlink(host.0.path(), shared.join("swap")).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let swapper = {
        let stop = std::sync::Arc::clone(&stop);
        let dir = std::fs::File::open(&shared).unwrap();
        std::thread::spawn(move || {
            let mut swaps = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                rustix::fs::renameat_with(
                    &dir,
                    "d",
                    &dir,
                    "swap",
                    rustix::fs::RenameFlags::EXCHANGE,
                )
                .unwrap();
                swaps += 1;
            }
            swaps
        })
    };
    let mut landed = 0;
    rt.block_on(async {
        for i in 0..COPIES {
            let data = format!("{i}");
            if copy_file(
                &sim,
                copy(&format!("{SHARED}/d/sub/f"), 0o100644, data.as_bytes()),
            )
            .await
            .is_ok()
            {
                landed += 1;
            }
        }
    });
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let swaps = swapper.join().unwrap();
    assert!(swaps > 1000, "the race ran ({swaps} swaps)");
    assert!(landed > 0, "some copies went through");
    // Outside: the sentinel's `sub` stays empty, its file untouched.
    assert_eq!(
        std::fs::read_dir(host.0.path().join("sub"))
            .unwrap()
            .count(),
        0,
        "{COPIES} copies under {swaps} swaps wrote outside the guest root"
    );
    std::fs::remove_dir(host.0.path().join("sub")).unwrap();
    host.assert_untouched();
    assert!(Path::new(&shared).join("d").exists() || Path::new(&shared).join("swap").exists());
}

//! The language and every program, run end to end in a container view over a temporary
//! guest root. Expected outputs were taken from busybox 1.35 `sh -c`.

use std::sync::Arc;

use super::*;
use crate::sim::process::{Proc, Stream};

struct Sandbox {
    root: tempfile::TempDir,
}

impl Sandbox {
    fn new() -> Self {
        let root = tempfile::tempdir().unwrap();
        for d in ["run/c/rootfs/tmp", "run/c/rootfs/etc", "run/shared"] {
            std::fs::create_dir_all(root.path().join(d)).unwrap();
        }
        Sandbox { root }
    }

    fn view(&self) -> ContainerView {
        ContainerView {
            guest: Arc::new(crate::sim::fs::Confined::open(self.root.path()).unwrap()),
            rootfs: "/run/c/rootfs".into(),
            mounts: vec![
                MountView {
                    destination: "/dev".into(),
                    source: "tmpfs".into(),
                    bind: false,
                },
                MountView {
                    destination: "/dev/termination-log".into(),
                    source: "/run/shared/c-term".into(),
                    bind: true,
                },
            ],
            cwd: "/".into(),
        }
    }

    fn guest_file(&self, path: &str) -> Vec<u8> {
        std::fs::read(self.root.path().join(path.trim_start_matches('/'))).unwrap()
    }

    /// Runs `sh -c SCRIPT` with `stdin`; returns (status, stdout, stderr).
    async fn sh_in(&self, script: &str, stdin: &[u8]) -> (i32, String, String) {
        let parsed = parse(script).unwrap_or_else(|e| panic!("{script}: {e}"));
        let proc = Arc::new(Proc::new(String::new(), 1, true, false, vec![]));
        proc.write_stdin(stdin);
        proc.close_stdin();
        let env = Env {
            proc: Arc::clone(&proc),
            view: self.view(),
            seed: 7,
        };
        let run = async {
            let s = run_script(&parsed, &env).await;
            proc.exit(s);
            s
        };
        let read = |stream| {
            let proc = Arc::clone(&proc);
            async move {
                let mut all = Vec::new();
                loop {
                    let chunk = proc.read_output(stream, 1 << 20).await;
                    if chunk.is_empty() {
                        return String::from_utf8_lossy(&all).into_owned();
                    }
                    all.extend(chunk);
                }
            }
        };
        let (status, out, err) = tokio::join!(run, read(Stream::Stdout), read(Stream::Stderr));
        (status, out, err)
    }

    async fn sh(&self, script: &str) -> (i32, String, String) {
        self.sh_in(script, b"").await
    }
}

async fn sh(script: &str) -> (i32, String, String) {
    Sandbox::new().sh(script).await
}

fn ok(out: &str) -> (i32, String, String) {
    (0, out.to_string(), String::new())
}

#[tokio::test]
async fn lists_and_status() {
    assert_eq!(sh("true && echo a || echo b").await, ok("a\n"));
    assert_eq!(sh("false && echo a || echo b").await, ok("b\n"));
    assert_eq!(
        sh("false || false && echo x").await,
        (1, String::new(), String::new())
    );
    assert_eq!(sh("false; true").await, ok(""));
    assert_eq!(sh("true; false").await.0, 1);
    assert_eq!(sh("echo a\necho b").await, ok("a\nb\n"));
    assert_eq!(sh("").await, ok(""));
}

#[tokio::test]
async fn exit_and_exec_end_the_shell() {
    assert_eq!(
        sh("exit 3; echo no").await,
        (3, String::new(), String::new())
    );
    assert_eq!(sh("exit 300").await.0, 44);
    assert_eq!(sh("false; exit").await.0, 1);
    assert_eq!(sh("exit 2 3").await.0, 2);
    assert_eq!(
        sh("exit x").await,
        (
            2,
            String::new(),
            "sh: exit: line 0: Illegal number: x\n".into()
        )
    );
    assert_eq!(sh("exit -1").await.0, 2);
    assert_eq!(sh("exec echo hi; echo no").await, ok("hi\n"));
    assert_eq!(sh("exec false; echo no").await.0, 1);
    // `exit` in a pipeline ends only its stage.
    assert_eq!(sh("exit 4 | echo a; echo b").await, ok("a\nb\n"));
}

#[tokio::test]
async fn quoting_reaches_programs_intact() {
    assert_eq!(
        sh(r#"echo 'a  b' "c  d" e\ \ f"#).await,
        ok("a  b c  d e  f\n")
    );
    assert_eq!(
        sh(r#"echo "say \"hi\" \\ \n""#).await,
        ok("say \"hi\" \\ \\n\n")
    );
    assert_eq!(sh(r"echo a\;b").await, ok("a;b\n"));
    assert_eq!(sh("echo 'it''s'").await, ok("its\n"));
}

#[tokio::test]
async fn echo_options() {
    assert_eq!(sh("echo -n x").await, ok("x"));
    assert_eq!(sh("echo -nn a").await, ok("a"));
    assert_eq!(sh("echo -x a").await, ok("-x a\n"));
    assert_eq!(sh(r#"echo "a\tb""#).await, ok("a\\tb\n"));
    assert_eq!(sh(r#"echo -e "a\tb\0101""#).await, ok("a\tbA\n"));
    assert_eq!(sh(r#"echo -e "a\cb""#).await, ok("a"));
    assert_eq!(sh("echo").await, ok("\n"));
}

#[tokio::test]
async fn printf_formats() {
    assert_eq!(
        sh(r#"printf "%d|%s|%5s|%-3s|%x\n" 42 hi ab c 255"#).await,
        ok("42|hi|   ab|c  |ff\n")
    );
    assert_eq!(sh(r#"printf "%s-" a b c"#).await, ok("a-b-c-"));
    assert_eq!(
        sh(r#"printf "%5d|%-5d|%05d\n" 3 3 3"#).await,
        ok("    3|3    |00003\n")
    );
    assert_eq!(
        sh(r#"printf "%i %u %o %X %%\n" 3 4 8 255"#).await,
        ok("3 4 10 FF %\n")
    );
    assert_eq!(sh(r#"printf "%5.2s|\n" abc"#).await, ok("   ab|\n"));
    assert_eq!(sh(r#"printf "%c" hello"#).await, ok("h"));
    assert_eq!(sh(r#"printf "%b" "a\tb\n""#).await, ok("a\tb\n"));
    assert_eq!(sh(r#"printf "%s %s\n" a"#).await, ok("a \n"));
    assert_eq!(sh(r#"printf "\101\0102""#).await, ok("A\u{8}2"));
    assert_eq!(sh(r#"printf "%s\n" "\101""#).await, ok("\\101\n"));
    assert_eq!(sh(r#"printf "\x41\n""#).await, ok("A\n"));
    assert_eq!(sh(r#"printf "a\cb"; echo"#).await, ok("a\n"));
    assert_eq!(sh("printf abc def").await, ok("abc"));
    assert_eq!(
        sh(r#"printf "%d\n" abc"#).await,
        (1, "0\n".into(), "sh: invalid number 'abc'\n".into())
    );
    assert_eq!(
        sh("printf").await,
        (
            2,
            String::new(),
            "sh: usage: printf FORMAT [ARGUMENT...]\n".into()
        )
    );
    // Octal escapes write bytes, not characters.
    let sb = Sandbox::new();
    sb.sh(r"printf '\303\251tail' > /dev/termination-log").await;
    assert_eq!(sb.guest_file("run/shared/c-term"), "étail".as_bytes());
}

#[tokio::test]
async fn cat_head_and_files() {
    let sb = Sandbox::new();
    assert_eq!(
        sb.sh("echo a > /tmp/f; echo b >> /tmp/f; cat /tmp/f").await,
        ok("a\nb\n")
    );
    assert_eq!(sb.guest_file("run/c/rootfs/tmp/f"), b"a\nb\n");
    assert_eq!(sb.sh("cat < /tmp/f").await, ok("a\nb\n"));
    assert_eq!(sb.sh("cat - /tmp/f").await, ok("a\nb\n"));
    assert_eq!(sb.sh_in("cat", b"in\n").await, ok("in\n"));
    assert_eq!(sb.sh("head -n 1 /tmp/f").await, ok("a\n"));
    assert_eq!(sb.sh("head -c 3 /tmp/f").await, ok("a\nb"));
    assert_eq!(sb.sh("head -c -1 /tmp/f").await, ok("a\nb"));
    assert_eq!(sb.sh("head -n -1 /tmp/f").await, ok("a\n"));
    assert_eq!(sb.sh("head -1 < /tmp/f").await, ok("a\n"));
    assert_eq!(sb.sh("head -c 2k /dev/zero | wc -c").await, ok("2048\n"));
    assert_eq!(
        sb.sh("cat /nonexist").await,
        (
            1,
            String::new(),
            "cat: can't open '/nonexist': No such file or directory\n".into()
        )
    );
    assert_eq!(
        sb.sh("head -c x /dev/zero").await,
        (1, String::new(), "head: invalid number 'x'\n".into())
    );
    assert_eq!(
        sb.sh("head -n 1 /nonexist").await,
        (
            1,
            String::new(),
            "head: /nonexist: No such file or directory\n".into()
        )
    );
    // Relative paths resolve against the cwd; `..` stops at the container's `/`.
    assert_eq!(sb.sh("cat ../../tmp/f").await, ok("a\nb\n"));
}

#[tokio::test]
async fn redirection_errors_and_targets() {
    let sb = Sandbox::new();
    assert_eq!(
        sb.sh("echo a > /nonexist/x; echo next").await,
        (
            0,
            "next\n".into(),
            "sh: can't create /nonexist/x: nonexistent directory\n".into()
        )
    );
    assert_eq!(
        sb.sh("echo a > /tmp").await,
        (
            1,
            String::new(),
            "sh: can't create /tmp: Is a directory\n".into()
        )
    );
    assert_eq!(
        sb.sh("cat < /nonexist").await,
        (
            1,
            String::new(),
            "sh: can't open /nonexist: no such file\n".into()
        )
    );
    assert_eq!(
        sb.sh("echo hi 1>&2").await,
        (0, String::new(), "hi\n".into())
    );
    assert_eq!(
        sb.sh("cat /nonexist 2>/dev/null").await,
        (1, String::new(), String::new())
    );
    assert_eq!(
        sb.sh("cat /nonexist 2>&1").await,
        (
            1,
            "cat: can't open '/nonexist': No such file or directory\n".into(),
            String::new()
        )
    );
    // Order matters: 2>&1 copies stdout before stdout moves.
    assert_eq!(sb.sh("echo a 2>&1 >/dev/null").await, ok(""));
    assert_eq!(
        sb.sh("cat /nope 2>/tmp/err; cat /tmp/err").await.1,
        "cat: can't open '/nope': No such file or directory\n"
    );
    assert_eq!(
        sb.sh("> /tmp/empty; wc -c /tmp/empty").await,
        ok("        0 /tmp/empty\n")
    );
}

#[tokio::test]
async fn termination_log_goes_through_its_bind_mount() {
    let sb = Sandbox::new();
    let (status, ..) = sb
        .sh("echo bye from c2 > /dev/termination-log; exit 2")
        .await;
    assert_eq!(status, 2);
    assert_eq!(sb.guest_file("run/shared/c-term"), b"bye from c2\n");
    sb.sh(r"head -c 5000 /dev/zero | tr '\0' x > /dev/termination-log")
        .await;
    let data = sb.guest_file("run/shared/c-term");
    assert_eq!(data.len(), 5000);
    assert!(data.iter().all(|b| *b == b'x'));
    // The rootfs never saw it.
    assert!(
        !sb.root
            .path()
            .join("run/c/rootfs/dev/termination-log")
            .exists()
    );
}

#[tokio::test]
async fn tr_translates_deletes_and_squeezes() {
    assert_eq!(sh("echo hello | tr a-z A-Z").await, ok("HELLO\n"));
    assert_eq!(
        sh("echo hello | tr '[:lower:]' '[:upper:]'").await,
        ok("HELLO\n")
    );
    assert_eq!(sh("echo hello | tr el x").await, ok("hxxxo\n"));
    assert_eq!(sh("echo abc | tr abc x").await, ok("xxx\n"));
    assert_eq!(sh("echo hello | tr -d a-h").await, ok("llo\n"));
    assert_eq!(sh("echo hello | tr -s l").await, ok("helo\n"));
    assert_eq!(sh(r"printf 'a\0b' | tr '\0' '\n'").await, ok("a\nb"));
    assert_eq!(sh(r"printf 'a\nb' | tr '\n' ' '").await, ok("a b"));
}

#[tokio::test]
async fn wc_yes_seq_sleep_true_false() {
    assert_eq!(sh("echo hi | wc -c").await, ok("3\n"));
    assert_eq!(
        sh("echo a b | wc").await,
        ok("        1         2         4\n")
    );
    assert_eq!(sh("echo ab | wc -l -c").await, ok("        1         3\n"));
    assert_eq!(sh("printf 'a\\nb\\n' | wc -l").await, ok("2\n"));
    assert_eq!(sh("yes | head -n 2").await, ok("y\ny\n"));
    assert_eq!(sh("yes ab | head -n 2").await, ok("ab\nab\n"));
    assert_eq!(sh("seq 3").await, ok("1\n2\n3\n"));
    assert_eq!(sh("seq 5 -2 1").await, ok("5\n3\n1\n"));
    assert_eq!(sh("seq 1 0.5 2").await, ok("1.0\n1.5\n2.0\n"));
    assert_eq!(sh("seq -s , 3").await, ok("1,2,3\n"));
    assert_eq!(sh("seq 2 1").await, ok(""));
    assert_eq!(sh(": && true").await.0, 0);
    assert_eq!(
        sh("sleep x").await,
        (1, String::new(), "sleep: invalid number 'x'\n".into())
    );
}

#[tokio::test(start_paused = true)]
async fn sleep_uses_the_tokio_clock() {
    let start = tokio::time::Instant::now();
    assert_eq!(sh("sleep 1.5 && echo ok").await, ok("ok\n"));
    assert_eq!(start.elapsed(), std::time::Duration::from_millis(1500));
}

#[tokio::test]
async fn pipes_end_writers_with_sigpipe() {
    // `yes` is endless: it ends when `head` closes the pipe.
    assert_eq!(sh("yes | head -c 5 | wc -c").await, ok("5\n"));
    assert_eq!(sh("head -c 100000 /dev/zero | wc -c").await, ok("100000\n"));
    // The writer's status is SIGPIPE, but the pipeline's is the last stage's.
    assert_eq!(sh("yes | head -n 1").await, ok("y\n"));
    assert_eq!(sh("yes | false").await.0, 1);
}

#[tokio::test]
async fn urandom_is_seeded() {
    let a = sh("head -c 8 /dev/urandom | wc -c").await;
    assert_eq!(a, ok("8\n"));
    let sb = Sandbox::new();
    sb.sh("head -c 16 /dev/urandom > /tmp/r1").await;
    sb.sh("head -c 16 /dev/urandom > /tmp/r2").await;
    let r1 = sb.guest_file("run/c/rootfs/tmp/r1");
    assert_eq!(r1.len(), 16);
    assert_eq!(
        r1,
        sb.guest_file("run/c/rootfs/tmp/r2"),
        "same seed, same bytes"
    );
    assert!(r1.iter().any(|b| *b != 0));
}

#[test]
fn unsupported_use_is_rejected_before_running() {
    for script in ["echo $HOME", "cat -n f", "awk 1", "tr -c a b", "sleep 1 &"] {
        assert!(
            matches!(parse(script), Err(ParseError::Unsupported(_))),
            "{script}"
        );
    }
}

#[test]
fn direct_argv_runs_one_program() {
    let argv = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let s = direct(&argv(&["/usr/bin/head", "-c", "3", "/dev/zero"])).unwrap();
    assert_eq!(s.lists[0].first.commands[0].program, Some(Program::Head));
    assert!(direct(&argv(&["/pause"])).is_err());
    assert!(direct(&argv(&["exit", "3"])).is_err());
    assert!(direct(&[]).is_err());
}

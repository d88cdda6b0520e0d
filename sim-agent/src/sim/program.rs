//! What a guest process does: a script from the embedding test, or a built-in program.
//!
//! Scripts take precedence. Without one, the program is chosen by the base name of `argv[0]`
//! (`/bin/echo` and `echo` are the same): `true`, `false`, `echo`, `sleep N`, `cat` (copies
//! stdin to stdout), and `sh -c "exit N"`. Anything else runs until a signal ends it, like a
//! pause container, and the trace notes which program was not understood.

use std::sync::Arc;
use std::time::Duration;

use super::process::{Proc, Stream};

/// How a process answers a catchable signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SignalReaction {
    /// The kernel's default: terminate with 128 + signal; a container's pid 1 ignores
    /// signals it has no handler for (so the agent turns its SIGTERM into SIGKILL).
    #[default]
    Default,
    /// Ignore every catchable signal; only SIGKILL ends it.
    Ignore,
    /// Handle the signal by exiting with this code.
    Exit(i32),
}

/// A scripted process, set by the embedding test.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ProcessScript {
    /// Bytes written to stdout at start.
    pub stdout: Vec<u8>,
    /// Bytes written to stderr at start.
    pub stderr: Vec<u8>,
    /// Copy stdin to stdout until stdin closes, before exiting.
    pub echo_stdin: bool,
    /// How long it runs after writing; `None` runs until signalled.
    pub run_time: Option<Duration>,
    /// Its exit code when it ends on its own.
    pub exit_code: i32,
    /// How it reacts to catchable signals.
    pub on_signal: SignalReaction,
}

impl ProcessScript {
    /// A process that prints `stdout` and exits with `code` at once.
    pub fn exits(code: i32) -> Self {
        ProcessScript {
            run_time: Some(Duration::ZERO),
            exit_code: code,
            ..Default::default()
        }
    }

    /// Sets stdout.
    pub fn stdout(mut self, data: impl Into<Vec<u8>>) -> Self {
        self.stdout = data.into();
        self
    }

    /// Sets stderr.
    pub fn stderr(mut self, data: impl Into<Vec<u8>>) -> Self {
        self.stderr = data.into();
        self
    }

    /// Sets the run time (`None`: until signalled).
    pub fn run_time(mut self, d: Option<Duration>) -> Self {
        self.run_time = d;
        self
    }

    /// Sets the signal reaction.
    pub fn on_signal(mut self, r: SignalReaction) -> Self {
        self.on_signal = r;
        self
    }

    /// Echo stdin to stdout until it closes.
    pub fn echo_stdin(mut self) -> Self {
        self.echo_stdin = true;
        self
    }
}

/// What a process runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Behaviour {
    /// A script from the embedding test.
    Script(ProcessScript),
    /// A built-in program, parsed from its argv.
    Builtin(Builtin),
}

/// The built-in programs, parsed once from argv: running and diagnosing share one parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Builtin {
    /// `true`.
    True,
    /// `false`.
    False,
    /// `echo [-n] WORDS`: the bytes it prints.
    Echo(Vec<u8>),
    /// `sleep N`; `None` for an argument that is not a number (busybox then exits 1).
    Sleep(Option<Duration>),
    /// `cat` with no file: stdin to stdout.
    Cat,
    /// `sh -c "exit N"`.
    Exit(i32),
    /// Anything else: runs until signalled. The text says which word was not understood.
    Unknown(String),
}

impl Builtin {
    /// Parses argv; `argv[0]` is matched by base name (`/bin/echo` is `echo`).
    pub fn parse(args: &[String]) -> Builtin {
        let Some(arg0) = args.first() else {
            return Builtin::Unknown("empty argv: runs until signalled".into());
        };
        let rest = &args[1..];
        match program_name(arg0) {
            "true" => Builtin::True,
            "false" => Builtin::False,
            "echo" => {
                let (newline, words) = match rest.first().map(String::as_str) {
                    Some("-n") => (false, &rest[1..]),
                    _ => (true, rest),
                };
                let mut out = words.join(" ");
                if newline {
                    out.push('\n');
                }
                Builtin::Echo(out.into_bytes())
            }
            "sleep" => Builtin::Sleep(
                rest.first()
                    .and_then(|s| s.parse::<f64>().ok())
                    .filter(|secs| *secs >= 0.0 && secs.is_finite())
                    .map(Duration::from_secs_f64),
            ),
            "cat" if rest.is_empty() => Builtin::Cat,
            "sh" | "bash" | "ash" if rest.first().map(String::as_str) == Some("-c") => {
                let script = rest.get(1).map(String::as_str).unwrap_or("");
                match parse_exit(script) {
                    Some(code) => Builtin::Exit(code),
                    None => Builtin::Unknown(format!(
                        "sh -c {script:?} is not understood: runs until signalled"
                    )),
                }
            }
            other => Builtin::Unknown(format!(
                "program {other:?} is not understood: runs until signalled"
            )),
        }
    }
}

/// What a starting program reports to besides its own process (the trace).
#[derive(Clone)]
pub struct ProgramCtx {
    /// Called with a note for the trace (such as an unknown program).
    pub note: Arc<dyn Fn(String) + Send + Sync>,
}

impl std::fmt::Debug for ProgramCtx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProgramCtx").finish_non_exhaustive()
    }
}

/// The base name of a program path: `/usr/bin/head` -> `head`.
pub fn program_name(arg0: &str) -> &str {
    arg0.rsplit('/').next().unwrap_or(arg0)
}

impl Behaviour {
    /// The signal reaction the process starts with.
    pub fn signal_reaction(&self) -> SignalReaction {
        match self {
            Behaviour::Script(s) => s.on_signal,
            Behaviour::Builtin(_) => SignalReaction::Default,
        }
    }

    /// Why the built-ins cannot run this program, if they cannot (it then runs until
    /// signalled). Scripts are always understood.
    pub fn not_understood(&self) -> Option<&str> {
        match self {
            Behaviour::Builtin(Builtin::Unknown(why)) => Some(why),
            _ => None,
        }
    }

    /// Runs the program to its exit code. Signals end it from outside (the task is aborted).
    pub async fn run(&self, proc: &Arc<Proc>) -> i32 {
        match self {
            Behaviour::Script(s) => run_script(s, proc).await,
            Behaviour::Builtin(b) => run_builtin(b, proc).await,
        }
    }
}

async fn run_script(s: &ProcessScript, proc: &Arc<Proc>) -> i32 {
    if !s.stdout.is_empty() {
        proc.write_output(Stream::Stdout, &s.stdout);
    }
    if !s.stderr.is_empty() {
        proc.write_output(Stream::Stderr, &s.stderr);
    }
    if s.echo_stdin {
        copy_stdin(proc).await;
    }
    match s.run_time {
        Some(d) if d.is_zero() => {}
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending::<()>().await,
    }
    s.exit_code
}

async fn copy_stdin(proc: &Arc<Proc>) {
    while let Some(chunk) = proc.read_stdin(32 * 1024).await {
        proc.write_output(Stream::Stdout, &chunk);
    }
}

async fn run_builtin(b: &Builtin, proc: &Arc<Proc>) -> i32 {
    match b {
        Builtin::True => 0,
        Builtin::False => 1,
        Builtin::Echo(out) => {
            proc.write_output(Stream::Stdout, out);
            0
        }
        Builtin::Sleep(Some(d)) => {
            tokio::time::sleep(*d).await;
            0
        }
        Builtin::Sleep(None) => {
            proc.write_output(Stream::Stderr, b"sleep: invalid number\n");
            1
        }
        Builtin::Cat => {
            copy_stdin(proc).await;
            0
        }
        Builtin::Exit(code) => *code,
        Builtin::Unknown(_) => std::future::pending().await,
    }
}

/// `exit N` (or `exit`) as a whole script.
fn parse_exit(script: &str) -> Option<i32> {
    let mut words = script.split_whitespace();
    if words.next()? != "exit" {
        return None;
    }
    let code = match words.next() {
        None => 0,
        Some(n) => n.parse::<i64>().ok()?.rem_euclid(256) as i32,
    };
    words.next().is_none().then_some(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_scripts_parse_like_sh() {
        assert_eq!(parse_exit("exit 3"), Some(3));
        assert_eq!(parse_exit("  exit  "), Some(0));
        assert_eq!(parse_exit("exit 256"), Some(0));
        assert_eq!(parse_exit("exit -1"), Some(255));
        assert_eq!(parse_exit("exit 3; echo"), None);
        assert_eq!(parse_exit("echo hi"), None);
    }

    #[test]
    fn builtins_parse_once_for_running_and_diagnosing() {
        let argv = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            Builtin::parse(&argv(&["/bin/echo", "-n", "a", "b"])),
            Builtin::Echo(b"a b".to_vec())
        );
        assert_eq!(Builtin::parse(&argv(&["sleep", "x"])), Builtin::Sleep(None));
        assert_eq!(
            Builtin::parse(&argv(&["/bin/sh", "-c", "exit 3"])),
            Builtin::Exit(3)
        );
        assert_eq!(
            Builtin::parse(&argv(&["cat", "/etc/hosts"])),
            Builtin::Unknown("program \"cat\" is not understood: runs until signalled".into())
        );
        assert!(
            Behaviour::Builtin(Builtin::parse(&argv(&["/pause"])))
                .not_understood()
                .is_some()
        );
        assert!(
            Behaviour::Script(ProcessScript::exits(0))
                .not_understood()
                .is_none()
        );
    }

    #[test]
    fn program_names_ignore_the_path() {
        assert_eq!(program_name("/usr/bin/head"), "head");
        assert_eq!(program_name("echo"), "echo");
    }
}

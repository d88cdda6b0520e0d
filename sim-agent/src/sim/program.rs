//! What a guest process does: a script from the embedding test, or a built-in program.
//!
//! Scripts take precedence. Without one, argv goes to the [`shell`] userland:
//! `sh -c ONE-LINER` is interpreted as busybox would run it, and a known program run directly
//! (`/bin/echo hello`, `sleep 1000`) is run by the same interpreter. Anything else runs until a
//! signal ends it, like a pause container, and the trace notes which word was not understood.

use std::sync::Arc;
use std::time::Duration;

use super::process::{Proc, Stream};
use super::shell::{self, ContainerView, Env, ParseError, Script};

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

/// The built-in userland, decided once from argv: running and diagnosing share one parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Builtin {
    /// A script the [`shell`] interprets: an `sh -c` one-liner, or a known
    /// program run directly (`/bin/echo hello`).
    Shell(Arc<Script>),
    /// `sh -c` with a syntax error: busybox prints it and exits 2.
    SyntaxError(String),
    /// Anything else: runs until signalled. The text says which word was not understood.
    Unknown(String),
}

impl Builtin {
    /// Parses argv; `argv[0]` is matched by base name (`/bin/echo` is `echo`).
    pub fn parse(args: &[String]) -> Builtin {
        let Some(arg0) = args.first() else {
            return Builtin::Unknown("empty argv: runs until signalled".into());
        };
        let name = program_name(arg0);
        if matches!(name, "sh" | "ash" | "bash" | "dash") {
            if args.get(1).map(String::as_str) != Some("-c") {
                return Builtin::Unknown(format!(
                    "{name} without -c (a script from stdin or a file) is not interpreted: \
                     runs until signalled"
                ));
            }
            let Some(script) = args.get(2) else {
                return Builtin::SyntaxError(format!("{name}: -c requires an argument"));
            };
            return match shell::parse(script) {
                Ok(s) => Builtin::Shell(Arc::new(s)),
                Err(ParseError::Syntax(e)) => {
                    Builtin::SyntaxError(format!("sh: syntax error: {e}"))
                }
                Err(ParseError::Unsupported(why)) => {
                    Builtin::Unknown(format!("sh -c {script:?}: {why}: runs until signalled"))
                }
            };
        }
        match shell::direct(args) {
            Ok(s) => Builtin::Shell(Arc::new(s)),
            Err(e) => Builtin::Unknown(format!("{e}: runs until signalled")),
        }
    }
}

/// What a starting program gets besides its own process: the trace, and its container's
/// view of the guest filesystem.
#[derive(Clone)]
pub struct ProgramCtx {
    /// Called with a note for the trace (such as an unknown program).
    pub note: Arc<dyn Fn(String) + Send + Sync>,
    /// The container's filesystem as the process sees it.
    pub view: ContainerView,
    /// The seed of the process's `/dev/urandom`.
    pub seed: u64,
}

impl std::fmt::Debug for ProgramCtx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProgramCtx")
            .field("view", &self.view)
            .field("seed", &self.seed)
            .finish_non_exhaustive()
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
    pub async fn run(&self, proc: &Arc<Proc>, ctx: &ProgramCtx) -> i32 {
        match self {
            Behaviour::Script(s) => run_script(s, proc).await,
            Behaviour::Builtin(b) => run_builtin(b, proc, ctx).await,
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

async fn run_builtin(b: &Builtin, proc: &Arc<Proc>, ctx: &ProgramCtx) -> i32 {
    match b {
        Builtin::Shell(script) => {
            let env = Env {
                proc: Arc::clone(proc),
                view: ctx.view.clone(),
                seed: ctx.seed,
            };
            shell::run_script(script, &env).await
        }
        Builtin::SyntaxError(msg) => {
            proc.write_output(Stream::Stderr, format!("{msg}\n").as_bytes());
            2
        }
        Builtin::Unknown(_) => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtins_parse_once_for_running_and_diagnosing() {
        let argv = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(matches!(
            Builtin::parse(&argv(&["/bin/echo", "-n", "a", "b"])),
            Builtin::Shell(_)
        ));
        assert!(matches!(
            Builtin::parse(&argv(&[
                "/bin/sh",
                "-c",
                "echo x > /dev/termination-log; exit 2"
            ])),
            Builtin::Shell(_)
        ));
        assert_eq!(
            Builtin::parse(&argv(&["sh", "-c", "echo 'x"])),
            Builtin::SyntaxError("sh: syntax error: unterminated quoted string".into())
        );
        assert_eq!(
            Builtin::parse(&argv(&["cat", "-n", "/etc/hosts"])),
            Builtin::Unknown(
                "option \"-n\" of cat is not interpreted: runs until signalled".into()
            )
        );
        assert_eq!(
            Builtin::parse(&argv(&["sh", "-c", "echo $HOME"])),
            Builtin::Unknown(
                "sh -c \"echo $HOME\": \"$\" (parameter expansion): runs until signalled".into()
            )
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

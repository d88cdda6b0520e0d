//! `kata-sim`: put a Kata runtime on a fake VMM and guest agent.
//!
//! Exit codes are distinct and documented (`EXIT_CODES`, docs/cli.md). A user's mistake
//! prints one `error: ...` message and no backtrace, whatever `RUST_BACKTRACE` says; only a bug
//! (a panic) prints one.

use std::io::{IsTerminal as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{ArgAction, CommandFactory as _, Parser, Subcommand, ValueEnum};
use kata_sim::runner::{self, Loaded, Overrides, Progress, Report, Source, Verdict};
use kata_sim::schema::Persona;
use kata_sim::serve::{ServeOptions, start};
use kata_sim::shard::{Body, Results, Row, Shard};
use sim_agent::AgentVersion;
use sim_agent::fault::Rule;

/// The exit codes, for `--help` and docs/cli.md.
const EXIT_CODES: &str = "\
Exit codes:
  0      success
  1      a scenario failed (diff: the two sides differ, as diff(1))
  2      bad input: a usage error, a file that does not load, an unknown scenario name
  4      no scenarios to run, check or list
  101    an internal error (a bug; a panic prints its backtrace with RUST_BACKTRACE=1)
  128+N  stopped by signal N (130: SIGINT, 143: SIGTERM); what finished is still reported

See docs/cli.md.";

/// kata-sim: a fake VMM and guest agent for Kata Containers runtimes.
#[derive(Parser, Debug)]
#[command(version, about, after_help = EXIT_CODES)]
struct Cli {
    /// When to colour the output (`auto`: on a terminal, unless NO_COLOR is set).
    #[arg(long, global = true, value_enum, default_value_t = ColorWhen::Auto)]
    color: ColorWhen,
    /// No progress lines, and only errors in the log.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    quiet: bool,
    /// More log: -v, -vv, -vvv (RUST_LOG overrides).
    #[arg(short, long, global = true, action = ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

/// When to colour the output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ColorWhen {
    /// On a terminal, unless NO_COLOR is set to something.
    Auto,
    /// Always.
    Always,
    /// Never.
    Never,
}

/// Which host runtime runs a scenario.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Driver {
    /// The built-in host, with each scenario's persona.
    Builtin,
    /// The built-in host as the Go shim.
    BuiltinGo,
    /// The built-in host as runtime-rs.
    BuiltinRs,
    /// The built-in host as the Go shim at tag 3.19.1.
    BuiltinGo3191,
    /// A real host runtime: the command after `--`, against a kata-sim service.
    Exec,
    /// An unmodified shim binary, driven through containerd's task API (`shim:PATH`).
    Shim(PathBuf),
}

/// The drivers' names and what each is, as `--help` lists them.
const DRIVERS: [(&str, &str); 6] = [
    ("builtin", "The built-in host, with each scenario's persona"),
    ("builtin:go", "The built-in host as the Go shim"),
    ("builtin:rs", "The built-in host as runtime-rs"),
    (
        "builtin:go@3.19.1",
        "The built-in host as the Go shim at tag 3.19.1",
    ),
    (
        "exec",
        "A real host runtime: the command after `--`, against a kata-sim service",
    ),
    (
        "shim:PATH",
        "An unmodified shim binary (Kata Go, runtime-rs, containerd-shim-runc-v2), driven as containerd drives it",
    ),
];

/// Parses `--driver`: a fixed name, or `shim:PATH`.
#[derive(Debug, Clone, Copy)]
struct DriverParser;

impl clap::builder::TypedValueParser for DriverParser {
    type Value = Driver;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> std::result::Result<Driver, clap::Error> {
        if let Some(path) = value.to_str().and_then(|v| v.strip_prefix("shim:")) {
            if path.is_empty() {
                let mut e = clap::Error::new(clap::error::ErrorKind::InvalidValue).with_cmd(cmd);
                e.insert(
                    clap::error::ContextKind::InvalidValue,
                    clap::error::ContextValue::String("shim:".into()),
                );
                return Err(e);
            }
            return Ok(Driver::Shim(PathBuf::from(path)));
        }
        let names: Vec<&str> = DRIVERS
            .iter()
            .map(|(n, _)| *n)
            .filter(|n| !n.starts_with("shim:"))
            .collect();
        let name = clap::builder::PossibleValuesParser::new(names).parse_ref(cmd, arg, value)?;
        Ok(match name.as_str() {
            "builtin:go" => Driver::BuiltinGo,
            "builtin:rs" => Driver::BuiltinRs,
            "builtin:go@3.19.1" => Driver::BuiltinGo3191,
            "exec" => Driver::Exec,
            _ => Driver::Builtin,
        })
    }

    fn possible_values(
        &self,
    ) -> Option<Box<dyn Iterator<Item = clap::builder::PossibleValue> + '_>> {
        Some(Box::new(DRIVERS.iter().map(|(n, help)| {
            clap::builder::PossibleValue::new(*n).help(*help)
        })))
    }
}

impl Driver {
    fn persona(&self) -> Option<Persona> {
        match self {
            Driver::BuiltinGo => Some(Persona::Go),
            Driver::BuiltinRs => Some(Persona::Rs),
            Driver::BuiltinGo3191 => Some(Persona::Go3191),
            Driver::Builtin | Driver::Exec | Driver::Shim(_) => None,
        }
    }

    fn name(&self) -> String {
        match self {
            Driver::Builtin => "builtin".into(),
            Driver::BuiltinGo => "builtin:go".into(),
            Driver::BuiltinRs => "builtin:rs".into(),
            Driver::BuiltinGo3191 => "builtin:go@3.19.1".into(),
            Driver::Exec => "exec".into(),
            Driver::Shim(p) => format!("shim:{}", p.display()),
        }
    }

    fn shim(&self) -> Option<PathBuf> {
        match self {
            Driver::Shim(p) => Some(p.clone()),
            _ => None,
        }
    }
}

/// How the built-in host reaches the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Transport {
    /// In process, on a paused clock (hangs and delays cost no real time).
    InProcess,
    /// ttrpc over the VM's real agent socket, on the real clock.
    Wire,
}

/// How results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    /// For people.
    Text,
    /// One JSON object per line (shapes in docs/cli.md).
    Json,
}

/// How `run` and `matrix` spread their work: over threads, and over machines.
#[derive(clap::Args, Debug)]
struct Spread {
    /// How many scenarios (matrix: cells) run at once (default: the number of CPUs; `run` with
    /// a `shim:` or `exec` driver: 1). Output, snapshots, JUnit and seeds are a serial run's.
    #[arg(short = 'j', long = "jobs", value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    jobs: Option<u16>,
    /// Run only shard I of N (`--shard 2/4`): the scenarios whose name (the cells whose id)
    /// hashes to it.
    #[arg(long, value_name = "I/N")]
    shard: Option<Shard>,
    /// Write the results here (JSON) for `kata-sim merge`.
    #[arg(long, value_name = "FILE")]
    results: Option<PathBuf>,
}

impl Spread {
    /// The jobs asked for, or `default`.
    fn jobs_or(&self, default: usize) -> usize {
        self.jobs.map_or(default, usize::from)
    }

    fn shard(&self) -> Shard {
        self.shard.unwrap_or(Shard::ALL)
    }
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Serve Kata's remote-hypervisor protocol and a guest agent for every VM it creates,
    /// until Ctrl-C (or SIGTERM).
    Serve {
        /// The remote-hypervisor socket (Kata's `remote_hypervisor_socket`).
        #[arg(long = "hypervisor-socket")]
        hypervisor_socket: PathBuf,
        /// Where VM directories and agent sockets go (default: `vms/` beside the socket).
        #[arg(long = "state-dir")]
        state_dir: Option<PathBuf>,
        /// Every guest behaves as this agent release (e.g. 3.19.1); default: the current agent.
        #[arg(long = "agent-version", default_value_t = AgentVersion::CURRENT)]
        agent_version: AgentVersion,
        /// How long a VM takes to boot, in milliseconds.
        #[arg(long = "boot-time-ms", default_value_t = 10)]
        boot_time_ms: u64,
        /// A fault rule (`StartVM=delay(5s)`, `WaitProcess{sandbox=ID}=hang`). Repeatable.
        #[arg(long = "fault", value_name = "RULE")]
        faults: Vec<Rule>,
        /// The seed of every random choice (fault probabilities, /dev/urandom).
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Serve a fault control socket here (`kata-sim fault ... --control PATH`).
        #[arg(long)]
        control: Option<PathBuf>,
    },
    /// Run scenarios (default: the whole library) and print a summary.
    Run {
        /// Scenario files, directories (searched recursively for .yaml/.yml), or names of
        /// library scenarios (`go-happy-path`).
        #[arg(value_name = "PATH|NAME")]
        targets: Vec<String>,
        /// The scenario library (default: the one built into kata-sim).
        #[arg(long, value_name = "DIR")]
        library: Option<PathBuf>,
        /// Which host runtime runs them.
        #[arg(long, value_parser = DriverParser, default_value = "builtin")]
        driver: Driver,
        /// Run every scenario with this seed instead of its own.
        #[arg(long)]
        seed: Option<u64>,
        /// Write JUnit XML here (checked writable before anything runs).
        #[arg(long, value_name = "FILE")]
        junit: Option<PathBuf>,
        /// How the built-in host reaches the guest.
        #[arg(long, value_enum, default_value_t = Transport::InProcess)]
        transport: Transport,
        /// Run every scenario with this agent release (e.g. 3.19.1 to match a Go shim 3.19.1
        /// under `--driver exec`).
        #[arg(long = "agent-version")]
        agent_version: Option<AgentVersion>,
        /// The real time one scenario may take, in seconds (built-in driver; over the wire it
        /// also caps each step and the teardown). Default: 120.
        #[arg(long, value_name = "SECS", value_parser = parse_secs)]
        timeout: Option<Duration>,
        /// How results are printed.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
        /// Hold each outcome against `DIR/<scenario>.snap` (insta's format; a missing one is
        /// written, a changed one goes to `.snap.new` and fails the run).
        #[arg(long, value_name = "DIR")]
        snapshots: Option<PathBuf>,
        /// With `--driver shim:PATH` (a Kata shim): a drop-in merged over the configuration
        /// kata-sim writes from each scenario (installed as `config.d/50-user.toml`).
        #[arg(long = "runtime-config", value_name = "FILE")]
        runtime_config: Option<PathBuf>,
        /// With `--driver shim:PATH`: the containers' rootfs (default: one made from the host's
        /// static busybox).
        #[arg(long, value_name = "DIR")]
        rootfs: Option<PathBuf>,
        #[command(flatten)]
        spread: Spread,
        /// With `--driver exec`: the host runtime's command, e.g. `-- ctr run ...`.
        #[arg(last = true)]
        command: Vec<String>,
    },
    /// Run every agent RPC and VM operation of a lifecycle under every fault that applies, in
    /// every phase, and classify what the host did (a table, JSON lines, an HTML heat map).
    Matrix {
        /// The persona whose host runs the cells.
        #[arg(long, value_parser = persona_parser(), default_value = "go")]
        persona: Persona,
        /// The fault-free lifecycle to fault (a file or a library name; default
        /// `go-term-copied`, or `rs-term-copied` for rs).
        #[arg(long, value_name = "PATH|NAME")]
        base: Option<String>,
        /// The scenario library, for a name (default: the one built into kata-sim).
        #[arg(long, value_name = "DIR")]
        library: Option<PathBuf>,
        #[command(flatten)]
        spread: Spread,
        /// Write the HTML report into this directory (`index.html`, `cells/`).
        #[arg(long, value_name = "DIR")]
        html: Option<PathBuf>,
        /// How the cells are printed (`json`: one object per cell).
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// Which cells of the fault matrix a scenario library covers (its scenarios of one
    /// persona, run; a cell is covered when one of their faults fires on that call in that
    /// phase).
    Coverage {
        /// Scenario files or directories (default: the library).
        paths: Vec<PathBuf>,
        /// The scenario library used when no path is given (default: the built-in one).
        #[arg(long, value_name = "DIR")]
        library: Option<PathBuf>,
        /// The persona: its scenarios count, against its matrix.
        #[arg(long, value_parser = persona_parser(), default_value = "go")]
        persona: Persona,
        /// The matrix's base lifecycle (as `matrix --base`).
        #[arg(long, value_name = "PATH|NAME")]
        base: Option<String>,
        /// How the cells are printed (`json`: one object per cell).
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// Reduce a scenario that fails for a seed to a minimal deterministic one that still fails
    /// the same expectation, and write it as a regression file.
    Shrink {
        /// The scenario file, or the name of a library scenario.
        #[arg(value_name = "PATH|NAME")]
        scenario: String,
        /// The seed it fails for.
        #[arg(long)]
        seed: u64,
        /// The scenario library, for a name (default: the one built into kata-sim).
        #[arg(long, value_name = "DIR")]
        library: Option<PathBuf>,
        /// Where to write it (default: `NAME-seed-N.yaml` in the current directory).
        #[arg(short, long, value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Combine the results of `--shard I/N` runs (`--results FILE` of each) into the report
    /// one machine would have produced.
    Merge {
        /// The shards' results files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Write the merged JUnit XML here (runs).
        #[arg(long, value_name = "FILE")]
        junit: Option<PathBuf>,
        /// Write the merged results here.
        #[arg(long, value_name = "FILE")]
        results: Option<PathBuf>,
        /// Write the merged HTML report into this directory (matrices).
        #[arg(long, value_name = "DIR")]
        html: Option<PathBuf>,
        /// How the merged report is printed.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// List the library's scenarios: name, persona, description.
    List {
        /// The scenario library (default: the one built into kata-sim).
        #[arg(long, value_name = "DIR")]
        library: Option<PathBuf>,
        /// How the list is printed.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// Run one scenario and print its calls (or a Mermaid sequence diagram of them).
    Trace {
        /// The scenario file, or the name of a library scenario.
        #[arg(value_name = "PATH|NAME")]
        scenario: String,
        /// The scenario library, for a name (default: the one built into kata-sim).
        #[arg(long, value_name = "DIR")]
        library: Option<PathBuf>,
        /// Print a Mermaid sequence diagram (host, hypervisor, agent; faults as notes).
        #[arg(long, conflicts_with = "format")]
        mermaid: bool,
        /// Which host runtime runs it.
        #[arg(long, value_parser = DriverParser, default_value = "builtin")]
        driver: Driver,
        /// Run it with this seed instead of its own.
        #[arg(long)]
        seed: Option<u64>,
        /// Run it with this agent release.
        #[arg(long = "agent-version")]
        agent_version: Option<AgentVersion>,
        /// How the calls are printed (`json`: one object per call).
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
        /// With `--driver exec`: the host runtime's command.
        #[arg(last = true)]
        command: Vec<String>,
    },
    /// Where two host runtimes' agent calls for one scenario diverge (exit 1 if they do).
    Diff {
        /// The two drivers, e.g. `--driver builtin:go --driver builtin:rs`.
        #[arg(long = "driver", value_parser = DriverParser, required = true)]
        drivers: Vec<Driver>,
        /// The scenario file, or the name of a library scenario.
        #[arg(value_name = "PATH|NAME")]
        scenario: String,
        /// The scenario library, for a name (default: the one built into kata-sim).
        #[arg(long, value_name = "DIR")]
        library: Option<PathBuf>,
        /// Run both with this agent release.
        #[arg(long = "agent-version")]
        agent_version: Option<AgentVersion>,
        /// The real time a `shim:` side may take, in seconds (it also caps each step and the
        /// teardown). Default: the shim driver's 600.
        #[arg(long, value_name = "SECS", value_parser = parse_secs)]
        timeout: Option<Duration>,
        /// The host runtime's command, for an `exec` driver.
        #[arg(last = true)]
        command: Vec<String>,
    },
    /// Print the JSON Schema of scenario files (for editor completion).
    Schema,
    /// Validate scenario files without running them (default: the library).
    Check {
        /// Scenario files or directories (searched recursively for .yaml/.yml).
        paths: Vec<PathBuf>,
        /// The scenario library checked when no path is given (default: the built-in one).
        #[arg(long, value_name = "DIR")]
        library: Option<PathBuf>,
        /// How results are printed (`json`: one object per file).
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// Change the faults of a running `kata-sim serve` / `sim-agent serve` through its control
    /// socket.
    Fault {
        /// The control socket.
        #[arg(long, global = true)]
        control: Option<PathBuf>,
        /// Give up after this many seconds without an answer (a socket that is not a control
        /// socket never answers).
        #[arg(long, global = true, default_value_t = 5.0)]
        timeout: f64,
        #[command(subcommand)]
        op: FaultOp,
    },
    /// Print a shell completion script (e.g. `kata-sim completions bash > /etc/bash_completion.d/kata-sim`).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

#[derive(Subcommand, Debug)]
enum FaultOp {
    /// Install a rule; prints its id.
    Add {
        /// The rule, e.g. `GetDiagnosticData=error(UNAVAILABLE,"guest busy")`.
        rule: Rule,
    },
    /// Remove a rule by id.
    Remove {
        /// The rule id.
        id: u64,
    },
    /// List the installed rules.
    List {
        /// How the rules are printed (`json`: one `{"id", "rule"}` per line).
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// Remove every rule.
    Clear,
    /// List the faults that fired so far.
    Fired {
        /// How they are printed (`json`: one `{"rule", "target", "action"}` per line).
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
}

/// Why the command stops early: its exit code and the message (if any) to print.
#[derive(Debug)]
struct Exit {
    code: u8,
    error: Option<anyhow::Error>,
}

const BAD_INPUT: u8 = 2;
const NO_SCENARIOS: u8 = 4;
const INTERNAL: u8 = 101;

impl Exit {
    fn bad(e: impl Into<anyhow::Error>) -> Exit {
        Exit {
            code: BAD_INPUT,
            error: Some(e.into()),
        }
    }

    fn internal(e: impl Into<anyhow::Error>) -> Exit {
        Exit {
            code: INTERNAL,
            error: Some(e.into()),
        }
    }

    /// An exit with this code whose message was printed already.
    fn quiet(code: u8) -> Exit {
        Exit { code, error: None }
    }
}

type Result<T, E = Exit> = std::result::Result<T, E>;

/// `println!` that ends the command quietly (exit 0) when stdout is a closed pipe
/// (`kata-sim trace ... | head`), and as an internal error on any other write error.
macro_rules! outln {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = writeln!(std::io::stdout(), $($t)*) {
            return Err(stdout_error(e));
        }
    }};
}

/// `print!`, as [`outln!`].
macro_rules! out {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = write!(std::io::stdout(), $($t)*) {
            return Err(stdout_error(e));
        }
    }};
}

/// A failed write to stdout: a reader that went away ends the command quietly, as `head`
/// expects of a producer; anything else is an error.
fn stdout_error(e: std::io::Error) -> Exit {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        Exit {
            code: 0,
            error: None,
        }
    } else {
        Exit {
            code: INTERNAL,
            error: Some(anyhow::anyhow!("writing to stdout: {e}")),
        }
    }
}

trait OrExit<T> {
    /// The user's mistake: exit 2.
    fn or_bad(self) -> Result<T>;
    /// Not the user's: exit 101.
    fn or_internal(self) -> Result<T>;
}

impl<T, E: Into<anyhow::Error>> OrExit<T> for std::result::Result<T, E> {
    fn or_bad(self) -> Result<T> {
        self.map_err(Exit::bad)
    }
    fn or_internal(self) -> Result<T> {
        self.map_err(Exit::internal)
    }
}

/// The output settings every command shares.
#[derive(Debug, Clone, Copy)]
struct Ui {
    color: ColorWhen,
    quiet: bool,
    verbose: u8,
}

impl Ui {
    /// Whether to colour what goes to a stream that is (or is not) a terminal.
    fn color(self, terminal: bool) -> bool {
        match self.color {
            ColorWhen::Always => true,
            ColorWhen::Never => false,
            ColorWhen::Auto => {
                terminal && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
            }
        }
    }

    /// Logs to stderr at `base` (`warn`, `info`) moved by -q/-v; RUST_LOG overrides.
    fn init_logging(self, base: usize) {
        const LEVELS: [&str; 5] = ["error", "warn", "info", "debug", "trace"];
        let level = if self.quiet {
            0
        } else {
            (base + usize::from(self.verbose)).min(LEVELS.len() - 1)
        };
        tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(LEVELS[level])),
            )
            .with_writer(std::io::stderr)
            .with_ansi(self.color(std::io::stderr().is_terminal()))
            .init();
    }
}

fn main() -> ExitCode {
    // Usage errors exit 2 (clap's own), --help and --version 0.
    let cli = Cli::parse();
    let ui = Ui {
        color: cli.color,
        quiet: cli.quiet,
        verbose: cli.verbose,
    };
    match dispatch(cli.command, ui) {
        Ok(code) => code,
        Err(Exit { code, error }) => {
            if let Some(e) = error {
                print_error(&e);
            }
            ExitCode::from(code)
        }
    }
}

/// One `error: ...` (never `Error: error:`), its causes after colons.
fn print_error(e: &anyhow::Error) {
    let text = format!("{e:#}");
    if text.starts_with("error: ") {
        eprintln!("{text}");
    } else {
        eprintln!("error: {text}");
    }
}

fn dispatch(command: Command, ui: Ui) -> Result<ExitCode> {
    match command {
        Command::Serve {
            hypervisor_socket,
            state_dir,
            agent_version,
            boot_time_ms,
            faults,
            seed,
            control,
        } => {
            ui.init_logging(2);
            let opts = ServeOptions {
                hypervisor_socket,
                state_dir,
                agent_version,
                boot_time: Duration::from_millis(boot_time_ms),
                faults: faults.iter().map(ToString::to_string).collect(),
                seed,
                control,
            };
            let rt = runtime()?;
            let state = rt.block_on(serve(&opts));
            // Every deletion the shutdown started has finished once the runtime is gone; the
            // state directory's last sweep runs after that.
            drop(rt);
            drop(state.or_bad()?);
            tracing::info!("stopped; sockets removed");
            Ok(ExitCode::SUCCESS)
        }
        Command::Fault {
            control,
            timeout,
            op,
        } => {
            ui.init_logging(2);
            runtime()?.block_on(fault(control, timeout, op))
        }
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "kata-sim",
                &mut std::io::stdout(),
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Schema => {
            out!("{}", kata_sim::schema::json_schema());
            Ok(ExitCode::SUCCESS)
        }
        Command::List { library, format } => {
            ui.init_logging(1);
            list(library.as_deref(), format)
        }
        Command::Check {
            paths,
            library,
            format,
        } => {
            ui.init_logging(1);
            check(&paths, library.as_deref(), format)
        }
        Command::Run {
            targets,
            library,
            driver,
            seed,
            junit,
            transport,
            agent_version,
            timeout,
            format,
            snapshots,
            runtime_config,
            rootfs,
            spread,
            command,
        } => {
            ui.init_logging(1);
            // A real runtime's state is the host's: one at a time unless asked.
            let serial = matches!(driver, Driver::Shim(_) | Driver::Exec);
            let jobs = spread.jobs_or(if serial {
                1
            } else {
                kata_sim::pool::default_jobs()
            });
            let shim = shim_options(&driver, runtime_config, rootfs, timeout)?;
            let overrides = Overrides {
                persona: driver.persona(),
                seed,
                exec: exec_command(&driver, command)?,
                shim,
                snapshots,
                wire: transport == Transport::Wire,
                agent_version,
                timeout,
            };
            run(
                &targets,
                library.as_deref(),
                &overrides,
                RunOutputs {
                    junit: junit.as_deref(),
                    results: spread.results.as_deref(),
                    format,
                    jobs,
                    shard: spread.shard(),
                },
                ui,
            )
        }
        Command::Matrix {
            persona,
            base,
            library,
            spread,
            html,
            format,
        } => {
            ui.init_logging(1);
            matrix(&spread, html.as_deref(), format, ui, || {
                matrix_plan(persona, base.as_deref(), library.as_deref())
            })
        }
        Command::Coverage {
            paths,
            library,
            persona,
            base,
            format,
        } => {
            ui.init_logging(1);
            coverage(&paths, library.as_deref(), persona, base.as_deref(), format)
        }
        Command::Shrink {
            scenario,
            seed,
            library,
            output,
        } => {
            ui.init_logging(1);
            shrink(&scenario, seed, library.as_deref(), output.as_deref())
        }
        Command::Merge {
            files,
            junit,
            results,
            html,
            format,
        } => {
            ui.init_logging(1);
            merge(
                &files,
                junit.as_deref(),
                results.as_deref(),
                html.as_deref(),
                format,
                ui,
            )
        }
        Command::Trace {
            scenario,
            library,
            mermaid,
            driver,
            seed,
            agent_version,
            format,
            command,
        } => {
            ui.init_logging(1);
            let overrides = Overrides {
                persona: driver.persona(),
                seed,
                exec: exec_command(&driver, command)?,
                shim: shim_options(&driver, None, None, None)?,
                agent_version,
                ..Default::default()
            };
            trace(&scenario, library.as_deref(), &overrides, mermaid, format)
        }
        Command::Diff {
            drivers,
            scenario,
            library,
            agent_version,
            timeout,
            command,
        } => {
            ui.init_logging(1);
            diff(
                &drivers,
                &scenario,
                library.as_deref(),
                agent_version,
                timeout,
                command,
            )
        }
    }
}

fn parse_secs(s: &str) -> std::result::Result<Duration, String> {
    s.parse::<f64>()
        .ok()
        .and_then(|secs| Duration::try_from_secs_f64(secs).ok())
        .filter(|d| !d.is_zero())
        .ok_or_else(|| format!("{s:?} is not a positive number of seconds"))
}

/// The shim driver's options (its flags refused with another driver).
fn shim_options(
    driver: &Driver,
    runtime_config: Option<PathBuf>,
    rootfs: Option<PathBuf>,
    timeout: Option<Duration>,
) -> Result<Option<kata_sim::shim::ShimOptions>> {
    let Some(binary) = driver.shim() else {
        if runtime_config.is_some() || rootfs.is_some() {
            return Err(Exit::bad(anyhow::anyhow!(
                "--runtime-config and --rootfs need --driver shim:PATH"
            )));
        }
        return Ok(None);
    };
    if !binary.is_file() {
        return Err(Exit::bad(anyhow::anyhow!(
            "--driver shim:{}: no such file",
            binary.display()
        )));
    }
    let mut o = kata_sim::shim::ShimOptions::new(binary);
    o.runtime_config = runtime_config;
    o.rootfs = rootfs;
    if let Some(t) = timeout {
        o.limits.real = t;
        o.limits.step = o.limits.step.min(t);
        o.limits.teardown = o.limits.teardown.min(t);
    }
    Ok(Some(o.identify()))
}

/// The `exec` driver's command (required with it, refused without it).
fn exec_command(driver: &Driver, command: Vec<String>) -> Result<Option<Vec<String>>> {
    match (driver, command.is_empty()) {
        (Driver::Exec, true) => Err(Exit::bad(anyhow::anyhow!(
            "--driver exec needs the host runtime's command after --"
        ))),
        (Driver::Exec, false) => Ok(Some(command)),
        (_, true) => Ok(None),
        (_, false) => Err(Exit::bad(anyhow::anyhow!(
            "a command after -- needs --driver exec"
        ))),
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")
        .or_internal()
}

/// `kata-sim serve` until SIGINT or SIGTERM; returns the state directory to release.
async fn serve(opts: &ServeOptions) -> anyhow::Result<kata_sim::serve::StateDir> {
    use tokio::signal::unix::{SignalKind, signal};
    // Before anything is created: a signal from now on is a clean shutdown.
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let serving = start(opts).await?;
    tracing::info!(agent_version = %opts.agent_version, seed = opts.seed, rules = opts.faults.len(), "kata-sim serving; Ctrl-C or SIGTERM to stop");
    let signal = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    tracing::info!(signal, "shutting down");
    Ok(serving.shutdown().await)
}

async fn fault(control: Option<PathBuf>, timeout: f64, op: FaultOp) -> Result<ExitCode> {
    use sim_agent::fault::control::{self, Request, Response};
    let control = control.context("--control PATH is required").or_bad()?;
    let mut format = Format::Text;
    let req = match op {
        FaultOp::Add { rule } => Request::Add {
            rule: rule.to_string(),
        },
        FaultOp::Remove { id } => Request::Remove { id },
        FaultOp::List { format: f } => {
            format = f;
            Request::List
        }
        FaultOp::Clear => Request::Clear,
        FaultOp::Fired { format: f } => {
            format = f;
            Request::Fired
        }
    };
    let timeout = Duration::try_from_secs_f64(timeout)
        .ok()
        .filter(|t| !t.is_zero())
        .context("--timeout must be a positive number of seconds")
        .or_bad()?;
    match control::request_within(&control, &req, timeout)
        .await
        .or_bad()?
    {
        Response::Added { id } => outln!("{id}"),
        Response::Rules { rules } => {
            for r in rules {
                match format {
                    Format::Text => outln!("rule {} {}", r.id, r.rule),
                    Format::Json => outln!("{}", to_json(&r)?),
                }
            }
        }
        Response::Fired { fired, dropped } => {
            if dropped > 0 && format == Format::Text {
                outln!("({dropped} older faults fired and are no longer kept)");
            }
            for f in fired {
                match format {
                    Format::Text => outln!("fired {} {} {}", f.rule, f.target, f.action),
                    Format::Json => outln!("{}", to_json(&f)?),
                }
            }
        }
        Response::Removed { .. } | Response::Cleared | Response::Error { .. } => {}
    }
    Ok(ExitCode::SUCCESS)
}

fn to_json<T: serde::Serialize>(v: &T) -> Result<String> {
    serde_json::to_string(v).or_internal()
}

/// The library's sources: `--library DIR`, or the scenarios built into the binary.
fn library_sources(library: Option<&Path>) -> Result<Vec<Source>> {
    match library {
        None => Ok(runner::bundled()),
        Some(dir) => {
            let files = runner::find(&[dir.to_path_buf()])
                .context("--library")
                .or_bad()?;
            Ok(files.into_iter().map(Source::file).collect())
        }
    }
}

fn library_label(library: Option<&Path>) -> String {
    library.map_or_else(
        || "the bundled library".to_owned(),
        |d| format!("the library {}", d.display()),
    )
}

/// What `run`, `trace` and `diff` targets name: a path that exists, else a library scenario
/// by name (a word without `/` or a .yaml/.yml ending), else a path (which then does not
/// exist: an error).
fn resolve(targets: &[String], library: Option<&Path>) -> Result<Vec<Source>> {
    if targets.is_empty() {
        return library_sources(library);
    }
    let mut lib: Option<Vec<Loaded>> = None;
    let mut out: Vec<Source> = Vec::new();
    let mut searched = Vec::new();
    // In the order given: each path's files (sorted), each name's library scenario.
    for t in targets {
        let path = Path::new(t);
        let is_name = !path.exists() && !t.contains('/') && !runner::is_scenario_file(path);
        if !is_name {
            searched.push(PathBuf::from(t));
            for f in runner::find(&[PathBuf::from(t)]).or_bad()? {
                if !out.iter().any(|s| s.file == f) {
                    out.push(Source::file(f));
                }
            }
            continue;
        }
        if lib.is_none() {
            lib = Some(runner::load_all(&library_sources(library)?));
        }
        let loaded = lib.as_deref().unwrap_or_default();
        match runner::by_name(loaded, t) {
            Ok(source) => out.push(source),
            Err(near) => {
                let hint = match near.as_slice() {
                    [] => String::new(),
                    [one] => format!("; did you mean {one:?}?"),
                    many => format!(
                        "; did you mean one of {}?",
                        many.iter()
                            .map(|n| format!("{n:?}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                };
                return Err(Exit::bad(anyhow::anyhow!(
                    "no scenario named {t:?} in {} and no such file{hint} (`kata-sim list` lists them)",
                    library_label(library)
                )));
            }
        }
    }
    if out.is_empty() {
        return Err(no_scenarios(&searched));
    }
    Ok(out)
}

fn no_scenarios(paths: &[PathBuf]) -> Exit {
    let names: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    Exit {
        code: NO_SCENARIOS,
        error: Some(anyhow::anyhow!(
            "no scenarios: no .yaml or .yml file under {}",
            names.join(", ")
        )),
    }
}

fn list(library: Option<&Path>, format: Format) -> Result<ExitCode> {
    let sources = library_sources(library)?;
    if sources.is_empty() {
        return Err(no_scenarios(&[library.map_or_else(
            || PathBuf::from(runner::BUNDLED_DIR),
            Path::to_path_buf,
        )]));
    }
    let loaded = runner::load_all(&sources);
    let width = loaded
        .iter()
        .filter_map(|l| l.scenario.as_ref().ok().map(|s| s.name.len()))
        .max()
        .unwrap_or(4);
    let mut bad = false;
    let mut out = std::io::stdout().lock();
    for l in &loaded {
        match &l.scenario {
            Ok(s) => {
                let line = match format {
                    Format::Text => {
                        let persona = s.config.persona.name().to_string();
                        let description = s.description.lines().next().unwrap_or_default();
                        format!("{:<width$}  {persona:<2}  {description}", s.name)
                    }
                    Format::Json => to_json(&serde_json::json!({
                        "name": s.name,
                        "persona": s.config.persona,
                        "description": s.description,
                        "file": l.source.file.display().to_string(),
                    }))?,
                };
                let _ = writeln!(out, "{}", line.trim_end());
            }
            Err(e) => {
                bad = true;
                eprintln!("{e}\n");
            }
        }
    }
    Ok(if bad {
        ExitCode::from(BAD_INPUT)
    } else {
        ExitCode::SUCCESS
    })
}

fn check(paths: &[PathBuf], library: Option<&Path>, format: Format) -> Result<ExitCode> {
    let sources = if paths.is_empty() {
        library_sources(library)?
    } else {
        let files = runner::find(paths).or_bad()?;
        files.into_iter().map(Source::file).collect()
    };
    if sources.is_empty() {
        return Err(no_scenarios(paths));
    }
    let loaded = runner::load_all(&sources);
    let mut bad = 0;
    for l in &loaded {
        let file = l.source.file.display().to_string();
        match (&l.scenario, format) {
            (Ok(s), Format::Text) => outln!("ok      {file} ({})", s.name),
            (Ok(s), Format::Json) => {
                outln!(
                    "{}",
                    to_json(&serde_json::json!({"file": file, "name": s.name}))?
                );
            }
            (Err(e), Format::Text) => {
                bad += 1;
                eprintln!("{e}\n");
            }
            (Err(e), Format::Json) => {
                bad += 1;
                outln!(
                    "{}",
                    to_json(
                        &serde_json::json!({"file": file, "error": runner::load_error_json(e)})
                    )?
                );
            }
        }
    }
    if format == Format::Text {
        outln!("{} of {} valid", loaded.len() - bad, loaded.len());
    }
    Ok(if bad > 0 {
        ExitCode::from(BAD_INPUT)
    } else {
        ExitCode::SUCCESS
    })
}

/// The live progress line on stderr: redrawn in place on a terminal; elsewhere a line after
/// 1, 2, 4, ... 64 s of a scenario, then every minute.
struct ProgressLine {
    terminal: bool,
    quiet: bool,
    color: bool,
    /// The next elapsed second at which a non-terminal prints a line.
    next_report: u64,
    drawn: bool,
}

impl ProgressLine {
    fn clear(&mut self) {
        if self.drawn {
            eprint!("\r\x1b[K");
            self.drawn = false;
        }
    }

    fn on(&mut self, p: Progress<'_>) {
        if self.quiet {
            return;
        }
        match p {
            Progress::Started { index, total, name } => {
                self.next_report = 1;
                if self.terminal {
                    eprint!("\r\x1b[K[{:>3}/{total}] {name} ...", index + 1);
                    self.drawn = true;
                }
            }
            Progress::Running {
                index,
                total,
                name,
                elapsed,
                waiting_on,
            } => {
                let secs = elapsed.as_secs();
                let waiting = waiting_on
                    .map(|c| format!(", waiting on {c}"))
                    .unwrap_or_default();
                if self.terminal {
                    eprint!(
                        "\r\x1b[K[{:>3}/{total}] {name}: running for {secs} s{waiting}",
                        index + 1
                    );
                    self.drawn = true;
                } else if secs >= self.next_report {
                    eprintln!(
                        "[{:>3}/{total}] {name}: running for {secs} s{waiting}",
                        index + 1
                    );
                    self.next_report = if secs < 64 {
                        (secs * 2).max(1)
                    } else {
                        secs + 60
                    };
                }
            }
            Progress::Finished {
                index,
                total,
                report,
            } => {
                self.clear();
                use anstyle::AnsiColor;
                let (word, style) = match report.verdict() {
                    Verdict::Ok => ("ok     ", AnsiColor::Green.on_default()),
                    Verdict::Failed => ("FAILED ", AnsiColor::Red.on_default().bold()),
                    Verdict::Invalid => ("INVALID", AnsiColor::Red.on_default().bold()),
                    Verdict::Skipped => ("SKIPPED", AnsiColor::Yellow.on_default()),
                };
                let word = if self.color {
                    format!("{style}{word}{style:#}")
                } else {
                    word.to_owned()
                };
                eprintln!(
                    "[{:>3}/{total}] {word} {}",
                    index + 1,
                    report.file.display()
                );
            }
        }
        let _ = std::io::stderr().flush();
    }
}

/// Where and how `run` reports.
struct RunOutputs<'a> {
    junit: Option<&'a Path>,
    results: Option<&'a Path>,
    format: Format,
    jobs: usize,
    shard: Shard,
}

/// A file that must be writable before anything runs.
fn create_now(path: Option<&Path>, flag: &str) -> Result<Option<(PathBuf, std::fs::File)>> {
    path.map(|p| {
        std::fs::File::create(p)
            .with_context(|| format!("{flag} {}: cannot write", p.display()))
            .or_bad()
            .map(|f| (p.to_path_buf(), f))
    })
    .transpose()
}

fn write_to(file: Option<(PathBuf, std::fs::File)>, text: &str) -> Result<()> {
    if let Some((path, mut f)) = file {
        f.write_all(text.as_bytes())
            .with_context(|| format!("writing {}", path.display()))
            .or_internal()?;
    }
    Ok(())
}

fn run(
    targets: &[String],
    library: Option<&Path>,
    o: &Overrides,
    outputs: RunOutputs<'_>,
    ui: Ui,
) -> Result<ExitCode> {
    let format = outputs.format;
    // Before anything runs: an output path that cannot be written is an error now.
    let junit_file = create_now(outputs.junit, "--junit")?;
    let results_file = create_now(outputs.results, "--results")?;
    let sources = resolve(targets, library)?;
    if sources.is_empty() {
        return Err(no_scenarios(&[library.map_or_else(
            || PathBuf::from(runner::BUNDLED_DIR),
            Path::to_path_buf,
        )]));
    }
    // SIGTERM/SIGINT stop the run after (or at) the current scenario; what finished is
    // reported. The exec driver stops its command cleanly too.
    kata_sim::exec::stop_on_signals()
        .context("installing the signal handlers")
        .or_internal()?;
    let all = runner::load_all(&sources);
    let total = all.len();
    // A shard's scenarios, by a stable hash of the name (of the file, for one that does not
    // load), each with its place in the whole run.
    let (positions, loaded): (Vec<usize>, Vec<Loaded>) = all
        .into_iter()
        .enumerate()
        .filter(|(_, l)| outputs.shard.selects(&shard_key(l)))
        .unzip();
    let stderr_terminal = std::io::stderr().is_terminal();
    let mut line = ProgressLine {
        terminal: stderr_terminal,
        quiet: ui.quiet,
        color: ui.color(stderr_terminal),
        next_report: 1,
        drawn: false,
    };
    let stop = || kata_sim::exec::interrupted().map(|s| format!("interrupted by {s}"));
    let mut json_error = None;
    // Each report's row (its rendered outputs) is made once, as it finishes.
    let mut rows: Vec<Row> = Vec::with_capacity(positions.len());
    let reports = runner::run_all(loaded, o, outputs.jobs, &stop, &mut |p| {
        if let Progress::Finished { index, report, .. } = &p {
            let row = Row::of(positions[*index], report);
            if format == Format::Json {
                match serde_json::to_string(&row.json) {
                    // A reader that went away mid-run loses these lines, not the run (its
                    // JUnit and exit code still follow).
                    Ok(j) => {
                        use std::io::Write as _;
                        let _ = writeln!(std::io::stdout(), "{j}");
                    }
                    Err(e) => json_error = Some(e),
                }
            }
            rows.push(row);
        }
        line.on(p);
    });
    if let Some(e) = json_error {
        return Err(Exit::internal(e));
    }
    if format == Format::Text {
        print_run(&rows, ui)?;
    }
    write_to(junit_file, &run_junit(&rows))?;
    let results = Results {
        version: kata_sim::shard::VERSION,
        shard: outputs.shard,
        total,
        body: Body::Run { rows },
    };
    write_to(results_file, &to_json(&results)?)?;
    if let Some(sig) = kata_sim::exec::interrupted() {
        let ran = reports
            .iter()
            .filter(|r| r.verdict() != Verdict::Skipped)
            .count();
        eprintln!(
            "interrupted by {sig}: {ran} of {} scenarios run",
            reports.len()
        );
        return Err(Exit::quiet(128 + sig as u8));
    }
    Ok(exit_of(&reports))
}

/// What a scenario is sharded by: its name, or its file's when it does not load.
fn shard_key(l: &Loaded) -> String {
    match &l.scenario {
        Ok(s) => s.name.clone(),
        Err(_) => l.source.file.display().to_string(),
    }
}

/// The summary on stdout, the failures on stderr.
fn print_run(rows: &[Row], ui: Ui) -> Result<()> {
    out!(
        "{}",
        runner::summary_of_rows(rows, ui.color(std::io::stdout().is_terminal()))
    );
    let failures: String = rows.iter().map(|r| r.failure.as_str()).collect();
    if !failures.is_empty() {
        eprint!("\n{failures}");
    }
    Ok(())
}

fn run_junit(rows: &[Row]) -> String {
    let cases: Vec<kata_sim::junit::Case> = rows.iter().map(|r| r.junit.clone()).collect();
    kata_sim::junit::render_cases(&cases, &kata_sim::junit::hostname())
}

/// 2 if a file did not load, else 1 if a scenario failed, else 0 (of rows).
fn exit_of_rows(rows: &[Row]) -> ExitCode {
    match rows.iter().map(|r| r.verdict).max() {
        Some(Verdict::Invalid) => ExitCode::from(BAD_INPUT),
        Some(Verdict::Failed | Verdict::Skipped) => ExitCode::FAILURE,
        Some(Verdict::Ok) | None => ExitCode::SUCCESS,
    }
}

fn persona_parser() -> impl clap::builder::TypedValueParser<Value = Persona> {
    use clap::builder::TypedValueParser as _;
    clap::builder::PossibleValuesParser::new(Persona::ALL.map(Persona::name)).map(|s| {
        Persona::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .unwrap_or_default()
    })
}

/// The matrix's base: `--base`, or the persona's default from the library.
fn matrix_plan(
    persona: Persona,
    base: Option<&str>,
    library: Option<&Path>,
) -> Result<kata_sim::matrix::Plan> {
    let name = base.unwrap_or_else(|| kata_sim::matrix::default_base(persona));
    let (_, scenario) = one_scenario(name, library)?;
    kata_sim::matrix::plan(scenario, persona).or_bad()
}

/// `kata-sim matrix`: the results file is checked writable before `plan` runs anything.
fn matrix(
    spread: &Spread,
    html: Option<&Path>,
    format: Format,
    ui: Ui,
    plan: impl FnOnce() -> Result<kata_sim::matrix::Plan>,
) -> Result<ExitCode> {
    let results_file = create_now(spread.results.as_deref(), "--results")?;
    let plan = &plan()?;
    let (jobs, shard) = (
        spread.jobs_or(kata_sim::pool::default_jobs()),
        spread.shard(),
    );
    let total = plan.cells.len();
    // The live line only on a terminal.
    let quiet = ui.quiet || !std::io::stderr().is_terminal();
    let mut done = 0usize;
    let mut json_error = None;
    let cells = kata_sim::matrix::run(plan, jobs, shard, &mut |c| {
        done += 1;
        if format == Format::Json {
            match serde_json::to_string(&kata_sim::matrix::cell_json(c)) {
                Ok(j) => {
                    let _ = writeln!(std::io::stdout(), "{j}");
                }
                Err(e) => json_error = Some(e),
            }
        }
        if !quiet {
            eprint!("\r\x1b[K[{done}] {}", c.id);
        }
    });
    if !quiet {
        eprint!("\r\x1b[K");
    }
    if let Some(e) = json_error {
        return Err(Exit::internal(e));
    }
    let results = Results {
        version: kata_sim::shard::VERSION,
        shard,
        total,
        body: Body::Matrix {
            header: plan.header.clone(),
            cells,
        },
    };
    report_matrix(&results, html, format)?;
    write_to(results_file, &to_json(&results)?)?;
    Ok(ExitCode::SUCCESS)
}

/// A matrix's table (text) and HTML report.
fn report_matrix(results: &Results, html: Option<&Path>, format: Format) -> Result<()> {
    let Body::Matrix { header, cells } = &results.body else {
        return Ok(());
    };
    if format == Format::Text {
        out!("{}", kata_sim::matrix::table(header, cells));
    }
    if let Some(dir) = html {
        let index = kata_sim::matrix::write_html(dir, header, cells)
            .with_context(|| format!("--html {}", dir.display()))
            .or_bad()?;
        eprintln!("HTML report: {}", index.display());
    }
    Ok(())
}

fn coverage(
    paths: &[PathBuf],
    library: Option<&Path>,
    persona: Persona,
    base: Option<&str>,
    format: Format,
) -> Result<ExitCode> {
    let plan = matrix_plan(persona, base, library)?;
    let sources = if paths.is_empty() {
        library_sources(library)?
    } else {
        runner::find(paths)
            .or_bad()?
            .into_iter()
            .map(Source::file)
            .collect()
    };
    let loaded = runner::load_all(&sources);
    let mut scenarios = Vec::new();
    for l in loaded {
        match l.scenario {
            Ok(s) if s.config.persona == persona => scenarios.push((l.source, s)),
            Ok(_) => {}
            Err(e) => return Err(Exit::bad(e)),
        }
    }
    if scenarios.is_empty() {
        return Err(Exit {
            code: NO_SCENARIOS,
            error: Some(anyhow::anyhow!(
                "no scenarios of persona {persona} to measure"
            )),
        });
    }
    let o = Overrides::default();
    let stop = || None;
    let mut by: std::collections::BTreeMap<kata_sim::matrix::Covered, Vec<String>> =
        std::collections::BTreeMap::new();
    for (source, s) in scenarios {
        let name = s.name.clone();
        let r = runner::run_scenario(&source.file, s.clone(), &o, &stop, &mut |_, _| {});
        if let Some(outcome) = &r.outcome {
            for c in kata_sim::matrix::covered(&s, outcome) {
                by.entry(c).or_default().push(name.clone());
            }
        }
    }
    let mut covered = 0;
    let mut rows = Vec::new();
    for c in &plan.cells {
        let key = kata_sim::matrix::Covered {
            phase: c.phase,
            op: c.op,
            fault: kata_sim::matrix::FAULTS[c.fault].label,
        };
        let names = by.get(&key).cloned().unwrap_or_default();
        if !names.is_empty() {
            covered += 1;
        }
        rows.push((c, names));
    }
    match format {
        Format::Json => {
            for (c, names) in &rows {
                outln!(
                    "{}",
                    to_json(&serde_json::json!({
                        "id": c.id(),
                        "phase": c.phase,
                        "op": c.op,
                        "fault": kata_sim::matrix::FAULTS[c.fault].label,
                        "covered_by": names,
                    }))?
                );
            }
        }
        Format::Text => {
            for (c, names) in &rows {
                if !names.is_empty() {
                    outln!("covered  {:<60} {}", c.id(), names.join(", "));
                }
            }
            let pct = if plan.cells.is_empty() {
                0.0
            } else {
                100.0 * covered as f64 / plan.cells.len() as f64
            };
            outln!(
                "\n{covered} of {} cells of the {persona} matrix covered ({pct:.1}%)",
                plan.cells.len()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn shrink(
    target: &str,
    seed: u64,
    library: Option<&Path>,
    output: Option<&Path>,
) -> Result<ExitCode> {
    let (source, s) = one_scenario(target, library)?;
    let name = s.name.clone();
    let out_path = output.map_or_else(
        || PathBuf::from(format!("{name}-seed-{seed}.yaml")),
        Path::to_path_buf,
    );
    let file = create_now(Some(&out_path), "--output")?;
    let shrunk = match kata_sim::shrink::shrink(s, seed) {
        Ok(sh) => sh,
        Err(e) => {
            let _ = std::fs::remove_file(&out_path);
            return Err(Exit::bad(e));
        }
    };
    let text = kata_sim::shrink::render(&shrunk, &source.file.display().to_string(), seed)
        .map_err(|e| anyhow::anyhow!("rendering the scenario: {e}"))
        .or_internal()?;
    write_to(file, &text)?;
    outln!(
        "{name} with seed {seed} fails `{}`; shrunk in {} runs: {}: {}",
        shrunk.what,
        shrunk.runs,
        shrunk.sizes(),
        out_path.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn merge(
    files: &[PathBuf],
    junit: Option<&Path>,
    results: Option<&Path>,
    html: Option<&Path>,
    format: Format,
    ui: Ui,
) -> Result<ExitCode> {
    let junit_file = create_now(junit, "--junit")?;
    let results_file = create_now(results, "--results")?;
    let parts = files
        .iter()
        .map(|f| kata_sim::shard::read(f))
        .collect::<std::result::Result<Vec<_>, _>>()
        .or_bad()?;
    let merged = kata_sim::shard::merge(parts).or_bad()?;
    let code = match &merged.body {
        Body::Run { rows } => {
            match format {
                Format::Text => print_run(rows, ui)?,
                Format::Json => {
                    for r in rows {
                        outln!("{}", to_json(&r.json)?);
                    }
                }
            }
            write_to(junit_file, &run_junit(rows))?;
            exit_of_rows(rows)
        }
        Body::Matrix { cells, .. } => {
            if format == Format::Json {
                for c in cells {
                    outln!("{}", to_json(&kata_sim::matrix::cell_json(c))?);
                }
            }
            report_matrix(&merged, html, format)?;
            if junit_file.is_some() {
                return Err(Exit::bad(anyhow::anyhow!(
                    "--junit: a matrix's results have no JUnit report"
                )));
            }
            ExitCode::SUCCESS
        }
    };
    write_to(results_file, &to_json(&merged)?)?;
    Ok(code)
}

/// 2 if a file did not load, else 1 if a scenario failed, else 0.
fn exit_of(reports: &[Report]) -> ExitCode {
    let worst = reports.iter().map(Report::verdict).max();
    match worst {
        Some(Verdict::Invalid) => ExitCode::from(BAD_INPUT),
        Some(Verdict::Failed | Verdict::Skipped) => ExitCode::FAILURE,
        Some(Verdict::Ok) | None => ExitCode::SUCCESS,
    }
}

/// Loads the one scenario `target` names (a file, or a library name).
fn one_scenario(
    target: &str,
    library: Option<&Path>,
) -> Result<(Source, kata_sim::schema::Scenario)> {
    let sources = resolve(&[target.to_owned()], library)?;
    let [source] = sources.as_slice() else {
        return Err(Exit::bad(anyhow::anyhow!(
            "{target}: give one scenario file, not {} of them",
            sources.len()
        )));
    };
    match source.load() {
        Ok(s) => Ok((source.clone(), s)),
        Err(e) => Err(Exit::bad(e)),
    }
}

fn trace(
    target: &str,
    library: Option<&Path>,
    o: &Overrides,
    mermaid: bool,
    format: Format,
) -> Result<ExitCode> {
    let (source, s) = one_scenario(target, library)?;
    if o.exec.is_some() {
        kata_sim::exec::stop_on_signals()
            .context("installing the signal handlers")
            .or_internal()?;
    }
    let r = runner::run_scenario(&source.file, s, o, &|| None, &mut |_, _| {});
    let outcome = r
        .outcome
        .as_ref()
        .context("the run left no record")
        .or_internal()?;
    if mermaid {
        out!("{}", kata_sim::render::mermaid(outcome));
    } else {
        for c in &outcome.calls {
            match format {
                Format::Text => outln!("{c}"),
                Format::Json => outln!("{}", to_json(&c.json())?),
            }
        }
    }
    for e in &outcome.errors {
        eprintln!("run error: {e}");
    }
    if let Some(sig) = kata_sim::exec::interrupted() {
        return Err(Exit::quiet(128 + sig as u8));
    }
    Ok(ExitCode::SUCCESS)
}

fn diff(
    drivers: &[Driver],
    target: &str,
    library: Option<&Path>,
    agent_version: Option<AgentVersion>,
    timeout: Option<Duration>,
    command: Vec<String>,
) -> Result<ExitCode> {
    let [a, b] = drivers else {
        return Err(Exit::bad(anyhow::anyhow!(
            "give --driver twice (the two sides), not {} time(s)",
            drivers.len()
        )));
    };
    if !drivers.contains(&Driver::Exec) && !command.is_empty() {
        return Err(Exit::bad(anyhow::anyhow!(
            "a command after -- needs an exec --driver"
        )));
    }
    if drivers.contains(&Driver::Exec) && command.is_empty() {
        return Err(Exit::bad(anyhow::anyhow!(
            "--driver exec needs the host runtime's command after --"
        )));
    }
    let (source, s) = one_scenario(target, library)?;
    if drivers.contains(&Driver::Exec) {
        kata_sim::exec::stop_on_signals()
            .context("installing the signal handlers")
            .or_internal()?;
    }
    let mut calls = Vec::new();
    let mut rest = Vec::new();
    let mut persona = None;
    let mut errors = false;
    for d in [a, b] {
        let overrides = Overrides {
            persona: d.persona(),
            exec: (*d == Driver::Exec).then(|| command.clone()),
            shim: shim_options(d, None, None, timeout)?,
            agent_version,
            ..Default::default()
        };
        let r = runner::run_scenario(
            &source.file,
            s.clone(),
            &overrides,
            &|| None,
            &mut |_, _| {},
        );
        if let Some(sig) = kata_sim::exec::interrupted() {
            eprintln!("interrupted by {sig}");
            return Err(Exit::quiet(128 + sig as u8));
        }
        let outcome = r.outcome.context("the run left no record").or_internal()?;
        // A side that failed to run says so, rather than showing as a column of `+`/`-`.
        for e in &outcome.errors {
            errors = true;
            eprintln!("error: --driver {}: {e}", d.name());
        }
        let mut outcome = kata_sim::snapshot::compared(&outcome);
        calls.push(kata_sim::render::agent_calls(&outcome));
        // The persona is the side's name, not its behaviour: the first side's on both.
        outcome.persona = *persona.get_or_insert(outcome.persona);
        let lines = kata_sim::snapshot::rest_lines(&outcome)
            .map_err(|e| anyhow::anyhow!("rendering the outcome: {e}"))
            .or_internal()?;
        rest.push(lines);
    }
    outln!("--- {}\n+++ {}", a.name(), b.name());
    let lines = kata_sim::render::diff(&calls[0], &calls[1]);
    for line in &lines {
        outln!("{line}");
    }
    // Every other field: processes, host files, task states, faults, warnings, teardown.
    let others_differ = rest[0] != rest[1];
    if others_differ {
        outln!("\n(the rest of the outcome)");
        for line in kata_sim::render::diff(&rest[0], &rest[1]) {
            outln!("{line}");
        }
    }
    let differ = calls[0] != calls[1] || others_differ;
    if errors && !differ {
        eprintln!("(the two sides' outcomes are the same, but a run reported errors)");
    }
    Ok(if differ {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

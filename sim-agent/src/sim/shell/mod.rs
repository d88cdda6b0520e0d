//! The guest userland: an interpreter for the `sh -c` one-liners that real tests run.
//!
//! Through a real runtime, a container's command line is all the fake agent gets, so the
//! output, the exit status and the termination message can only be right if the one-liner
//! runs as busybox (the usual test image) would run it. This module does that in-process and
//! deterministically; nothing runs on the host.
//!
//! # The subset
//!
//! | | |
//! |---|---|
//! | lists | `a; b`, newlines, `a && b`, `a \|\| b` |
//! | pipelines | `a \| b \| c` (stages run concurrently through 64 KiB pipes) |
//! | redirections | `> f`, `>> f`, `< f`, `2> f`, `2>> f`, `2>&1`, `>&2` |
//! | quoting | `'...'`, `"..."` (with `\"`, `\\`, `` \` ``), backslash escapes, `# comments` |
//! | builtins | `exit [N]`, `exec CMD`, `:` |
//! | programs | `echo [-neE]`, `printf FORMAT ARGS` (`%s %b %c %d %i %u %o %x %X %%`, flags, width, precision; `\n \t \\ \NNN \xHH \c`), `cat [FILE\|-]...`, `head -c N\|-n N\|-N [FILE]` (`k`/`m` suffixes, negative counts), `tr [-ds] SET1 [SET2]` (ranges, `[:class:]`, escapes such as `'\0'`), `true`, `false`, `sleep N[smhd]`, `yes [WORD]`, `wc [-clw] [FILE]...`, `seq [-s SEP] [FIRST [INC]] LAST` |
//! | devices | `/dev/null`, `/dev/zero`, `/dev/urandom` and `/dev/random` (seeded), `/dev/stdout`, `/dev/stderr` |
//!
//! Programs are found by base name (`/bin/sh`, `/usr/bin/head`). Paths resolve through the
//! container's OCI mounts: the bind mount with the longest destination containing the path
//! maps it to its guest source (so `/dev/termination-log` lands in the file that
//! `GetDiagnosticData` reads); every other path lands in the container's rootfs, confined to
//! it. Messages and exit codes are busybox 1.35's (`sh: can't create /x/y: nonexistent
//! directory`, status 1; SIGPIPE 141; `exit` with a bad number 2).
//!
//! Outside the subset (`$`, globs, `&`, `if`/`for`/`while`, here-documents, assignments,
//! unknown programs or options), [`parse`] answers [`ParseError::Unsupported`] naming the
//! word; the process then runs until signalled, and the agent's trace carries that reason.

mod io;
mod parse;
mod programs;
mod run;

pub use io::{Input, Output, PIPE_CAPACITY, Stdio};
pub use parse::{
    AndOr, Command, Connector, ParseError, Pipeline, Redirect, RedirectTarget, Script, parse,
};
pub use programs::{Files, Program, SIGPIPE_STATUS};
pub use run::{ContainerView, Env, MountView, run_script};

/// A script that runs one program with this argv directly (no shell parsing), or why that
/// program is outside the subset.
pub fn direct(argv: &[String]) -> Result<Script, ParseError> {
    let arg0 = argv
        .first()
        .ok_or_else(|| ParseError::Unsupported("empty argv".into()))?;
    let program = match Program::find(arg0) {
        Some(Program::Exit) | None => {
            return Err(ParseError::Unsupported(format!(
                "program {arg0:?} is not one kata-sim interprets"
            )));
        }
        Some(p) => p,
    };
    program.check(argv).map_err(ParseError::Unsupported)?;
    Ok(Script {
        lists: vec![AndOr {
            first: Pipeline {
                commands: vec![Command {
                    argv: argv.to_vec(),
                    program: Some(program),
                    redirects: Vec::new(),
                    exec: false,
                }],
            },
            rest: Vec::new(),
        }],
    })
}

#[cfg(test)]
mod tests;

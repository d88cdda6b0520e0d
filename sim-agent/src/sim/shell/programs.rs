//! The programs the interpreter knows, with busybox 1.35's output, errors and exit codes.
//!
//! Each program reads and writes through [`Stdio`]; files are opened through the container's
//! view of the guest ([`Files`]). A program whose output reader went away dies of SIGPIPE
//! (status 141), as `yes | head -n 1` does on a real guest. Options a program does not
//! support are rejected when the script is parsed, so an unsupported use never half-runs.

use std::io;
use std::time::Duration;

use super::io::{Input, READ_CHUNK, Stdio};
use crate::sim::program::program_name;

/// Status of a process killed by SIGPIPE.
pub const SIGPIPE_STATUS: i32 = 128 + 13;

/// The programs and builtins the interpreter runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Program {
    /// `echo [-neE] WORDS`.
    Echo,
    /// `printf FORMAT [ARGS]`.
    Printf,
    /// `cat [FILE|-]...`.
    Cat,
    /// `head [-c N | -n N | -N] [FILE]`.
    Head,
    /// `tr [-ds] SET1 [SET2]`.
    Tr,
    /// `true` and `:`.
    True,
    /// `false`.
    False,
    /// `sleep N[smhd]...`.
    Sleep,
    /// `yes [WORDS]`.
    Yes,
    /// `wc [-clw] [FILE]...`.
    Wc,
    /// `seq [-s SEP] [FIRST [INC]] LAST`.
    Seq,
    /// The `exit [N]` builtin.
    Exit,
}

/// Opens guest files for reading, as the container sees them.
pub trait Files: Sync {
    /// Opens `path` (absolute, or relative to the process's cwd) for reading.
    fn open_read(&self, path: &str) -> io::Result<Input>;
}

impl Program {
    /// The program run by this `argv[0]` (`/usr/bin/head` is `head`); `None` when unknown.
    pub fn find(arg0: &str) -> Option<Program> {
        // Builtins are only found by their bare name.
        match arg0 {
            "exit" => return Some(Program::Exit),
            ":" => return Some(Program::True),
            _ => {}
        }
        Some(match program_name(arg0) {
            "echo" => Program::Echo,
            "printf" => Program::Printf,
            "cat" => Program::Cat,
            "head" => Program::Head,
            "tr" => Program::Tr,
            "true" => Program::True,
            "false" => Program::False,
            "sleep" => Program::Sleep,
            "yes" => Program::Yes,
            "wc" => Program::Wc,
            "seq" => Program::Seq,
            _ => return None,
        })
    }

    /// Checks the options; `Err` names the one outside the subset.
    pub fn check(self, argv: &[String]) -> Result<(), String> {
        let name = argv.first().map(|a| program_name(a)).unwrap_or_default();
        let args = argv.get(1..).unwrap_or_default();
        let bad = |opt: &str| Err(format!("option {opt:?} of {name} is not interpreted"));
        match self {
            Program::Cat => {
                if let Some(o) = args.iter().find(|a| a.starts_with('-') && a.len() > 1) {
                    return bad(o);
                }
            }
            Program::Head => {
                let files = head_options(args).1.map_err(|o| match o {
                    HeadError::Unsupported(o) => format!("option {o:?} of head is not interpreted"),
                    HeadError::Number(_) => String::new(),
                });
                match files {
                    Err(e) if !e.is_empty() => return Err(e),
                    Ok(f) if f.len() > 1 => {
                        return Err("head with more than one file is not interpreted".into());
                    }
                    _ => {}
                }
            }
            Program::Tr => {
                let (flags, _) = split_flags(args);
                if let Some(c) = flags.chars().find(|c| !"ds".contains(*c)) {
                    return bad(&format!("-{c}"));
                }
            }
            Program::Wc => {
                let (flags, _) = split_flags(args);
                if let Some(c) = flags.chars().find(|c| !"clw".contains(*c)) {
                    return bad(&format!("-{c}"));
                }
            }
            Program::Seq => {
                let mut rest = args;
                while let Some(first) = rest.first() {
                    match first.as_str() {
                        "-s" => rest = rest.get(2..).unwrap_or_default(),
                        o if o.starts_with('-')
                            && o.len() > 1
                            && !o[1..].starts_with(|c: char| c.is_ascii_digit() || c == '.') =>
                        {
                            return bad(o);
                        }
                        _ => break,
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Runs the program; `last` is `$?` (what a bare `exit` returns).
    pub async fn run(self, argv: &[String], io: &mut Stdio, files: &dyn Files, last: i32) -> i32 {
        let args = argv.get(1..).unwrap_or_default();
        let result = match self {
            Program::True => Ok(0),
            Program::False => Ok(1),
            Program::Echo => echo(args, io).await,
            Program::Printf => printf(args, io).await,
            Program::Cat => cat(args, io, files).await,
            Program::Head => head(args, io, files).await,
            Program::Tr => tr(args, io).await,
            Program::Sleep => sleep(args, io).await,
            Program::Yes => yes(args, io).await,
            Program::Wc => wc(args, io, files).await,
            Program::Seq => seq(args, io).await,
            Program::Exit => Ok(exit_code(args, io, last).await.unwrap_or(2)),
        };
        match result {
            Ok(code) => code,
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => SIGPIPE_STATUS,
            Err(e) => {
                let name = argv.first().map(|a| program_name(a)).unwrap_or("sh");
                io.error(format!("{name}: write error: {e}")).await;
                1
            }
        }
    }
}

/// The status `exit ARGS` ends the shell with, or `None` (after printing busybox's error)
/// when the argument is not a number.
pub async fn exit_code(args: &[String], io: &Stdio, last: i32) -> Option<i32> {
    let Some(arg) = args.first() else {
        return Some(last);
    };
    match arg.parse::<i64>() {
        Ok(n) if n >= 0 => Some((n % 256) as i32),
        _ => {
            io.error(format!("sh: exit: line 0: Illegal number: {arg}"))
                .await;
            None
        }
    }
}

/// Leading single-dash flags (`-ds`, `-c`), and the rest.
fn split_flags(args: &[String]) -> (String, &[String]) {
    let mut flags = String::new();
    let mut i = 0;
    while let Some(a) = args.get(i) {
        if a == "--" {
            i += 1;
            break;
        }
        if a.len() > 1 && a.starts_with('-') {
            flags.push_str(&a[1..]);
            i += 1;
        } else {
            break;
        }
    }
    (flags, &args[i..])
}

// ---------- escapes ----------

/// How backslash escapes are read.
#[derive(Clone, Copy, PartialEq, Eq)]
enum EscapeStyle {
    /// printf's format: `\NNN` is up to three octal digits.
    Format,
    /// `echo -e` and `%b`: `\0NNN` (the 0 is a prefix), or `\NNN` without it.
    Echo,
}

/// Interprets backslash escapes; the bool is true when `\c` stopped the output.
fn unescape(s: &[u8], style: EscapeStyle) -> (Vec<u8>, bool) {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        let c = s[i];
        i += 1;
        if c != b'\\' || i >= s.len() {
            out.push(c);
            continue;
        }
        let e = s[i];
        i += 1;
        match e {
            b'\\' => out.push(b'\\'),
            b'a' => out.push(7),
            b'b' => out.push(8),
            b'f' => out.push(12),
            b'n' => out.push(b'\n'),
            b'r' => out.push(b'\r'),
            b't' => out.push(b'\t'),
            b'v' => out.push(11),
            b'c' => return (out, true),
            b'x' => {
                let start = i;
                while i < s.len() && i - start < 2 && s[i].is_ascii_hexdigit() {
                    i += 1;
                }
                if i == start {
                    out.extend_from_slice(b"\\x");
                } else {
                    let text = std::str::from_utf8(&s[start..i]).unwrap_or("0");
                    out.push(u8::from_str_radix(text, 16).unwrap_or(0));
                }
            }
            b'0'..=b'7' => {
                let mut start = i - 1;
                if style == EscapeStyle::Echo && e == b'0' {
                    start = i;
                }
                let mut end = start;
                while end < s.len() && end - start < 3 && (b'0'..=b'7').contains(&s[end]) {
                    end += 1;
                }
                let value = s[start..end]
                    .iter()
                    .fold(0u32, |v, d| v * 8 + u32::from(d - b'0'));
                out.push(value as u8);
                i = end;
            }
            other => {
                out.push(b'\\');
                out.push(other);
            }
        }
    }
    (out, false)
}

// ---------- echo / printf ----------

async fn echo(args: &[String], io: &mut Stdio) -> io::Result<i32> {
    let mut newline = true;
    let mut escapes = false;
    let mut words = args;
    while let Some(first) = words.first() {
        let opts = first
            .strip_prefix('-')
            .filter(|o| !o.is_empty() && o.chars().all(|c| matches!(c, 'n' | 'e' | 'E')));
        let Some(opts) = opts else { break };
        for c in opts.chars() {
            match c {
                'n' => newline = false,
                'e' => escapes = true,
                _ => escapes = false,
            }
        }
        words = &words[1..];
    }
    let joined = words.join(" ").into_bytes();
    let (mut out, stopped) = if escapes {
        unescape(&joined, EscapeStyle::Echo)
    } else {
        (joined, false)
    };
    if newline && !stopped {
        out.push(b'\n');
    }
    io.stdout.write_all(&out).await?;
    Ok(0)
}

struct Spec {
    left: bool,
    zero: bool,
    plus: bool,
    space: bool,
    alt: bool,
    width: Option<usize>,
    precision: Option<usize>,
    conv: u8,
}

fn pad(body: Vec<u8>, spec: &Spec, numeric: bool) -> Vec<u8> {
    let width = spec.width.unwrap_or(0);
    if body.len() >= width {
        return body;
    }
    let fill = width - body.len();
    if spec.left {
        let mut b = body;
        b.extend(std::iter::repeat_n(b' ', fill));
        b
    } else if spec.zero && numeric && spec.precision.is_none() {
        // Zeros go after the sign.
        let sign = usize::from(matches!(body.first(), Some(b'-' | b'+' | b' ')));
        let mut b = body[..sign].to_vec();
        b.extend(std::iter::repeat_n(b'0', fill));
        b.extend_from_slice(&body[sign..]);
        b
    } else {
        let mut b = vec![b' '; fill];
        b.extend(body);
        b
    }
}

/// Parses a printf numeric argument as busybox does (decimal, 0x hex, 0 octal, 'c).
fn printf_number(arg: &str) -> Option<i64> {
    let t = arg.trim_start();
    if let Some(c) = t.strip_prefix('\'').or_else(|| t.strip_prefix('"')) {
        return Some(c.chars().next().map_or(0, |c| c as i64));
    }
    let (neg, digits) = match t.strip_prefix('-') {
        Some(d) => (true, d),
        None => (false, t.strip_prefix('+').unwrap_or(t)),
    };
    let v = if let Some(h) = digits
        .strip_prefix("0x")
        .or_else(|| digits.strip_prefix("0X"))
    {
        i64::from_str_radix(h, 16).ok()?
    } else if digits.len() > 1 && digits.starts_with('0') {
        i64::from_str_radix(&digits[1..], 8).ok()?
    } else {
        digits.parse::<i64>().ok()?
    };
    Some(if neg { -v } else { v })
}

async fn printf(args: &[String], io: &mut Stdio) -> io::Result<i32> {
    let Some(format) = args.first() else {
        io.error("sh: usage: printf FORMAT [ARGUMENT...]").await;
        return Ok(2);
    };
    let fmt = format.as_bytes();
    let mut rest = args[1..].iter();
    let mut status = 0;
    let mut out = Vec::new();
    loop {
        let before = rest.len();
        let mut i = 0;
        while i < fmt.len() {
            let c = fmt[i];
            if c == b'\\' {
                // One escape at a time, so that `\c` can stop everything.
                let end = escape_end(fmt, i);
                let (bytes, stop) = unescape(&fmt[i..end], EscapeStyle::Format);
                out.extend(bytes);
                if stop {
                    io.stdout.write_all(&out).await?;
                    return Ok(status);
                }
                i = end;
                continue;
            }
            if c != b'%' {
                out.push(c);
                i += 1;
                continue;
            }
            i += 1;
            if fmt.get(i) == Some(&b'%') {
                out.push(b'%');
                i += 1;
                continue;
            }
            let mut spec = Spec {
                left: false,
                zero: false,
                plus: false,
                space: false,
                alt: false,
                width: None,
                precision: None,
                conv: 0,
            };
            while let Some(&f) = fmt.get(i) {
                match f {
                    b'-' => spec.left = true,
                    b'0' => spec.zero = true,
                    b'+' => spec.plus = true,
                    b' ' => spec.space = true,
                    b'#' => spec.alt = true,
                    _ => break,
                }
                i += 1;
            }
            let num = |i: &mut usize| {
                let start = *i;
                while fmt.get(*i).is_some_and(u8::is_ascii_digit) {
                    *i += 1;
                }
                std::str::from_utf8(&fmt[start..*i])
                    .ok()
                    .and_then(|s| s.parse::<usize>().ok())
            };
            spec.width = num(&mut i);
            if fmt.get(i) == Some(&b'.') {
                i += 1;
                spec.precision = Some(num(&mut i).unwrap_or(0));
            }
            let Some(&conv) = fmt.get(i) else {
                io.stdout.write_all(&out).await?;
                io.error(format!("sh: {}: invalid format", format)).await;
                return Ok(1);
            };
            i += 1;
            spec.conv = conv;
            let arg = rest.next();
            match conv {
                b's' => {
                    let mut s = arg.map(|a| a.as_bytes().to_vec()).unwrap_or_default();
                    if let Some(p) = spec.precision {
                        s.truncate(p);
                    }
                    out.extend(pad(s, &spec, false));
                }
                b'b' => {
                    let (mut s, stop) = unescape(
                        arg.map(String::as_bytes).unwrap_or_default(),
                        EscapeStyle::Echo,
                    );
                    if let Some(p) = spec.precision {
                        s.truncate(p);
                    }
                    out.extend(pad(s, &spec, false));
                    if stop {
                        io.stdout.write_all(&out).await?;
                        return Ok(status);
                    }
                }
                b'c' => {
                    let s = arg
                        .and_then(|a| a.as_bytes().first().copied())
                        .map(|b| vec![b])
                        .unwrap_or_default();
                    out.extend(pad(s, &spec, false));
                }
                b'd' | b'i' | b'u' | b'o' | b'x' | b'X' => {
                    let text = arg.map(String::as_str).unwrap_or("");
                    let n = match printf_number(text) {
                        Some(n) => n,
                        None => {
                            io.stdout.write_all(&std::mem::take(&mut out)).await?;
                            io.error(format!("sh: invalid number '{text}'")).await;
                            status = 1;
                            0
                        }
                    };
                    let digits = match conv {
                        b'd' | b'i' => n.unsigned_abs().to_string(),
                        b'u' => (n as u64).to_string(),
                        b'o' => format!("{:o}", n as u64),
                        b'x' => format!("{:x}", n as u64),
                        _ => format!("{:X}", n as u64),
                    };
                    let mut digits = match spec.precision {
                        Some(p) if digits.len() < p => {
                            format!("{}{digits}", "0".repeat(p - digits.len()))
                        }
                        _ => digits,
                    };
                    if spec.alt && n != 0 {
                        match conv {
                            b'o' => digits.insert(0, '0'),
                            b'x' => digits.insert_str(0, "0x"),
                            b'X' => digits.insert_str(0, "0X"),
                            _ => {}
                        }
                    }
                    let sign = if matches!(conv, b'd' | b'i') {
                        if n < 0 {
                            "-"
                        } else if spec.plus {
                            "+"
                        } else if spec.space {
                            " "
                        } else {
                            ""
                        }
                    } else {
                        ""
                    };
                    out.extend(pad(format!("{sign}{digits}").into_bytes(), &spec, true));
                }
                other => {
                    io.stdout.write_all(&out).await?;
                    io.error(format!("sh: %{}: invalid format", other as char))
                        .await;
                    return Ok(1);
                }
            }
        }
        // The format is reused while arguments remain and it consumed some.
        if rest.len() == 0 || rest.len() == before {
            break;
        }
    }
    io.stdout.write_all(&out).await?;
    Ok(status)
}

/// Where the escape sequence starting at `fmt[i] == '\\'` ends.
fn escape_end(fmt: &[u8], i: usize) -> usize {
    let mut j = i + 1;
    match fmt.get(j) {
        None => j,
        Some(b'0'..=b'7') => {
            while j < fmt.len() && j - (i + 1) < 3 && (b'0'..=b'7').contains(&fmt[j]) {
                j += 1;
            }
            j
        }
        Some(b'x') => {
            j += 1;
            while j < fmt.len() && j - (i + 2) < 2 && fmt[j].is_ascii_hexdigit() {
                j += 1;
            }
            j
        }
        Some(_) => j + 1,
    }
}

// ---------- cat / head / wc ----------

fn enoent_text(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::NotFound => "No such file or directory".into(),
        io::ErrorKind::PermissionDenied => "Permission denied".into(),
        io::ErrorKind::IsADirectory => "Is a directory".into(),
        _ => e.to_string(),
    }
}

/// The input for a file operand (`-` is stdin, which is taken from `io`).
fn operand(name: &str, io: &mut Stdio, files: &dyn Files) -> io::Result<Input> {
    if name == "-" {
        Ok(std::mem::replace(&mut io.stdin, Input::Empty))
    } else {
        files.open_read(name)
    }
}

async fn copy(input: &mut Input, io: &Stdio) -> io::Result<()> {
    loop {
        let chunk = input.read(READ_CHUNK).await?;
        if chunk.is_empty() {
            return Ok(());
        }
        io.stdout.write_all(&chunk).await?;
    }
}

async fn cat(args: &[String], io: &mut Stdio, files: &dyn Files) -> io::Result<i32> {
    let operands: Vec<&str> = if args.is_empty() {
        vec!["-"]
    } else {
        args.iter().map(String::as_str).collect()
    };
    let mut status = 0;
    for name in operands {
        match operand(name, io, files) {
            Ok(mut input) => match copy(&mut input, io).await {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::BrokenPipe => return Err(e),
                Err(e) => {
                    io.error(format!("cat: read error: {}", enoent_text(&e)))
                        .await;
                    status = 1;
                }
            },
            Err(e) => {
                io.error(format!("cat: can't open '{name}': {}", enoent_text(&e)))
                    .await;
                status = 1;
            }
        }
    }
    Ok(status)
}

enum HeadError {
    Number(String),
    Unsupported(String),
}

#[derive(Clone, Copy)]
enum HeadCount {
    Bytes(i64),
    Lines(i64),
}

/// Parses a busybox size: digits with an optional `b` (512), `k` (1024) or `m` (1 MiB) suffix.
fn size_arg(s: &str) -> Option<i64> {
    let (digits, mult) = match s.as_bytes().last() {
        Some(b'b') => (&s[..s.len() - 1], 512),
        Some(b'k') => (&s[..s.len() - 1], 1024),
        Some(b'm') => (&s[..s.len() - 1], 1024 * 1024),
        _ => (s, 1),
    };
    let v: i64 = digits.parse().ok()?;
    v.checked_mul(mult)
}

#[allow(clippy::type_complexity)]
fn head_options(args: &[String]) -> (HeadCount, Result<Vec<String>, HeadError>) {
    let mut count = HeadCount::Lines(10);
    let mut files = Vec::new();
    let mut i = 0;
    let number = |s: &str| size_arg(s).ok_or_else(|| HeadError::Number(s.to_string()));
    while i < args.len() {
        let a = args[i].as_str();
        let parsed = if let Some(rest) = a.strip_prefix("-c") {
            let v = if rest.is_empty() {
                i += 1;
                args.get(i).map(String::as_str).unwrap_or("")
            } else {
                rest
            };
            number(v).map(|n| count = HeadCount::Bytes(n))
        } else if let Some(rest) = a.strip_prefix("-n") {
            let v = if rest.is_empty() {
                i += 1;
                args.get(i).map(String::as_str).unwrap_or("")
            } else {
                rest
            };
            number(v).map(|n| count = HeadCount::Lines(n))
        } else if a.len() > 1 && a.starts_with('-') && a[1..].bytes().all(|b| b.is_ascii_digit()) {
            number(&a[1..]).map(|n| count = HeadCount::Lines(n))
        } else if a.len() > 1 && a.starts_with('-') {
            Err(HeadError::Unsupported(a.to_string()))
        } else {
            files.push(a.to_string());
            Ok(())
        };
        if let Err(e) = parsed {
            return (count, Err(e));
        }
        i += 1;
    }
    (count, Ok(files))
}

async fn head(args: &[String], io: &mut Stdio, files: &dyn Files) -> io::Result<i32> {
    let (count, parsed) = head_options(args);
    let operands = match parsed {
        Ok(f) => f,
        Err(HeadError::Number(n)) => {
            io.error(format!("head: invalid number '{n}'")).await;
            return Ok(1);
        }
        Err(HeadError::Unsupported(o)) => {
            io.error(format!("head: unrecognized option '{o}'")).await;
            return Ok(1);
        }
    };
    let name = operands.first().map(String::as_str).unwrap_or("-");
    let mut input = match operand(name, io, files) {
        Ok(i) => i,
        Err(e) => {
            io.error(format!("head: {name}: {}", enoent_text(&e))).await;
            return Ok(1);
        }
    };
    match count {
        HeadCount::Bytes(n) if n >= 0 => {
            let mut left = n as usize;
            while left > 0 {
                let chunk = input.read(left.min(READ_CHUNK)).await?;
                if chunk.is_empty() {
                    break;
                }
                left -= chunk.len();
                io.stdout.write_all(&chunk).await?;
            }
        }
        HeadCount::Lines(n) if n >= 0 => {
            let mut left = n as usize;
            while left > 0 {
                let chunk = input.read(READ_CHUNK).await?;
                if chunk.is_empty() {
                    break;
                }
                let mut end = chunk.len();
                for (idx, b) in chunk.iter().enumerate() {
                    if *b == b'\n' {
                        left -= 1;
                        if left == 0 {
                            end = idx + 1;
                            break;
                        }
                    }
                }
                io.stdout.write_all(&chunk[..end]).await?;
            }
        }
        // Negative counts print all but the last N bytes or lines.
        HeadCount::Bytes(n) => {
            let all = input.read_to_end().await?;
            let keep = all.len().saturating_sub(n.unsigned_abs() as usize);
            io.stdout.write_all(&all[..keep]).await?;
        }
        HeadCount::Lines(n) => {
            let all = input.read_to_end().await?;
            let mut ends: Vec<usize> = all
                .iter()
                .enumerate()
                .filter(|(_, b)| **b == b'\n')
                .map(|(i, _)| i + 1)
                .collect();
            if all.last().is_some_and(|b| *b != b'\n') {
                ends.push(all.len());
            }
            let drop_n = n.unsigned_abs() as usize;
            let keep = if ends.len() > drop_n {
                ends[ends.len() - drop_n - 1]
            } else {
                0
            };
            io.stdout.write_all(&all[..keep]).await?;
        }
    }
    Ok(0)
}

async fn wc(args: &[String], io: &mut Stdio, files: &dyn Files) -> io::Result<i32> {
    let (flags, operands) = split_flags(args);
    let (mut lines, mut words, mut bytes) = (
        flags.contains('l'),
        flags.contains('w'),
        flags.contains('c'),
    );
    if !(lines || words || bytes) {
        (lines, words, bytes) = (true, true, true);
    }
    let columns = [lines, words, bytes].iter().filter(|c| **c).count();
    let names: Vec<&str> = if operands.is_empty() {
        vec![]
    } else {
        operands.iter().map(String::as_str).collect()
    };
    let mut status = 0;
    let mut totals = [0u64; 3];
    let mut out = String::new();
    let targets: Vec<Option<&str>> = if names.is_empty() {
        vec![None]
    } else {
        names.iter().map(|n| Some(*n)).collect()
    };
    for target in &targets {
        let mut input = match target {
            None => std::mem::replace(&mut io.stdin, Input::Empty),
            Some(n) => match operand(n, io, files) {
                Ok(i) => i,
                Err(e) => {
                    io.error(format!("wc: {n}: {}", enoent_text(&e))).await;
                    status = 1;
                    continue;
                }
            },
        };
        let mut counts = [0u64; 3];
        let mut in_word = false;
        loop {
            let chunk = input.read(READ_CHUNK).await?;
            if chunk.is_empty() {
                break;
            }
            counts[2] += chunk.len() as u64;
            for b in chunk {
                if b == b'\n' {
                    counts[0] += 1;
                }
                let space = matches!(b, b' ' | b'\t' | b'\n' | 11 | 12 | b'\r');
                if !space && !in_word {
                    counts[1] += 1;
                }
                in_word = !space;
            }
        }
        for (t, c) in totals.iter_mut().zip(counts) {
            *t += c;
        }
        out.push_str(&wc_line(counts, [lines, words, bytes], columns, *target));
    }
    if targets.len() > 1 {
        out.push_str(&wc_line(
            totals,
            [lines, words, bytes],
            columns,
            Some("total"),
        ));
    }
    io.stdout.write_all(out.as_bytes()).await?;
    Ok(status)
}

/// One line of wc output: a lone count from stdin is unpadded; otherwise each column is
/// nine wide, as busybox prints.
fn wc_line(counts: [u64; 3], shown: [bool; 3], columns: usize, name: Option<&str>) -> String {
    let values: Vec<u64> = counts
        .iter()
        .zip(shown)
        .filter(|(_, s)| *s)
        .map(|(c, _)| *c)
        .collect();
    let mut line = if columns == 1 && name.is_none() {
        values[0].to_string()
    } else {
        values
            .iter()
            .map(|v| format!("{v:9}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    if let Some(n) = name {
        line.push(' ');
        line.push_str(n);
    }
    line.push('\n');
    line
}

// ---------- tr ----------

/// Expands a tr set: escapes, ranges `a-z` and classes `[:lower:]`.
fn tr_set(spec: &str) -> Vec<u8> {
    // Escapes as in printf's format: `\0` and `\NNN` are octal.
    let (bytes, _) = unescape(spec.as_bytes(), EscapeStyle::Format);
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'['
            && bytes.get(i + 1) == Some(&b':')
            && let Some(end) = bytes[i + 2..].windows(2).position(|w| w == b":]")
        {
            let class = &bytes[i + 2..i + 2 + end];
            let members: Option<Vec<u8>> = match class {
                b"lower" => Some((b'a'..=b'z').collect()),
                b"upper" => Some((b'A'..=b'Z').collect()),
                b"digit" => Some((b'0'..=b'9').collect()),
                b"alpha" => Some((b'A'..=b'Z').chain(b'a'..=b'z').collect()),
                b"alnum" => Some(
                    (b'0'..=b'9')
                        .chain(b'A'..=b'Z')
                        .chain(b'a'..=b'z')
                        .collect(),
                ),
                b"space" => Some(vec![b'\t', b'\n', 11, 12, b'\r', b' ']),
                b"blank" => Some(vec![b'\t', b' ']),
                b"punct" => Some((33u8..=126).filter(u8::is_ascii_punctuation).collect()),
                b"xdigit" => Some(
                    (b'0'..=b'9')
                        .chain(b'A'..=b'F')
                        .chain(b'a'..=b'f')
                        .collect(),
                ),
                _ => None,
            };
            if let Some(m) = members {
                out.extend(m);
                i += end + 4;
                continue;
            }
        }
        if i + 2 < bytes.len() && bytes[i + 1] == b'-' && bytes[i] <= bytes[i + 2] {
            out.extend(bytes[i]..=bytes[i + 2]);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    out
}

async fn tr(args: &[String], io: &mut Stdio) -> io::Result<i32> {
    let (flags, sets) = split_flags(args);
    let delete = flags.contains('d');
    let squeeze = flags.contains('s');
    let Some(set1) = sets.first() else {
        io.error("Usage: tr [-cds] STRING1 [STRING2]").await;
        return Ok(1);
    };
    let set1 = tr_set(set1);
    let set2 = sets.get(1).map(|s| tr_set(s));
    let mut map: [u16; 256] = std::array::from_fn(|i| i as u16);
    let mut squeeze_set = [false; 256];
    if delete {
        for b in &set1 {
            map[usize::from(*b)] = u16::MAX;
        }
        if let Some(s2) = &set2 {
            for b in s2 {
                squeeze_set[usize::from(*b)] = true;
            }
        }
    } else if let Some(s2) = set2.as_ref().filter(|s| !s.is_empty()) {
        // A short SET2 is padded with its last character.
        let last = s2[s2.len() - 1];
        for (i, b) in set1.iter().enumerate() {
            map[usize::from(*b)] = u16::from(*s2.get(i).unwrap_or(&last));
        }
        for b in s2 {
            squeeze_set[usize::from(*b)] = true;
        }
    } else {
        for b in &set1 {
            squeeze_set[usize::from(*b)] = true;
        }
    }
    let mut last_out: Option<u8> = None;
    loop {
        let chunk = io.stdin.read(READ_CHUNK).await?;
        if chunk.is_empty() {
            return Ok(0);
        }
        let mut out = Vec::with_capacity(chunk.len());
        for b in chunk {
            let m = map[usize::from(b)];
            if m == u16::MAX {
                continue;
            }
            let m = m as u8;
            if squeeze && squeeze_set[usize::from(m)] && last_out == Some(m) {
                continue;
            }
            last_out = Some(m);
            out.push(m);
        }
        io.stdout.write_all(&out).await?;
    }
}

// ---------- sleep / yes / seq ----------

fn duration_arg(s: &str) -> Option<Duration> {
    let (num, mult) = match s.as_bytes().last() {
        Some(b's') => (&s[..s.len() - 1], 1.0),
        Some(b'm') => (&s[..s.len() - 1], 60.0),
        Some(b'h') => (&s[..s.len() - 1], 3600.0),
        Some(b'd') => (&s[..s.len() - 1], 86400.0),
        _ => (s, 1.0),
    };
    let v: f64 = num.parse().ok()?;
    let secs = v * mult;
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs.min(1e12)))
}

async fn sleep(args: &[String], io: &mut Stdio) -> io::Result<i32> {
    if args.is_empty() {
        io.error("Usage: sleep [N]...").await;
        return Ok(1);
    }
    let mut total = Duration::ZERO;
    for a in args {
        match duration_arg(a) {
            Some(d) => total = total.saturating_add(d),
            None => {
                io.error(format!("sleep: invalid number '{a}'")).await;
                return Ok(1);
            }
        }
    }
    tokio::time::sleep(total).await;
    Ok(0)
}

async fn yes(args: &[String], io: &mut Stdio) -> io::Result<i32> {
    let mut line = if args.is_empty() {
        "y".to_string()
    } else {
        args.join(" ")
    };
    line.push('\n');
    let block = line.repeat((4096 / line.len()).max(1));
    loop {
        io.stdout.write_all(block.as_bytes()).await?;
    }
}

/// Digits after the decimal point.
fn decimals(s: &str) -> usize {
    s.split_once('.').map_or(0, |(_, f)| f.len())
}

async fn seq(args: &[String], io: &mut Stdio) -> io::Result<i32> {
    let mut sep = "\n".to_string();
    let mut rest = args;
    while rest.first().map(String::as_str) == Some("-s") {
        sep = rest.get(1).cloned().unwrap_or_default();
        rest = rest.get(2..).unwrap_or_default();
    }
    let nums: Vec<f64> = match rest
        .iter()
        .map(|a| a.parse::<f64>().map_err(|_| a))
        .collect::<Result<Vec<_>, _>>()
    {
        Ok(n) if (1..=3).contains(&n.len()) => n,
        Ok(_) => {
            io.error("Usage: seq [-w] [-s SEP] [FIRST [INC]] LAST")
                .await;
            return Ok(1);
        }
        Err(a) => {
            io.error(format!("seq: invalid number '{a}'")).await;
            return Ok(1);
        }
    };
    let (first, inc, last) = match nums[..] {
        [l] => (1.0, 1.0, l),
        [f, l] => (f, 1.0, l),
        [f, i, l] => (f, i, l),
        _ => unreachable!("checked 1..=3"),
    };
    if inc == 0.0 {
        io.error("seq: increment must not be 0").await;
        return Ok(1);
    }
    let precision = rest.iter().map(|a| decimals(a)).max().unwrap_or(0);
    let mut out = String::new();
    let mut k = 0u64;
    loop {
        let x = first + inc * k as f64;
        if (inc > 0.0 && x > last) || (inc < 0.0 && x < last) {
            break;
        }
        if k > 0 {
            out.push_str(&sep);
        }
        out.push_str(&format!("{x:.precision$}"));
        k += 1;
        if out.len() >= READ_CHUNK {
            io.stdout.write_all(out.as_bytes()).await?;
            out.clear();
        }
    }
    if k > 0 {
        out.push('\n');
    }
    io.stdout.write_all(out.as_bytes()).await?;
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_follow_printf_and_echo_rules() {
        assert_eq!(unescape(br"a\tb\n", EscapeStyle::Format).0, b"a\tb\n");
        assert_eq!(unescape(br"\101\0102", EscapeStyle::Format).0, b"A\x082");
        assert_eq!(unescape(br"\0101", EscapeStyle::Echo).0, b"A");
        assert_eq!(
            unescape(br"\303\251", EscapeStyle::Format).0,
            "é".as_bytes()
        );
        assert_eq!(unescape(br"\x41\q", EscapeStyle::Format).0, b"A\\q");
        assert_eq!(unescape(br"a\cb", EscapeStyle::Echo), (b"a".to_vec(), true));
        assert_eq!(unescape(br"\\", EscapeStyle::Format).0, b"\\");
    }

    #[test]
    fn tr_sets_expand_ranges_classes_and_escapes() {
        assert_eq!(tr_set(r"\0"), vec![0]);
        assert_eq!(tr_set("a-e"), b"abcde");
        assert_eq!(tr_set("[:digit:]x"), b"0123456789x");
        assert_eq!(tr_set(r"\n\t\\"), b"\n\t\\");
        assert_eq!(tr_set("z-a"), b"z-a");
    }

    #[test]
    fn numbers_and_sizes_parse_as_busybox() {
        assert_eq!(printf_number("42"), Some(42));
        assert_eq!(printf_number("-0x10"), Some(-16));
        assert_eq!(printf_number("010"), Some(8));
        assert_eq!(printf_number("'A"), Some(65));
        assert_eq!(printf_number("abc"), None);
        assert_eq!(printf_number(""), None);
        assert_eq!(size_arg("2k"), Some(2048));
        assert_eq!(size_arg("x"), None);
        assert_eq!(duration_arg("1.5"), Some(Duration::from_millis(1500)));
        assert_eq!(duration_arg("2m"), Some(Duration::from_secs(120)));
        assert_eq!(duration_arg("-1"), None);
    }

    #[test]
    fn wc_pads_like_busybox() {
        assert_eq!(wc_line([0, 0, 3], [false, false, true], 1, None), "3\n");
        assert_eq!(
            wc_line([1, 0, 3], [true, false, true], 2, None),
            "        1         3\n"
        );
        assert_eq!(
            wc_line([0, 0, 3], [false, false, true], 1, Some("f")),
            "        3 f\n"
        );
    }

    #[test]
    fn programs_are_found_by_base_name_and_options_checked() {
        assert_eq!(Program::find("/usr/bin/head"), Some(Program::Head));
        assert_eq!(Program::find("exit"), Some(Program::Exit));
        assert_eq!(Program::find("/bin/exit"), None);
        assert_eq!(Program::find("awk"), None);
        let argv = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(Program::Tr.check(&argv(&["tr", "-c", "a", "b"])).is_err());
        assert!(Program::Tr.check(&argv(&["tr", "-ds", "a", "b"])).is_ok());
        assert!(Program::Cat.check(&argv(&["cat", "-n"])).is_err());
        assert!(Program::Head.check(&argv(&["head", "-q", "f"])).is_err());
        assert!(Program::Head.check(&argv(&["head", "a", "b"])).is_err());
        assert!(Program::Head.check(&argv(&["head", "-c", "x"])).is_ok());
        assert!(Program::Wc.check(&argv(&["wc", "-m"])).is_err());
        assert!(Program::Seq.check(&argv(&["seq", "-w", "3"])).is_err());
        assert!(Program::Seq.check(&argv(&["seq", "-s", ",", "-3"])).is_ok());
    }
}

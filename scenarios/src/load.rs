//! Loading scenario files: YAML (serde-saphyr) into [`Scenario`], with errors that name
//! `file:line:column` and the field, rendered like rustc's diagnostics.
//!
//! Columns are 1-based and count characters, as serde-saphyr's do; text is only ever sliced
//! at byte offsets converted from them ([`byte_at`]). Every value the run turns into time is
//! checked here against its accepted range, so a file that loads never overflows a clock.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::schema::{Scenario, Step};

/// The longest `advance_time` step, in seconds: a step may take at most this long
/// ([`crate::host::STEP_LIMIT`]).
pub const MAX_ADVANCE_SECS: f64 = crate::host::STEP_LIMIT.as_secs() as f64;

/// The longest `run_secs` of a scripted program, in seconds (a day, as fault durations).
pub const MAX_RUN_SECS: f64 = sim_agent::fault::rule::MAX_DURATION.as_secs() as f64;

/// The byte offset of the 1-based character column `column` of `line` (its end if beyond).
pub fn byte_at(line: &str, column: usize) -> usize {
    line.char_indices()
        .nth(column.saturating_sub(1))
        .map_or(line.len(), |(i, _)| i)
}

/// The 1-based character column of byte offset `byte` of `line`.
/// The lines of a YAML text as YAML counts them: `\r\n`, a lone `\r` and `\n` each end a
/// line (`str::lines` knows no lone `\r`, so errors would point past the text).
pub fn yaml_lines(text: &str) -> impl Iterator<Item = &str> {
    let mut rest = Some(text);
    std::iter::from_fn(move || {
        let t = rest?;
        match t.find(['\r', '\n']) {
            Some(i) => {
                let skip = if t[i..].starts_with("\r\n") { 2 } else { 1 };
                rest = Some(&t[i + skip..]).filter(|r| !r.is_empty());
                Some(&t[..i])
            }
            None => {
                rest = None;
                Some(t)
            }
        }
    })
}

fn column_of(line: &str, byte: usize) -> usize {
    line.get(..byte).map_or(0, |s| s.chars().count()) + 1
}

/// A scenario file that could not be loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadError {
    /// The file.
    pub file: PathBuf,
    /// 1-based line (0 when unknown).
    pub line: usize,
    /// 1-based column (0 when unknown).
    pub column: usize,
    /// What is wrong, naming the field.
    pub message: String,
    /// The offending source line, for the rendering.
    pub source_line: String,
}

impl std::error::Error for LoadError {}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "error: {}", self.message)?;
        write!(
            f,
            "  --> {}:{}:{}",
            self.file.display(),
            self.line,
            self.column
        )?;
        if self.line > 0 {
            let gutter = self.line.to_string().len();
            write!(
                f,
                "\n{:gutter$} |\n{} | {}\n{:gutter$} | {}^",
                "",
                self.line,
                self.source_line,
                "",
                " ".repeat(self.column.saturating_sub(1)),
            )?;
        }
        Ok(())
    }
}

fn located(file: &Path, text: &str, line: usize, column: usize, message: String) -> LoadError {
    LoadError {
        file: file.to_path_buf(),
        line,
        column,
        message,
        source_line: yaml_lines(text)
            .nth(line.saturating_sub(1))
            .unwrap_or_default()
            .to_string(),
    }
}

/// The first line of a serde-saphyr message, without its own `error: line N column M: `.
fn plain_message(e: &serde_saphyr::Error) -> String {
    let text = e.to_string();
    let mut first = text.lines().next().unwrap_or_default().trim();
    first = first.strip_prefix("error: ").unwrap_or(first);
    if let Some(rest) = first.strip_prefix("line ")
        && let Some((_, msg)) = rest.split_once(": ")
    {
        first = msg;
    }
    first.to_string()
}

fn indent_of(l: &str) -> usize {
    l.len() - l.trim_start().len()
}

/// The mapping key a line (from its indentation) starts with, if any.
fn key_of(s: &str) -> Option<String> {
    let s = s.trim_start().trim_start_matches("- ").trim_start();
    let (k, _) = s.split_once(':')?;
    let k = k.trim();
    (!k.is_empty() && !k.contains(' ') && !k.starts_with(['{', '[', '"', '\'', '#']))
        .then(|| k.to_string())
}

/// The field path of a position in block-style YAML (`steps[1].create_container.args`),
/// found from the indentation of the lines above it.
pub fn field_path(text: &str, line: usize, column: usize) -> String {
    let lines: Vec<&str> = yaml_lines(text).collect();
    let Some(here) = lines.get(line.wrapping_sub(1)) else {
        return String::new();
    };
    let mut parts: Vec<String> = Vec::new();
    let col = byte_at(here, column);
    // A flow mapping on this line: the key just before the column.
    let before = &here[..col];
    if let Some(open) = before.rfind('{') {
        let inner = &before[open + 1..];
        if let Some(k) = inner.rsplit(',').next().and_then(key_of) {
            parts.push(k);
        }
        if let Some(k) = key_of(&here[..open]) {
            parts.push(k);
        }
    } else if let Some(k) = key_of(&here[col..]) {
        parts.push(k);
    } else if let Some(k) = key_of(here) {
        // A value on a `key: value` line.
        parts.push(k);
    }
    let mut indent = indent_of(here);
    let mut i = line - 1;
    // The line itself may be a sequence item (`  - bogus: 1`).
    let mut pending_item = here.trim_start().starts_with("- ").then(|| indent_of(here));
    loop {
        if let Some(item_indent) = pending_item.take() {
            // Count the items at this indentation up to line i, back to the parent key.
            let mut index = 0;
            let mut j = i as isize;
            while j >= 0 {
                let l = lines[j as usize];
                if l.trim().is_empty() || l.trim_start().starts_with('#') {
                    j -= 1;
                    continue;
                }
                let ind = indent_of(l);
                if ind < item_indent || (ind == item_indent && !l.trim_start().starts_with("- ")) {
                    break;
                }
                if ind == item_indent {
                    index += 1;
                }
                j -= 1;
            }
            parts.push(format!("[{}]", index - 1));
            indent = item_indent;
        }
        if i == 0 {
            break;
        }
        i -= 1;
        let l = lines[i];
        if l.trim().is_empty() || l.trim_start().starts_with('#') {
            continue;
        }
        let ind = indent_of(l);
        let t = l.trim_start();
        if t.starts_with("- ") && ind < indent {
            // An item holding a mapping whose first key is on the item line.
            if let Some(k) = key_of(t)
                && indent > ind + 2
            {
                parts.push(k);
            }
            pending_item = Some(ind);
            continue;
        }
        if ind < indent
            && let Some(k) = key_of(t)
        {
            parts.push(k);
            indent = ind;
        }
    }
    parts.reverse();
    let mut out = String::new();
    for p in parts {
        if !out.is_empty() && !p.starts_with('[') {
            out.push('.');
        }
        out.push_str(&p);
    }
    out
}

/// Parses scenario text; `file` names it in errors.
pub fn parse(file: &Path, text: &str) -> Result<Scenario, LoadError> {
    let scenario: Scenario = serde_saphyr::from_str(text).map_err(|e| {
        let (line, column) = e
            .location()
            .map(|l| (l.line() as usize, l.column() as usize))
            .unwrap_or((0, 0));
        let path = field_path(text, line, column);
        let message = if path.is_empty() {
            plain_message(&e)
        } else {
            format!("{path}: {}", plain_message(&e))
        };
        located(file, text, line, column, message)
    })?;
    validate(file, text, &scenario)?;
    Ok(scenario)
}

/// Loads and parses a scenario file.
pub fn load(file: &Path) -> Result<Scenario, LoadError> {
    let text = std::fs::read_to_string(file).map_err(|e| LoadError {
        file: file.to_path_buf(),
        line: 0,
        column: 0,
        message: format!("cannot read: {e}"),
        source_line: String::new(),
    })?;
    parse(file, &text)
}

/// The position (line, character column) of the first line that contains `needle` (for
/// errors found after parsing).
fn find(text: &str, needle: &str) -> (usize, usize) {
    find_nth(text, needle, 0, 0)
}

/// The position of the `nth` (from 0) line at or after line `from` (0-based) that contains
/// `needle`, outside comments.
fn find_nth(text: &str, needle: &str, nth: usize, from: usize) -> (usize, usize) {
    yaml_lines(text)
        .enumerate()
        .skip(from)
        .filter(|(_, l)| !l.trim_start().starts_with('#'))
        .filter_map(|(i, l)| l.find(needle).map(|c| (i + 1, column_of(l, c))))
        .nth(nth)
        .unwrap_or((0, 0))
}

/// Whether `secs` is a number of seconds in `0..=max` (not negative, NaN or infinite).
fn seconds_in_range(secs: f64, max: f64) -> bool {
    secs.is_finite() && (0.0..=max).contains(&secs)
}

/// Checks what the types cannot: rule syntax, known containers, the agent version.
fn validate(file: &Path, text: &str, s: &Scenario) -> Result<(), LoadError> {
    let err = |needle: &str, message: String| {
        let (line, column) = find(text, needle);
        Err(located(file, text, line, column, message))
    };
    if s.name.trim().is_empty() {
        return err("name", "name: must not be empty".into());
    }
    for (i, rule) in s.faults.iter().enumerate() {
        if let Err(e) = rule.parse::<sim_agent::fault::Rule>() {
            let (line, col) = find(text, rule.as_str());
            let column = if line > 0 { col + e.column - 1 } else { 0 };
            return Err(located(
                file,
                text,
                line,
                column,
                format!("faults[{i}]: {}", e.message),
            ));
        }
    }
    if let Some(v) = &s.config.agent_version
        && v.parse::<sim_agent::AgentVersion>().is_err()
    {
        return err(
            v,
            format!("config.agent_version: {v:?} is not a version like 3.19.1"),
        );
    }
    for (cid, p) in &s.guest.programs {
        if let Some(secs) = p.run_secs
            && !seconds_in_range(secs, MAX_RUN_SECS)
        {
            let (from, _) = find_nth(text, &format!("{cid}:"), 0, find(text, "programs").0);
            let (line, column) = find_nth(text, "run_secs", 0, from.saturating_sub(1));
            return Err(located(
                file,
                text,
                line,
                column,
                format!(
                    "guest.programs.{cid}.run_secs: {secs:?} is out of range: expected 0 to {MAX_RUN_SECS} seconds"
                ),
            ));
        }
    }
    let mut containers: Vec<&str> = Vec::new();
    let mut sandbox = false;
    let mut advances = 0;
    for (i, step) in s.steps.iter().enumerate() {
        let known = |c: &str, containers: &Vec<&str>| containers.contains(&c);
        match step {
            Step::CreateSandbox(_) => sandbox = true,
            Step::CreateContainer(c) => {
                if !sandbox {
                    return err(
                        "create_container",
                        format!("steps[{i}].create_container: no create_sandbox step before it"),
                    );
                }
                if c.args.is_empty() {
                    return err(
                        "args",
                        format!("steps[{i}].create_container.args: must not be empty"),
                    );
                }
                containers.push(&c.id);
            }
            Step::Start(c)
            | Step::Wait(c)
            | Step::Stop(c)
            | Step::Pause(c)
            | Step::Resume(c)
            | Step::Stats(c)
            | Step::PushOom(c) => {
                let c = c.split('/').next().unwrap_or_default();
                if !known(c, &containers) {
                    return err(
                        c,
                        format!("steps[{i}]: container {c:?} is not created by an earlier step"),
                    );
                }
            }
            Step::AdvanceTime(secs) => {
                if !seconds_in_range(*secs, MAX_ADVANCE_SECS) {
                    let (line, column) = find_nth(text, "advance_time", advances, 0);
                    return Err(located(
                        file,
                        text,
                        line,
                        column,
                        format!(
                            "steps[{i}].advance_time: {secs:?} is out of range: expected 0 to {MAX_ADVANCE_SECS} seconds"
                        ),
                    ));
                }
                advances += 1;
            }
            Step::AddFault(rule) => {
                if let Err(e) = rule.parse::<sim_agent::fault::Rule>() {
                    let (line, col) = find(text, rule.as_str());
                    return Err(located(
                        file,
                        text,
                        line,
                        if line > 0 { col + e.column - 1 } else { 0 },
                        format!("steps[{i}].add_fault: {}", e.message),
                    ));
                }
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_paths_follow_indentation_and_sequences() {
        let text = "name: a\nsteps:\n  - create_sandbox: {}\n  - create_container:\n      id: c1\n      argz: [x]\n  - bogus: 1\nconfig: { persona: java }\n";
        assert_eq!(field_path(text, 6, 7), "steps[1].create_container.argz");
        assert_eq!(field_path(text, 7, 5), "steps[2].bogus");
        assert_eq!(field_path(text, 8, 20), "config.persona");
        assert_eq!(field_path(text, 1, 1), "name");
    }

    #[test]
    fn columns_count_characters_not_bytes() {
        // Used to panic: the column of `bogus` sliced the line inside an `é`.
        let text = "name: a\nsteps:\n  - create_sandbox: { id: ééé, bogus: 1 }\n";
        let ascii = text.replace('é', "e");
        assert_eq!(field_path(text, 3, 32), field_path(&ascii, 3, 32));
        let e = parse(Path::new("x.yaml"), text).unwrap_err();
        assert_eq!((e.line, e.column), (3, 32), "{e}");
        assert!(e.message.contains("bogus"), "{e}");
        assert!(
            e.to_string().contains(&format!("|{}^", " ".repeat(32))),
            "{e}"
        );
        // A rule after non-ASCII text: its column counts characters too.
        let text = "name: a\nfaults: ['Check{sandbox=\"é\"}=hang', 'Check=explode']\nsteps: []\n";
        let e = parse(Path::new("x.yaml"), text).unwrap_err();
        assert_eq!((e.line, e.column), (2, 44), "{e}");
        assert_eq!(byte_at("ééx", 3), 4);
        assert_eq!(byte_at("é", 9), 2);
    }

    #[test]
    fn times_out_of_range_are_located_errors() {
        for (value, shown) in [
            ("1e300", "1e300"),
            (".inf", "inf"),
            ("-1", "-1.0"),
            (".nan", "NaN"),
            ("3601", "3601.0"),
        ] {
            let text = format!("name: a\nsteps:\n  - advance_time: 1\n  - advance_time: {value}\n");
            let e = parse(Path::new("x.yaml"), &text).unwrap_err();
            assert_eq!((e.line, e.column), (4, 5), "{value}: {e}");
            assert_eq!(
                e.message,
                format!(
                    "steps[1].advance_time: {shown} is out of range: expected 0 to 3600 seconds"
                ),
                "{value}"
            );
        }
        let text = "name: a\nguest:\n  programs:\n    c0: { run_secs: 1 }\n    c1:\n      run_secs: -2\nsteps: []\n";
        let e = parse(Path::new("x.yaml"), text).unwrap_err();
        assert_eq!((e.line, e.column), (6, 7), "{e}");
        assert!(
            e.message
                .contains("guest.programs.c1.run_secs: -2.0 is out of range"),
            "{e}"
        );
        parse(
            Path::new("x.yaml"),
            "name: a\nsteps:\n  - advance_time: 3600\n  - advance_time: 0\n",
        )
        .unwrap();
    }
}

//! Loading scenario files: YAML (serde-saphyr) into [`Scenario`], with errors that name
//! `file:line:column` and the field, rendered like rustc's diagnostics.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::schema::{Scenario, Step};

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
        source_line: text
            .lines()
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
    let lines: Vec<&str> = text.lines().collect();
    let Some(here) = lines.get(line.wrapping_sub(1)) else {
        return String::new();
    };
    let mut parts: Vec<String> = Vec::new();
    let col = column.saturating_sub(1).min(here.len());
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

/// The position of the first line that contains `needle` (for errors found after parsing).
fn find(text: &str, needle: &str) -> (usize, usize) {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim_start().starts_with('#'))
        .find_map(|(i, l)| l.find(needle).map(|c| (i + 1, c + 1)))
        .unwrap_or((0, 0))
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
    let mut containers: Vec<&str> = Vec::new();
    let mut sandbox = false;
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
}

//! Loading scenario files: YAML (serde-saphyr) into [`Scenario`], with errors that name
//! `file:line:column` and the field, rendered like rustc's diagnostics.
//!
//! Parse, don't validate: the types of [`crate::schema`] hold only what runs as written, so
//! serde's conversion is the check, and its error is located at the value that is wrong.
//! What the types cannot say is checked here, once, on the parsed scenario: a step that names
//! a container or exec needs an earlier step that creates it (`create_sandbox` before any
//! container), a `remove_fault` an earlier rule with its text, and the containers that
//! `guest.programs` and the `expect` maps name must be created by some step.
//!
//! Locations come from the YAML parser, never from searching the text: serde-saphyr's error
//! locations for what serde rejects, and for the checks after parsing a [`Node`] tree of the
//! same text with every node's location ([`serde_saphyr::Spanned`]), built only when there is
//! an error to place. The same tree names the field path of a serde error
//! (`steps[1].create_container.argz`) and finds the first of two duplicate keys.
//!
//! Columns are 1-based and count characters, as serde-saphyr's do; text is only ever sliced
//! at byte offsets converted from them ([`byte_at`]).

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::{Location, Spanned};
use sim_agent::fault::Rule;

use crate::schema::{Scenario, Step};

/// How many characters of the offending line a rendered error shows on each side of the
/// column; a longer line is cut (`...`) so a 200 KB line does not fill the terminal.
pub const SNIPPET_RADIUS: usize = 60;

/// The byte offset of the 1-based character column `column` of `line` (its end if beyond).
pub fn byte_at(line: &str, column: usize) -> usize {
    line.char_indices()
        .nth(column.saturating_sub(1))
        .map_or(line.len(), |(i, _)| i)
}

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

/// A scenario file that could not be loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadError {
    /// The file.
    pub file: PathBuf,
    /// 1-based line (0 when the error is about the whole file, e.g. it cannot be read).
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
        if self.line == 0 {
            return write!(f, "  --> {}", self.file.display());
        }
        write!(
            f,
            "  --> {}:{}:{}",
            self.file.display(),
            self.line,
            self.column
        )?;
        let (snippet, caret) = window(&self.source_line, self.column);
        let gutter = self.line.to_string().len();
        write!(
            f,
            "\n{:gutter$} |\n{} | {}\n{:gutter$} | {}^",
            "",
            self.line,
            snippet,
            "",
            " ".repeat(caret),
        )
    }
}

/// The part of `line` around the 1-based character `column` (at most [`SNIPPET_RADIUS`]
/// characters each side, `...` where it is cut) and the caret's offset in it.
fn window(line: &str, column: usize) -> (String, usize) {
    let chars: Vec<char> = line.chars().collect();
    let at = column.saturating_sub(1).min(chars.len());
    let start = at.saturating_sub(SNIPPET_RADIUS);
    let end = (at + SNIPPET_RADIUS).min(chars.len());
    let mut out = String::new();
    let mut caret = at - start;
    if start > 0 {
        out.push_str("...");
        caret += 3;
    }
    out.extend(&chars[start..end]);
    if end < chars.len() {
        out.push_str("...");
    }
    (out, caret)
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

/// A YAML node with the location it starts at: the same text as the scenario, read without
/// a schema, for locating what the checks after parsing find (and duplicate keys).
#[derive(Debug)]
pub struct Node(Spanned<Kind>);

/// What a [`Node`] is.
#[derive(Debug)]
pub enum Kind {
    /// A scalar, as text.
    Scalar(String),
    /// A sequence.
    Seq(Vec<Node>),
    /// A mapping, its entries in order (duplicates kept).
    Map(Vec<(Node, Node)>),
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Node(Spanned::<Kind>::deserialize(d)?))
    }
}

impl<'de> Deserialize<'de> for Kind {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Kind;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any YAML node")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Kind, E> {
                Ok(Kind::Scalar(v.into()))
            }

            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Kind, E> {
                Ok(Kind::Scalar(v.to_string()))
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Kind, E> {
                Ok(Kind::Scalar(v.to_string()))
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Kind, E> {
                Ok(Kind::Scalar(v.to_string()))
            }

            fn visit_i128<E: de::Error>(self, v: i128) -> Result<Kind, E> {
                Ok(Kind::Scalar(v.to_string()))
            }

            fn visit_u128<E: de::Error>(self, v: u128) -> Result<Kind, E> {
                Ok(Kind::Scalar(v.to_string()))
            }

            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Kind, E> {
                Ok(Kind::Scalar(v.to_string()))
            }

            fn visit_unit<E: de::Error>(self) -> Result<Kind, E> {
                Ok(Kind::Scalar(String::new()))
            }

            fn visit_none<E: de::Error>(self) -> Result<Kind, E> {
                Ok(Kind::Scalar(String::new()))
            }

            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Kind, D::Error> {
                Kind::deserialize(d)
            }

            fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Kind, E> {
                Ok(Kind::Scalar(String::from_utf8_lossy(v).into_owned()))
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<Kind, A::Error> {
                let mut items = Vec::new();
                while let Some(n) = a.next_element()? {
                    items.push(n);
                }
                Ok(Kind::Seq(items))
            }

            fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Kind, A::Error> {
                let mut entries = Vec::new();
                while let Some(k) = a.next_key::<Node>()? {
                    let v = a.next_value()?;
                    entries.push((k, v));
                }
                Ok(Kind::Map(entries))
            }
        }
        d.deserialize_any(V)
    }
}

/// One step of a path into the tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seg<'a> {
    /// A mapping's value for this key.
    Key(&'a str),
    /// A mapping's key itself (to point at the key, not its value).
    KeyOf(&'a str),
    /// A sequence's item.
    Index(usize),
}

impl Node {
    /// The tree of `text` (duplicate keys kept), if it is YAML at all.
    pub fn parse(text: &str) -> Option<Node> {
        let options = serde_saphyr::options! {
            duplicate_keys: serde_saphyr::DuplicateKeyPolicy::PassThrough,
            non_finite_float_policy: serde_saphyr::NonFiniteFloatPolicy::AsString,
        };
        serde_saphyr::from_str_with_options(text, options).ok()
    }

    fn location(&self) -> (usize, usize) {
        let l = &self.0.referenced;
        (l.line() as usize, l.column() as usize)
    }

    fn get(&self, path: &[Seg<'_>]) -> Option<&Node> {
        let Some((first, rest)) = path.split_first() else {
            return Some(self);
        };
        let next = match (&self.0.value, first) {
            (Kind::Map(entries), Seg::Key(k)) => entries
                .iter()
                .rev()
                .find(|(key, _)| key.scalar() == Some(k))
                .map(|(_, v)| v),
            (Kind::Map(entries), Seg::KeyOf(k)) => entries
                .iter()
                .find(|(key, _)| key.scalar() == Some(k))
                .map(|(key, _)| key),
            (Kind::Seq(items), Seg::Index(i)) => items.get(*i),
            _ => None,
        }?;
        next.get(rest)
    }

    /// The text of the scalar (not a mapping's key) that starts at `(line, column)`.
    fn scalar_at(&self, line: usize, column: usize) -> Option<&str> {
        let mut all = Vec::new();
        self.walk(&mut Vec::new(), &mut all);
        all.into_iter()
            .filter(|(_, n, key)| !key && n.location() == (line, column))
            .find_map(|(_, n, _)| n.scalar())
    }

    fn scalar(&self) -> Option<&str> {
        match &self.0.value {
            Kind::Scalar(s) => Some(s),
            _ => None,
        }
    }

    /// Every node in document order with its field path and whether it is a mapping's key.
    fn walk<'a>(&'a self, path: &mut Vec<String>, out: &mut Vec<(String, &'a Node, bool)>) {
        out.push((render_path(path), self, false));
        match &self.0.value {
            Kind::Scalar(_) => {}
            Kind::Seq(items) => {
                for (i, n) in items.iter().enumerate() {
                    path.push(format!("[{i}]"));
                    n.walk(path, out);
                    path.pop();
                }
            }
            Kind::Map(entries) => {
                for (k, v) in entries {
                    path.push(k.scalar().unwrap_or("?").to_string());
                    out.push((render_path(path), k, true));
                    v.walk(path, out);
                    path.pop();
                }
            }
        }
    }

    /// The field path of the last node that starts at or before `(line, column)`: the value
    /// or key an error there is about. Of the nodes that start there, the innermost (a key
    /// rather than the mapping it starts), or with `outer` the mapping itself (the one a
    /// missing field is missing from: a block mapping starts at its first key, a flow
    /// mapping's error points at its first key).
    pub fn path_at(&self, line: usize, column: usize, outer: bool) -> String {
        let mut all = Vec::new();
        self.walk(&mut Vec::new(), &mut all);
        let Some(at) = all
            .iter()
            .map(|(_, n, _)| n.location())
            .filter(|l| *l <= (line, column) && l.0 > 0)
            .max()
        else {
            return String::new();
        };
        let mut here = all.iter().filter(|(_, n, _)| n.location() == at);
        let found = if outer { here.next() } else { here.next_back() };
        match found {
            // The mapping the key is in.
            Some((p, _, true)) if outer => match p.rfind(['.', '[']) {
                Some(i) => p[..i].to_string(),
                None => String::new(),
            },
            Some((p, _, _)) => p.clone(),
            None => String::new(),
        }
    }

    /// The line of the first key equal to the one at `(line, column)` in the same mapping.
    fn first_duplicate(&self, line: usize, column: usize) -> Option<(String, usize)> {
        match &self.0.value {
            Kind::Scalar(_) => None,
            Kind::Seq(items) => items.iter().find_map(|n| n.first_duplicate(line, column)),
            Kind::Map(entries) => {
                if let Some((dup, _)) = entries.iter().find(|(k, _)| k.location() == (line, column))
                {
                    let name = dup.scalar()?;
                    let first = entries.iter().find(|(k, _)| k.scalar() == Some(name))?;
                    return Some((name.to_string(), first.0.location().0));
                }
                entries.iter().find_map(|(k, v)| {
                    k.first_duplicate(line, column)
                        .or_else(|| v.first_duplicate(line, column))
                })
            }
        }
    }
}

fn render_path(parts: &[String]) -> String {
    let mut out = String::new();
    for p in parts {
        if !out.is_empty() && !p.starts_with('[') {
            out.push('.');
        }
        out.push_str(p);
    }
    out
}

/// `unknown WHAT "found": did you mean "x"? (expected one of a, b)`, without the question
/// when no name is near.
fn unknown_name(what: &str, found: &str, expected: &[&'static str]) -> String {
    let list = expected.join(", ");
    match sim_agent::op::suggest(found, expected.iter().copied()) {
        Some(n) => {
            format!("unknown {what} {found:?}: did you mean {n:?}? (expected one of {list})")
        }
        None => format!("unknown {what} {found:?}: expected one of {list}"),
    }
}

/// The message of a serde-saphyr error and where it is, without the library's own location
/// text or advice meant for the program rather than the user.
fn describe(e: &serde_saphyr::Error, tree: Option<&Node>) -> (String, String, Location) {
    use serde_saphyr::Error as E;
    let e = e.without_snippet();
    let location = e.location().unwrap_or(Location::UNKNOWN);
    let (line, column) = (location.line() as usize, location.column() as usize);
    let outer = matches!(e, E::SerdeMissingField { .. });
    let path = tree
        .map(|t| t.path_at(line, column, outer))
        .unwrap_or_default();
    let message = match e {
        E::SerdeUnknownField {
            field, expected, ..
        } => unknown_name("field", field, expected),
        E::SerdeUnknownVariant {
            variant, expected, ..
        } => {
            // A step's name is a sequence item (`steps[2]`) or its key (`steps[2].strat`).
            let in_steps = path
                .strip_prefix("steps[")
                .and_then(|p| p.split_once(']'))
                .is_some_and(|(_, rest)| {
                    rest.is_empty() || (rest.starts_with('.') && !rest[1..].contains(['.', '[']))
                });
            unknown_name(if in_steps { "step" } else { "value" }, variant, expected)
        }
        E::DuplicateMappingKey { key, .. } => {
            match tree.and_then(|t| t.first_duplicate(line, column)) {
                Some((name, first)) => {
                    format!("duplicate key {name:?}: first on line {first}, again on line {line}")
                }
                None => match key {
                    Some(k) => format!("duplicate key {k:?} (on line {line})"),
                    None => format!("duplicate key on line {line}"),
                },
            }
        }
        E::SerdeMissingField { field, .. } => format!("missing field {field:?}"),
        E::Message { msg, .. } => msg.clone(),
        other => {
            let text = other.to_string();
            let suffix = format!(" at line {line}, column {column}");
            let first = text.lines().next().unwrap_or_default();
            first.strip_suffix(&suffix).unwrap_or(first).to_string()
        }
    };
    (path, message, location)
}

/// Parses scenario text; `file` names it in errors.
pub fn parse(file: &Path, text: &str) -> Result<Scenario, LoadError> {
    let scenario: Scenario = serde_saphyr::from_str(text).map_err(|e| {
        let tree = Node::parse(text);
        let (path, mut message, location) = describe(&e, tree.as_ref());
        let (line, mut column) = (location.line() as usize, location.column() as usize);
        // A fault rule that does not parse: parse the user's scalar again, as a rule, for the
        // column inside it (one further for the opening quote of a quoted scalar).
        let is_rule = path.starts_with("faults[")
            || path.ends_with(".add_fault")
            || path.ends_with(".remove_fault");
        if let Some(rule_error) = tree
            .as_ref()
            .filter(|_| is_rule)
            .and_then(|t| t.scalar_at(line, column))
            .and_then(|text| text.parse::<Rule>().err())
        {
            let opened = yaml_lines(text)
                .nth(line.saturating_sub(1))
                .and_then(|l| l.chars().nth(column.saturating_sub(1)))
                .is_some_and(|c| c == '\'' || c == '"');
            column += usize::from(opened) + rule_error.column.saturating_sub(1);
            message = rule_error.message;
        }
        let message = if path.is_empty() {
            message
        } else {
            format!("{path}: {message}")
        };
        located(file, text, line, column, message)
    })?;
    check(&scenario).map_err(|p| {
        let (line, column) = Node::parse(text)
            .and_then(|t| t.get(&p.at).map(Node::location))
            .unwrap_or((0, 0));
        located(
            file,
            text,
            line,
            column,
            format!("{}: {}", p.path, p.message),
        )
    })?;
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

/// Loads every file; a scenario whose name an earlier file already has is an error at its
/// `name` (names are unique: they name snapshots, JUnit cases and `kata-sim run NAME`).
pub fn load_all(files: &[PathBuf]) -> Vec<Result<Scenario, LoadError>> {
    let mut seen: std::collections::BTreeMap<String, (PathBuf, usize)> = Default::default();
    files
        .iter()
        .map(|file| {
            let text = std::fs::read_to_string(file).map_err(|e| LoadError {
                file: file.to_path_buf(),
                line: 0,
                column: 0,
                message: format!("cannot read: {e}"),
                source_line: String::new(),
            })?;
            let s = parse(file, &text)?;
            let (line, column) = Node::parse(&text)
                .and_then(|t| t.get(&[Seg::Key("name")]).map(Node::location))
                .unwrap_or((0, 0));
            if let Some((first, first_line)) = seen.get(&s.name) {
                return Err(located(
                    file,
                    &text,
                    line,
                    column,
                    format!(
                        "name: {:?} is already the name of {}:{first_line} (scenario names are unique)",
                        s.name,
                        first.display()
                    ),
                ));
            }
            seen.insert(s.name.clone(), (file.clone(), line));
            Ok(s)
        })
        .collect()
}

/// A problem the checks after parsing found: where in the tree, the field path, what.
struct Problem<'a> {
    at: Vec<Seg<'a>>,
    path: String,
    message: String,
}

/// The serde name of a step (its key in the file).
fn step_name(step: &Step) -> &'static str {
    match step {
        Step::CreateSandbox(_) => "create_sandbox",
        Step::CreateContainer(_) => "create_container",
        Step::Start(_) => "start",
        Step::Exec(_) => "exec",
        Step::WriteStdin(_) => "write_stdin",
        Step::CloseStdin(_) => "close_stdin",
        Step::Kill(_) => "kill",
        Step::Wait(_) => "wait",
        Step::Stop(_) => "stop",
        Step::Pause(_) => "pause",
        Step::Resume(_) => "resume",
        Step::Update(_) => "update",
        Step::Stats(_) => "stats",
        Step::DestroySandbox => "destroy_sandbox",
        Step::PushOom(_) => "push_oom",
        Step::KillGuest => "kill_guest",
        Step::WriteTerminationMessage(_) => "write_termination_message",
        Step::RemoveTerminationMessage(_) => "remove_termination_message",
        Step::AdvanceTime(_) => "advance_time",
        Step::AddFault(_) => "add_fault",
        Step::RemoveFault(_) => "remove_fault",
    }
}

/// [`parse`]'s checks after parsing, for a scenario built in code (`kata-sim shrink`'s
/// candidates): the problem's field path and message when one fails.
pub fn check_built(s: &Scenario) -> Result<(), String> {
    check(s).map_err(|p| format!("{}: {}", p.path, p.message))
}

/// What the types cannot say: every container and exec a step names is created by an
/// earlier step, containers after the sandbox, `remove_fault` names an installed rule, and
/// `guest.programs` and `expect` name containers (and execs) some step creates.
fn check(s: &Scenario) -> Result<(), Problem<'_>> {
    let mut sandbox = false;
    let mut containers: BTreeSet<&str> = BTreeSet::new();
    let mut execs: BTreeSet<(&str, &str)> = BTreeSet::new();
    let mut rules: BTreeSet<&str> = s.faults.iter().map(|r| r.text.as_str()).collect();
    for (i, step) in s.steps.iter().enumerate() {
        let name = step_name(step);
        let problem = |field: Option<&'static str>, message: String| {
            let mut at = vec![Seg::Key("steps"), Seg::Index(i), Seg::Key(name)];
            let mut path = format!("steps[{i}].{name}");
            if let Some(f) = field {
                at.push(Seg::Key(f));
                path = format!("{path}.{f}");
            }
            Problem { at, path, message }
        };
        let container = |c: &str, field| {
            if containers.contains(c) {
                Ok(())
            } else {
                Err(problem(
                    field,
                    format!("container {c:?} is not created by an earlier step"),
                ))
            }
        };
        let exec = |c: &str, e: Option<&str>, field| match e {
            Some(e) if !execs.contains(&(c, e)) => Err(problem(
                field,
                format!("exec {e:?} of container {c:?} is not created by an earlier step"),
            )),
            _ => Ok(()),
        };
        match step {
            Step::CreateSandbox(_) => sandbox = true,
            Step::CreateContainer(c) => {
                if !sandbox {
                    return Err(Problem {
                        at: vec![Seg::Key("steps"), Seg::Index(i), Seg::KeyOf(name)],
                        path: format!("steps[{i}].{name}"),
                        message: "no create_sandbox step before it".into(),
                    });
                }
                if c.termination_message_mount.is_some() && c.termination_message_path.is_none() {
                    return Err(problem(
                        Some("termination_message_mount"),
                        "needs termination_message_path: it is the destination of that path's \
                         host-file mount"
                            .into(),
                    ));
                }
                containers.insert(&c.id);
            }
            Step::Start(c)
            | Step::Stop(c)
            | Step::Pause(c)
            | Step::Resume(c)
            | Step::Stats(c)
            | Step::PushOom(c)
            | Step::RemoveTerminationMessage(c) => container(c, None)?,
            Step::Wait(target) => {
                let (c, e) = match target.split_once('/') {
                    Some((c, e)) => (c, Some(e)),
                    None => (target.as_str(), None),
                };
                container(c, None)?;
                exec(c, e, None)?;
            }
            Step::Exec(e) => {
                container(&e.container, Some("container"))?;
                execs.insert((&e.container, &e.id));
            }
            Step::WriteStdin(w) => {
                container(&w.container, Some("container"))?;
                exec(&w.container, w.exec.as_deref(), Some("exec"))?;
            }
            Step::CloseStdin(p) => {
                container(&p.container, Some("container"))?;
                exec(&p.container, p.exec.as_deref(), Some("exec"))?;
            }
            Step::Kill(k) => {
                container(&k.container, Some("container"))?;
                exec(&k.container, k.exec.as_deref(), Some("exec"))?;
            }
            Step::Update(u) => container(&u.container, Some("container"))?,
            Step::WriteTerminationMessage(t) => container(&t.container, Some("container"))?,
            Step::AddFault(r) => {
                rules.insert(&r.text);
            }
            Step::RemoveFault(r) => {
                if !rules.contains(r.text.as_str()) {
                    return Err(problem(
                        None,
                        format!(
                            "no rule {:?} is installed before it (by faults or add_fault)",
                            r.text
                        ),
                    ));
                }
            }
            Step::DestroySandbox | Step::KillGuest | Step::AdvanceTime(_) => {}
        }
    }
    // Containers and execs any step creates: what `guest` and `expect` may name.
    let names = |key: &str| match key.split_once('/') {
        Some((c, e)) => execs.contains(&(c, e)),
        None => containers.contains(key),
    };
    for key in s.guest.programs.keys() {
        if !containers.contains(key.as_str()) {
            return Err(unknown("guest", "programs", key, false));
        }
    }
    for key in s.expect.exit_codes.keys() {
        if !names(key) {
            return Err(unknown("expect", "exit_codes", key, true));
        }
    }
    for key in s.expect.stdout.keys() {
        if !names(key) {
            return Err(unknown("expect", "stdout", key, true));
        }
    }
    for key in s.expect.host_files.keys() {
        if !containers.contains(key.as_str()) {
            return Err(unknown("expect", "host_files", key, false));
        }
    }
    for key in s.expect.tasks.keys() {
        if !containers.contains(key.as_str()) {
            return Err(unknown("expect", "tasks", key, false));
        }
    }
    Ok(())
}

/// `guest.programs` or an `expect` map names a container (or `container/exec`) nobody creates.
fn unknown<'a>(section: &'a str, map: &'a str, key: &'a str, execs_too: bool) -> Problem<'a> {
    let what = if execs_too && key.contains('/') {
        "exec"
    } else {
        "container"
    };
    Problem {
        at: vec![Seg::Key(section), Seg::Key(map), Seg::KeyOf(key)],
        path: format!("{section}.{map}.{key}"),
        message: format!("{what} {key:?} is not created by any step"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(text: &str) -> LoadError {
        parse(Path::new("x.yaml"), text).unwrap_err()
    }

    #[test]
    fn field_paths_come_from_the_parsed_tree() {
        let text = "name: a\nsteps:\n  - create_sandbox: {}\n  - create_container:\n      id: c1\n      argz: [x]\n  - bogus: 1\nconfig: { persona: java }\n";
        let tree = Node::parse(text).unwrap();
        assert_eq!(tree.path_at(6, 7, false), "steps[1].create_container.argz");
        assert_eq!(tree.path_at(7, 5, false), "steps[2].bogus");
        assert_eq!(tree.path_at(8, 20, false), "config.persona");
        assert_eq!(tree.path_at(1, 1, false), "name");
        assert_eq!(tree.path_at(1, 1, true), "");
        let e = error(text);
        assert_eq!((e.line, e.column), (6, 7), "{e}");
        assert!(
            e.message.starts_with(
                "steps[1].create_container.argz: unknown field \"argz\": did you mean \"args\"?"
            ),
            "{e}"
        );
    }

    #[test]
    fn columns_count_characters_not_bytes() {
        // Used to panic: the column of `bogus` sliced the line inside an `é`.
        let text = "name: a\nsteps:\n  - create_sandbox: { id: ééé, bogus: 1 }\n";
        let e = error(text);
        assert_eq!((e.line, e.column), (3, 32), "{e}");
        assert!(e.message.contains("bogus"), "{e}");
        assert!(
            e.to_string().contains(&format!("|{}^", " ".repeat(32))),
            "{e}"
        );
        // A rule after non-ASCII text: its column counts characters too.
        let text = "name: a\nfaults: ['Check{sandbox=\"é\"}=hang', 'Check=explode']\nsteps: []\n";
        let e = error(text);
        assert_eq!((e.line, e.column), (2, 44), "{e}");
        assert_eq!(byte_at("ééx", 3), 4);
        assert_eq!(byte_at("é", 9), 2);
    }

    #[test]
    fn rule_columns_land_inside_plain_and_quoted_scalars() {
        for (text, column) in [
            ("name: a\nfaults: [Check=explode]\nsteps: []\n", 16),
            ("name: a\nfaults: [\"Check=explode\"]\nsteps: []\n", 17),
            ("name: a\nsteps:\n  - add_fault:   Check=explode\n", 24),
        ] {
            let e = error(text);
            assert_eq!(e.column, column, "{text}: {e}");
            assert!(e.message.contains("unknown action \"explode\""), "{e}");
        }
    }

    #[test]
    fn times_out_of_range_are_errors_at_the_value() {
        for (value, shown) in [
            ("1e300", "1e300"),
            (".inf", "inf"),
            ("-1", "-1.0"),
            (".nan", "NaN"),
            ("3601", "3601.0"),
        ] {
            let text = format!("name: a\nsteps:\n  - advance_time: 1\n  - advance_time: {value}\n");
            let e = error(&text);
            assert_eq!((e.line, e.column), (4, 19), "{value}: {e}");
            assert_eq!(
                e.message,
                format!(
                    "steps[1].advance_time: {shown} is out of range: expected 0 to 3600 seconds"
                ),
                "{value}"
            );
        }
        let text = "name: a\nguest:\n  programs:\n    c0: { run_secs: 1 }\n    c1:\n      run_secs: -2\nsteps: []\n";
        let e = error(text);
        assert_eq!((e.line, e.column), (6, 17), "{e}");
        assert!(
            e.message
                .starts_with("guest.programs.c1.run_secs: -2.0 is out of range"),
            "{e}"
        );
        let s = parse(
            Path::new("x.yaml"),
            "name: a\nsteps:\n  - advance_time: 3600\n  - advance_time: 0\n",
        )
        .unwrap();
        assert_eq!(s.steps.len(), 2);
    }

    #[test]
    fn a_loaded_scenario_holds_parsed_values() {
        let text = "name: typed\nconfig: { agent_version: 3.19.1 }\nfaults: ['Check=1*hang->off']\nguest:\n  programs:\n    c1: { on_signal: 3 }\nsteps:\n  - create_sandbox: {}\n  - create_container: { id: c1, args: [x], termination_message_policy: FallbackToLogsOnError }\nexpect:\n  order: [[Check, StopVM]]\n  absent: [KillVM]\n";
        let s = parse(Path::new("x.yaml"), text).unwrap();
        assert_eq!(
            s.config.agent_version,
            Some(sim_agent::AgentVersion(3, 19, 1))
        );
        assert_eq!(
            s.faults[0].target,
            sim_agent::fault::Target::Op(sim_agent::Op::Agent(sim_agent::Method::Check))
        );
        assert_eq!(
            s.guest.programs["c1"].on_signal,
            crate::schema::OnSignal::Exit(3)
        );
        assert_eq!(
            s.expect.absent,
            [sim_agent::Op::Vm(sim_agent::VmOp::KillVM)]
        );
        let Step::CreateContainer(c) = &s.steps[1] else {
            panic!("create_container")
        };
        assert_eq!(
            c.termination_message_policy,
            Some(crate::schema::TerminationMessagePolicy::FallbackToLogsOnError)
        );
    }
}

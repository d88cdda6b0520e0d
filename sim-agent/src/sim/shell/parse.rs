//! The `sh -c` language subset: words, quotes, operators and redirections, parsed into a
//! [`Script`].
//!
//! Parsing decides everything up front: a script either parses into commands the interpreter
//! can run, fails with the syntax error busybox `ash` would print (the shell then exits 2), or
//! uses something outside the subset (`$`, globs, `&`, keywords, unknown programs) and is
//! reported as [`ParseError::Unsupported`] naming the word, so the process runs until
//! signalled and the trace says why.

use super::programs::Program;

/// A parsed script: and-or lists run in order (separated by `;` or newlines).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Script {
    /// The lists, in order.
    pub lists: Vec<AndOr>,
}

/// `pipeline ( (&& | ||) pipeline )*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AndOr {
    /// The first pipeline.
    pub first: Pipeline,
    /// The rest, each with the operator before it.
    pub rest: Vec<(Connector, Pipeline)>,
}

/// `&&` or `||`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Connector {
    /// `&&`: runs when the previous status is 0.
    And,
    /// `||`: runs when the previous status is not 0.
    Or,
}

/// `command ( | command )*`; its status is the last command's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pipeline {
    /// The commands, connected stdout to stdin.
    pub commands: Vec<Command>,
}

/// One simple command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    /// The program and its arguments after quote removal; empty for a redirection-only command.
    pub argv: Vec<String>,
    /// What `argv[0]` runs, resolved at parse time.
    pub program: Option<Program>,
    /// Redirections, applied left to right.
    pub redirects: Vec<Redirect>,
    /// Preceded by `exec`: the shell ends with this command's status.
    pub exec: bool,
}

/// One redirection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redirect {
    /// The file descriptor redirected (0, 1 or 2).
    pub fd: u32,
    /// What it becomes.
    pub to: RedirectTarget,
}

/// The target of a redirection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedirectTarget {
    /// `< FILE`.
    Read(String),
    /// `> FILE`.
    Write(String),
    /// `>> FILE`.
    Append(String),
    /// `>&N`: a copy of descriptor N.
    Dup(u32),
}

/// Why a script cannot be run by the interpreter.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// A syntax error; busybox prints `sh: syntax error: ...` and exits 2.
    #[error("syntax error: {0}")]
    Syntax(String),
    /// Valid shell, but outside the subset kata-sim interprets.
    #[error("{0}")]
    Unsupported(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    /// A word after quote removal, and whether any part of it was quoted or escaped.
    Word(String, bool),
    Semi,
    Newline,
    And,
    Or,
    Pipe,
    Redir(u32, RedirOp),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RedirOp {
    Read,
    Write,
    Append,
    Dup,
}

fn unsupported(what: impl std::fmt::Display) -> ParseError {
    ParseError::Unsupported(what.to_string())
}

/// Splits a script into tokens, removing quotes.
fn lex(src: &str) -> Result<Vec<Token>, ParseError> {
    let mut out = Vec::new();
    let mut chars = src.chars().peekable();
    let mut word = String::new();
    let mut quoted = false;
    let mut in_word = false;

    macro_rules! flush {
        () => {
            if in_word {
                out.push(Token::Word(std::mem::take(&mut word), quoted));
                quoted = false;
                in_word = false;
            }
        };
    }

    while let Some(c) = chars.next() {
        match c {
            ' ' | '\t' => flush!(),
            '\n' => {
                flush!();
                out.push(Token::Newline);
            }
            '#' if !in_word => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        out.push(Token::Newline);
                        break;
                    }
                }
            }
            '\'' => {
                in_word = true;
                quoted = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => word.push(c),
                        None => {
                            return Err(ParseError::Syntax("unterminated quoted string".into()));
                        }
                    }
                }
            }
            '"' => {
                in_word = true;
                quoted = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\' | '$' | '`')) => word.push(c),
                            Some('\n') => {}
                            Some(c) => {
                                word.push('\\');
                                word.push(c);
                            }
                            None => {
                                return Err(ParseError::Syntax(
                                    "unterminated quoted string".into(),
                                ));
                            }
                        },
                        Some('$') => return Err(unsupported("\"$\" (parameter expansion)")),
                        Some('`') => return Err(unsupported("\"`\" (command substitution)")),
                        Some(c) => word.push(c),
                        None => {
                            return Err(ParseError::Syntax("unterminated quoted string".into()));
                        }
                    }
                }
            }
            '\\' => match chars.next() {
                Some('\n') => {}
                Some(c) => {
                    in_word = true;
                    quoted = true;
                    word.push(c);
                }
                // A trailing backslash is kept literally.
                None => {
                    in_word = true;
                    word.push('\\');
                }
            },
            ';' => {
                flush!();
                if chars.peek() == Some(&';') {
                    return Err(ParseError::Syntax("unexpected \";;\"".into()));
                }
                out.push(Token::Semi);
            }
            '&' => {
                flush!();
                if chars.next_if_eq(&'&').is_some() {
                    out.push(Token::And);
                } else {
                    return Err(unsupported("\"&\" (background jobs)"));
                }
            }
            '|' => {
                flush!();
                if chars.next_if_eq(&'|').is_some() {
                    out.push(Token::Or);
                } else {
                    out.push(Token::Pipe);
                }
            }
            '>' | '<' => {
                // A word made only of digits right before the operator is its descriptor.
                let fd = if in_word && !quoted && word.chars().all(|c| c.is_ascii_digit()) {
                    let fd = word
                        .parse::<u32>()
                        .map_err(|_| unsupported(format!("file descriptor {word}")))?;
                    word.clear();
                    in_word = false;
                    Some(fd)
                } else {
                    flush!();
                    None
                };
                let op = if c == '<' {
                    if chars.next_if_eq(&'<').is_some() {
                        return Err(unsupported("\"<<\" (here-documents)"));
                    }
                    if chars.next_if_eq(&'&').is_some() || chars.next_if_eq(&'>').is_some() {
                        return Err(unsupported("\"<&\"/\"<>\" redirections"));
                    }
                    RedirOp::Read
                } else if chars.next_if_eq(&'>').is_some() {
                    RedirOp::Append
                } else if chars.next_if_eq(&'&').is_some() {
                    RedirOp::Dup
                } else {
                    if chars.next_if_eq(&'|').is_some() {
                        // `>|` is `>` without noclobber.
                    }
                    RedirOp::Write
                };
                let fd = fd.unwrap_or(if op == RedirOp::Read { 0 } else { 1 });
                if fd > 2 {
                    return Err(unsupported(format!("file descriptor {fd}")));
                }
                out.push(Token::Redir(fd, op));
            }
            '$' => return Err(unsupported("\"$\" (parameter expansion)")),
            '`' => return Err(unsupported("\"`\" (command substitution)")),
            '(' | ')' => return Err(unsupported(format!("{c:?} (subshells)"))),
            '*' | '?' | '[' => return Err(unsupported(format!("{c:?} (globbing)"))),
            '~' if !in_word => return Err(unsupported("\"~\" (tilde expansion)")),
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word {
        out.push(Token::Word(word, quoted));
    }
    Ok(out)
}

/// Reserved words the subset does not interpret.
const KEYWORDS: &[&str] = &[
    "if", "then", "else", "elif", "fi", "for", "while", "until", "do", "done", "case", "esac",
    "in", "function", "{", "}", "!",
];

/// Parses a script.
pub fn parse(src: &str) -> Result<Script, ParseError> {
    let tokens = lex(src)?;
    let mut script = Script::default();
    let mut it = tokens.into_iter().peekable();
    loop {
        // Blank lines are allowed anywhere a list may start; a lone `;` is not.
        while it.next_if_eq(&Token::Newline).is_some() {}
        if it.peek().is_none() {
            break;
        }
        let first = parse_pipeline(&mut it)?;
        let mut rest = Vec::new();
        loop {
            let conn = match it.peek() {
                Some(Token::And) => Connector::And,
                Some(Token::Or) => Connector::Or,
                _ => break,
            };
            it.next();
            // A newline may follow && or ||.
            while it.next_if_eq(&Token::Newline).is_some() {}
            rest.push((conn, parse_pipeline(&mut it)?));
        }
        script.lists.push(AndOr { first, rest });
        match it.next() {
            None => break,
            Some(Token::Semi | Token::Newline) => {}
            Some(t) => return Err(ParseError::Syntax(format!("unexpected {}", show(&t)))),
        }
    }
    Ok(script)
}

fn show(t: &Token) -> String {
    match t {
        Token::Word(w, _) => format!("word {w:?}"),
        Token::Semi => "\";\"".into(),
        Token::Newline => "newline".into(),
        Token::And => "\"&&\"".into(),
        Token::Or => "\"||\"".into(),
        Token::Pipe => "\"|\"".into(),
        Token::Redir(..) => "redirection".into(),
    }
}

type Tokens = std::iter::Peekable<std::vec::IntoIter<Token>>;

fn parse_pipeline(it: &mut Tokens) -> Result<Pipeline, ParseError> {
    let mut commands = vec![parse_command(it)?];
    while it.next_if_eq(&Token::Pipe).is_some() {
        while it.next_if_eq(&Token::Newline).is_some() {}
        commands.push(parse_command(it)?);
    }
    Ok(Pipeline { commands })
}

fn parse_command(it: &mut Tokens) -> Result<Command, ParseError> {
    let mut argv: Vec<String> = Vec::new();
    let mut redirects = Vec::new();
    let mut exec = false;
    while let Some(t) = it.peek() {
        match t {
            Token::Word(..) => {
                let Some(Token::Word(w, quoted)) = it.next() else {
                    unreachable!("peeked a word")
                };
                if argv.is_empty() && !quoted {
                    if KEYWORDS.contains(&w.as_str()) {
                        return Err(unsupported(format!("{w:?} (compound commands)")));
                    }
                    if is_assignment(&w) {
                        return Err(unsupported(format!("{w:?} (variable assignment)")));
                    }
                    if w == "exec" && !exec {
                        exec = true;
                        continue;
                    }
                }
                argv.push(w);
            }
            Token::Redir(fd, op) => {
                let (fd, op) = (*fd, *op);
                it.next();
                let target = match it.next() {
                    Some(Token::Word(w, _)) => w,
                    Some(t) => return Err(ParseError::Syntax(format!("unexpected {}", show(&t)))),
                    None => return Err(ParseError::Syntax("unexpected end of file".into())),
                };
                let to = match op {
                    RedirOp::Read => RedirectTarget::Read(target),
                    RedirOp::Write => RedirectTarget::Write(target),
                    RedirOp::Append => RedirectTarget::Append(target),
                    RedirOp::Dup => match target.as_str() {
                        "0" => RedirectTarget::Dup(0),
                        "1" => RedirectTarget::Dup(1),
                        "2" => RedirectTarget::Dup(2),
                        other => return Err(unsupported(format!(">&{other}"))),
                    },
                };
                redirects.push(Redirect { fd, to });
            }
            _ => break,
        }
    }
    if argv.is_empty() && redirects.is_empty() {
        return Err(match it.peek() {
            Some(t) => ParseError::Syntax(format!("unexpected {}", show(t))),
            None if exec => unsupported("\"exec\" without a command"),
            None => ParseError::Syntax("unexpected end of file".into()),
        });
    }
    if exec && argv.is_empty() {
        return Err(unsupported("\"exec\" with only redirections"));
    }
    let program = match argv.first() {
        Some(name) => {
            let p = Program::find(name).ok_or_else(|| {
                unsupported(format!("program {name:?} is not one kata-sim interprets"))
            })?;
            p.check(&argv).map_err(ParseError::Unsupported)?;
            Some(p)
        }
        None => None,
    };
    Ok(Command {
        argv,
        program,
        redirects,
        exec,
    })
}

fn is_assignment(w: &str) -> bool {
    match w.split_once('=') {
        Some((name, _)) => {
            !name.is_empty()
                && !name.starts_with(|c: char| c.is_ascii_digit())
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(src: &str) -> Vec<Vec<String>> {
        let s = parse(src).unwrap();
        s.lists
            .iter()
            .flat_map(|l| {
                std::iter::once(&l.first)
                    .chain(l.rest.iter().map(|(_, p)| p))
                    .flat_map(|p| p.commands.iter().map(|c| c.argv.clone()))
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    #[test]
    fn quotes_and_escapes_are_removed_as_sh_does() {
        assert_eq!(
            words(r#"echo 'a  b' "c \"d\" \$ \x" e\ f g\\h"#),
            vec![vec!["echo", "a  b", r#"c "d" $ \x"#, "e f", r"g\h"]]
        );
        assert_eq!(words(r"tr '\0' x"), vec![vec!["tr", r"\0", "x"]]);
        assert_eq!(words("echo ''"), vec![vec!["echo", ""]]);
        assert_eq!(words("echo a'b'\"c\"d"), vec![vec!["echo", "abcd"]]);
        assert_eq!(words("echo a\\\nb"), vec![vec!["echo", "ab"]]);
    }

    #[test]
    fn operators_build_lists_and_pipelines() {
        let s = parse("true && echo a || echo b; yes | head -n 2\nexit 3").unwrap();
        assert_eq!(s.lists.len(), 3);
        assert_eq!(s.lists[0].rest.len(), 2);
        assert_eq!(s.lists[0].rest[0].0, Connector::And);
        assert_eq!(s.lists[0].rest[1].0, Connector::Or);
        assert_eq!(s.lists[1].first.commands.len(), 2);
        assert_eq!(s.lists[2].first.commands[0].argv, vec!["exit", "3"]);
    }

    #[test]
    fn redirections_take_their_descriptor_and_target() {
        let s = parse("echo hi >f 2>>g <h 2>&1 >| k").unwrap();
        let c = &s.lists[0].first.commands[0];
        assert_eq!(c.argv, vec!["echo", "hi"]);
        assert_eq!(
            c.redirects,
            vec![
                Redirect {
                    fd: 1,
                    to: RedirectTarget::Write("f".into())
                },
                Redirect {
                    fd: 2,
                    to: RedirectTarget::Append("g".into())
                },
                Redirect {
                    fd: 0,
                    to: RedirectTarget::Read("h".into())
                },
                Redirect {
                    fd: 2,
                    to: RedirectTarget::Dup(1)
                },
                Redirect {
                    fd: 1,
                    to: RedirectTarget::Write("k".into())
                },
            ]
        );
        // A quoted digit is an argument, not a descriptor.
        let s = parse("echo '2'>f").unwrap();
        assert_eq!(s.lists[0].first.commands[0].argv, vec!["echo", "2"]);
    }

    #[test]
    fn exec_marks_the_command() {
        let s = parse("echo x > /dev/termination-log; exec sleep 1000").unwrap();
        let c = &s.lists[1].first.commands[0];
        assert!(c.exec);
        assert_eq!(c.argv, vec!["sleep", "1000"]);
    }

    #[test]
    fn syntax_errors_are_reported_as_ash_does() {
        for (src, want) in [
            ("echo 'abc", "syntax error: unterminated quoted string"),
            ("echo \"abc", "syntax error: unterminated quoted string"),
            ("; echo", "syntax error: unexpected \";\""),
            ("echo a; ; echo", "syntax error: unexpected \";\""),
            ("echo a && && b", "syntax error: unexpected \"&&\""),
            ("echo a |", "syntax error: unexpected end of file"),
            ("echo a ;; b", "syntax error: unexpected \";;\""),
            ("echo >", "syntax error: unexpected end of file"),
            ("| echo", "syntax error: unexpected \"|\""),
        ] {
            assert_eq!(parse(src).unwrap_err().to_string(), want, "{src}");
        }
    }

    #[test]
    fn things_outside_the_subset_name_the_word() {
        for (src, word) in [
            ("echo $HOME", "$"),
            ("echo \"$x\"", "$"),
            ("echo `date`", "`"),
            ("sleep 1 &", "&"),
            ("ls *", "*"),
            ("if true; then echo; fi", "\"if\""),
            ("X=1 echo", "\"X=1\""),
            ("cat <<EOF", "<<"),
            ("(echo)", "subshells"),
            ("awk '{print}'", "\"awk\""),
            ("echo hi 3>f", "file descriptor 3"),
        ] {
            match parse(src) {
                Err(ParseError::Unsupported(why)) => assert!(why.contains(word), "{src}: {why}"),
                other => panic!("{src}: {other:?}"),
            }
        }
    }

    #[test]
    fn comments_and_empty_scripts() {
        assert_eq!(parse("").unwrap(), Script::default());
        assert_eq!(parse("  # nothing").unwrap(), Script::default());
        assert_eq!(words("echo a#b # c"), vec![vec!["echo", "a#b"]]);
    }
}

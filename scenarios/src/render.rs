//! Views of a run: a Mermaid sequence diagram of its calls, and the difference between the
//! agent calls of two runs (two personas, or a persona and a real runtime).

use std::fmt::Write as _;

use crate::host::Outcome;

/// Hypervisor operations (the rest are agent RPCs).
const VM_OPS: &[&str] = &[
    "CreateVM",
    "StartVM",
    "StopVM",
    "PauseVM",
    "SaveVM",
    "ResumeVM",
    "KillVM",
    "CheckVM",
    "AddDevice",
    "HotplugAddDevice",
    "HotplugRemoveDevice",
    "ResizeMemory",
    "ResizeVCPUs",
    "Disconnect",
];

fn split(call: &str) -> (&str, &str, &str, Option<&str>) {
    let (head, tail) = call.split_once(" -> ").unwrap_or((call, ""));
    let (status, fault) = match tail.split_once(" [fault: ") {
        Some((s, f)) => (s, Some(f.trim_end_matches(']'))),
        None => (tail, None),
    };
    let (method, fields) = head.split_once(' ').unwrap_or((head, ""));
    (method, fields, status, fault)
}

/// A Mermaid sequence diagram: host, hypervisor and agent, faults as notes.
pub fn mermaid(o: &Outcome) -> String {
    let mut out = String::from(
        "sequenceDiagram\n    participant H as Host\n    participant V as Hypervisor\n    participant A as Agent\n",
    );
    for call in &o.calls {
        let (method, fields, status, fault) = split(call);
        let to = if VM_OPS.contains(&method) { "V" } else { "A" };
        let fields: String = fields
            .split_whitespace()
            .filter(|f| !f.ends_with('='))
            .collect::<Vec<_>>()
            .join(" ");
        let label = if fields.is_empty() {
            method.to_string()
        } else {
            format!("{method} {fields}")
        };
        let _ = writeln!(out, "    H->>{to}: {}", label.replace(';', ","));
        if let Some(f) = fault {
            let _ = writeln!(out, "    Note over {to}: fault {}", f.replace(';', ","));
        }
        let arrow = if status == "OK" { "-->>" } else { "--x" };
        let _ = writeln!(
            out,
            "    {to}{arrow}H: {}",
            if status.is_empty() {
                "(pending)"
            } else {
                status
            }
        );
    }
    out
}

/// The agent calls of a run without stdio and OOM polls, as `Method key=value ...`, with
/// sandbox and container ids replaced by `$SANDBOX` and `$C1`, `$C2`... in order of
/// appearance (two runtimes name their containers differently).
pub fn agent_calls(o: &Outcome) -> Vec<String> {
    let mut ids: Vec<String> = Vec::new();
    o.calls
        .iter()
        .filter_map(|c| {
            let (method, fields, _, _) = split(c);
            if VM_OPS.contains(&method)
                || matches!(method, "ReadStdout" | "ReadStderr" | "GetOOMEvent")
            {
                return None;
            }
            let mut line = method.to_string();
            for f in fields.split_whitespace() {
                let (k, v) = f.split_once('=').unwrap_or((f, ""));
                let v = match k {
                    "sandbox_id" if !v.is_empty() => "$SANDBOX".to_string(),
                    "container_id" | "exec_id" if !v.is_empty() => {
                        let n = match ids.iter().position(|x| x == v) {
                            Some(n) => n,
                            None if k == "container_id" => {
                                ids.push(v.to_string());
                                ids.len() - 1
                            }
                            None => {
                                line.push_str(&format!(" {k}={v}"));
                                continue;
                            }
                        };
                        format!("$C{}", n + 1)
                    }
                    _ => v.to_string(),
                };
                line.push_str(&format!(" {k}={v}"));
            }
            Some(line)
        })
        .collect()
}

/// A line diff (longest common subsequence) of two call lists: `  ` same, `- ` only in `a`,
/// `+ ` only in `b`.
pub fn diff(a: &[String], b: &[String]) -> Vec<String> {
    let (n, m) = (a.len(), b.len());
    let mut lcs = vec![vec![0u32; m + 1]; n + 1];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let (mut i, mut j) = (0, 0);
    let mut out = Vec::new();
    while i < n || j < m {
        if i < n && j < m && a[i] == b[j] {
            out.push(format!("  {}", a[i]));
            i += 1;
            j += 1;
        } else if j < m && (i == n || lcs[i][j + 1] >= lcs[i + 1][j]) {
            out.push(format!("+ {}", b[j]));
            j += 1;
        } else {
            out.push(format!("- {}", a[i]));
            i += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(x: &[&str]) -> Vec<String> {
        x.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn diff_keeps_common_calls_and_marks_the_rest() {
        let d = diff(&v(&["Check", "A", "B", "Destroy"]), &v(&["A", "C", "B"]));
        assert_eq!(d, v(&["- Check", "  A", "+ C", "  B", "- Destroy"]));
    }
}

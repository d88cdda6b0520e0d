//! Views of a run: a Mermaid sequence diagram of its calls, and the difference between the
//! agent calls of two runs (two personas, or a persona and a real runtime).

use std::fmt::Write as _;

use sim_agent::{CallStatus, Method, Op};

use crate::host::Outcome;

/// A Mermaid sequence diagram: host, hypervisor and agent, faults as notes.
pub fn mermaid(o: &Outcome) -> String {
    let mut out = String::from(
        "sequenceDiagram\n    participant H as Host\n    participant V as Hypervisor\n    participant A as Agent\n",
    );
    for call in &o.calls {
        let to = if call.op.is_vm() { "V" } else { "A" };
        let mut label = call.op.name().to_string();
        for (k, v) in call.fields.iter().filter(|(_, v)| !v.is_empty()) {
            let _ = write!(label, " {k}={v}");
        }
        let _ = writeln!(out, "    H->>{to}: {}", label.replace(';', ","));
        if let Some(f) = &call.fault {
            let _ = writeln!(out, "    Note over {to}: fault {}", f.replace(';', ","));
        }
        if let Some(n) = &call.note {
            let _ = writeln!(out, "    Note over {to}: {}", n.replace(';', ","));
        }
        let arrow = if call.status == CallStatus::Ok {
            "-->>"
        } else {
            "--x"
        };
        let times = if call.count > 1 {
            format!(" x{}", call.count)
        } else {
            String::new()
        };
        let _ = writeln!(out, "    {to}{arrow}H: {}{times}", call.status);
    }
    out
}

/// One agent call as [`agent_calls`] compares it: the RPC and its key fields, ids replaced.
/// Its text: `Method key=value ...`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentCall {
    /// The RPC.
    pub method: Method,
    /// Its key fields in their fixed order; sandbox and container ids replaced.
    pub fields: Vec<(String, String)>,
}

impl std::fmt::Display for AgentCall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.method.wire_name())?;
        for (k, v) in &self.fields {
            write!(f, " {k}={v}")?;
        }
        Ok(())
    }
}

/// The agent calls of a run without stdio and OOM polls, with sandbox and container ids
/// replaced by `$SANDBOX` and `$C1`, `$C2`... in order of appearance (two runtimes name their
/// containers differently).
pub fn agent_calls(o: &Outcome) -> Vec<AgentCall> {
    let mut ids: Vec<String> = Vec::new();
    o.calls
        .iter()
        .filter_map(|c| {
            let Op::Agent(method) = c.op else {
                return None;
            };
            if matches!(
                method,
                Method::ReadStdout | Method::ReadStderr | Method::GetOOMEvent
            ) {
                return None;
            }
            let fields = c
                .fields
                .iter()
                .map(|(k, v)| {
                    let v = match k.as_str() {
                        "sandbox_id" if !v.is_empty() => "$SANDBOX".to_string(),
                        "container_id" | "exec_id" if !v.is_empty() => {
                            match ids.iter().position(|x| x == v) {
                                Some(n) => format!("$C{}", n + 1),
                                None if k == "container_id" => {
                                    ids.push(v.clone());
                                    format!("$C{}", ids.len())
                                }
                                // An exec id of its own stays as it is.
                                None => v.clone(),
                            }
                        }
                        _ => v.clone(),
                    };
                    (k.clone(), v)
                })
                .collect();
            Some(AgentCall { method, fields })
        })
        .collect()
}

/// A line diff (longest common subsequence) of two call lists: `  ` same, `- ` only in `a`,
/// `+ ` only in `b`; each line is the item's text.
pub fn diff<T: PartialEq + std::fmt::Display>(a: &[T], b: &[T]) -> Vec<String> {
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
    use crate::record::Call;
    use sim_agent::VmOp;

    fn v(x: &[&str]) -> Vec<String> {
        x.iter().map(|s| s.to_string()).collect()
    }

    fn call(op: Op, fields: &[(&str, &str)], status: CallStatus) -> Call {
        Call {
            op,
            fields: fields
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            status,
            fault: None,
            note: None,
            count: 1,
        }
    }

    fn outcome(calls: Vec<Call>) -> Outcome {
        let s = crate::load::parse(std::path::Path::new("t.yaml"), "name: t\nsteps: []\n")
            .unwrap_or_else(|e| panic!("{e}"));
        let mut o = crate::host::failed(&s, String::new());
        o.calls = calls;
        o
    }

    #[test]
    fn agent_calls_drop_vm_operations_and_polls_and_name_ids_by_order() {
        let o = outcome(vec![
            call(Op::Vm(VmOp::StartVM), &[("timeout", "600")], CallStatus::Ok),
            call(
                Op::Agent(Method::CreateSandbox),
                &[("sandbox_id", "pod"), ("hostname", "")],
                CallStatus::Ok,
            ),
            call(
                Op::Agent(Method::CreateContainer),
                &[("container_id", "web"), ("exec_id", "web")],
                CallStatus::Ok,
            ),
            call(
                Op::Agent(Method::ReadStdout),
                &[("container_id", "web")],
                CallStatus::Ok,
            ),
            call(
                Op::Agent(Method::ExecProcess),
                &[("container_id", "web"), ("exec_id", "e1")],
                CallStatus::Code(ttrpc::Code::NOT_FOUND),
            ),
        ]);
        let text: Vec<String> = agent_calls(&o).iter().map(ToString::to_string).collect();
        assert_eq!(
            text,
            [
                "CreateSandbox sandbox_id=$SANDBOX hostname=",
                "CreateContainer container_id=$C1 exec_id=$C1",
                "ExecProcess container_id=$C1 exec_id=e1",
            ]
        );
    }

    #[test]
    fn mermaid_sends_vm_operations_to_the_hypervisor_and_marks_failures() {
        let mut folded = call(Op::Agent(Method::Check), &[("service", "")], CallStatus::Ok);
        folded.count = 4;
        let mut faulted = call(Op::Vm(VmOp::StopVM), &[], CallStatus::Closed);
        faulted.fault = Some("hang".into());
        let m = mermaid(&outcome(vec![folded, faulted]));
        assert!(m.contains("    H->>A: Check\n    A-->>H: OK x4\n"), "{m}");
        assert!(
            m.contains("    H->>V: StopVM\n    Note over V: fault hang\n    V--xH: CLOSED\n"),
            "{m}"
        );
    }

    #[test]
    fn diff_keeps_common_calls_and_marks_the_rest() {
        let d = diff(&v(&["Check", "A", "B", "Destroy"]), &v(&["A", "C", "B"]));
        assert_eq!(d, v(&["- Check", "  A", "+ C", "  B", "- Destroy"]));
    }
}

//! Pacemaker's own scheduler, run offline: a CIB built from the documented configuration
//! (dist/pacemaker), `crm_simulate` to compute a transition, and the transition's resource
//! actions with the environment Pacemaker's executor would give the agent (parameters and
//! meta attributes as OCF_RESKEY_*, taken from the transition graph).
//!
//! No cluster runs here (no corosync, no pacemakerd): the test plays the executor, calling the
//! real agent on the real hosts (namespaces) in the order crm_simulate executed the graph, and
//! points the agent's `crm_attribute` at the same CIB file (CIB_file), so the promotion scores
//! it sets are what the next transition is computed from.

use crate::guest::repo_root;
use std::path::Path;
use std::process::Command;

/// The documented fragments, with comments dropped.
fn fragment(name: &str) -> String {
    let text = std::fs::read_to_string(repo_root().join("dist/pacemaker").join(name)).unwrap();
    let mut out = String::new();
    let mut rest = text.as_str();
    while let Some(i) = rest.find("<!--") {
        out += &rest[..i];
        rest = rest[i..].split_once("-->").map_or("", |(_, r)| r);
    }
    out + rest
}

/// A two-node CIB (hosta, hostb, both online, quorate) holding the documented resources and
/// cold-start constraint. Fencing is off because the test's "nodes" are namespaces whose crash
/// the test performs itself; a real cluster needs STONITH (README.md).
pub fn cib() -> String {
    format!(
        r#"<cib have-quorum="1" crm_feature_set="3.16.1" validate-with="pacemaker-3.9" epoch="1" num_updates="0" admin_epoch="0">
  <configuration>
    <crm_config>
      <cluster_property_set id="cib-bootstrap-options">
        <nvpair id="opt-stonith" name="stonith-enabled" value="false"/>
      </cluster_property_set>
    </crm_config>
    <nodes>
      <node id="1" uname="hosta"/>
      <node id="2" uname="hostb"/>
    </nodes>
    <resources>
{}
    </resources>
    <constraints>
{}
    </constraints>
  </configuration>
  <status>
    <node_state id="1" uname="hosta" in_ccm="true" crmd="online" join="member" expected="member"/>
    <node_state id="2" uname="hostb" in_ccm="true" crmd="online" join="member" expected="member"/>
  </status>
</cib>
"#,
        fragment("vm1-resources.xml").trim(),
        fragment("vm1-cold-start.xml").trim()
    )
}

/// `crm_verify` of a CIB file: (success, what it said).
pub fn verify(cib: &Path) -> (bool, String) {
    let o = Command::new("crm_verify")
        .arg("--xml-file")
        .arg(cib)
        .output()
        .expect("crm_verify (make setup installs pacemaker-cli-utils)");
    (
        o.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
    )
}

/// One resource action of a transition, as the executor would run it.
#[derive(Debug, Clone)]
pub struct Op {
    /// start, stop, monitor, promote, demote, notify.
    pub task: String,
    pub node: String,
    /// OCF_RESKEY_* (parameters and CRM_meta_* attributes) and the like.
    pub env: Vec<(String, String)>,
    /// The exit code Pacemaker expects.
    pub expect: i32,
}

/// A transition: the scheduler's summary and the actions it executed, in order.
#[derive(Debug)]
pub struct Transition {
    pub summary: String,
    pub ops: Vec<Op>,
}

/// `key="value"` pairs, in order.
type Attrs = Vec<(String, String)>;

/// `key="value"` pairs of one XML start tag's text.
fn xml_attrs(tag: &str) -> Attrs {
    let mut out = Vec::new();
    let mut rest = tag;
    while let Some(eq) = rest.find("=\"") {
        let key = rest[..eq]
            .rsplit(|c: char| c.is_whitespace() || c == '<')
            .next()
            .unwrap_or("")
            .to_string();
        let after = &rest[eq + 2..];
        let Some(end) = after.find('"') else { break };
        let value = after[..end]
            .replace("&quot;", "\"")
            .replace("&apos;", "'")
            .replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&amp;", "&");
        out.push((key, value));
        rest = &after[end + 1..];
    }
    out
}

/// Every `<rsc_op>` a transition graph executes (those in `<action_set>`s, not the references
/// in `<inputs>`): (its own attributes, its `<attributes>`).
fn rsc_ops(graph: &str) -> Vec<(Attrs, Attrs)> {
    graph
        .split("<action_set>")
        .skip(1)
        .flat_map(|s| action_set(s.split("</action_set>").next().unwrap_or("")))
        .collect()
}

fn action_set(set: &str) -> Vec<(Attrs, Attrs)> {
    let mut out = Vec::new();
    let mut rest = set;
    while let Some(i) = rest.find("<rsc_op ") {
        rest = &rest[i..];
        let end = rest.find("</rsc_op>").unwrap_or(rest.len());
        let block = &rest[..end];
        let head = &block[..block.find('>').unwrap_or(block.len())];
        let attrs = block
            .find("<attributes ")
            .map(|a| {
                let t = &block[a..];
                xml_attrs(&t[..t.find("/>").unwrap_or(t.len())])
            })
            .unwrap_or_default();
        out.push((xml_attrs(head), attrs));
        rest = &rest[end..];
    }
    out
}

fn get<'a>(v: &'a [(String, String)], k: &str) -> Option<&'a str> {
    v.iter().find(|(a, _)| a == k).map(|(_, b)| b.as_str())
}

/// The notification a clone's pseudo action opens: `vm1-clone_pre_notify_demote_0` →
/// (pre, demote); `vm1-clone_post_notify_promoted_0` → (post, promote).
fn notify_of(pseudo: &str) -> Option<(String, String)> {
    let (kind, rest) = if let Some(r) = pseudo.split("_pre_notify_").nth(1) {
        ("pre", r)
    } else {
        ("post", pseudo.split("_post_notify_").nth(1)?)
    };
    let op = rest.trim_end_matches("_0");
    let op = match op {
        "running" => "start",
        "stopped" => "stop",
        "promoted" => "promote",
        "demoted" => "demote",
        o => o,
    };
    Some((kind.to_string(), op.to_string()))
}

/// Runs the scheduler on `cib` (with crm_simulate's `extra` modifications, e.g. `--node-fail
/// hosta`), simulating success of every action, and writes the resulting CIB to `out`.
pub fn transition(cib: &Path, extra: &[&str], out: &Path) -> Transition {
    let graph = out.with_extension("graph.xml");
    let o = Command::new("crm_simulate")
        .arg("--xml-file")
        .arg(cib)
        .args(extra)
        .arg("--simulate")
        .arg("--save-output")
        .arg(out)
        .arg("--save-graph")
        .arg(&graph)
        .output()
        .expect("crm_simulate (make setup installs pacemaker-cli-utils)");
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        o.status.success(),
        "crm_simulate: {text}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let summary = text
        .split("Transition Summary:")
        .nth(1)
        .and_then(|s| s.split("Executing Cluster Transition:").next())
        .unwrap_or("")
        .to_string();
    let graph = std::fs::read_to_string(&graph).unwrap();
    let ops = rsc_ops(&graph);
    let mut notify: Option<(String, String)> = None;
    let mut out_ops = Vec::new();
    let executed = text
        .split("Executing Cluster Transition:")
        .nth(1)
        .unwrap_or("");
    for line in executed.lines().map(str::trim) {
        if let Some(p) = line.strip_prefix("* Pseudo action:") {
            if let Some(n) = notify_of(p.trim()) {
                notify = Some(n);
            }
            continue;
        }
        let Some(a) = line.strip_prefix("* Resource action:") else {
            continue;
        };
        // "vm1:0           monitor=10000 on hosta"
        let w: Vec<&str> = a.split_whitespace().collect();
        let [_, task, "on", node] = w[..] else {
            continue;
        };
        let (task, interval) = match task.split_once('=') {
            Some(("cancel", _)) => continue,
            Some((t, i)) => (t, i),
            None => (task, "0"),
        };
        let found = ops.iter().find(|(h, attrs)| {
            get(h, "operation") == Some(task)
                && get(h, "on_node") == Some(node)
                && (task != "monitor" || get(attrs, "CRM_meta_interval").unwrap_or("0") == interval)
                && (task != "notify"
                    || notify.as_ref().is_some_and(|(k, op)| {
                        get(attrs, "CRM_meta_notify_type") == Some(k.as_str())
                            && get(attrs, "CRM_meta_notify_operation") == Some(op.as_str())
                    }))
        });
        let Some((_, attrs)) = found else {
            panic!("{line}: no such action in the graph");
        };
        let mut env: Vec<(String, String)> = attrs
            .iter()
            .map(|(k, v)| (format!("OCF_RESKEY_{k}"), v.clone()))
            .collect();
        env.push(("OCF_RESOURCE_INSTANCE".into(), "vm1".into()));
        env.push(("OCF_RESOURCE_TYPE".into(), "vm".into()));
        env.push(("OCF_RESOURCE_PROVIDER".into(), "remus".into()));
        let expect = get(attrs, "CRM_meta_op_target_rc")
            .and_then(|r| r.parse().ok())
            .unwrap_or(0);
        out_ops.push(Op {
            task: task.to_string(),
            node: node.to_string(),
            env,
            expect,
        });
    }
    Transition {
        summary,
        ops: out_ops,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_graph_attributes_and_notifications() {
        let a = xml_attrs(r#"<rsc_op id="3" operation="notify" on_node="hostb" x="a &amp; b">"#);
        assert_eq!(get(&a, "operation"), Some("notify"));
        assert_eq!(get(&a, "x"), Some("a & b"));
        assert_eq!(
            notify_of("vm1-clone_pre_notify_demote_0"),
            Some(("pre".into(), "demote".into()))
        );
        assert_eq!(
            notify_of("vm1-clone_post_notify_running_0"),
            Some(("post".into(), "start".into()))
        );
        assert_eq!(notify_of("vm1-clone_start_0"), None);
    }
}

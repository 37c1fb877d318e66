//! The documented Prometheus set-up (dist/prometheus): the scrape configuration and the alert
//! rules are valid for promtool, and the alerts fire on the series remus exports (promtool's
//! rule unit tests, tests/prometheus/remus-alerts.test.yml). That every metric the rules name
//! is one remus exports is checked in cli/src/metrics/exposition.rs.

use remus_tests::guest::repo_root;
use std::process::Command;

fn promtool(args: &[&str]) -> String {
    let o = Command::new("promtool")
        .args(args)
        .current_dir(repo_root())
        .output()
        .expect("promtool (make setup installs prometheus)");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(o.status.success(), "promtool {args:?}: {said}");
    said
}

#[test]
fn the_scrape_config_and_the_rules_are_valid() {
    let said = promtool(&["check", "config", "dist/prometheus/prometheus.yml"]);
    assert!(said.contains("1 rule files found"), "{said}");
    let said = promtool(&["check", "rules", "dist/prometheus/remus-alerts.yml"]);
    assert!(said.contains("SUCCESS: 5 rules found"), "{said}");
}

#[test]
fn the_alerts_fire_when_they_should_and_not_before() {
    let said = promtool(&["test", "rules", "tests/prometheus/remus-alerts.test.yml"]);
    assert!(said.contains("SUCCESS"), "{said}");
}

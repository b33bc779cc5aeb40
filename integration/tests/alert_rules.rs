//! The Prometheus alert rules (`deploy/prometheus-rules.yml`): `promtool check rules` accepts
//! them (promtool comes with Debian's `prometheus`, which `scripts/setup` installs), and every
//! metric they name is one our code registers.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Every `shardjob_*` metric name registered with the `metrics` macros in `dir`.
fn registered(dir: &Path, out: &mut BTreeSet<String>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            registered(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let text = std::fs::read_to_string(&path).unwrap();
            for macro_name in ["counter!(", "gauge!(", "histogram!("] {
                for (i, _) in text.match_indices(macro_name) {
                    let rest = text[i + macro_name.len()..].trim_start();
                    if let Some(name) = rest.strip_prefix('"').and_then(|r| r.split('"').next()) {
                        if name.starts_with("shardjob_") {
                            out.insert(name.to_owned());
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn the_rules_pass_promtool_and_name_only_metrics_we_export() {
    let rules = root().join("deploy/prometheus-rules.yml");
    let text = std::fs::read_to_string(&rules).unwrap();
    let mut ours = BTreeSet::new();
    for dir in ["agent/src", "coordinator/src", "tasks/src"] {
        registered(&root().join(dir), &mut ours);
    }
    assert!(
        ours.contains("shardjob_owned_shards"),
        "the scan finds registrations: {ours:?}"
    );
    let mut named = BTreeSet::new();
    for line in text.lines().filter(|l| l.trim_start().starts_with("expr:")) {
        let mut rest = line;
        while let Some(i) = rest.find("shardjob_") {
            let name: String = rest[i..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            rest = &rest[i + name.len()..];
            named.insert(name);
        }
    }
    assert!(named.len() >= 6, "{named:?}");
    let unknown: Vec<&String> = named.iter().filter(|n| !ours.contains(*n)).collect();
    assert!(
        unknown.is_empty(),
        "rules name metrics nothing exports: {unknown:?}"
    );

    let promtool = std::env::var("PROMTOOL").unwrap_or_else(|_| "promtool".into());
    let out = std::process::Command::new(&promtool)
        .args(["check", "rules"])
        .arg(&rules)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "{promtool}: {e} (scripts/setup installs Debian's prometheus, which has promtool)"
            )
        });
    assert!(
        out.status.success(),
        "promtool refused the rules:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

//! The module layout's rules, checked on the source: no import circle between the top-level
//! modules of `src/`, nothing imports `cli`, and no module on the service path imports the test
//! support (`testkit`). Read from `crate::<module>` paths outside comments.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

fn imports() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut stack = vec![src.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("src dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().and_then(|e| e.to_str()) != Some("rs") {
                continue;
            }
            let rel = path.strip_prefix(&src).expect("under src");
            let first = rel.components().next().expect("component");
            let module = first
                .as_os_str()
                .to_string_lossy()
                .trim_end_matches(".rs")
                .to_string();
            if module == "lib" || module == "main" {
                continue;
            }
            let text = std::fs::read_to_string(&path).expect("read");
            let deps = out.entry(module.clone()).or_default();
            for line in text.lines().filter(|l| !l.trim_start().starts_with("//")) {
                let mut rest = line;
                while let Some(at) = rest.find("crate::") {
                    rest = &rest[at + "crate::".len()..];
                    let name: String = rest
                        .chars()
                        .take_while(|c| c.is_alphanumeric() || *c == '_')
                        .collect();
                    if !name.is_empty() && name != module {
                        deps.insert(name);
                    }
                }
            }
        }
    }
    out
}

#[test]
fn no_import_circle_between_top_level_modules() {
    let graph = imports();
    // Depth-first search for a back edge.
    fn visit(
        m: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(m.to_string(), 1);
        path.push(m.to_string());
        for d in graph.get(m).into_iter().flatten() {
            if !graph.contains_key(d) {
                continue;
            }
            match state.get(d.as_str()) {
                Some(1) => {
                    let mut cycle = path.clone();
                    cycle.push(d.clone());
                    return Some(cycle);
                }
                None => {
                    if let Some(c) = visit(d, graph, state, path) {
                        return Some(c);
                    }
                }
                _ => {}
            }
        }
        path.pop();
        state.insert(m.to_string(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for m in graph.keys() {
        if !state.contains_key(m) {
            let cycle = visit(m, &graph, &mut state, &mut Vec::new());
            assert!(cycle.is_none(), "import circle: {cycle:?}");
        }
    }
}

#[test]
fn nothing_imports_cli_and_the_service_path_does_not_import_testkit() {
    let graph = imports();
    for (m, deps) in &graph {
        assert!(!deps.contains("cli"), "{m} imports cli");
    }
    for m in [
        "app",
        "config",
        "destinations",
        "event",
        "ingest",
        "kafka",
        "ops",
        "pipeline",
        "sender",
    ] {
        let deps = graph.get(m).expect("module exists");
        assert!(!deps.contains("testkit"), "{m} imports testkit");
        assert!(!deps.contains("demo"), "{m} imports demo");
    }
}

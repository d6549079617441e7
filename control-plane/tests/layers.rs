//! The layer order written at the top of `src/lib.rs`, checked: a module may name modules of its
//! own layer or of layers below it, never above, and an edge never names another edge. This reads
//! the sources as text, so it also catches a name in a test module or a path written in full.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Top-level modules by layer, bottom first (the order of `src/lib.rs`).
const LAYERS: [(&str, &[&str]); 7] = [
    ("domain and config", &["domain", "config"]),
    (
        "store, seal, tokens, keys, metrics",
        &[
            "store", "lease", "seal", "tokens", "keys", "metrics", "otlp",
        ],
    ),
    ("the app context", &["app"]),
    ("services", &["services"]),
    ("shared HTTP pieces", &["http"]),
    (
        "edges and tasks",
        &[
            "api",
            "dashboard",
            "hooks",
            "mcp",
            "oauth",
            "scheduler",
            "ingest",
            "notices",
        ],
    ),
    (
        "serve",
        &[
            "serve",
            "executors",
            "fleet_worker",
            "telemetry",
            "hook_command",
            "main",
        ],
    ),
];

/// The layer that may name any module of its own layer only if it is that module.
const EDGES: usize = 5;

fn layer_of(module: &str) -> Option<usize> {
    LAYERS
        .iter()
        .position(|(_, modules)| modules.contains(&module))
}

/// The top-level module a source file belongs to (`None` for `lib.rs`, which only declares).
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let relative = file.strip_prefix(src).ok()?;
    let first = relative.components().next()?.as_os_str().to_str()?;
    let name = first.strip_suffix(".rs").unwrap_or(first);
    (name != "lib").then(|| name.to_owned())
}

fn rust_files(dir: &Path, into: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read the sources") {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            rust_files(&path, into);
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            into.push(path);
        }
    }
}

/// The top-level modules a line of code names through `crate::` (or, in `main.rs`, the library's
/// own name), including each name of a `crate::{a, b::c}` group.
fn named_modules(line: &str) -> Vec<String> {
    let mut names = Vec::new();
    for prefix in ["crate::", "autopilot_control_plane::"] {
        let mut rest = line;
        while let Some(at) = rest.find(prefix) {
            let preceded_by_ident = rest[..at]
                .chars()
                .last()
                .is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':');
            rest = &rest[at + prefix.len()..];
            if preceded_by_ident {
                continue;
            }
            if let Some(group) = rest.strip_prefix('{') {
                let group = group.split('}').next().unwrap_or_default();
                for item in group.split(',') {
                    names.push(first_segment(item.trim()));
                }
            } else {
                names.push(first_segment(rest));
            }
        }
    }
    names.retain(|name| !name.is_empty());
    names
}

fn first_segment(path: &str) -> String {
    path.chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect()
}

/// The code of a line: nothing of a comment (doc comments name higher layers to explain).
fn code_of(line: &str) -> &str {
    let trimmed = line.trim_start();
    if trimmed.starts_with("//") {
        return "";
    }
    match line.find("//") {
        // A `//` inside a string (a URL) is code; the check is conservative either way.
        Some(at) if !line[..at].contains('"') => &line[..at],
        _ => line,
    }
}

#[test]
fn no_module_names_a_higher_layer_and_no_edge_names_another() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    assert!(files.len() > 20, "the sources were not found in {src:?}");
    let mut violations = Vec::new();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for file in &files {
        let Some(module) = module_of(&src, file) else {
            continue;
        };
        let Some(own) = layer_of(&module) else {
            violations.push(format!(
                "{}: module `{module}` is in no layer; add it to LAYERS here and to the order in src/lib.rs",
                file.display()
            ));
            continue;
        };
        *seen.entry(module.clone()).or_default() += 1;
        let text = std::fs::read_to_string(file).expect("read a source file");
        for (number, line) in text.lines().enumerate() {
            for named in named_modules(code_of(line)) {
                let Some(other) = layer_of(&named) else {
                    continue;
                };
                let upward = other > own;
                let across = own == EDGES && other == EDGES && named != module;
                if upward || across {
                    violations.push(format!(
                        "{}:{}: `{}` — {module} ({}) names {named} ({}){}",
                        file.strip_prefix(&src).unwrap_or(file).display(),
                        number + 1,
                        line.trim(),
                        LAYERS[own].0,
                        LAYERS[other].0,
                        if across {
                            ", another edge"
                        } else {
                            ", a higher layer"
                        },
                    ));
                }
            }
        }
    }
    assert!(
        violations.is_empty(),
        "the layer order (src/lib.rs) is broken:\n{}",
        violations.join("\n")
    );
    for (_, modules) in LAYERS {
        for module in modules {
            assert!(
                seen.contains_key(*module),
                "LAYERS names `{module}`, which has no source file: update the list"
            );
        }
    }
}

#[test]
fn names_are_found_in_paths_groups_and_full_paths_only() {
    assert_eq!(named_modules("use crate::services::jobs;"), ["services"]);
    assert_eq!(
        named_modules("use crate::{api, mcp::router, oauth};"),
        ["api", "mcp", "oauth"]
    );
    assert_eq!(
        named_modules("let x = crate::store::connect(url).await?;"),
        ["store"]
    );
    assert_eq!(
        named_modules("use autopilot_control_plane::serve;"),
        ["serve"]
    );
    assert!(named_modules("use autopilot_proto::crate_like::x;").is_empty());
    assert!(code_of("    /// see `crate::services`").is_empty());
    assert_eq!(
        code_of("let a = crate::app::App; // crate::serve"),
        "let a = crate::app::App; "
    );
}

/// Edges and tasks change and read state through the services only: they never name the store
/// (its backend's name, for health and info, excepted).
#[test]
fn edges_and_tasks_reach_the_store_through_the_services_only() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    let mut violations = Vec::new();
    for file in &files {
        let Some(module) = module_of(&src, file) else {
            continue;
        };
        if layer_of(&module) != Some(EDGES) {
            continue;
        }
        let text = std::fs::read_to_string(file).expect("read a source file");
        for (number, line) in text.lines().enumerate() {
            let code = code_of(line);
            let names_store = named_modules(code).iter().any(|name| name == "store");
            let uses_store = code
                .match_indices(".store.")
                .any(|(at, _)| !code[at..].starts_with(".store.backend()"));
            if names_store || uses_store {
                violations.push(format!(
                    "{}:{}: `{}`",
                    file.strip_prefix(&src).unwrap_or(file).display(),
                    number + 1,
                    line.trim()
                ));
            }
        }
    }
    assert!(
        violations.is_empty(),
        "an edge or a task uses the store itself; call a service (src/services) instead:\n{}",
        violations.join("\n")
    );
}

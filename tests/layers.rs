//! The layers in `src/` depend one way only, as DESIGN.md draws them:
//! error, security, selfexec → config → storage → codec → archive → wal → backup → cluster → api
//! → cli. A module may name its own layer and the layers below it, never one above.

use std::path::{Path, PathBuf};

/// Each top-level module of the library with its rank: a module may use only lower ranks (and
/// itself). Modules of equal rank do not use each other.
const LAYERS: &[(&str, u32)] = &[
    ("error", 0),
    ("security", 1),
    ("selfexec", 1),
    ("config", 2),
    ("storage", 3),
    ("codec", 4),
    ("archive", 5),
    ("wal", 6),
    ("backup", 7),
    ("cluster", 8),
    ("api", 9),
    ("cli", 10),
];

fn rank(module: &str) -> Option<u32> {
    LAYERS.iter().find(|(m, _)| *m == module).map(|(_, r)| *r)
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The `crate::<module>` names in one line of code (comments are not code).
fn crate_refs(line: &str) -> Vec<String> {
    let code = line.trim_start();
    if code.starts_with("//") {
        return Vec::new();
    }
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(i) = rest.find("crate::") {
        let after = &rest[i + "crate::".len()..];
        let name: String = after
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        out.push(if name.is_empty() {
            after.chars().take(1).collect()
        } else {
            name
        });
        rest = after;
    }
    out
}

/// Every reference in `src/` that points to a higher layer (or a sibling of equal rank), as
/// `file:line: from -> to`.
fn violations(src: &Path) -> Vec<String> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    files.sort();
    let mut bad = Vec::new();
    for f in files {
        let rel = f.strip_prefix(src).unwrap();
        let first = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy();
        let module = first.trim_end_matches(".rs").to_string();
        if module == "lib" || module == "main" {
            continue;
        }
        let Some(from) = rank(&module) else {
            bad.push(format!(
                "{}: module {module} has no layer in tests/layers.rs",
                rel.display()
            ));
            continue;
        };
        let text = std::fs::read_to_string(&f).unwrap();
        for (n, line) in text.lines().enumerate() {
            for target in crate_refs(line) {
                if target == module || target == "Error" || target == "Result" {
                    continue;
                }
                let ok = match rank(&target) {
                    Some(to) => to < from,
                    None => false,
                };
                if !ok {
                    bad.push(format!(
                        "{}:{}: {module} -> {target}: {}",
                        rel.display(),
                        n + 1,
                        line.trim()
                    ));
                }
            }
        }
        if text.contains("super::super::") {
            bad.push(format!(
                "{}: uses super::super (name the module by its crate path)",
                rel.display()
            ));
        }
    }
    bad
}

#[test]
fn every_module_imports_only_from_the_layers_below_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let bad = violations(&src);
    assert!(
        bad.is_empty(),
        "imports against the layer order:\n{}",
        bad.join("\n")
    );
}

#[test]
fn the_layer_check_catches_an_upward_import() {
    let dir = std::env::temp_dir().join(format!("walkeeper-layers-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("wal")).unwrap();
    std::fs::write(
        dir.join("wal/push.rs"),
        "// crate::cluster in a comment is fine\nuse crate::cluster::Leadership;\nuse crate::{cli, storage};\n",
    )
    .unwrap();
    std::fs::write(dir.join("storage.rs"), "use crate::config::Settings;\n").unwrap();
    let bad = violations(&dir);
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(bad.len(), 2, "{bad:?}");
    assert!(bad[0].contains("wal -> cluster"), "{bad:?}");
    assert!(bad[1].contains("wal -> {"), "{bad:?}");
}

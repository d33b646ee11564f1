//! Layers of `src/`, downward only.
//!
//! Every file under `src/` belongs to one layer, named by its top-level module
//! (`src/store/codec.rs` is `store`). A file may use modules of its own layer and
//! of the layers below it, never of a layer above: a lower layer that reached up
//! would tie it to everything above it, and the layers would stop telling a
//! newcomer what depends on what. This test reads every `crate::` path of every
//! file (`use` lines and paths in code) and fails on an upward one, naming the
//! file, the line and both layers.

use std::path::{Path, PathBuf};

/// The layers, lowest first, each a list of top-level modules of `src/`. This
/// list is the rule: a new module gets a place in it before it can be used.
const LAYERS: &[(&str, &[&str])] = &[
    // Settings read once, business time, secrets.
    ("foundation", &["config", "clock", "crypto"]),
    // Events, snapshots, projection rows and the hash chain primitive.
    ("store", &["store"]),
    // Upstream providers and the read side: the catalog of priced models,
    // routing among credentials, the projector and the balance view.
    (
        "upstream and read models",
        &["providers", "catalog", "routing", "projector", "billing"],
    ),
    // What the services compose: the tenant actor, hub keys, price book writes,
    // each with its own error enum.
    ("ledger and keys", &["actors", "auth", "prices"]),
    // The services the codecs and routes call: the hub, the model request
    // pipeline, audit checks of stored chains and exports.
    ("services", &["hub", "pipeline", "audit"]),
    // The HTTP edge: ingress codecs, each wire format parsed into the
    // pipeline's request and its answer encoded back; `body` reads request
    // bodies for them and for routes; `error` (HubError) maps every lower
    // layer's error to its HTTP status and body, once.
    ("ingress", &["ingress", "body", "error"]),
    // HTTP routes.
    ("routes", &["routes"]),
    // Operations: start-up, the CLI, one-shot replay, webhook delivery, binaries.
    (
        "operations",
        &["replay", "notify", "cli", "startup", "lib", "main", "bin"],
    ),
];

/// Upward imports allowed for now, each with its reason. (file, module)
const KNOWN_UPWARD: &[(&str, &str)] = &[];

/// One `crate::<module>` path found in a file.
#[derive(Debug, PartialEq)]
struct Import {
    line: usize,
    module: String,
}

/// One import from a lower layer to a higher one.
#[derive(Debug)]
struct Upward {
    file: String,
    line: usize,
    from_layer: &'static str,
    module: String,
    to_layer: &'static str,
}

impl std::fmt::Display for Upward {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}:{}: layer {:?} uses `{}` of the higher layer {:?}",
            self.file, self.line, self.from_layer, self.module, self.to_layer
        )
    }
}

/// The layer index and name of a top-level module.
fn layer_of(module: &str) -> Option<(usize, &'static str)> {
    LAYERS
        .iter()
        .enumerate()
        .find(|(_, (_, modules))| modules.contains(&module))
        .map(|(index, (name, _))| (index, *name))
}

/// The top-level module a file belongs to: `src/store/codec.rs` -> `store`,
/// `src/hub.rs` -> `hub`.
fn module_of(relative: &str) -> &str {
    let inside = relative.strip_prefix("src/").unwrap_or(relative);
    let first = inside.split('/').next().unwrap_or(inside);
    first.strip_suffix(".rs").unwrap_or(first)
}

fn is_ident_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// The identifier starting at `text`, if any.
fn leading_ident(text: &str) -> &str {
    let end = text.find(|c: char| !is_ident_char(c)).unwrap_or(text.len());
    &text[..end]
}

/// Every `<root>::<module>` path of `source` (`root` is `crate`, or the
/// library's name in the binaries), with `use <root>::{a, b::c}` groups read
/// item by item. Comment lines are skipped: doc links are not imports.
fn imports(source: &str, root: &str) -> Vec<Import> {
    let code: String = source
        .lines()
        .map(|line| {
            if line.trim_start().starts_with("//") {
                ""
            } else {
                line
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    let line_at = |offset: usize| code[..offset].matches('\n').count() + 1;
    let needle = format!("{root}::");
    let mut found = Vec::new();
    let mut from = 0;
    while let Some(at) = code[from..].find(&needle).map(|i| i + from) {
        from = at + needle.len();
        let preceded_by_ident = code[..at].chars().next_back().is_some_and(is_ident_char);
        if preceded_by_ident {
            continue;
        }
        let rest = &code[from..];
        if let Some(group) = rest.strip_prefix('{') {
            let group_start = from + 1;
            for (offset, module) in group_items(group) {
                found.push(Import {
                    line: line_at(group_start + offset),
                    module: module.to_string(),
                });
            }
        } else {
            let module = leading_ident(rest);
            if !module.is_empty() {
                found.push(Import {
                    line: line_at(at),
                    module: module.to_string(),
                });
            }
        }
    }
    found
}

/// The first identifier of each top-level item of a `{...}` group (the text
/// after the opening brace), with its offset; `self` names the root, not a module.
fn group_items(group: &str) -> Vec<(usize, &str)> {
    let mut items = Vec::new();
    let mut depth = 0usize;
    let mut item_start = true;
    for (offset, c) in group.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => break,
            '}' => depth -= 1,
            ',' if depth == 0 => item_start = true,
            c if item_start && is_ident_char(c) => {
                item_start = false;
                let ident = leading_ident(&group[offset..]);
                if ident != "self" {
                    items.push((offset, ident));
                }
            }
            _ => {}
        }
    }
    items
}

/// The upward imports of one file, given its path relative to the package.
/// A file or module in no layer is an error: the list must name every module.
fn check_file(relative: &str, source: &str) -> Result<Vec<Upward>, String> {
    let own = module_of(relative);
    let (own_index, own_layer) =
        layer_of(own).ok_or_else(|| format!("{relative}: module `{own}` is in no layer"))?;
    let binary = relative == "src/main.rs" || relative.starts_with("src/bin/");
    let root = if binary { "aigne_hub" } else { "crate" };
    let mut upward = Vec::new();
    for import in imports(source, root) {
        let (index, layer) = layer_of(&import.module).ok_or_else(|| {
            format!(
                "{relative}:{}: module `{}` is in no layer",
                import.line, import.module
            )
        })?;
        let allowed = KNOWN_UPWARD.contains(&(relative, import.module.as_str()));
        if index > own_index && !allowed {
            upward.push(Upward {
                file: relative.to_string(),
                line: import.line,
                from_layer: own_layer,
                module: import.module,
                to_layer: layer,
            });
        }
    }
    Ok(upward)
}

fn rust_files(dir: &Path, into: &mut Vec<PathBuf>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for entry in entries {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            rust_files(&path, into);
        } else if path.extension().is_some_and(|e| e == "rs") {
            into.push(path);
        }
    }
}

#[test]
fn src_imports_run_downward_only() {
    let package = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    rust_files(&package.join("src"), &mut files);
    files.sort();
    assert!(
        files.len() > 20,
        "src/ has {} files; wrong directory?",
        files.len()
    );

    let mut problems = Vec::new();
    for path in &files {
        let relative = path
            .strip_prefix(package)
            .expect("file under the package")
            .to_string_lossy()
            .replace('\\', "/");
        let source = std::fs::read_to_string(path).expect("readable source");
        match check_file(&relative, &source) {
            Ok(upward) => problems.extend(upward.iter().map(ToString::to_string)),
            Err(unlisted) => problems.push(unlisted),
        }
    }
    assert!(
        problems.is_empty(),
        "imports against the layer order (tests/layering.rs, LAYERS):\n{}",
        problems.join("\n")
    );
    // An allowance no longer needed goes, so the list only shrinks.
    for (file, module) in KNOWN_UPWARD {
        let source = std::fs::read_to_string(package.join(file)).unwrap_or_default();
        let used = imports(&source, "crate")
            .iter()
            .any(|i| i.module == *module);
        assert!(
            used,
            "KNOWN_UPWARD: {file} no longer uses `{module}`; remove the entry"
        );
    }
}

#[test]
fn an_import_from_a_lower_layer_to_a_higher_one_is_reported() {
    let source = "//! [`crate::routes`] in a doc line is not an import.\n\
                  use crate::clock::Clock;\n\
                  \n\
                  fn f() { let _ = crate::routes::configure; }\n";
    let upward = check_file("src/store/fake.rs", source).expect("every module listed");
    assert_eq!(upward.len(), 1, "{upward:?}");
    let found = &upward[0];
    assert_eq!(
        (
            found.line,
            found.module.as_str(),
            found.from_layer,
            found.to_layer
        ),
        (4, "routes", "store", "routes")
    );
    let message = found.to_string();
    assert!(message.starts_with("src/store/fake.rs:4:"), "{message}");
}

#[test]
fn a_grouped_use_is_read_item_by_item() {
    let source = "use crate::{\n    clock::Clock,\n    cli::{self, main},\n};\n";
    let upward = check_file("src/catalog.rs", source).expect("every module listed");
    let found: Vec<_> = upward.iter().map(|u| (u.line, u.module.as_str())).collect();
    assert_eq!(found, [(3, "cli")]);
}

#[test]
fn the_same_layer_and_lower_ones_are_allowed() {
    let source = "use crate::hub::Hub;\nuse crate::store::Store;\nuse crate::config::Limits;\n";
    let upward = check_file("src/routes/fake.rs", source).expect("every module listed");
    assert!(upward.is_empty(), "{upward:?}");
    let same_layer = check_file("src/catalog.rs", "use crate::providers::Provider;\n")
        .expect("every module listed");
    assert!(same_layer.is_empty(), "{same_layer:?}");
}

#[test]
fn an_unlisted_module_is_an_error() {
    let error = check_file("src/store/fake.rs", "use crate::nowhere::Thing;\n")
        .expect_err("an unlisted module");
    assert!(
        error.contains("src/store/fake.rs:1") && error.contains("nowhere"),
        "{error}"
    );
    let error = check_file("src/nowhere.rs", "").expect_err("an unlisted file");
    assert!(error.contains("nowhere"), "{error}");
}

#[test]
fn an_identifier_ending_in_crate_is_not_a_crate_path() {
    let imports = imports("let x = my_crate::cli::main;\nuse crate::store;\n", "crate");
    assert_eq!(
        imports,
        [Import {
            line: 2,
            module: "store".into()
        }]
    );
}

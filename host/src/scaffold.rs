//! `portier plugin new`: a plugin crate that builds to `wasm32-wasip2`,
//! tests its component with the `portier-test` harness, and comes with a
//! manifest that loads it. The files are the templates in
//! `host/templates/plugin/`, one example plugin per role.

use std::path::{Path, PathBuf};

use crate::role::Role;

/// Why no crate was made (nothing is written then).
#[derive(Debug, thiserror::Error)]
pub enum ScaffoldError {
    /// The name cannot be a crate's.
    #[error(
        "{0:?} is not a usable plugin name: use lower-case letters, digits, - and _, starting with a letter"
    )]
    Name(String),
    /// The directory exists already.
    #[error("{0} already exists; choose another name or --dir")]
    Exists(PathBuf),
    /// The portier sources (SDK and harness) the crate depends on are not found.
    #[error(
        "no portier sources at {0} (the crate depends on its plugins/sdk and portier-test): pass --portier PATH to a portier checkout"
    )]
    Sources(PathBuf),
    /// Writing failed.
    #[error("writing {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

/// One file of a new crate: where it goes and its template.
struct File {
    path: &'static str,
    template: &'static str,
}

const SHARED: [File; 3] = [
    File {
        path: "Cargo.toml",
        template: include_str!("../templates/plugin/Cargo.toml.in"),
    },
    File {
        path: "README.md",
        template: include_str!("../templates/plugin/README.md.in"),
    },
    File {
        path: ".gitignore",
        template: include_str!("../templates/plugin/gitignore.in"),
    },
];

/// The role's example plugin, its tests and its manifest.
fn role_files(role: Role) -> [File; 3] {
    macro_rules! files {
        ($dir:literal) => {
            [
                File {
                    path: "src/lib.rs",
                    template: include_str!(concat!("../templates/plugin/", $dir, "/lib.rs")),
                },
                File {
                    path: "tests/component.rs",
                    template: include_str!(concat!("../templates/plugin/", $dir, "/component.rs")),
                },
                File {
                    path: "manifest.toml",
                    template: include_str!(concat!("../templates/plugin/", $dir, "/manifest.toml")),
                },
            ]
        };
    }
    match role {
        Role::Filter => files!("filter"),
        Role::Router => files!("router"),
        Role::Balancer => files!("balancer"),
        Role::CachePolicy => files!("cache-policy"),
    }
}

/// The portier checkout this binary was built from: where new crates find
/// the SDK and the harness unless `--portier` names another.
pub fn default_sources() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap_or(Path::new("."))
        .to_owned()
}

/// Make plugin crate `name` for `role` in `dir`, depending on the SDK and
/// harness under `portier`. Returns the crate's directory.
pub fn new_plugin(
    name: &str,
    role: Role,
    dir: &Path,
    portier: &Path,
) -> Result<PathBuf, ScaffoldError> {
    let valid = name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if !valid {
        return Err(ScaffoldError::Name(name.to_owned()));
    }
    let portier = portier
        .canonicalize()
        .map_err(|_| ScaffoldError::Sources(portier.to_owned()))?;
    if !portier.join("plugins/sdk/Cargo.toml").is_file()
        || !portier.join("portier-test/Cargo.toml").is_file()
    {
        return Err(ScaffoldError::Sources(portier));
    }
    let root = dir.join(name);
    if root.exists() {
        return Err(ScaffoldError::Exists(root));
    }
    let portier = portier.display().to_string();
    let fill = |template: &str| {
        template
            .replace("{{name}}", name)
            .replace("{{crate}}", &name.replace('-', "_"))
            .replace("{{role}}", role.as_str())
            .replace("{{portier}}", &portier)
    };
    for file in SHARED.iter().chain(role_files(role).iter()) {
        let path = root.join(file.path);
        let write = || {
            std::fs::create_dir_all(path.parent().unwrap_or(&root))?;
            std::fs::write(&path, fill(file.template))
        };
        write().map_err(|source| ScaffoldError::Write {
            path: path.clone(),
            source,
        })?;
    }
    Ok(root)
}

//! Reading the main file and its includes, `${VAR}` interpolation, and merging into one table.
//!
//! Each service and ingress keeps the file it came from and its index there, so `compile` can
//! name the exact place of every error. Imports: schema.

use super::schema::{ConfigSpec, FragmentSpec, IngressSpec, ServiceSpec};
use super::{ConfigError, ConfigErrors, Location};
use std::collections::hash_map::DefaultHasher;
use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A spec together with the file it was read from and its YAML path there.
#[derive(Debug)]
pub struct Sourced<T> {
    pub file: Arc<Path>,
    pub yaml_path: String,
    pub spec: T,
}

/// The merged configuration, still as specs.
#[derive(Debug)]
pub struct Loaded {
    pub main_file: Arc<Path>,
    pub main: ConfigSpec,
    pub services: BTreeMap<String, Sourced<ServiceSpec>>,
    pub ingresses: Vec<Sourced<IngressSpec>>,
    /// Every file read, in order.
    pub files: Vec<PathBuf>,
    /// A hash of every file's contents: the configuration's version.
    pub hash: u64,
}

/// Read `path` and everything it includes. Returns every error found, not only the first.
pub fn load(path: &Path) -> Result<Loaded, ConfigErrors> {
    let mut errors = Vec::new();
    let mut hasher = DefaultHasher::new();
    let main_file: Arc<Path> = Arc::from(path);
    let mut main: ConfigSpec = match read_yaml(path, &mut hasher) {
        Ok(spec) => spec,
        Err(e) => return Err(ConfigErrors(e)),
    };
    let mut loaded = Loaded {
        main_file: main_file.clone(),
        services: BTreeMap::new(),
        ingresses: Vec::new(),
        files: vec![path.to_path_buf()],
        hash: 0,
        main: ConfigSpec::default(),
    };
    let services = std::mem::take(&mut main.services);
    let ingresses = std::mem::take(&mut main.ingresses);
    merge(&mut loaded, &main_file, services, ingresses, &mut errors);

    let base = path.parent().unwrap_or_else(|| Path::new("."));
    for (i, pattern) in main.include.iter().enumerate() {
        for file in expand_include(base, pattern, &main_file, i, &mut errors) {
            match read_yaml::<FragmentSpec>(&file, &mut hasher) {
                Ok(frag) => {
                    let file: Arc<Path> = Arc::from(file.as_path());
                    merge(
                        &mut loaded,
                        &file,
                        frag.services,
                        frag.ingresses,
                        &mut errors,
                    );
                }
                Err(mut e) => errors.append(&mut e),
            }
            loaded.files.push(file);
        }
    }
    loaded.main = main;
    loaded.hash = hasher.finish();
    if errors.is_empty() {
        Ok(loaded)
    } else {
        Err(ConfigErrors(errors))
    }
}

fn expand_include(
    base: &Path,
    pattern: &str,
    main_file: &Path,
    index: usize,
    errors: &mut Vec<ConfigError>,
) -> Vec<PathBuf> {
    let full = base.join(pattern);
    let yaml_path = format!("include[{index}]");
    let Some(full_str) = full.to_str() else {
        errors.push(ConfigError::at(
            main_file,
            yaml_path,
            "include path is not UTF-8",
        ));
        return Vec::new();
    };
    match glob::glob(full_str) {
        Ok(paths) => {
            let mut files: Vec<PathBuf> = paths.filter_map(Result::ok).collect();
            files.sort();
            files
        }
        Err(e) => {
            errors.push(ConfigError::at(
                main_file,
                yaml_path,
                format!("invalid glob {pattern:?}: {e}; write a pattern like \"conf.d/*.yaml\""),
            ));
            Vec::new()
        }
    }
}

fn merge(
    loaded: &mut Loaded,
    file: &Arc<Path>,
    services: BTreeMap<String, ServiceSpec>,
    ingresses: Vec<IngressSpec>,
    errors: &mut Vec<ConfigError>,
) {
    for (name, spec) in services {
        let yaml_path = format!("services.{name}");
        if let Some(prev) = loaded.services.get(&name) {
            errors.push(ConfigError::at(
                file,
                &yaml_path,
                format!(
                    "service {name:?} is already defined in {}; rename one of them",
                    prev.file.display()
                ),
            ));
            continue;
        }
        let file = file.clone();
        loaded.services.insert(
            name,
            Sourced {
                file,
                yaml_path,
                spec,
            },
        );
    }
    for (i, spec) in ingresses.into_iter().enumerate() {
        let yaml_path = format!("ingresses[{i}]");
        loaded.ingresses.push(Sourced {
            file: file.clone(),
            yaml_path,
            spec,
        });
    }
}

fn read_yaml<T: serde::de::DeserializeOwned + Default>(
    path: &Path,
    hasher: &mut DefaultHasher,
) -> Result<T, Vec<ConfigError>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| vec![ConfigError::file(path, format!("cannot read: {e}"))])?;
    path.hash(hasher);
    text.hash(hasher);
    let text = interpolate_env(path, &text, |name| std::env::var(name).ok())?;
    if text.trim().is_empty() {
        return Ok(T::default());
    }
    serde_yaml_ng::from_str(&text).map_err(|e| vec![yaml_error(path, &e)])
}

fn yaml_error(path: &Path, e: &serde_yaml_ng::Error) -> ConfigError {
    let mut message = e.to_string();
    // The library appends " at line L column C"; we print the location in front instead.
    if let Some(cut) = message.find(" at line ") {
        message.truncate(cut);
    }
    match e.location() {
        Some(loc) => ConfigError {
            file: path.display().to_string(),
            location: Location::Line {
                line: loc.line(),
                column: loc.column(),
            },
            message,
        },
        None => ConfigError::file(path, message),
    }
}

/// Replace `${NAME}` and `${NAME:-default}` with environment values. An unset variable without
/// a default is an error naming the line.
fn interpolate_env(
    path: &Path,
    text: &str,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<String, Vec<ConfigError>> {
    let mut out = String::with_capacity(text.len());
    let mut errors = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            out.push_str(&rest[start..]);
            rest = "";
            break;
        };
        let expr = &after[..end];
        let (name, default) = match expr.split_once(":-") {
            Some((n, d)) => (n, Some(d)),
            None => (expr, None),
        };
        match lookup(name).or_else(|| default.map(str::to_string)) {
            Some(v) => out.push_str(&v),
            None => {
                let consumed = text.len() - rest.len() + start;
                let line = text[..consumed].matches('\n').count() + 1;
                let column = consumed - text[..consumed].rfind('\n').map_or(0, |p| p + 1) + 1;
                errors.push(ConfigError {
                    file: path.display().to_string(),
                    location: Location::Line { line, column },
                    message: format!(
                        "environment variable {name} is not set; export it or write ${{{name}:-default}}"
                    ),
                });
            }
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup(name: &str) -> Option<String> {
        (name == "PORT").then(|| "8080".to_string())
    }

    #[test]
    fn interpolates_set_and_default_values() {
        let p = Path::new("x.yaml");
        let out = interpolate_env(p, "a: ${PORT}\nb: ${NOPE:-7}\nc: $d", lookup).unwrap();
        assert_eq!(out, "a: 8080\nb: 7\nc: $d");
    }

    #[test]
    fn unset_variable_names_line_and_column() {
        let p = Path::new("x.yaml");
        let err = interpolate_env(p, "a: 1\nb:  ${MISSING}\n", lookup).unwrap_err();
        assert_eq!(err[0].location, Location::Line { line: 2, column: 5 });
        assert!(err[0].message.contains("MISSING"));
    }
}

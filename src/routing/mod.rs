//! Host + path routing: `(host, path) -> RouteId`.
//!
//! Pure and synchronous, with no pingora types, so it can be benchmarked alone.
//! Rules (the contract, held by tests):
//! - Host: exact (case-insensitive, port ignored) beats `*.suffix` (exactly one extra label)
//!   beats catch-all (`""`). The most specific host that is configured decides; its paths are
//!   the only ones tried (like nginx server blocks).
//! - Path: exact beats regex (first in declaration order) beats the longest matching prefix.
//!   A prefix matches on segment boundaries only: `/api` matches `/api`, `/api/`, `/api/v1`,
//!   never `/apiv1`.
//!
//! Imports: regex, ahash.

mod host;

pub use host::{normalize_host, HostError};

use regex::Regex;
use std::collections::HashMap;

/// Host and path tables hash with ahash rather than the standard SipHash: lookups (the only
/// thing done per request) came out up to half as costly in `benches/routing.rs`; it is keyed
/// at random like SipHash, and the tables only change at configuration load.
type Table<V> = HashMap<Box<str>, V, ahash::RandomState>;

/// Index of a route in the runtime's route table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RouteId(pub u32);

/// The host part of a rule.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HostPattern {
    /// A lower-case host name.
    Exact(String),
    /// `*.example.com`, stored as `example.com`.
    Wildcard(String),
    /// Matches every host, including a request without one.
    Any,
}

impl HostPattern {
    /// Parse a host as written in the config: `""`, `*.example.com` or `api.example.com`.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let raw = raw.trim();
        if raw.is_empty() || raw == "*" {
            return Ok(HostPattern::Any);
        }
        if let Some(rest) = raw.strip_prefix("*.") {
            let name = host::validate_name(rest)?;
            return Ok(HostPattern::Wildcard(name));
        }
        if raw.contains('*') {
            return Err(format!(
                "{raw:?}: a wildcard must be the whole first label, like \"*.example.com\""
            ));
        }
        Ok(HostPattern::Exact(host::validate_name(raw)?))
    }
}

impl std::fmt::Display for HostPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HostPattern::Exact(h) => f.write_str(h),
            HostPattern::Wildcard(h) => write!(f, "*.{h}"),
            HostPattern::Any => f.write_str("*"),
        }
    }
}

/// The path part of a rule.
#[derive(Debug, Clone)]
pub enum PathPattern {
    Exact(String),
    /// Stored without a trailing slash (except the root `/`).
    Prefix(String),
    Regex(Regex),
}

impl PathPattern {
    pub fn exact(path: &str) -> Result<Self, String> {
        check_path(path)?;
        Ok(PathPattern::Exact(path.to_string()))
    }

    pub fn prefix(path: &str) -> Result<Self, String> {
        check_path(path)?;
        let trimmed = path.trim_end_matches('/');
        Ok(PathPattern::Prefix(if trimmed.is_empty() {
            "/".into()
        } else {
            trimmed.into()
        }))
    }

    pub fn regex(pattern: &str) -> Result<Self, String> {
        Regex::new(pattern)
            .map(PathPattern::Regex)
            .map_err(|e| format!("invalid regex: {e}"))
    }
}

impl std::fmt::Display for PathPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PathPattern::Exact(p) => write!(f, "= {p}"),
            PathPattern::Prefix(p) => write!(f, "{p}"),
            PathPattern::Regex(r) => write!(f, "~ {}", r.as_str()),
        }
    }
}

fn check_path(path: &str) -> Result<(), String> {
    if !path.starts_with('/') {
        return Err(format!("path {path:?} must start with \"/\""));
    }
    if path.contains(['?', '#']) || path.chars().any(|c| c.is_ascii_control() || c == ' ') {
        return Err(format!(
            "path {path:?} may not contain spaces, control characters, '?' or '#'"
        ));
    }
    Ok(())
}

#[derive(Debug, Default)]
struct PathTable {
    exact: Table<RouteId>,
    prefix: Table<RouteId>,
    /// The lengths of the keys of `prefix`, longest first: a lookup tries only these.
    prefix_lens: Vec<usize>,
    regex: Vec<(Regex, RouteId)>,
}

impl PathTable {
    fn insert(&mut self, path: PathPattern, id: RouteId) -> Result<(), RouteId> {
        let slot = match path {
            PathPattern::Exact(p) => self.exact.entry(p.into_boxed_str()),
            PathPattern::Prefix(p) => {
                if let Err(at) = self.prefix_lens.binary_search_by(|l| p.len().cmp(l)) {
                    self.prefix_lens.insert(at, p.len());
                }
                self.prefix.entry(p.into_boxed_str())
            }
            PathPattern::Regex(r) => {
                if let Some((_, prev)) = self.regex.iter().find(|(x, _)| x.as_str() == r.as_str()) {
                    return Err(*prev);
                }
                self.regex.push((r, id));
                return Ok(());
            }
        };
        match slot {
            std::collections::hash_map::Entry::Occupied(o) => Err(*o.get()),
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(id);
                Ok(())
            }
        }
    }

    fn lookup(&self, path: &str) -> Option<RouteId> {
        if let Some(id) = self.exact.get(path) {
            return Some(*id);
        }
        if let Some((_, id)) = self.regex.iter().find(|(r, _)| r.is_match(path)) {
            return Some(*id);
        }
        // The longest prefix that is the whole path or ends where a segment does. Keys have
        // no trailing slash, and `/` (the only key of length 1) matches every path. Only the
        // lengths of keys are tried: one hash per length, not one per segment of the path.
        let bytes = path.as_bytes();
        self.prefix_lens.iter().find_map(|&len| {
            let candidate = match len {
                1 => "/",
                _ if len == bytes.len() || bytes.get(len) == Some(&b'/') => &path[..len],
                _ => return None,
            };
            self.prefix.get(candidate).copied()
        })
    }
}

/// The compiled routing table.
#[derive(Debug, Default)]
pub struct Router {
    exact: Table<PathTable>,
    wildcard: Table<PathTable>,
    catch_all: Option<PathTable>,
    len: usize,
}

impl Router {
    pub fn new() -> Self {
        Self::default()
    }

    /// Add a route. On a duplicate host+path+match, returns the route that already has it.
    pub fn insert(
        &mut self,
        host: HostPattern,
        path: PathPattern,
        id: RouteId,
    ) -> Result<(), RouteId> {
        let table = match host {
            HostPattern::Exact(h) => self.exact.entry(h.into_boxed_str()).or_default(),
            HostPattern::Wildcard(h) => self.wildcard.entry(h.into_boxed_str()).or_default(),
            HostPattern::Any => self.catch_all.get_or_insert_with(PathTable::default),
        };
        table.insert(path, id)?;
        self.len += 1;
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Route a request. `host` must already be normalised (see [`normalize_host`]); `None` means
    /// the request had no usable host and only the catch-all applies.
    pub fn route(&self, host: Option<&str>, path: &str) -> Option<RouteId> {
        self.table_for(host)?.lookup(path)
    }

    fn table_for(&self, host: Option<&str>) -> Option<&PathTable> {
        if let Some(host) = host {
            if let Some(t) = self.exact.get(host) {
                return Some(t);
            }
            if let Some((_, parent)) = host.split_once('.') {
                if let Some(t) = self.wildcard.get(parent) {
                    return Some(t);
                }
            }
        }
        self.catch_all.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn router(rules: &[(&str, &str, &str)]) -> Router {
        let mut r = Router::new();
        for (i, (host, kind, path)) in rules.iter().enumerate() {
            let p = match *kind {
                "exact" => PathPattern::exact(path),
                "prefix" => PathPattern::prefix(path),
                _ => PathPattern::regex(path),
            }
            .unwrap();
            r.insert(HostPattern::parse(host).unwrap(), p, RouteId(i as u32))
                .unwrap();
        }
        r
    }

    fn at(r: &Router, host: &str, path: &str) -> Option<u32> {
        r.route(Some(host), path).map(|id| id.0)
    }

    #[test]
    fn host_precedence_exact_wildcard_catch_all() {
        let r = router(&[
            ("api.example.com", "prefix", "/"),
            ("*.example.com", "prefix", "/"),
            ("", "prefix", "/"),
        ]);
        assert_eq!(at(&r, "api.example.com", "/"), Some(0));
        assert_eq!(at(&r, "app.example.com", "/"), Some(1));
        assert_eq!(at(&r, "example.com", "/"), Some(2));
        assert_eq!(at(&r, "a.b.example.com", "/"), Some(2));
        assert_eq!(r.route(None, "/").map(|i| i.0), Some(2));
    }

    #[test]
    fn wildcard_matches_exactly_one_label() {
        let r = router(&[("*.example.com", "prefix", "/")]);
        assert_eq!(at(&r, "api.example.com", "/x"), Some(0));
        assert_eq!(at(&r, "example.com", "/x"), None);
        assert_eq!(at(&r, "sub.api.example.com", "/x"), None);
    }

    #[test]
    fn prefix_respects_segment_boundaries_and_longest_wins() {
        let r = router(&[
            ("", "prefix", "/api"),
            ("", "prefix", "/api/v1"),
            ("", "prefix", "/"),
        ]);
        assert_eq!(at(&r, "h", "/api"), Some(0));
        assert_eq!(at(&r, "h", "/api/"), Some(0));
        assert_eq!(at(&r, "h", "/api/users"), Some(0));
        assert_eq!(at(&r, "h", "/api/v1"), Some(1));
        assert_eq!(at(&r, "h", "/api/v1/users"), Some(1));
        assert_eq!(at(&r, "h", "/apiv1"), Some(2));
        assert_eq!(at(&r, "h", "/v1/api"), Some(2));
    }

    /// The lookup by key length agrees with trying every segment boundary of the path.
    #[test]
    fn prefix_lookup_agrees_with_walking_the_segments() {
        let walk = |keys: &[&str], path: &str| {
            let mut end = path.len();
            loop {
                let candidate = if end == 0 { "/" } else { &path[..end] };
                if let Some(i) = keys.iter().position(|k| *k == candidate) {
                    return Some(i as u32);
                }
                if end == 0 {
                    return None;
                }
                end = path[..end].rfind('/').unwrap_or(0);
            }
        };
        let key_sets: [&[&str]; 4] = [
            &["/"],
            &["/a", "/a/b", "/ab", "/a/b/c"],
            &["/", "/a/b", "/é", "/é/ü"],
            &["/x/y/z", "/x"],
        ];
        let paths = [
            "/", "//", "/a", "/a/", "/ab", "/a/b", "/a/bc", "/a/b/c/d", "/a//b", "/é", "/é/",
            "/é/ü", "/éü", "/x/y", "/x/y/z/", "*", "a/b", "",
        ];
        for keys in key_sets {
            let rules: Vec<_> = keys.iter().map(|k| ("", "prefix", *k)).collect();
            let r = router(&rules);
            for path in paths {
                assert_eq!(at(&r, "h", path), walk(keys, path), "{keys:?} {path:?}");
            }
        }
    }

    #[test]
    fn exact_matches_only_itself_and_beats_prefix() {
        let r = router(&[("", "exact", "/api/v1"), ("", "prefix", "/api")]);
        assert_eq!(at(&r, "h", "/api/v1"), Some(0));
        assert_eq!(at(&r, "h", "/api/v1/"), Some(1));
        assert_eq!(at(&r, "h", "/api/v1/users"), Some(1));
        let only_exact = router(&[("", "exact", "/api/v1")]);
        assert_eq!(at(&only_exact, "h", "/api/v1/"), None);
    }

    #[test]
    fn regex_beats_prefix_in_declaration_order() {
        let r = router(&[
            ("", "prefix", "/"),
            ("", "regex", r"^/img/.*\.png$"),
            ("", "regex", r"^/img/"),
        ]);
        assert_eq!(at(&r, "h", "/img/a.png"), Some(1));
        assert_eq!(at(&r, "h", "/img/a.jpg"), Some(2));
        assert_eq!(at(&r, "h", "/other"), Some(0));
    }

    #[test]
    fn duplicates_are_reported_with_the_first_owner() {
        let mut r = router(&[("a.com", "prefix", "/x")]);
        let dup = r.insert(
            HostPattern::parse("A.com").unwrap(),
            PathPattern::prefix("/x/").unwrap(),
            RouteId(9),
        );
        assert_eq!(dup, Err(RouteId(0)));
        // Same path with a different match kind is a different route.
        r.insert(
            HostPattern::parse("a.com").unwrap(),
            PathPattern::exact("/x").unwrap(),
            RouteId(1),
        )
        .unwrap();
    }

    #[test]
    fn the_most_specific_host_decides_alone() {
        let r = router(&[("api.example.com", "prefix", "/v1"), ("", "prefix", "/")]);
        assert_eq!(at(&r, "api.example.com", "/v1/x"), Some(0));
        assert_eq!(at(&r, "api.example.com", "/other"), None);
    }

    #[test]
    fn bad_patterns_are_rejected() {
        assert!(HostPattern::parse("a.*.com").is_err());
        assert!(HostPattern::parse("bad host").is_err());
        assert!(PathPattern::prefix("api").is_err());
        assert!(PathPattern::regex("(").is_err());
    }
}

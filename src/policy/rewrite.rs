//! Path rewrites applied to the normalised path before proxying. The query string is kept.

use regex::Regex;

#[derive(Debug, Clone)]
pub enum Rewrite {
    /// Remove a leading prefix on a segment boundary: `/api` turns `/api/users` into `/users`
    /// and `/api` into `/`.
    StripPrefix(String),
    /// Replace the whole path.
    ReplacePath(String),
    /// Replace the first match; `$1`, `${name}` refer to capture groups.
    Regex { regex: Regex, replacement: String },
}

impl Rewrite {
    /// Check a regex replacement against the groups its regex has.
    pub fn regex(pattern: &str, replacement: &str) -> Result<Rewrite, String> {
        let regex = Regex::new(pattern).map_err(|e| format!("invalid regex: {e}"))?;
        for group in referenced_groups(replacement) {
            let known = match group.parse::<usize>() {
                Ok(n) => n < regex.captures_len(),
                Err(_) => regex.capture_names().flatten().any(|n| n == group),
            };
            if !known {
                return Err(format!(
                    "replacement refers to group ${group}, but the regex has {} group(s){}",
                    regex.captures_len() - 1,
                    named_list(&regex)
                ));
            }
        }
        if !replacement.starts_with('/') && !replacement.starts_with('$') {
            return Err(format!("replacement {replacement:?} must start with \"/\""));
        }
        Ok(Rewrite::Regex {
            regex,
            replacement: replacement.to_string(),
        })
    }

    /// The rewritten path (without query).
    pub fn apply(&self, path: &str) -> String {
        match self {
            Rewrite::StripPrefix(prefix) => match path.strip_prefix(prefix.as_str()) {
                Some("") => "/".to_string(),
                Some(rest) if rest.starts_with('/') => rest.to_string(),
                _ => path.to_string(),
            },
            Rewrite::ReplacePath(p) => p.clone(),
            Rewrite::Regex { regex, replacement } => {
                let out = regex.replace(path, replacement.as_str());
                if out.starts_with('/') {
                    out.into_owned()
                } else {
                    format!("/{out}")
                }
            }
        }
    }
}

fn named_list(r: &Regex) -> String {
    let names: Vec<&str> = r.capture_names().flatten().collect();
    if names.is_empty() {
        String::new()
    } else {
        format!(" named {}", names.join(", "))
    }
}

/// The group names or numbers a replacement string refers to (`$1`, `${1}`, `$name`).
fn referenced_groups(rep: &str) -> Vec<String> {
    let mut out = Vec::new();
    let b = rep.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'$' {
            i += 1;
            continue;
        }
        if b.get(i + 1) == Some(&b'$') {
            i += 2; // "$$" is a literal dollar
            continue;
        }
        if b.get(i + 1) == Some(&b'{') {
            if let Some(end) = rep[i + 2..].find('}') {
                out.push(rep[i + 2..i + 2 + end].to_string());
                i += end + 3;
                continue;
            }
        }
        let start = i + 1;
        let mut j = start;
        while j < b.len() && (b[j].is_ascii_alphanumeric() || b[j] == b'_') {
            j += 1;
        }
        if j > start {
            out.push(rep[start..j].to_string());
        }
        i = j.max(i + 1);
    }
    out
}

/// Join a rewritten path with the original query.
pub fn with_query(path: &str, query: Option<&str>) -> String {
    match query {
        Some(q) => format!("{path}?{q}"),
        None => path.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strip_prefix_on_segment_boundaries() {
        let r = Rewrite::StripPrefix("/api/v1".into());
        assert_eq!(r.apply("/api/v1/users"), "/users");
        assert_eq!(r.apply("/api/v1"), "/");
        assert_eq!(r.apply("/api/v1/"), "/");
        assert_eq!(r.apply("/api/v10"), "/api/v10");
    }

    #[test]
    fn replace_path_and_regex() {
        assert_eq!(
            Rewrite::ReplacePath("/v2".into()).apply("/old-api/users"),
            "/v2"
        );
        let r = Rewrite::regex("^/old/(.*)$", "/new/$1").unwrap();
        assert_eq!(r.apply("/old/a/b"), "/new/a/b");
        assert_eq!(r.apply("/other"), "/other");
        let named = Rewrite::regex("^/u/(?P<id>[0-9]+)$", "/users/${id}/profile").unwrap();
        assert_eq!(named.apply("/u/42"), "/users/42/profile");
    }

    #[test]
    fn missing_groups_are_rejected() {
        assert!(Rewrite::regex("^/old/(.*)$", "/new/$2").is_err());
        assert!(Rewrite::regex("^/old/(.*)$", "/new/${nope}").is_err());
        assert!(Rewrite::regex("^/old/(.*)$", "/cost/$$1").is_ok());
        assert!(Rewrite::regex("(", "/x").is_err());
    }

    #[test]
    fn query_is_kept() {
        assert_eq!(with_query("/users", Some("a=1&b=2")), "/users?a=1&b=2");
        assert_eq!(with_query("/users", None), "/users");
    }
}

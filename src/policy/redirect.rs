//! Redirect responses: to a URL template, or to the same host and path over https.

use http::StatusCode;

/// A piece of a URL template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    Lit(String),
    Host,
    Path,
    Query,
    RequestUri,
}

/// Where a redirect points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A template with `{host}`, `{path}`, `{query}` and `{request_uri}` (path + `?query`).
    Url(Vec<Part>),
    /// `https://{host}[:port]{request_uri}`.
    Https { port: Option<u16> },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redirect {
    pub target: Target,
    pub code: StatusCode,
}

pub const CODES: [u16; 4] = [301, 302, 307, 308];

impl Redirect {
    pub fn to(template: &str, code: u16) -> Result<Redirect, String> {
        Ok(Redirect {
            target: Target::Url(parse_template(template)?),
            code: status(code)?,
        })
    }

    pub fn https(port: Option<u16>, code: u16) -> Result<Redirect, String> {
        Ok(Redirect {
            target: Target::Https { port },
            code: status(code)?,
        })
    }

    /// The Location for a request. `host` has no port; `query` has no `?`.
    pub fn location(&self, host: &str, path: &str, query: Option<&str>) -> String {
        let mut out = String::with_capacity(64);
        let push_uri = |out: &mut String| {
            out.push_str(path);
            if let Some(q) = query {
                out.push('?');
                out.push_str(q);
            }
        };
        match &self.target {
            Target::Https { port } => {
                out.push_str("https://");
                out.push_str(host);
                if let Some(p) = port.filter(|p| *p != 443) {
                    out.push_str(&format!(":{p}"));
                }
                push_uri(&mut out);
            }
            Target::Url(parts) => {
                for p in parts {
                    match p {
                        Part::Lit(s) => out.push_str(s),
                        Part::Host => out.push_str(host),
                        Part::Path => out.push_str(path),
                        Part::Query => out.push_str(query.unwrap_or("")),
                        Part::RequestUri => push_uri(&mut out),
                    }
                }
            }
        }
        out
    }
}

fn status(code: u16) -> Result<StatusCode, String> {
    if !CODES.contains(&code) {
        return Err(format!(
            "redirect code must be one of 301, 302, 307, 308, got {code}"
        ));
    }
    StatusCode::from_u16(code).map_err(|e| e.to_string())
}

fn parse_template(t: &str) -> Result<Vec<Part>, String> {
    if t.is_empty() || t.chars().any(|c| c.is_ascii_control() || c == ' ') {
        return Err(format!(
            "{t:?} is not a URL; write e.g. \"https://example.org{{request_uri}}\""
        ));
    }
    let mut parts = Vec::new();
    let mut rest = t;
    while let Some(start) = rest.find('{') {
        if start > 0 {
            parts.push(Part::Lit(rest[..start].to_string()));
        }
        let end = rest[start..]
            .find('}')
            .ok_or_else(|| format!("unclosed '{{' in {t:?}"))?
            + start;
        parts.push(match &rest[start + 1..end] {
            "host" => Part::Host,
            "path" => Part::Path,
            "query" => Part::Query,
            "request_uri" => Part::RequestUri,
            other => {
                return Err(format!(
                    "unknown variable {{{other}}} in {t:?}; use {{host}}, {{path}}, {{query}} or {{request_uri}}"
                ))
            }
        });
        rest = &rest[end + 1..];
    }
    if !rest.is_empty() {
        parts.push(Part::Lit(rest.to_string()));
    }
    Ok(parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_fill_in_request_parts() {
        let r = Redirect::to("https://new.example.org{request_uri}", 301).unwrap();
        assert_eq!(
            r.location("a.com", "/x/y", Some("q=1")),
            "https://new.example.org/x/y?q=1"
        );
        let r = Redirect::to("https://{host}/moved?from={path}&{query}", 302).unwrap();
        assert_eq!(
            r.location("a.com", "/p", None),
            "https://a.com/moved?from=/p&"
        );
        let fixed = Redirect::to("https://example.org/new", 308).unwrap();
        assert_eq!(
            fixed.location("a.com", "/old", Some("x")),
            "https://example.org/new"
        );
    }

    #[test]
    fn https_keeps_host_path_and_query() {
        let r = Redirect::https(None, 308).unwrap();
        assert_eq!(
            r.location("a.com", "/p", Some("x=1")),
            "https://a.com/p?x=1"
        );
        let r = Redirect::https(Some(8443), 301).unwrap();
        assert_eq!(r.location("a.com", "/", None), "https://a.com:8443/");
    }

    #[test]
    fn bad_templates_and_codes_are_rejected() {
        assert!(Redirect::to("https://x/{nope}", 301).is_err());
        assert!(Redirect::to("https://x/{path", 301).is_err());
        assert!(Redirect::to("https://x/", 200).is_err());
    }
}

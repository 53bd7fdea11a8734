//! Path normalisation before routing and policy, so that every rule sees one canonical path:
//! percent-encoded unreserved characters are decoded, duplicate slashes merged, dot segments
//! resolved. A path that climbs above the root, hides a slash or backslash in an encoding
//! (`%2F`, `%5C`), or holds a NUL or control character is refused: the caller answers 400.

use std::borrow::Cow;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    /// Not starting with `/`, a bad percent-escape, a control character or a backslash.
    Invalid,
    /// `..` above the root.
    EscapesRoot,
    /// `%2F` or `%5C`: the origin might see another path than the one routed.
    EncodedSeparator,
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Normalise `path` (no query). Borrows when the path is already canonical.
pub fn normalize(path: &str) -> Result<Cow<'_, str>, PathError> {
    let b = path.as_bytes();
    if b.first() != Some(&b'/') {
        return Err(PathError::Invalid);
    }
    // One pass: only escapes, control bytes, backslashes, "//" and "/." can need work.
    let suspicious = b.iter().enumerate().any(|(i, &c)| match c {
        b'%' | b'\\' | 0..=0x1f | 0x7f => true,
        b'/' => matches!(b.get(i + 1), Some(b'/' | b'.')),
        _ => false,
    });
    if !suspicious {
        return Ok(Cow::Borrowed(path));
    }
    let decoded = decode_segments(b)?;
    let mut out: Vec<&str> = Vec::new();
    let segs: Vec<&str> = decoded.split('/').skip(1).collect();
    let last = segs.len().saturating_sub(1);
    let mut trailing_slash = false;
    for (i, seg) in segs.iter().enumerate() {
        match *seg {
            "" => trailing_slash = i == last,
            "." => trailing_slash = i == last,
            ".." => {
                out.pop().ok_or(PathError::EscapesRoot)?;
                trailing_slash = i == last;
            }
            s => {
                out.push(s);
                trailing_slash = false;
            }
        }
    }
    let mut result = String::with_capacity(decoded.len());
    for s in &out {
        result.push('/');
        result.push_str(s);
    }
    if trailing_slash || out.is_empty() {
        result.push('/');
    }
    Ok(Cow::Owned(result))
}

/// Decode `%XX` of unreserved characters; keep other escapes (upper-cased); refuse encoded
/// separators, control characters, backslashes and broken escapes.
fn decode_segments(b: &[u8]) -> Result<String, PathError> {
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c < 0x20 || c == 0x7f || c == b'\\' {
            return Err(PathError::Invalid);
        }
        if c != b'%' {
            out.push(c);
            i += 1;
            continue;
        }
        let (Some(h), Some(l)) = (
            b.get(i + 1).and_then(|x| hex(*x)),
            b.get(i + 2).and_then(|x| hex(*x)),
        ) else {
            return Err(PathError::Invalid);
        };
        let v = h * 16 + l;
        match v {
            b'/' | b'\\' => return Err(PathError::EncodedSeparator),
            0..=0x1f | 0x7f => return Err(PathError::Invalid),
            v if unreserved(v) => out.push(v),
            v => out.extend_from_slice(format!("%{v:02X}").as_bytes()),
        }
        i += 3;
    }
    // Only ASCII went in.
    String::from_utf8(out).map_err(|_| PathError::Invalid)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(p: &str) -> Result<String, PathError> {
        normalize(p).map(|c| c.into_owned())
    }

    #[test]
    fn canonical_paths_are_borrowed() {
        assert!(matches!(
            normalize("/api/v1/users").unwrap(),
            Cow::Borrowed(_)
        ));
        assert!(matches!(normalize("/").unwrap(), Cow::Borrowed(_)));
        assert!(matches!(normalize("/a.b/c..d/").unwrap(), Cow::Borrowed(_)));
    }

    #[test]
    fn bypass_attempts_all_reach_the_same_path() {
        for p in [
            "/admin",
            "/%61dmin",
            "/x/../admin",
            "//admin",
            "/./admin",
            "/%2e/admin",
            "/x/%2E%2E/admin",
        ] {
            assert_eq!(n(p).unwrap(), "/admin", "{p}");
        }
        assert_eq!(n("/admin/").unwrap(), "/admin/");
        assert_eq!(n("/a/b/..").unwrap(), "/a/");
        assert_eq!(n("/a//b///c").unwrap(), "/a/b/c");
        assert_eq!(n("/a/%7euser").unwrap(), "/a/~user");
        assert_eq!(n("/q%3fx%20y").unwrap(), "/q%3Fx%20y");
    }

    #[test]
    fn refused_paths() {
        assert_eq!(n("/.."), Err(PathError::EscapesRoot));
        assert_eq!(n("/a/../../etc/passwd"), Err(PathError::EscapesRoot));
        assert_eq!(n("/%2e%2e/x"), Err(PathError::EscapesRoot));
        assert_eq!(n("/public%2F..%2Fadmin"), Err(PathError::EncodedSeparator));
        assert_eq!(n("/a%5cb"), Err(PathError::EncodedSeparator));
        assert_eq!(n("/a%00b"), Err(PathError::Invalid));
        assert_eq!(n("/a%zz"), Err(PathError::Invalid));
        assert_eq!(n("/a%4"), Err(PathError::Invalid));
        assert_eq!(n("/a\\b"), Err(PathError::Invalid));
        assert_eq!(n("relative"), Err(PathError::Invalid));
    }
}

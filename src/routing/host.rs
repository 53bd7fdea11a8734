//! Host names: validation of configured names and normalisation of request hosts.

use std::borrow::Cow;

/// Why a request's host could not be used for routing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostError {
    Empty,
    Malformed,
}

/// Validate a configured host name and return it lower-cased.
pub(super) fn validate_name(raw: &str) -> Result<String, String> {
    let name = raw.trim_end_matches('.').to_ascii_lowercase();
    if name.is_empty() || name.len() > 253 {
        return Err(format!("{raw:?} is not a valid host name"));
    }
    for label in name.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !ok {
            return Err(format!(
                "{raw:?} is not a valid host name (labels of letters, digits, '-' and '_', \
                 separated by dots)"
            ));
        }
    }
    Ok(name)
}

/// Normalise a request's Host (or URI authority) for routing: strip the port and a trailing dot,
/// lower-case. Borrows when nothing needs to change (the common case).
pub fn normalize_host(raw: &[u8]) -> Result<Cow<'_, str>, HostError> {
    if raw.is_empty() {
        return Err(HostError::Empty);
    }
    let host = if raw[0] == b'[' {
        // IPv6 literal: "[::1]" or "[::1]:8080".
        let close = raw
            .iter()
            .position(|&b| b == b']')
            .ok_or(HostError::Malformed)?;
        let rest = &raw[close + 1..];
        if !(rest.is_empty() || (rest[0] == b':' && valid_port(&rest[1..]))) {
            return Err(HostError::Malformed);
        }
        let inner = &raw[1..close];
        if inner.is_empty()
            || !inner
                .iter()
                .all(|b| b.is_ascii_hexdigit() || b":.".contains(b))
        {
            return Err(HostError::Malformed);
        }
        &raw[..=close]
    } else {
        let (name, port) = match raw.iter().rposition(|&b| b == b':') {
            Some(i) => (&raw[..i], Some(&raw[i + 1..])),
            None => (raw, None),
        };
        if port.is_some_and(|p| !valid_port(p)) {
            return Err(HostError::Malformed);
        }
        let name = name.strip_suffix(b".").unwrap_or(name);
        let valid = !name.is_empty()
            && name.len() <= 253
            && name
                .iter()
                .all(|&b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_');
        if !valid {
            return Err(HostError::Malformed);
        }
        name
    };
    // Every byte is ASCII here.
    let s = std::str::from_utf8(host).map_err(|_| HostError::Malformed)?;
    if s.bytes().any(|b| b.is_ascii_uppercase()) {
        Ok(Cow::Owned(s.to_ascii_lowercase()))
    } else {
        Ok(Cow::Borrowed(s))
    }
}

fn valid_port(p: &[u8]) -> bool {
    !p.is_empty() && p.len() <= 5 && p.iter().all(u8::is_ascii_digit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_case_port_and_trailing_dot() {
        assert_eq!(
            normalize_host(b"Api.Example.COM:8080").unwrap(),
            "api.example.com"
        );
        assert_eq!(normalize_host(b"example.com.").unwrap(), "example.com");
        assert_eq!(normalize_host(b"[::1]:80").unwrap(), "[::1]");
        assert!(matches!(
            normalize_host(b"a.com").unwrap(),
            Cow::Borrowed(_)
        ));
    }

    #[test]
    fn rejects_malformed_hosts() {
        for bad in [
            &b""[..],
            b"a b",
            b"a.com:",
            b"a.com:port",
            b"[::1",
            b"[zz]",
            b"a/b",
            b":80",
        ] {
            assert!(
                normalize_host(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}

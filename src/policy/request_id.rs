//! Request ids: reuse a well-formed incoming `X-Request-Id`, otherwise make one.

/// Whether an incoming id is safe to pass on and log: 1 to 128 visible characters from a
/// conservative set (letters, digits and `-_.:+/=`).
pub fn is_valid(id: &[u8]) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:+/=".contains(b))
}

/// A new id: 32 lower-case hex digits (128 random bits from a fast thread-local generator;
/// unique, not secret), ready to be sent as a header value.
pub fn generate() -> http::HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bits = fastrand::u128(..);
    let mut id = [0u8; 32];
    for (i, c) in id.iter_mut().enumerate() {
        *c = HEX[(bits >> (124 - 4 * i)) as usize & 0xf];
    }
    http::HeaderValue::from_bytes(&id).unwrap_or_else(|_| http::HeaderValue::from_static("-"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_and_generation() {
        assert!(is_valid(b"abc-123_x.y:z"));
        assert!(!is_valid(b""));
        assert!(!is_valid(b"has space"));
        assert!(!is_valid(b"new\nline"));
        assert!(!is_valid(&[b'a'; 129]));
        let (a, b) = (generate(), generate());
        assert_eq!(a.len(), 32);
        assert_ne!(a, b);
        assert!(is_valid(a.as_bytes()));
        assert!(a
            .as_bytes()
            .iter()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        // Every digit position is used: over many ids, each position sees more than one digit.
        let ids: Vec<_> = (0..64).map(|_| generate()).collect();
        for i in 0..32 {
            assert!(
                ids.iter().any(|x| x.as_bytes()[i] != ids[0].as_bytes()[i]),
                "{i}"
            );
        }
    }
}

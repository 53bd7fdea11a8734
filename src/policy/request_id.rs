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
/// unique, not secret).
pub fn generate() -> String {
    format!("{:032x}", fastrand::u128(..))
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
    }
}

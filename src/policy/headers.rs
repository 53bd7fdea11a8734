//! Header edits: remove, then set (replace), then add (append).

use http::{HeaderName, HeaderValue};
use pingora::http::{RequestHeader, ResponseHeader};

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeaderEdits {
    pub remove: Vec<HeaderName>,
    pub set: Vec<(HeaderName, HeaderValue)>,
    pub add: Vec<(HeaderName, HeaderValue)>,
}

/// The two header types gatehouse edits.
pub trait EditableHeaders {
    fn remove(&mut self, name: &HeaderName);
    fn set(&mut self, name: &HeaderName, value: &HeaderValue);
    fn add(&mut self, name: &HeaderName, value: &HeaderValue);
}

macro_rules! editable {
    ($t:ty) => {
        impl EditableHeaders for $t {
            fn remove(&mut self, name: &HeaderName) {
                self.remove_header(name);
            }
            // Names and values were validated at compile time, so these cannot fail.
            fn set(&mut self, name: &HeaderName, value: &HeaderValue) {
                let _ = self.insert_header(name.clone(), value.clone());
            }
            fn add(&mut self, name: &HeaderName, value: &HeaderValue) {
                let _ = self.append_header(name.clone(), value.clone());
            }
        }
    };
}
editable!(RequestHeader);
editable!(ResponseHeader);

impl HeaderEdits {
    /// How many headers [`Self::apply`] may add at most.
    pub fn additions(&self) -> usize {
        self.set.len() + self.add.len()
    }

    pub fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.set.is_empty() && self.add.is_empty()
    }

    pub fn apply(&self, h: &mut impl EditableHeaders) {
        for n in &self.remove {
            h.remove(n);
        }
        for (n, v) in &self.set {
            h.set(n, v);
        }
        for (n, v) in &self.add {
            h.add(n, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remove_set_add_in_that_order() {
        let edits = HeaderEdits {
            remove: vec![HeaderName::from_static("server")],
            set: vec![(
                HeaderName::from_static("x-env"),
                HeaderValue::from_static("prod"),
            )],
            add: vec![(
                HeaderName::from_static("x-tag"),
                HeaderValue::from_static("b"),
            )],
        };
        let mut r = ResponseHeader::build(200, None).unwrap();
        r.insert_header("Server", "nginx").unwrap();
        r.insert_header("X-Env", "dev").unwrap();
        r.insert_header("X-Tag", "a").unwrap();
        edits.apply(&mut r);
        assert!(r.headers.get("server").is_none());
        assert_eq!(r.headers["x-env"], "prod");
        let tags: Vec<_> = r.headers.get_all("x-tag").iter().collect();
        assert_eq!(tags, ["a", "b"]);
    }
}

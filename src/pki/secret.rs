//! A byte buffer for key material and tokens that never shows its content.

use std::fmt;

use zeroize::Zeroize;

/// Key bytes or a token. `Debug` and `Display` never show the content, and
/// the bytes are overwritten with zeros when the value is dropped, so a key
/// does not linger in freed heap memory.
///
/// The field stays public so that callers can build one from bytes they
/// already hold; moving the bytes back out is impossible because of `Drop`,
/// which is what keeps the zeroing guarantee.
pub struct Secret(pub Vec<u8>);

impl Secret {
    pub fn new(bytes: Vec<u8>) -> Secret {
        Secret(bytes)
    }

    /// The bytes. Callers must not log them or put them into errors.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    /// The bytes as UTF-8 (PEM, passwords, tokens), or `None` when they are not text.
    pub fn expose_str(&self) -> Option<&str> {
        std::str::from_utf8(&self.0).ok()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl Clone for Secret {
    fn clone(&self) -> Secret {
        Secret(self.0.clone())
    }
}

/// Constant-time comparison, so comparing a presented token with a stored
/// one does not leak how long the common prefix is.
impl PartialEq for Secret {
    fn eq(&self, other: &Secret) -> bool {
        if self.0.len() != other.0.len() {
            return false;
        }
        self.0
            .iter()
            .zip(other.0.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }
}

impl Eq for Secret {}

impl From<Vec<u8>> for Secret {
    fn from(bytes: Vec<u8>) -> Secret {
        Secret(bytes)
    }
}

impl From<String> for Secret {
    fn from(text: String) -> Secret {
        Secret(text.into_bytes())
    }
}

impl From<&str> for Secret {
    fn from(text: &str) -> Secret {
        Secret(text.as_bytes().to_vec())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Lets file writers take a `Secret` without copying it into an unzeroed
/// buffer first.
impl AsRef<[u8]> for Secret {
    fn as_ref(&self) -> &[u8] {
        self.expose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formatting_never_shows_the_bytes() {
        let s = Secret::from("hunter2-very-secret");
        assert_eq!(format!("{s}"), "<redacted>");
        assert_eq!(format!("{s:?}"), "<redacted>");
        assert_eq!(format!("{:?}", Some(&s)), "Some(<redacted>)");
        assert_eq!(s.expose(), b"hunter2-very-secret");
        assert_eq!(s.expose_str(), Some("hunter2-very-secret"));
    }

    #[test]
    fn equality_compares_content() {
        assert_eq!(Secret::from("abc"), Secret::from("abc"));
        assert_ne!(Secret::from("abc"), Secret::from("abd"));
        assert_ne!(Secret::from("abc"), Secret::from("abcd"));
    }

    #[test]
    fn zeroize_clears_the_buffer_in_place() {
        // What Drop does, observed on a live value: the same allocation is
        // overwritten, not just released.
        let mut s = Secret::from(vec![0xAAu8; 64]);
        let ptr = s.0.as_ptr();
        s.0.zeroize();
        assert!(s.0.is_empty());
        // zeroize clears the length but keeps the allocation; read it back.
        // SAFETY: `s` is alive, so its 64-byte allocation is still owned and
        // was just written (with zeros) by zeroize.
        let cleared = unsafe { std::slice::from_raw_parts(ptr, 64) };
        assert!(cleared.iter().all(|b| *b == 0));
    }
}

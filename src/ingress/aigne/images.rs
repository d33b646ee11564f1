//! Generated images kept in memory for a while, so that an AIGNE client asking
//! for `"outputFileType":"url"` gets an absolute URL it can fetch without a key.
//!
//! Ids are 256 random bits (unguessable). Bounded by count, bytes and age (see
//! `Limits::generated_images_*`, `generated_image_ttl_ms`): the oldest image is
//! dropped first. The store is per process; an image's URL names the process
//! that generated it (a load balancer in front of several hubs needs affinity,
//! or `outputFileType: "file"`).

use bytes::Bytes;
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

struct Entry {
    data: Bytes,
    mime: String,
    expires: Instant,
}

#[derive(Default)]
struct Inner {
    entries: HashMap<String, Entry>,
    /// Ids in insertion order; with one time to live, also expiry order.
    order: VecDeque<String>,
    bytes: usize,
}

impl Inner {
    fn drop_oldest(&mut self) {
        if let Some(id) = self.order.pop_front() {
            if let Some(entry) = self.entries.remove(&id) {
                self.bytes -= entry.data.len();
            }
        }
    }

    fn drop_expired(&mut self, now: Instant) {
        while let Some(id) = self.order.front() {
            match self.entries.get(id) {
                Some(entry) if entry.expires > now => break,
                _ => self.drop_oldest(),
            }
        }
    }
}

pub(crate) struct ImageStore {
    inner: Mutex<Inner>,
    ttl: Duration,
    max_bytes: usize,
    max_count: usize,
}

/// An image as served.
pub(crate) struct StoredImage {
    pub data: Bytes,
    pub mime: String,
    /// Time left before it expires.
    pub remaining: Duration,
}

impl ImageStore {
    pub(crate) fn new(ttl: Duration, max_bytes: usize, max_count: usize) -> Self {
        Self {
            inner: Mutex::default(),
            ttl,
            max_bytes,
            max_count,
        }
    }

    /// Keeps an image and returns its id, or `None` if it alone is over the byte
    /// limit (the caller then answers with the bytes inline).
    pub(crate) fn put(&self, data: Bytes, mime: &str) -> Option<String> {
        if data.len() > self.max_bytes || self.max_count == 0 {
            return None;
        }
        let now = Instant::now();
        let id = crate::auth::random_secret();
        let mut inner = self.inner.lock().expect("image store lock poisoned");
        inner.drop_expired(now);
        while inner.entries.len() >= self.max_count || inner.bytes + data.len() > self.max_bytes {
            inner.drop_oldest();
        }
        inner.bytes += data.len();
        inner.order.push_back(id.clone());
        inner.entries.insert(
            id.clone(),
            Entry {
                data,
                mime: mime.to_string(),
                expires: now + self.ttl,
            },
        );
        Some(id)
    }

    pub(crate) fn get(&self, id: &str) -> Option<StoredImage> {
        let now = Instant::now();
        let mut inner = self.inner.lock().expect("image store lock poisoned");
        inner.drop_expired(now);
        inner.entries.get(id).map(|e| StoredImage {
            data: e.data.clone(),
            mime: e.mime.clone(),
            remaining: e.expires.saturating_duration_since(now),
        })
    }

    /// Images and bytes held.
    #[cfg(test)]
    pub(crate) fn usage(&self) -> (usize, usize) {
        let inner = self.inner.lock().expect("image store lock poisoned");
        (inner.entries.len(), inner.bytes)
    }
}

/// The MIME type of image bytes, from their signature (PNG when unknown: what
/// image models produce by default).
pub(crate) fn sniff_mime(data: &[u8]) -> &'static str {
    if data.starts_with(&[0xFF, 0xD8, 0xFF]) {
        "image/jpeg"
    } else if data.starts_with(b"GIF8") {
        "image/gif"
    } else if data.len() >= 12 && &data[..4] == b"RIFF" && &data[8..12] == b"WEBP" {
        "image/webp"
    } else {
        "image/png"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_are_served_by_unguessable_id_until_they_expire() {
        let store = ImageStore::new(Duration::from_millis(50), 1_000, 10);
        let id = store
            .put(Bytes::from_static(b"\x89PNGabc"), "image/png")
            .unwrap();
        assert!(id.len() >= 43, "256 random bits");
        assert_ne!(
            store.put(Bytes::from_static(b"x"), "image/png").unwrap(),
            id
        );
        let got = store.get(&id).unwrap();
        assert_eq!(
            (&got.data[..], got.mime.as_str()),
            (&b"\x89PNGabc"[..], "image/png")
        );
        assert!(store.get("nope").is_none());
        std::thread::sleep(Duration::from_millis(60));
        assert!(store.get(&id).is_none());
        assert_eq!(store.usage(), (0, 0));
    }

    #[test]
    fn the_oldest_images_go_first_when_a_bound_is_reached() {
        let store = ImageStore::new(Duration::from_secs(60), 10, 3);
        let a = store.put(Bytes::from_static(b"aaaa"), "image/png").unwrap();
        let b = store.put(Bytes::from_static(b"bbbb"), "image/png").unwrap();
        let c = store.put(Bytes::from_static(b"cc"), "image/png").unwrap();
        assert!(store.get(&a).is_some());
        // 10 bytes max: a goes.
        let d = store.put(Bytes::from_static(b"dd"), "image/png").unwrap();
        assert!(store.get(&a).is_none());
        // 3 images max: b goes.
        let e = store.put(Bytes::from_static(b"e"), "image/png").unwrap();
        assert!(store.get(&b).is_none());
        for id in [&c, &d, &e] {
            assert!(store.get(id).is_some());
        }
        assert_eq!(store.usage(), (3, 5));
        assert!(store.put(Bytes::from(vec![0u8; 11]), "image/png").is_none());
    }

    #[test]
    fn mime_types_come_from_the_bytes() {
        assert_eq!(sniff_mime(b"\xFF\xD8\xFF\xE0"), "image/jpeg");
        assert_eq!(sniff_mime(b"RIFF\0\0\0\0WEBPVP8 "), "image/webp");
        assert_eq!(sniff_mime(b"\x89PNG\r\n"), "image/png");
    }
}

//! This node's metadata: a small string map sent in every hello.

use std::collections::BTreeMap;
use std::ops::Deref;
use std::sync::RwLockWriteGuard;

use crate::wire::{self, WireError};

/// Well-known metadata key: a human name for the node.
pub const NAME: &str = "name";
/// Well-known metadata key: the operating system (`linux`, `macos`, …).
pub const OS: &str = "os";
/// Well-known metadata key: the device model, where the platform tells it.
pub const DEVICE_MODEL: &str = "device_model";
/// Well-known metadata key: the warren version the node runs.
pub const VERSION: &str = "version";

/// The metadata a node starts with: host name and warren version. Every verified peer gets it
/// in the hello (in ContactsOnly mode, contacts only). What else goes is the application's
/// choice: [`device_info`] is opt-in.
pub(crate) fn defaults() -> BTreeMap<String, String> {
    let mut metadata = BTreeMap::new();
    metadata.insert(NAME.to_owned(), host_name());
    metadata.insert(VERSION.to_owned(), env!("CARGO_PKG_VERSION").to_owned());
    metadata
}

/// The operating system and device model, for an application that wants its peers to see them
/// (`p2p.metadata_mut().extend(device_info())` or [`Builder::device_info`](crate::Builder::device_info)).
/// Not sent by default: they fingerprint the device for every peer it talks to.
pub fn device_info() -> BTreeMap<String, String> {
    let mut metadata = BTreeMap::new();
    metadata.insert(OS.to_owned(), std::env::consts::OS.to_owned());
    metadata.insert(DEVICE_MODEL.to_owned(), device_model());
    metadata
}

fn read_trimmed(path: &str) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let text = text.trim();
    (!text.is_empty()).then(|| truncate(text))
}

fn truncate(text: &str) -> String {
    let mut end = text.len().min(wire::MAX_METADATA_VALUE_LEN);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

fn host_name() -> String {
    read_trimmed("/proc/sys/kernel/hostname")
        .or_else(|| std::env::var("HOSTNAME").ok().map(|h| truncate(&h)))
        .unwrap_or_else(|| "warren".to_owned())
}

fn device_model() -> String {
    read_trimmed("/sys/devices/virtual/dmi/id/product_name").unwrap_or_else(|| "unknown".to_owned())
}

/// Write access to a node's metadata. When the guard is dropped and the map differs from what
/// it was when the guard was taken, one `MetadataModified` event is sent; an unchanged map sends
/// nothing. Entries are checked against the wire limits as they are inserted.
pub struct MetadataGuard<'a> {
    pub(crate) map: RwLockWriteGuard<'a, BTreeMap<String, String>>,
    pub(crate) before: BTreeMap<String, String>,
    pub(crate) events: &'a tokio::sync::broadcast::Sender<super::Event>,
}

impl MetadataGuard<'_> {
    /// Sets `key` to `value`, returning the previous value. Keys are 1 to 64 bytes of printable
    /// ASCII without `=`; values at most 255 bytes; at most 64 entries.
    pub fn insert(&mut self, key: impl Into<String>, value: impl Into<String>) -> Result<Option<String>, WireError> {
        let (key, value) = (key.into(), value.into());
        wire::check_metadata_entry(&key, &value)?;
        if !self.map.contains_key(&key) && self.map.len() >= wire::MAX_METADATA_ENTRIES {
            return Err(WireError::TooLong {
                field: "metadata",
                len: self.map.len() + 1,
                max: wire::MAX_METADATA_ENTRIES,
            });
        }
        Ok(self.map.insert(key, value))
    }

    /// Inserts every entry of `entries`, stopping at the first the wire limits refuse.
    pub fn extend(&mut self, entries: impl IntoIterator<Item = (String, String)>) -> Result<(), WireError> {
        for (key, value) in entries {
            self.insert(key, value)?;
        }
        Ok(())
    }

    /// Removes `key`, returning its value.
    pub fn remove(&mut self, key: &str) -> Option<String> {
        self.map.remove(key)
    }
}

impl Deref for MetadataGuard<'_> {
    type Target = BTreeMap<String, String>;

    fn deref(&self) -> &Self::Target {
        &self.map
    }
}

impl Drop for MetadataGuard<'_> {
    fn drop(&mut self) {
        if *self.map != self.before {
            // An error only means nobody is subscribed.
            let _ = self.events.send(super::Event::MetadataModified { metadata: self.map.clone() });
        }
    }
}

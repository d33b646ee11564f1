//! Upcasters: turn events stored in an older shape into the current one on read.
//!
//! Stored events are never rewritten. When a variant's shape changes, its
//! `event_version` goes up, and an upcaster registered here converts the older
//! payload; live loading, projections and replay all read through this list, so
//! they agree. Every upcaster comes with a test that replays the old shape.

use cqrs_es::persist::EventUpcaster;

/// All upcasters, oldest first. Version 1.0 is the first schema: none yet.
pub fn upcasters() -> Vec<Box<dyn EventUpcaster>> {
    Vec::new()
}

//! The NRI API messages (`nri.pkg.api.v1alpha1`) generated from `api/nri.proto`, plus the event
//! subscription mask.
//!
//! Field numbers follow containerd/nri up to v0.12.2. Messages from an older runtime simply lack
//! the newer fields (they decode as defaults); fields we send that an older runtime does not know
//! are kept by it as unknown fields and ignored.
#![allow(
    missing_docs,
    clippy::doc_lazy_continuation,
    clippy::large_enum_variant
)]

include!(concat!(env!("OUT_DIR"), "/nri.pkg.api.v1alpha1.rs"));

/// Full ttrpc service name of the plugin service (served by the plugin).
pub const PLUGIN_SERVICE: &str = "nri.pkg.api.v1alpha1.Plugin";
/// Full ttrpc service name of the runtime service (served by the runtime).
pub const RUNTIME_SERVICE: &str = "nri.pkg.api.v1alpha1.Runtime";

/// The subscription bit of an event: `1 << (event - 1)`, 0 for [`Event::Unknown`] and
/// [`Event::Last`].
pub fn event_bit(event: Event) -> i32 {
    match event {
        Event::Unknown | Event::Last => 0,
        other => 1 << (other as i32 - 1),
    }
}

/// The mask of every valid event for a runtime whose `Event::LAST` is `last` (12 before NRI
/// v0.10, 15 from v0.10 on). A mask with any other bit makes the runtime reject the plugin.
pub fn valid_events(last: i32) -> i32 {
    (1 << (last - 1)) - 1
}

/// Builds a subscription mask from a list of events.
pub fn event_mask(events: &[Event]) -> i32 {
    events.iter().fold(0, |mask, e| mask | event_bit(*e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_match_the_published_values() {
        assert_eq!(event_bit(Event::RunPodSandbox), 0x1);
        assert_eq!(event_bit(Event::CreateContainer), 0x8);
        assert_eq!(event_bit(Event::RemoveContainer), 0x400);
        assert_eq!(valid_events(12), 0x7ff);
        assert_eq!(valid_events(15), 0x3fff);
        let mask = event_mask(&[
            Event::CreateContainer,
            Event::StartContainer,
            Event::RemoveContainer,
        ]);
        assert_eq!(mask, 0x428);
    }
}

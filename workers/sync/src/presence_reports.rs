//! Which presence this worker last reported for each user, so a sync does not call main when
//! main would change nothing: main records a sync's presence only when the state differs or the
//! activity it knows is older than a minute. A row on the `presence` stream for the user (their
//! presence changed by any path) forgets the report, so the next sync reports again.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ganglion_replication::{StreamRow, UserRow};

/// How long a report stands in for the next ones: half of main's one-minute activity
/// granularity, so main's record of the last activity is never more than this late.
const REPORT_AGAIN_AFTER: Duration = Duration::from_secs(30);
/// Users remembered; starts over when full.
const USERS: usize = 100_000;

/// The last report per user.
#[derive(Debug, Default)]
pub(crate) struct PresenceReports {
    last: Mutex<HashMap<String, (String, Instant)>>,
}

impl PresenceReports {
    /// Whether a sync of `user` implying `state` must be reported to main; if so, it counts as
    /// reported from now.
    pub(crate) fn should_report(&self, user: &str, state: &str) -> bool {
        let Ok(mut last) = self.last.lock() else { return true };
        let now = Instant::now();
        if let Some((s, at)) = last.get(user)
            && s == state
            && now.duration_since(*at) < REPORT_AGAIN_AFTER
        {
            return false;
        }
        if last.len() >= USERS {
            last.clear();
        }
        last.insert(user.to_owned(), (state.to_owned(), now));
        true
    }

    /// Forgets a report when a failed call did not deliver it.
    pub(crate) fn forget(&self, user: &str) {
        if let Ok(mut last) = self.last.lock() {
            last.remove(user);
        }
    }

    /// Takes in one `presence` stream row.
    pub(crate) fn push(&self, row: &StreamRow) {
        let Ok(mut last) = self.last.lock() else { return };
        match UserRow::decode_bytes(&row.payload) {
            Ok(r) => {
                last.remove(&r.user_id);
            }
            Err(_) => last.clear(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ganglion_replication::StreamName;

    #[test]
    fn a_report_stands_until_the_state_or_the_stream_says_otherwise() {
        let r = PresenceReports::default();
        assert!(r.should_report("@a:x", "online"));
        assert!(!r.should_report("@a:x", "online"));
        assert!(r.should_report("@b:x", "online"), "per user");
        assert!(r.should_report("@a:x", "unavailable"), "a different state");
        assert!(!r.should_report("@a:x", "unavailable"));
        // Their presence changed elsewhere (say through the presence API): report again.
        let row = UserRow { version: 1, position: 7, user_id: "@a:x".into(), device_id: String::new() };
        r.push(&row.to_stream_row(StreamName::Presence));
        assert!(r.should_report("@a:x", "unavailable"));
        r.forget("@a:x");
        assert!(r.should_report("@a:x", "unavailable"));
    }
}

//! Room pagination tokens, as `/messages`, `/context`, `/members?at=` and the sync timelines'
//! `prev_batch` share them.
//!
//! A token names a gap between two events, by the event just before the gap in topological order
//! (`t{depth}_{stream}`), or by a stream position (a sync token, `g1_e{pos}…`, names the gap after
//! everything the sync had seen). Paging backwards from a token returns the event it names and
//! older ones; paging forwards returns the events after it. So a backward page ends with a token
//! naming the event *before* its oldest event, and paging forwards from there returns that oldest
//! event first, as the spec's picture of tokens as positions between events asks (and as Synapse
//! answers).

/// Where a page starts or stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageToken {
    /// After the event at `(depth, stream)` in topological order.
    Topological {
        /// The event's depth.
        depth: i64,
        /// Its stream ordering (unique, so it breaks ties between events of one depth).
        stream: i64,
    },
    /// After every event at or below this stream position.
    Stream(i64),
}

impl PageToken {
    /// The start of the room: paging forwards from it returns the oldest events.
    pub const START: Self = Self::Topological { depth: i64::MIN, stream: i64::MIN };
    /// The end of the room: paging backwards from it returns the newest events.
    pub const END: Self = Self::Stream(i64::MAX);

    /// Reads a token as [`Self::to_string`] writes it, or a sync token (`g1_…`, whose `e` part
    /// is its events position). `None` for anything else.
    pub fn parse(token: &str) -> Option<Self> {
        if let Some(rest) = token.strip_prefix('t') {
            let (d, s) = rest.split_once('_')?;
            return Some(Self::Topological { depth: d.parse().ok()?, stream: s.parse().ok()? });
        }
        let rest = token.strip_prefix("g1_")?;
        let pos = rest.split('.').find_map(|part| part.strip_prefix('e')).and_then(|p| p.parse().ok())?;
        Some(Self::Stream(pos))
    }

    /// The token after an event: paging forwards from it starts with the next event.
    pub fn after(depth: i64, stream: i64) -> Self {
        Self::Topological { depth, stream }
    }

    /// The token before an event: paging backwards from it starts with the previous event, and
    /// forwards with this one.
    pub fn before(depth: i64, stream: i64) -> Self {
        Self::Topological { depth, stream: stream.saturating_sub(1) }
    }

    /// The stream position the token stands at: the room as of that position is the room a
    /// client holding it has seen.
    pub fn stream(self) -> i64 {
        match self {
            Self::Topological { stream, .. } | Self::Stream(stream) => stream,
        }
    }

    /// Whether the event at `(depth, stream)` lies at or before the gap.
    pub fn covers(self, depth: i64, stream: i64) -> bool {
        match self {
            Self::Topological { depth: d, stream: s } => (depth, stream) <= (d, s),
            Self::Stream(s) => stream <= s,
        }
    }
}

impl std::fmt::Display for PageToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Topological { depth, stream } => write!(f, "t{depth}_{stream}"),
            // Only the ends of a room are stream tokens made here; they read back as sync tokens.
            Self::Stream(pos) => write!(f, "g1_e{pos}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_parse_back_or_fail_cleanly() {
        for t in [PageToken::after(5, 17), PageToken::before(5, 17), PageToken::Stream(42), PageToken::START] {
            assert_eq!(PageToken::parse(&t.to_string()), Some(t));
        }
        assert_eq!(PageToken::parse("t5_17"), Some(PageToken::Topological { depth: 5, stream: 17 }));
        assert_eq!(PageToken::parse("g1_e42.t3"), Some(PageToken::Stream(42)));
        for bad in ["nonsense", "t5", "t5_x", "g1_", "g1_t3", ""] {
            assert_eq!(PageToken::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_token_covers_what_lies_before_its_gap() {
        let after = PageToken::after(5, 17);
        assert!(after.covers(5, 17) && after.covers(4, 99) && !after.covers(5, 18) && !after.covers(6, 1));
        let before = PageToken::before(5, 17);
        assert!(!before.covers(5, 17) && before.covers(5, 16));
        assert!(PageToken::Stream(10).covers(99, 10) && !PageToken::Stream(10).covers(1, 11));
        assert!(!PageToken::START.covers(i64::MIN + 1, 0));
    }
}

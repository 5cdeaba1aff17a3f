//! The connection position `pos`: everything a later request needs, since the sync role keeps no
//! per-connection state. See `docs/sliding-sync.md`.
//!
//! Wire form: `ss1_` + unpadded base64url of a small JSON object ([`Pos`]). The version lives in the
//! prefix; a pos of another version, one that does not decode, one issued for another user, device
//! or `conn_id`, or one older than [`MAX_AGE`] answers 400 `M_UNKNOWN_POS`, and the client starts
//! a new connection.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::StatusCode;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ganglion_http::MatrixError;
use serde::{Deserialize, Serialize};

use crate::SyncToken;

/// The prefix naming the format version.
const PREFIX: &str = "ss1_";

/// How long a pos stays usable. Older ones answer `M_UNKNOWN_POS`: the work of catching up from
/// far back is better spent on a fresh connection, and to-device messages may have been cleaned.
pub(crate) const MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);

/// What one list had when a pos was issued.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ListPos {
    /// The ranges served (inclusive).
    pub(crate) r: Vec<(u64, u64)>,
    /// [`room_set_hash`] of the rooms inside those ranges.
    pub(crate) h: u64,
}

/// A decoded pos.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Pos {
    /// Issued at, seconds since the epoch.
    pub(crate) iat: u64,
    /// The stream positions the response covered (a [`SyncToken`] in its text form).
    pub(crate) tok: String,
    /// [`fnv1a`] of user, device and `conn_id`: a pos only continues its own connection.
    pub(crate) who: u64,
    /// Per list name, what was in range.
    #[serde(default)]
    pub(crate) lists: BTreeMap<String, ListPos>,
    /// [`fnv1a`] of each subscribed room sent.
    #[serde(default)]
    pub(crate) subs: Vec<u64>,
}

/// 400 `M_UNKNOWN_POS`.
pub(crate) fn unknown_pos(why: &str) -> MatrixError {
    MatrixError::new(StatusCode::BAD_REQUEST, "M_UNKNOWN_POS", format!("Unknown pos: {why}"))
}

/// 64-bit FNV-1a: stable across builds and instances (unlike `DefaultHasher`), which is what a
/// value carried between workers needs. Not a defence against forgery, and need not be: a forged
/// pos can only make the server send the forger's own rooms again, or skip them.
pub(crate) fn fnv1a(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in p.bytes().chain(std::iter::once(0xff)) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

/// Order-independent hash of a set of room IDs.
pub(crate) fn room_set_hash<'a>(rooms: impl IntoIterator<Item = &'a str>) -> u64 {
    let mut ids: Vec<&str> = rooms.into_iter().collect();
    ids.sort_unstable();
    ids.dedup();
    fnv1a(&ids)
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl Pos {
    /// A pos issued now.
    pub(crate) fn new(token: SyncToken, who: u64) -> Self {
        Self { iat: now_secs(), tok: token.to_string(), who, lists: BTreeMap::new(), subs: Vec::new() }
    }

    /// The wire form.
    pub(crate) fn encode(&self) -> String {
        // Serialising plain strings, integers and maps cannot fail.
        let json = serde_json::to_vec(self).unwrap_or_default();
        format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(json))
    }

    /// Parses a pos from the wire and checks it belongs to `who` and is recent enough.
    ///
    /// # Errors
    /// `M_UNKNOWN_POS` when it does not.
    pub(crate) fn decode(s: &str, who: u64) -> Result<(Self, SyncToken), MatrixError> {
        let body = s.strip_prefix(PREFIX).ok_or_else(|| unknown_pos("not one of ours"))?;
        let bytes = URL_SAFE_NO_PAD.decode(body).map_err(|_| unknown_pos("not base64"))?;
        let pos: Self = serde_json::from_slice(&bytes).map_err(|_| unknown_pos("does not decode"))?;
        let token = pos.tok.parse::<SyncToken>().map_err(|_| unknown_pos("bad stream positions"))?;
        if pos.who != who {
            return Err(unknown_pos("issued to another connection"));
        }
        if now_secs().saturating_sub(pos.iat) > MAX_AGE.as_secs() {
            return Err(unknown_pos("expired"));
        }
        Ok((pos, token))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_what_is_not_ours() {
        let token = SyncToken {
            events: 42,
            account_data: 3,
            to_device: 7,
            device_lists: 1,
            receipts: 5,
            typing: 9,
            presence: 4,
        };
        let mut pos = Pos::new(token, fnv1a(&["@a:x", "DEV", ""]));
        pos.lists.insert("all".into(), ListPos { r: vec![(0, 19)], h: room_set_hash(["!b:x", "!a:x"]) });
        pos.subs.push(fnv1a(&["!c:x"]));
        let wire = pos.encode();
        assert!(wire.starts_with("ss1_"));
        assert!(wire.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b)), "URL-safe: {wire}");
        let who = fnv1a(&["@a:x", "DEV", ""]);
        assert_eq!(Pos::decode(&wire, who).unwrap(), (pos.clone(), token));

        for bad in ["", "garbage", "ss1_", "ss1_!!!", "ss2_e30", "ss1_e30", "g1_e1.a2"] {
            assert_eq!(Pos::decode(bad, who).unwrap_err().errcode, "M_UNKNOWN_POS", "{bad}");
        }
        let err = Pos::decode(&wire, fnv1a(&["@a:x", "DEV", "other-conn"])).unwrap_err();
        assert_eq!((err.status, err.errcode), (StatusCode::BAD_REQUEST, "M_UNKNOWN_POS"));
        let mut old = pos;
        old.iat -= MAX_AGE.as_secs() + 1;
        assert_eq!(Pos::decode(&old.encode(), who).unwrap_err().errcode, "M_UNKNOWN_POS", "expired");
    }

    #[test]
    fn room_set_hash_ignores_order_and_duplicates() {
        assert_eq!(room_set_hash(["!a:x", "!b:x"]), room_set_hash(["!b:x", "!a:x", "!a:x"]));
        assert_ne!(room_set_hash(["!a:x", "!b:x"]), room_set_hash(["!a:x"]));
        assert_ne!(fnv1a(&["ab", "c"]), fnv1a(&["a", "bc"]), "parts are delimited");
        // Pinned: the value travels between instances and builds.
        assert_eq!(fnv1a(&[]), 0xcbf2_9ce4_8422_2325);
    }
}

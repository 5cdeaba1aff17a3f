//! Device-list tracking between two stream positions, shared by `/sync`, sliding sync and
//! `/keys/changes`: whose keys a client must fetch again (`changed`) and whose it may stop
//! tracking (`left`).

use std::collections::BTreeSet;

use ruma::{OwnedRoomId, UserId};

use crate::{E2eeStore, Error, EventStore, Result};

/// A window of the `device_lists` and `events` streams: `(after, upto]` on each.
#[derive(Debug, Clone, Copy)]
pub struct DeviceListWindow {
    /// `device_lists` position the client has seen.
    pub device_lists_after: i64,
    /// `device_lists` position the answer covers.
    pub device_lists_upto: i64,
    /// `events` position the client has seen.
    pub events_after: i64,
    /// `events` position the answer covers.
    pub events_upto: i64,
}

/// `(changed, left)` for `user` over `window`. `changed`: users sharing a room with `user` whose
/// devices or keys changed (and `user` themself), and users who started sharing a room with
/// them. `left`: users who shared a room with `user` and now share none.
///
/// # Errors
/// On database failure.
pub async fn device_list_changes(
    events: &EventStore,
    e2ee: &E2eeStore,
    user: &UserId,
    window: DeviceListWindow,
) -> Result<(Vec<String>, Vec<String>)> {
    let mut changed = BTreeSet::new();
    let mut left = BTreeSet::new();
    let mut sharing: Option<BTreeSet<String>> = None;
    if window.device_lists_upto > window.device_lists_after {
        let users = e2ee.users_with_device_changes(window.device_lists_after, window.device_lists_upto).await?;
        if !users.is_empty() {
            let share: BTreeSet<String> = events.users_sharing_rooms(user).await?.into_iter().collect();
            changed.extend(users.into_iter().filter(|u| share.contains(u) || u == user.as_str()));
            sharing = Some(share);
        }
    }
    if window.events_upto > window.events_after {
        let memberships = events.membership_changes_around(user, window.events_after, window.events_upto).await?;
        if !memberships.is_empty() {
            let share = match sharing {
                Some(s) => s,
                None => events.users_sharing_rooms(user).await?.into_iter().collect(),
            };
            let (mut started, mut stopped) = (BTreeSet::new(), BTreeSet::new());
            for (room, member, membership) in memberships {
                let gone = matches!(membership.as_str(), "leave" | "ban");
                if membership != "join" && !gone {
                    continue;
                }
                let bucket = if gone { &mut stopped } else { &mut started };
                if member == user.as_str() {
                    // The user's own join or leave affects everyone in that room.
                    let room = OwnedRoomId::try_from(room.as_str()).map_err(|e| Error::Decode(e.to_string()))?;
                    bucket.extend(events.members_with(&room, "join").await?);
                } else {
                    bucket.insert(member);
                }
            }
            started.remove(user.as_str());
            stopped.remove(user.as_str());
            changed.extend(started.into_iter().filter(|u| share.contains(u)));
            left.extend(stopped.into_iter().filter(|u| !share.contains(u)));
        }
    }
    Ok((changed.into_iter().collect(), left.into_iter().collect()))
}

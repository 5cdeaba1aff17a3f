//! Server ACLs (`m.room.server_acl`): which servers may take part in a room. A room without one
//! lets every server in; an ACL that does not parse denies nobody (as an absent one).

use ruma::ServerName;
use ruma::events::room::server_acl::RoomServerAclEventContent;

/// Whether the ACL event content `content` (JSON) lets `server` take part in the room.
#[must_use]
pub fn server_acl_allows(content: &serde_json::Value, server: &ServerName) -> bool {
    match serde_json::from_value::<RoomServerAclEventContent>(content.clone()) {
        Ok(acl) => acl.is_allowed(server),
        Err(_) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn deny_beats_allow_and_ip_literals_need_leave() {
        let acl = json!({ "allow": ["*"], "deny": ["evil.example", "*.bad.example"], "allow_ip_literals": false });
        let name = |s: &'static str| -> &'static ServerName { s.try_into().unwrap() };
        assert!(server_acl_allows(&acl, name("good.example")));
        assert!(!server_acl_allows(&acl, name("evil.example:8448")));
        assert!(!server_acl_allows(&acl, name("a.bad.example")));
        assert!(!server_acl_allows(&acl, name("127.0.0.1:8448")));
        let none = json!({ "allow": [] });
        assert!(!server_acl_allows(&none, name("good.example")), "an empty allow list lets nobody in");
        assert!(server_acl_allows(&json!({ "allow": "not a list" }), name("good.example")));
    }
}

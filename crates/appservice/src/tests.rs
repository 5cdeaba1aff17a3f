use std::io::Write;

use super::*;

fn file(text: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::Builder::new().suffix(".yaml").tempfile().unwrap();
    f.write_all(text.as_bytes()).unwrap();
    f
}

const GOOD: &str = r#"
id: irc
url: "http://127.0.0.1:9999/"
as_token: as-secret
hs_token: hs-secret
sender_localpart: ircbot
rate_limited: false
protocols: [irc]
de.sorunome.msc2409.push_ephemeral: true
namespaces:
  users:
    - exclusive: true
      regex: '@irc_.*:example\.org'
  aliases:
    - exclusive: false
      regex: '#irc_.*:example\.org'
  rooms: []
"#;

#[test]
fn a_synapse_registration_loads() {
    let f = file(GOOD);
    let all = load(&[f.path().to_owned()], "example.org").unwrap();
    let r = all.by_as_token("as-secret").unwrap();
    assert_eq!(r.id, "irc");
    assert_eq!(r.url.as_deref(), Some("http://127.0.0.1:9999"));
    assert_eq!(r.sender.as_str(), "@ircbot:example.org");
    assert!(!r.rate_limited);
    assert!(r.receive_ephemeral);
    assert!(r.is_exclusive_user("@irc_alice:example.org"));
    assert!(r.is_exclusive_user("@ircbot:example.org"));
    assert!(!r.is_exclusive_user("@alice:example.org"));
    // Anchored at the start, as Synapse matches.
    assert!(!r.is_interested_in_user("@x@irc_alice:example.org"));
    assert!(r.is_interested_in_alias("#irc_chan:example.org"));
    assert!(!r.is_exclusive_alias("#irc_chan:example.org"));
    assert!(all.by_as_token("hs-secret").is_none());
    assert_eq!(all.for_protocol("irc").count(), 1);
    assert_eq!(all.exclusive_user_owner("@irc_bob:example.org").map(|r| r.id.as_str()), Some("irc"));
}

#[test]
fn every_mistake_is_one_line_naming_the_key() {
    let f = file(
        r#"
id: ""
url: "ftp://x"
hs_token: 5
sender_localpart: "bad localpart"
rate_limited: "no"
namespaces:
  users:
    - exclusive: true
      regex: "(["
    - regex: "@a.*"
  groups: []
"#,
    );
    let err = load(&[f.path().to_owned()], "example.org").unwrap_err();
    let all = err.problems.join("\n");
    for needle in [
        "id: must not be empty",
        "as_token: is required",
        "hs_token: must be a string, found a number",
        "url: \"ftp://x\" must start with http://",
        "sender_localpart: \"bad localpart\" is not a valid localpart",
        "rate_limited: must be true or false",
        "namespaces.users[0].regex: \"([\" is not a valid regex",
        "namespaces.users[1].exclusive: is required",
        "namespaces.groups: unknown namespace",
    ] {
        assert!(all.contains(needle), "{needle:?} missing from:\n{all}");
    }
    assert!(err.problems.iter().all(|p| !p.contains('\n')));
}

#[test]
fn two_files_may_not_share_ids_or_tokens() {
    let a = file(GOOD);
    let b = file(&GOOD.replace("sender_localpart: ircbot", "sender_localpart: other"));
    let err = load(&[a.path().to_owned(), b.path().to_owned()], "example.org").unwrap_err();
    let all = err.problems.join("\n");
    assert!(all.contains("id \"irc\" is also used by"), "{all}");
    assert!(all.contains("as_token is also used by"), "{all}");
    let missing = load(&["/nonexistent/reg.yaml".into()], "example.org").unwrap_err();
    assert!(missing.problems[0].contains("cannot read"), "{:?}", missing.problems);
}

//! Media metadata conformance: every test runs on SQLite and on PostgreSQL.

use ruma::{owned_server_name, owned_user_id};

use crate::test_util::TestDb;
use crate::{CompleteUpload, Error, MediaStore, MediaUsage, ThumbnailKey, ThumbnailRecord, UploadedContent, now_ms};

macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test] async fn $name() { let t = super::TestDb::new(crate::Backend::Sqlite).await; super::$name(&t).await; t.cleanup().await; })*
        }
        mod postgres {
            $(#[tokio::test] async fn $name() { let t = super::TestDb::new(crate::Backend::Postgres).await; super::$name(&t).await; t.cleanup().await; })*
        }
    };
}

on_both_backends!(
    uploads_round_trip_and_count_towards_usage,
    create_then_upload_once_by_its_owner,
    expired_reservations_lapse,
    quarantine_delete_and_thumbnails,
);

fn content(size: u64) -> UploadedContent {
    UploadedContent {
        content_type: Some("image/png".into()),
        upload_name: Some("cat.png".into()),
        size_bytes: size,
        sha256: "ab".repeat(32),
    }
}

async fn uploads_round_trip_and_count_towards_usage(t: &TestDb) {
    let store = MediaStore::new(t.db.clone());
    let origin = owned_server_name!("example.org");
    let alice = owned_user_id!("@alice:example.org");
    assert!(store.get(&origin, "m1").await.unwrap().is_none());
    assert_eq!(store.usage(&alice).await.unwrap(), MediaUsage::default());
    store.insert_uploaded(&origin, "m1", &alice, &content(10), false).await.unwrap();
    store.insert_uploaded(&origin, "m2", &alice, &content(32), true).await.unwrap();
    assert!(matches!(store.insert_uploaded(&origin, "m1", &alice, &content(1), false).await, Err(Error::Conflict(_))));
    let m = store.get(&origin, "m1").await.unwrap().unwrap();
    assert_eq!(m.uploader.as_ref(), Some(&alice));
    assert_eq!(m.content_type.as_deref(), Some("image/png"));
    assert_eq!(m.upload_name.as_deref(), Some("cat.png"));
    assert_eq!(m.size_bytes, Some(10));
    assert!(m.is_uploaded() && !m.quarantined && !m.authenticated_only);
    assert!(store.get(&origin, "m2").await.unwrap().unwrap().authenticated_only);
    assert_eq!(store.usage(&alice).await.unwrap(), MediaUsage { bytes: 42, count: 2 });
    assert_eq!(store.by_uploader(&alice).await.unwrap().len(), 2);
    assert!(store.sha256_in_use(&"ab".repeat(32)).await.unwrap());
    assert!(!store.sha256_in_use(&"cd".repeat(32)).await.unwrap());
    // Another origin's ID space is separate.
    let other = owned_server_name!("other.org");
    assert!(store.get(&other, "m1").await.unwrap().is_none());
    store.insert_remote(&other, "m1", &content(7)).await.unwrap();
    store.insert_remote(&other, "m1", &content(8)).await.unwrap();
    let remote = store.get(&other, "m1").await.unwrap().unwrap();
    assert_eq!((remote.uploader.clone(), remote.size_bytes, remote.is_uploaded()), (None, Some(7), true));
    assert_eq!(store.usage(&alice).await.unwrap(), MediaUsage { bytes: 42, count: 2 }, "not anyone's usage");
}

async fn create_then_upload_once_by_its_owner(t: &TestDb) {
    let store = MediaStore::new(t.db.clone());
    let origin = owned_server_name!("example.org");
    let alice = owned_user_id!("@alice:example.org");
    let bob = owned_user_id!("@bob:example.org");
    store.create_pending(&origin, "p1", &alice, now_ms() + 60_000, false).await.unwrap();
    assert!(matches!(store.create_pending(&origin, "p1", &alice, 0, false).await, Err(Error::Conflict(_))));
    let pending = store.get(&origin, "p1").await.unwrap().unwrap();
    assert!(!pending.is_uploaded());
    assert_eq!(store.pending_count(&alice).await.unwrap(), 1);
    assert_eq!(store.usage(&alice).await.unwrap().count, 0, "reservations are not usage");

    assert_eq!(store.complete_upload(&origin, "p1", &bob, &content(5)).await.unwrap(), CompleteUpload::NotOwner);
    assert_eq!(store.complete_upload(&origin, "nope", &alice, &content(5)).await.unwrap(), CompleteUpload::NotFound);
    assert_eq!(store.complete_upload(&origin, "p1", &alice, &content(5)).await.unwrap(), CompleteUpload::Done);
    assert_eq!(
        store.complete_upload(&origin, "p1", &alice, &content(6)).await.unwrap(),
        CompleteUpload::AlreadyUploaded
    );
    let done = store.get(&origin, "p1").await.unwrap().unwrap();
    assert_eq!(done.size_bytes, Some(5));
    assert!(done.is_uploaded() && done.unused_expires_ts.is_none());
    assert_eq!(store.pending_count(&alice).await.unwrap(), 0);
}

async fn expired_reservations_lapse(t: &TestDb) {
    let store = MediaStore::new(t.db.clone());
    let origin = owned_server_name!("example.org");
    let alice = owned_user_id!("@alice:example.org");
    store.create_pending(&origin, "old", &alice, now_ms() - 1, false).await.unwrap();
    store.create_pending(&origin, "new", &alice, now_ms() + 60_000, false).await.unwrap();
    assert_eq!(store.pending_count(&alice).await.unwrap(), 1, "a lapsed reservation does not count");
    assert_eq!(store.complete_upload(&origin, "old", &alice, &content(1)).await.unwrap(), CompleteUpload::Expired);
    assert_eq!(store.delete_expired_pending(now_ms()).await.unwrap(), 1);
    assert!(store.get(&origin, "old").await.unwrap().is_none());
    assert!(store.get(&origin, "new").await.unwrap().is_some());
}

async fn quarantine_delete_and_thumbnails(t: &TestDb) {
    let store = MediaStore::new(t.db.clone());
    let origin = owned_server_name!("example.org");
    let alice = owned_user_id!("@alice:example.org");
    store.insert_uploaded(&origin, "m1", &alice, &content(10), false).await.unwrap();
    assert!(store.set_quarantined(&origin, "m1", true).await.unwrap());
    assert!(store.get(&origin, "m1").await.unwrap().unwrap().quarantined);
    assert!(!store.set_quarantined(&origin, "none", true).await.unwrap());
    store.insert_uploaded(&origin, "m2", &alice, &content(10), false).await.unwrap();
    assert_eq!(store.set_quarantined_by_uploader(&alice, true).await.unwrap(), 1, "m1 already was");
    assert_eq!(store.set_quarantined_by_uploader(&alice, false).await.unwrap(), 2);
    assert!(store.set_quarantined(&origin, "m1", true).await.unwrap());

    let thumb = |w, animated| ThumbnailRecord {
        key: ThumbnailKey { width: w, height: w, method: "scale".into(), animated },
        content_type: "image/png".into(),
        size_bytes: 7,
    };
    store.put_thumbnail(&origin, "m1", &thumb(96, false)).await.unwrap();
    store.put_thumbnail(&origin, "m1", &thumb(32, false)).await.unwrap();
    store.put_thumbnail(&origin, "m1", &thumb(32, true)).await.unwrap();
    let mut again = thumb(32, false);
    again.size_bytes = 8;
    store.put_thumbnail(&origin, "m1", &again).await.unwrap();
    let thumbs = store.thumbnails(&origin, "m1").await.unwrap();
    assert_eq!(thumbs.len(), 3);
    assert_eq!(thumbs[0], again, "smallest first, replaced in place");
    assert!(thumbs[1].key.animated);

    let deleted = store.delete(&origin, "m1").await.unwrap().unwrap();
    assert_eq!(deleted.len(), 3);
    assert!(store.get(&origin, "m1").await.unwrap().is_none());
    assert!(store.thumbnails(&origin, "m1").await.unwrap().is_empty());
    assert!(store.delete(&origin, "m1").await.unwrap().is_none());
}

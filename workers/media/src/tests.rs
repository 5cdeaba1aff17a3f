//! The role's endpoints through `router(state)` with `oneshot`, on SQLite and a temporary store.

use std::io::Cursor;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::response::Response;
use ganglion_config::{MediaConfig, UnauthenticatedMedia, UrlPreviewConfig};
use ganglion_http::{Authenticator, hash_token};
use ganglion_storage::test_util::TestDb;
use ganglion_storage::{Backend, EventStore, MediaStore, UserStore};
use http::{Request, StatusCode, header};
use http_body_util::BodyExt as _;
use ruma::{OwnedUserId, owned_server_name};
use serde_json::Value;
use tower::ServiceExt as _;

use crate::thumbnail::tests::{gif, jpeg, png};
use crate::{FsBackend, MediaRepo, MediaState, NoRemoteMedia, Previewer, router};

struct Env {
    app: axum::Router,
    repo: MediaRepo,
    _db: TestDb,
    _dir: tempfile::TempDir,
}

const ALICE: &str = "alice-token";
const BOB: &str = "bob-token";
const ADMIN: &str = "admin-token";

async fn env_with(cfg: MediaConfig) -> Env {
    let db = TestDb::new(Backend::Sqlite).await;
    let users = UserStore::new(db.db.clone());
    for (name, token) in [("alice", ALICE), ("bob", BOB), ("admin", ADMIN)] {
        let user = OwnedUserId::try_from(format!("@{name}:example.org")).unwrap();
        users.create_user(&user, None, name == "admin").await.unwrap();
        users.upsert_device(&user, "DEV", None).await.unwrap();
        users.add_access_token(&hash_token(token), &user, "DEV").await.unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let backend = FsBackend::open(dir.path()).await.unwrap();
    let previews = cfg.url_preview.enabled.then(|| Previewer::new(&cfg.url_preview).unwrap());
    let repo = MediaRepo::new(
        owned_server_name!("example.org"),
        MediaStore::new(db.db.clone()),
        Arc::new(backend),
        Arc::new(NoRemoteMedia),
        cfg,
    );
    let mut state =
        MediaState::new(Authenticator::new(users, Default::default()), repo.clone(), EventStore::new(db.db.clone()));
    if let Some(p) = previews {
        state = state.with_previews(p);
    }
    let app = router(state);
    Env { app, repo, _db: db, _dir: dir }
}

async fn env() -> Env {
    env_with(MediaConfig { thumbnail_sizes: vec![], ..MediaConfig::default() }).await
}

fn req(method: &str, uri: &str, token: Option<&str>) -> http::request::Builder {
    let b = Request::builder().method(method).uri(uri);
    match token {
        Some(t) => b.header(header::AUTHORIZATION, format!("Bearer {t}")),
        None => b,
    }
}

impl Env {
    async fn send(&self, r: Request<Body>) -> Response {
        self.app.clone().oneshot(r).await.unwrap()
    }

    async fn get(&self, uri: &str, token: Option<&str>) -> Response {
        self.send(req("GET", uri, token).body(Body::empty()).unwrap()).await
    }

    /// Uploads and returns the media ID.
    async fn upload(&self, token: &str, content_type: &str, name: Option<&str>, bytes: Vec<u8>) -> String {
        let uri = match name {
            Some(n) => format!("/_matrix/media/v3/upload?filename={n}"),
            None => "/_matrix/media/v3/upload".to_owned(),
        };
        let resp = self
            .send(
                req("POST", &uri, Some(token))
                    .header(header::CONTENT_TYPE, content_type)
                    .body(Body::from(bytes))
                    .unwrap(),
            )
            .await;
        assert_eq!(resp.status(), StatusCode::OK);
        let uri = json(resp).await["content_uri"].as_str().unwrap().to_owned();
        uri.strip_prefix("mxc://example.org/").expect("an mxc URI of our server").to_owned()
    }
}

async fn json(resp: Response) -> Value {
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&bytes).unwrap_or(Value::Null)
}

async fn bytes(resp: Response) -> Vec<u8> {
    resp.into_body().collect().await.unwrap().to_bytes().to_vec()
}

#[track_caller]
fn assert_safety_headers(resp: &Response) {
    let h = resp.headers();
    assert_eq!(h[header::CONTENT_SECURITY_POLICY], crate::CONTENT_SECURITY_POLICY);
    assert_eq!(h[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
    assert_eq!(h["cross-origin-resource-policy"], "cross-origin");
}

async fn assert_error(resp: Response, status: StatusCode, errcode: &str) {
    assert_eq!(resp.status(), status);
    assert_eq!(json(resp).await["errcode"], errcode);
}

fn dl(id: &str) -> String {
    format!("/_matrix/client/v1/media/download/example.org/{id}")
}

#[tokio::test]
async fn upload_then_download_streams_back_with_safety_headers() {
    let e = env().await;
    let id = e.upload(ALICE, "image/png", Some("cat.png"), b"not really a png".to_vec()).await;
    let resp = e.get(&dl(&id), Some(BOB)).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_safety_headers(&resp);
    let h = resp.headers();
    assert_eq!(h[header::CONTENT_TYPE], "image/png");
    assert_eq!(h[header::CONTENT_LENGTH], "16");
    assert_eq!(h[header::ACCEPT_RANGES], "bytes");
    assert_eq!(h[header::CONTENT_DISPOSITION], "inline; filename=\"cat.png\"; filename*=utf-8''cat.png");
    assert_eq!(bytes(resp).await, b"not really a png");

    // The file name in the path wins; unsafe types are attachments.
    let id = e.upload(ALICE, "text/html", None, b"<script>alert(1)</script>".to_vec()).await;
    let resp = e.get(&format!("{}/evil%20page.html", dl(&id)), Some(ALICE)).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        resp.headers()[header::CONTENT_DISPOSITION],
        "attachment; filename=\"evil page.html\"; filename*=utf-8''evil%20page.html"
    );
    assert_safety_headers(&resp);
}

#[tokio::test]
async fn authenticated_endpoints_need_a_token() {
    let e = env().await;
    let id = e.upload(ALICE, "text/plain", None, b"x".to_vec()).await;
    assert_error(e.get(&dl(&id), None).await, StatusCode::UNAUTHORIZED, "M_MISSING_TOKEN").await;
    assert_error(e.get(&dl(&id), Some("nope")).await, StatusCode::UNAUTHORIZED, "M_UNKNOWN_TOKEN").await;
    assert_error(e.get("/_matrix/client/v1/media/config", None).await, StatusCode::UNAUTHORIZED, "M_MISSING_TOKEN")
        .await;
    assert_error(e.get("/_matrix/media/v3/config", None).await, StatusCode::UNAUTHORIZED, "M_MISSING_TOKEN").await;
    let upload = req("POST", "/_matrix/media/v3/upload", None).body(Body::from("x")).unwrap();
    assert_error(e.send(upload).await, StatusCode::UNAUTHORIZED, "M_MISSING_TOKEN").await;
    let create = req("POST", "/_matrix/media/v1/create", None).body(Body::empty()).unwrap();
    assert_error(e.send(create).await, StatusCode::UNAUTHORIZED, "M_MISSING_TOKEN").await;
    let thumb = e.get(&format!("/_matrix/client/v1/media/thumbnail/example.org/{id}?width=1&height=1"), None).await;
    assert_error(thumb, StatusCode::UNAUTHORIZED, "M_MISSING_TOKEN").await;
}

#[tokio::test]
async fn config_reports_the_upload_limit() {
    let e = env_with(MediaConfig { max_upload_bytes: 1234, ..MediaConfig::default() }).await;
    for uri in ["/_matrix/client/v1/media/config", "/_matrix/media/v3/config", "/_matrix/media/r0/config"] {
        let resp = e.get(uri, Some(ALICE)).await;
        assert_eq!(resp.status(), StatusCode::OK, "{uri}");
        assert_eq!(json(resp).await["m.upload.size"], 1234);
    }
}

#[tokio::test]
async fn unknown_and_remote_media_are_not_found() {
    let e = env().await;
    for uri in [
        dl("nosuchmedia"),
        "/_matrix/client/v1/media/download/other.org/abc".to_owned(),
        "/_matrix/client/v1/media/download/not%20a%20server/abc".to_owned(),
        dl("bad%2F..%2Fid"),
        "/_matrix/client/v1/media/thumbnail/example.org/nosuch?width=32&height=32".to_owned(),
        "/_matrix/client/v1/media/thumbnail/other.org/abc?width=32&height=32".to_owned(),
    ] {
        let resp = e.get(&uri, Some(ALICE)).await;
        assert_safety_headers(&resp);
        assert_error(resp, StatusCode::NOT_FOUND, "M_NOT_FOUND").await;
    }
}

#[tokio::test]
async fn uploads_over_the_limit_are_too_large() {
    let e = env_with(MediaConfig { max_upload_bytes: 10, ..MediaConfig::default() }).await;
    // Announced by Content-Length: refused before reading.
    let r = req("POST", "/_matrix/media/v3/upload", Some(ALICE))
        .header(header::CONTENT_LENGTH, "11")
        .body(Body::from(vec![0u8; 11]))
        .unwrap();
    assert_error(e.send(r).await, StatusCode::PAYLOAD_TOO_LARGE, "M_TOO_LARGE").await;
    // Streamed without a length: cut off while reading.
    let chunks: Vec<Result<bytes::Bytes, std::io::Error>> =
        vec![Ok(bytes::Bytes::from_static(b"123456")), Ok(bytes::Bytes::from_static(b"789012"))];
    let r = req("POST", "/_matrix/media/v3/upload", Some(ALICE))
        .body(Body::from_stream(futures::stream::iter(chunks)))
        .unwrap();
    assert_error(e.send(r).await, StatusCode::PAYLOAD_TOO_LARGE, "M_TOO_LARGE").await;
    // Exactly the limit is fine.
    e.upload(ALICE, "application/octet-stream", None, vec![1u8; 10]).await;
}

#[tokio::test]
async fn quota_is_enforced_per_user() {
    let e = env_with(MediaConfig { user_quota_bytes: Some(10), ..MediaConfig::default() }).await;
    e.upload(ALICE, "text/plain", None, vec![b'a'; 8]).await;
    let r = req("POST", "/_matrix/media/v3/upload", Some(ALICE)).body(Body::from(vec![b'b'; 3])).unwrap();
    assert_error(e.send(r).await, StatusCode::FORBIDDEN, "M_RESOURCE_LIMIT_EXCEEDED").await;
    // Bob has his own quota.
    e.upload(BOB, "text/plain", None, vec![b'b'; 3]).await;
}

#[tokio::test]
async fn create_then_put_then_download() {
    let e = env().await;
    let resp = e.send(req("POST", "/_matrix/media/v1/create", Some(ALICE)).body(Body::empty()).unwrap()).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let body = json(resp).await;
    assert!(body["unused_expires_at"].as_i64().unwrap() > 0);
    let id = body["content_uri"].as_str().unwrap().strip_prefix("mxc://example.org/").unwrap().to_owned();

    // Before the upload: 504 M_NOT_YET_UPLOADED once the timeout passes.
    let resp = e.get(&format!("{}?timeout_ms=50", dl(&id)), Some(BOB)).await;
    assert_error(resp, StatusCode::GATEWAY_TIMEOUT, "M_NOT_YET_UPLOADED").await;

    let put = |token: &'static str, body: &'static [u8]| {
        req("PUT", &format!("/_matrix/media/v3/upload/example.org/{id}?filename=a.txt"), Some(token))
            .header(header::CONTENT_TYPE, "text/plain")
            .body(Body::from(body))
            .unwrap()
    };
    assert_error(e.send(put(BOB, b"bob's")).await, StatusCode::FORBIDDEN, "M_FORBIDDEN").await;

    // A download waiting on the pending upload gets it when it lands.
    let waiting = {
        let app = e.app.clone();
        let uri = format!("{}?timeout_ms=10000", dl(&id));
        tokio::spawn(
            async move { app.oneshot(req("GET", &uri, Some(BOB)).body(Body::empty()).unwrap()).await.unwrap() },
        )
    };
    tokio::time::sleep(Duration::from_millis(150)).await;
    let resp = e.send(put(ALICE, b"hello")).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(json(resp).await, serde_json::json!({}));
    let resp = waiting.await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()[header::CONTENT_DISPOSITION], "inline; filename=\"a.txt\"; filename*=utf-8''a.txt");
    assert_eq!(bytes(resp).await, b"hello");

    assert_error(e.send(put(ALICE, b"again")).await, StatusCode::CONFLICT, "M_CANNOT_OVERWRITE_MEDIA").await;
    let unknown =
        req("PUT", "/_matrix/media/v3/upload/example.org/neverCreated", Some(ALICE)).body(Body::from("x")).unwrap();
    assert_error(e.send(unknown).await, StatusCode::NOT_FOUND, "M_NOT_FOUND").await;
    let other = req("PUT", "/_matrix/media/v3/upload/other.org/x", Some(ALICE)).body(Body::from("x")).unwrap();
    assert_error(e.send(other).await, StatusCode::NOT_FOUND, "M_NOT_FOUND").await;
    // Still the first bytes.
    assert_eq!(bytes(e.get(&dl(&id), Some(ALICE)).await).await, b"hello");
}

#[tokio::test]
async fn pending_reservations_are_limited() {
    let e = env_with(MediaConfig { max_pending_uploads: 2, ..MediaConfig::default() }).await;
    for _ in 0..2 {
        let resp = e.send(req("POST", "/_matrix/media/v1/create", Some(ALICE)).body(Body::empty()).unwrap()).await;
        assert_eq!(resp.status(), StatusCode::OK);
    }
    let resp = e.send(req("POST", "/_matrix/media/v1/create", Some(ALICE)).body(Body::empty()).unwrap()).await;
    assert_error(resp, StatusCode::TOO_MANY_REQUESTS, "M_LIMIT_EXCEEDED").await;
}

#[tokio::test]
async fn range_requests() {
    let e = env().await;
    let id = e.upload(ALICE, "application/octet-stream", None, b"0123456789".to_vec()).await;
    let ranged =
        |range: &str| req("GET", &dl(&id), Some(ALICE)).header(header::RANGE, range).body(Body::empty()).unwrap();
    let resp = e.send(ranged("bytes=2-5")).await;
    assert_eq!(resp.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(resp.headers()[header::CONTENT_RANGE], "bytes 2-5/10");
    assert_eq!(resp.headers()[header::CONTENT_LENGTH], "4");
    assert_safety_headers(&resp);
    assert_eq!(bytes(resp).await, b"2345");
    let resp = e.send(ranged("bytes=-3")).await;
    assert_eq!(resp.headers()[header::CONTENT_RANGE], "bytes 7-9/10");
    assert_eq!(bytes(resp).await, b"789");
    let resp = e.send(ranged("bytes=10-")).await;
    assert_eq!(resp.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(resp.headers()[header::CONTENT_RANGE], "bytes */10");
    assert_safety_headers(&resp);
}

#[tokio::test]
async fn legacy_endpoints_freeze_new_media_by_default() {
    let e = env().await;
    let id = e.upload(ALICE, "image/png", None, png(64, 64)).await;
    for uri in [
        format!("/_matrix/media/v3/download/example.org/{id}"),
        format!("/_matrix/media/r0/download/example.org/{id}/x.png"),
        format!("/_matrix/media/v3/thumbnail/example.org/{id}?width=32&height=32"),
    ] {
        let resp = e.get(&uri, None).await;
        assert_safety_headers(&resp);
        assert_error(resp, StatusCode::NOT_FOUND, "M_NOT_FOUND").await;
    }
    // Authenticated access is unaffected.
    assert_eq!(e.get(&dl(&id), Some(ALICE)).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn legacy_endpoints_serve_media_uploaded_before_the_freeze() {
    let serve = env_with(MediaConfig { unauthenticated: UnauthenticatedMedia::Serve, ..MediaConfig::default() }).await;
    let id = serve.upload(ALICE, "image/png", Some("p.png"), png(64, 64)).await;
    let resp = serve.get(&format!("/_matrix/media/v3/download/example.org/{id}"), None).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_safety_headers(&resp);
    assert_eq!(resp.headers()[header::CONTENT_DISPOSITION], "inline; filename=\"p.png\"; filename*=utf-8''p.png");
    let resp = serve.get(&format!("/_matrix/media/v3/thumbnail/example.org/{id}?width=32&height=32"), None).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_safety_headers(&resp);

    // Switching to `frozen` keeps serving what was uploaded before, not what comes after.
    let frozen = MediaRepo::new(
        owned_server_name!("example.org"),
        serve.repo.store().clone(),
        Arc::new(FsBackend::open(serve._dir.path()).await.unwrap()),
        Arc::new(NoRemoteMedia),
        MediaConfig::default(),
    );
    let users = UserStore::new(serve._db.db.clone());
    let app = router(MediaState::new(
        Authenticator::new(users, Default::default()),
        frozen,
        EventStore::new(serve._db.db.clone()),
    ));
    let frozen = Env { app, repo: serve.repo.clone(), _db: serve._db, _dir: serve._dir };
    let old = frozen.get(&format!("/_matrix/media/v3/download/example.org/{id}"), None).await;
    assert_eq!(old.status(), StatusCode::OK);
    let new_id = frozen.upload(ALICE, "image/png", None, png(8, 8)).await;
    let new = frozen.get(&format!("/_matrix/media/v3/download/example.org/{new_id}"), None).await;
    assert_error(new, StatusCode::NOT_FOUND, "M_NOT_FOUND").await;
}

fn image_dims(b: &[u8]) -> (u32, u32) {
    image::ImageReader::new(Cursor::new(b)).with_guessed_format().unwrap().into_dimensions().unwrap()
}

fn thumb(id: &str, q: &str) -> String {
    format!("/_matrix/client/v1/media/thumbnail/example.org/{id}?{q}")
}

#[tokio::test]
async fn thumbnails_scale_crop_and_are_cached() {
    let e = env().await;
    let id = e.upload(ALICE, "image/png", None, png(400, 200)).await;
    let resp = e.get(&thumb(&id, "width=100&height=100&method=scale"), Some(ALICE)).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_safety_headers(&resp);
    assert_eq!(resp.headers()[header::CONTENT_TYPE], "image/png");
    assert_eq!(
        resp.headers()[header::CONTENT_DISPOSITION],
        "inline; filename=\"thumbnail.png\"; filename*=utf-8''thumbnail.png"
    );
    assert_eq!(image_dims(&bytes(resp).await), (100, 50));
    let resp = e.get(&thumb(&id, "width=50&height=50&method=crop"), Some(ALICE)).await;
    assert_eq!(image_dims(&bytes(resp).await), (50, 50));
    // Stored once per size and method; a second request is served from the store.
    let stored = e.repo.store().thumbnails(&owned_server_name!("example.org"), &id).await.unwrap();
    assert_eq!(stored.len(), 2);
    let again = e.get(&thumb(&id, "width=100&height=100&method=scale"), Some(ALICE)).await;
    assert_eq!(image_dims(&bytes(again).await), (100, 50));
    assert_eq!(e.repo.store().thumbnails(&owned_server_name!("example.org"), &id).await.unwrap().len(), 2);

    let jid = e.upload(ALICE, "image/jpeg", None, jpeg(300, 300)).await;
    let resp = e.get(&thumb(&jid, "width=32&height=32&method=crop"), Some(ALICE)).await;
    assert_eq!(resp.headers()[header::CONTENT_TYPE], "image/jpeg");
}

#[tokio::test]
async fn configured_sizes_are_generated_on_upload_and_chosen_when_dynamic_is_off() {
    let e = env_with(MediaConfig { dynamic_thumbnails: false, ..MediaConfig::default() }).await;
    let id = e.upload(ALICE, "image/png", None, png(1000, 1000)).await;
    let origin = owned_server_name!("example.org");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while e.repo.store().thumbnails(&origin, &id).await.unwrap().len() < 5 {
        assert!(tokio::time::Instant::now() < deadline, "configured thumbnails were not generated");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // 50×50 crop is answered by the smallest configured crop covering it: 96×96.
    let resp = e.get(&thumb(&id, "width=50&height=50&method=crop"), Some(ALICE)).await;
    assert_eq!(image_dims(&bytes(resp).await), (96, 96));
    // Larger than any: the largest of the method.
    let resp = e.get(&thumb(&id, "width=2000&height=2000&method=scale"), Some(ALICE)).await;
    assert_eq!(image_dims(&bytes(resp).await), (600, 600));
    assert_eq!(e.repo.store().thumbnails(&origin, &id).await.unwrap().len(), 5, "nothing new generated");
}

#[tokio::test]
async fn animated_gifs_stay_animated_when_asked() {
    let e = env().await;
    let id = e.upload(ALICE, "image/gif", None, gif(100, 100, 3)).await;
    let resp = e.get(&thumb(&id, "width=32&height=32&method=crop&animated=true"), Some(ALICE)).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()[header::CONTENT_TYPE], "image/gif");
    let body = bytes(resp).await;
    let frames = image::AnimationDecoder::into_frames(image::codecs::gif::GifDecoder::new(Cursor::new(&body)).unwrap());
    assert_eq!(frames.count(), 3);
    let still = e.get(&thumb(&id, "width=32&height=32&method=crop"), Some(ALICE)).await;
    assert_eq!(still.headers()[header::CONTENT_TYPE], "image/png");
}

#[tokio::test]
async fn thumbnail_errors() {
    let e = env_with(MediaConfig { max_image_pixels: 100 * 100, ..MediaConfig::default() }).await;
    let text = e.upload(ALICE, "text/plain", None, b"hello".to_vec()).await;
    assert_error(e.get(&thumb(&text, "width=32&height=32"), Some(ALICE)).await, StatusCode::BAD_REQUEST, "M_UNKNOWN")
        .await;
    let big = e.upload(ALICE, "image/png", None, png(200, 200)).await;
    let resp = e.get(&thumb(&big, "width=32&height=32"), Some(ALICE)).await;
    assert_error(resp, StatusCode::PAYLOAD_TOO_LARGE, "M_TOO_LARGE").await;
    let small = e.upload(ALICE, "image/png", None, png(20, 20)).await;
    for q in ["width=32", "width=32&height=32&method=stretch", "width=0&height=32", "width=x&height=32"] {
        let resp = e.get(&thumb(&small, q), Some(ALICE)).await;
        assert_safety_headers(&resp);
        assert_error(resp, StatusCode::BAD_REQUEST, "M_INVALID_PARAM").await;
    }
    // Bytes that lie about being an image.
    let fake = e.upload(ALICE, "image/png", None, b"\x89PNG\r\n\x1a\nbut not really".to_vec()).await;
    assert_error(e.get(&thumb(&fake, "width=32&height=32"), Some(ALICE)).await, StatusCode::BAD_REQUEST, "M_UNKNOWN")
        .await;
}

#[tokio::test]
async fn quarantined_media_is_not_served() {
    let e = env().await;
    let id = e.upload(ALICE, "image/png", None, png(10, 10)).await;
    e.repo.store().set_quarantined(&owned_server_name!("example.org"), &id, true).await.unwrap();
    assert_error(e.get(&dl(&id), Some(ALICE)).await, StatusCode::NOT_FOUND, "M_NOT_FOUND").await;
    assert_error(e.get(&thumb(&id, "width=8&height=8"), Some(ALICE)).await, StatusCode::NOT_FOUND, "M_NOT_FOUND").await;
}

#[tokio::test]
async fn identical_uploads_share_bytes_and_a_failed_upload_leaves_nothing() {
    let e = env().await;
    let a = e.upload(ALICE, "text/plain", None, b"same".to_vec()).await;
    let b = e.upload(BOB, "text/plain", None, b"same".to_vec()).await;
    assert_ne!(a, b);
    let origin = owned_server_name!("example.org");
    let ra = e.repo.store().get(&origin, &a).await.unwrap().unwrap();
    let rb = e.repo.store().get(&origin, &b).await.unwrap().unwrap();
    assert_eq!(ra.sha256, rb.sha256);
    let failing: Vec<Result<bytes::Bytes, std::io::Error>> =
        vec![Ok(bytes::Bytes::from_static(b"part")), Err(std::io::Error::other("client went away"))];
    let r = req("POST", "/_matrix/media/v3/upload", Some(ALICE))
        .body(Body::from_stream(futures::stream::iter(failing)))
        .unwrap();
    assert_error(e.send(r).await, StatusCode::BAD_REQUEST, "M_UNKNOWN").await;
    assert_eq!(e.repo.store().usage(ra.uploader.as_ref().unwrap()).await.unwrap().count, 1);
    assert_eq!(std::fs::read_dir(e._dir.path().join("tmp")).unwrap().count(), 0);
}

/// The role serves exactly the paths the routing table sends it.
#[test]
fn every_route_belongs_to_the_media_role() {
    for path in [
        "/_matrix/client/v1/media/download/a/b",
        "/_matrix/client/v1/media/thumbnail/a/b",
        "/_matrix/client/v1/media/config",
        "/_matrix/media/v3/upload",
        "/_matrix/media/v1/create",
        "/_matrix/media/r0/download/a/b",
        "/_matrix/media/v3/preview_url",
        "/_matrix/client/v1/media/preview_url",
    ] {
        assert_eq!(ganglion_routing::role_for_path(path), ganglion_routing::Role::Media, "{path}");
    }
}

/// A little web site on loopback for the previewer to visit.
async fn site() -> std::net::SocketAddr {
    use axum::extract::Path;
    use axum::response::{Html, IntoResponse as _, Redirect};
    use axum::routing::get;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let page = r#"<html><head><title>t</title><meta property="og:title" content="Hello &amp; welcome">
        <meta property="og:description" content="A page"></head><body>hi</body></html>"#;
    let app = axum::Router::new()
        .route("/page", get(move || async move { Html(page) }))
        .route(
            "/big",
            get(|| async {
                let mut body = String::from("<meta property=og:title content=Big>");
                body.push_str(&"x".repeat(8 << 20));
                Html(body)
            }),
        )
        .route(
            "/redirect/{n}",
            get(|Path(n): Path<u32>| async move {
                if n == 0 { Redirect::to("/page") } else { Redirect::to(&format!("/redirect/{}", n - 1)) }
            }),
        )
        .route("/to-v6", get(move || async move { Redirect::to(&format!("http://[::1]:{}/page", addr.port())) }))
        .route("/image", get(|| async { ([(header::CONTENT_TYPE, "image/png")], png(16, 16)).into_response() }))
        .route(
            "/with-image",
            get(|| async { Html(r#"<meta property="og:title" content="Pic"><meta property="og:image" content="/image">"#) }),
        )
        .route(
            "/private-image",
            get(|| async { Html(r#"<meta property="og:title" content="P"><meta property="og:image" content="http://10.0.0.1/x.png">"#) }),
        )
        .route("/text", get(|| async { "plain text" }));
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

fn preview_uri(url: &str) -> String {
    let encoded: String = url
        .bytes()
        .map(|b| if b.is_ascii_alphanumeric() { (b as char).to_string() } else { format!("%{b:02X}") })
        .collect();
    format!("/_matrix/client/v1/media/preview_url?url={encoded}")
}

#[tokio::test]
async fn url_previews_are_off_unless_enabled() {
    let e = env().await;
    let resp = e.get(&preview_uri("https://example.org/"), Some(ALICE)).await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND, "no route: the binary's fallback answers M_UNRECOGNIZED");
}

#[tokio::test]
async fn url_previews_refuse_loopback_and_private_addresses() {
    let addr = site().await;
    let cfg = UrlPreviewConfig { enabled: true, ..UrlPreviewConfig::default() };
    let e = env_with(MediaConfig { url_preview: cfg, ..MediaConfig::default() }).await;
    for url in [
        format!("http://{addr}/page"),
        format!("http://localhost:{}/page", addr.port()),
        "http://10.0.0.1/".to_owned(),
        "http://[::ffff:127.0.0.1]/".to_owned(),
        "http://169.254.169.254/latest/meta-data/".to_owned(),
    ] {
        let resp = e.get(&preview_uri(&url), Some(ALICE)).await;
        assert_error(resp, StatusCode::FORBIDDEN, "M_FORBIDDEN").await;
    }
    assert_error(
        e.get(&preview_uri("ftp://example.org/"), Some(ALICE)).await,
        StatusCode::BAD_REQUEST,
        "M_INVALID_PARAM",
    )
    .await;
    assert_error(e.get(&preview_uri("not a url"), Some(ALICE)).await, StatusCode::BAD_REQUEST, "M_INVALID_PARAM").await;
    assert_error(
        e.get("/_matrix/client/v1/media/preview_url", Some(ALICE)).await,
        StatusCode::BAD_REQUEST,
        "M_INVALID_PARAM",
    )
    .await;
    assert_error(e.get(&preview_uri("https://example.org/"), None).await, StatusCode::UNAUTHORIZED, "M_MISSING_TOKEN")
        .await;
}

#[tokio::test]
async fn url_previews_of_allow_listed_pages_follow_few_redirects_and_read_little() {
    let addr = site().await;
    let cfg = UrlPreviewConfig {
        enabled: true,
        ip_range_allowlist: vec!["127.0.0.1/32".into()],
        max_redirects: 3,
        max_bytes: 64 * 1024,
        ..UrlPreviewConfig::default()
    };
    let e = env_with(MediaConfig { url_preview: cfg, ..MediaConfig::default() }).await;
    let resp = e.get(&preview_uri(&format!("http://{addr}/page")), Some(ALICE)).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let og = json(resp).await;
    assert_eq!(og["og:title"], "Hello & welcome");
    assert_eq!(og["og:description"], "A page");
    // The legacy prefix too.
    let legacy = e
        .get(&preview_uri(&format!("http://{addr}/page")).replace("/client/v1/media/", "/media/v3/"), Some(ALICE))
        .await;
    assert_eq!(legacy.status(), StatusCode::OK);

    let via = json(e.get(&preview_uri(&format!("http://{addr}/redirect/2")), Some(ALICE)).await).await;
    assert_eq!(via["og:title"], "Hello & welcome", "three hops are fine");
    let resp = e.get(&preview_uri(&format!("http://{addr}/redirect/5")), Some(ALICE)).await;
    assert_error(resp, StatusCode::BAD_GATEWAY, "M_UNKNOWN").await;
    // A redirect to an address outside the allow-list is refused before connecting.
    let resp = e.get(&preview_uri(&format!("http://{addr}/to-v6")), Some(ALICE)).await;
    assert_error(resp, StatusCode::FORBIDDEN, "M_FORBIDDEN").await;
    // 8 MiB page, 64 KiB read.
    let big = json(e.get(&preview_uri(&format!("http://{addr}/big")), Some(ALICE)).await).await;
    assert_eq!(big["og:title"], "Big");
    let text = json(e.get(&preview_uri(&format!("http://{addr}/text")), Some(ALICE)).await).await;
    assert_eq!(text, serde_json::json!({}));

    // Images (the page's og:image, or the URL itself) are stored as media and given as mxc URIs.
    let og = json(e.get(&preview_uri(&format!("http://{addr}/with-image")), Some(ALICE)).await).await;
    assert_eq!(og["og:title"], "Pic");
    assert_eq!(og["og:image:type"], "image/png");
    let mxc = og["og:image"].as_str().unwrap();
    let id = mxc.strip_prefix("mxc://example.org/").unwrap();
    let stored = bytes(e.get(&dl(id), Some(BOB)).await).await;
    assert_eq!(stored, png(16, 16));
    assert_eq!(og["matrix:image:size"], stored.len());
    let direct = json(e.get(&preview_uri(&format!("http://{addr}/image")), Some(ALICE)).await).await;
    assert!(direct["og:image"].as_str().unwrap().starts_with("mxc://example.org/"), "{direct}");
    // An og:image at a refused address is simply left out.
    let og = json(e.get(&preview_uri(&format!("http://{addr}/private-image")), Some(ALICE)).await).await;
    assert_eq!(og["og:title"], "P");
    assert!(og.get("og:image").is_none(), "{og}");
}

#[tokio::test]
async fn admins_quarantine_and_delete_by_id_and_by_user() {
    let e = env().await;
    let a1 = e.upload(ALICE, "image/png", None, png(40, 40)).await;
    let a2 = e.upload(ALICE, "text/plain", None, b"alice 2".to_vec()).await;
    let shared = e.upload(BOB, "text/plain", None, b"alice 2".to_vec()).await;
    let post = |uri: String, token: &str| req("POST", &uri, Some(token)).body(Body::empty()).unwrap();
    let delete = |uri: String, token: &str| req("DELETE", &uri, Some(token)).body(Body::empty()).unwrap();

    // Only admins.
    let resp = e.send(post(format!("/_synapse/admin/v1/media/quarantine/example.org/{a1}"), ALICE)).await;
    assert_error(resp, StatusCode::FORBIDDEN, "M_FORBIDDEN").await;
    let resp = e.send(delete(format!("/_synapse/admin/v1/media/example.org/{a1}"), BOB)).await;
    assert_error(resp, StatusCode::FORBIDDEN, "M_FORBIDDEN").await;

    // Quarantine one, then release it.
    let resp = e.send(post(format!("/_synapse/admin/v1/media/quarantine/example.org/{a1}"), ADMIN)).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_error(e.get(&dl(&a1), Some(ALICE)).await, StatusCode::NOT_FOUND, "M_NOT_FOUND").await;
    let resp = e.send(post(format!("/_synapse/admin/v1/media/unquarantine/example.org/{a1}"), ADMIN)).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(e.get(&dl(&a1), Some(ALICE)).await.status(), StatusCode::OK);
    let resp = e.send(post("/_synapse/admin/v1/media/quarantine/example.org/nosuch".into(), ADMIN)).await;
    assert_error(resp, StatusCode::NOT_FOUND, "M_NOT_FOUND").await;

    // Quarantine everything of a user.
    let resp = e.send(post("/_synapse/admin/v1/user/@alice:example.org/media/quarantine".into(), ADMIN)).await;
    assert_eq!(json(resp).await["num_quarantined"], 2);
    assert_error(e.get(&dl(&a2), Some(BOB)).await, StatusCode::NOT_FOUND, "M_NOT_FOUND").await;
    assert_eq!(e.get(&dl(&shared), Some(BOB)).await.status(), StatusCode::OK, "bob's copy is his own");

    // Delete one (its thumbnail too), then all of a user's; shared bytes survive.
    let origin = owned_server_name!("example.org");
    let sha1 = e.repo.store().get(&origin, &a1).await.unwrap().unwrap().sha256.unwrap();
    e.repo.store().set_quarantined(&origin, &a1, false).await.unwrap();
    assert_eq!(e.get(&thumb(&a1, "width=8&height=8"), Some(ALICE)).await.status(), StatusCode::OK);
    let resp = e.send(delete(format!("/_synapse/admin/v1/media/example.org/{a1}"), ADMIN)).await;
    assert_eq!(json(resp).await["total"], 1);
    assert!(e.repo.store().get(&origin, &a1).await.unwrap().is_none());
    assert!(!e._dir.path().join(crate::content_key(&sha1)).exists(), "the bytes are gone");
    assert!(!e._dir.path().join("thumbnail").join(&sha1[..2]).join(&sha1).join("8x8-scale").exists());
    let resp = e.send(delete(format!("/_synapse/admin/v1/media/example.org/{a1}"), ADMIN)).await;
    assert_error(resp, StatusCode::NOT_FOUND, "M_NOT_FOUND").await;
    let resp = e.send(delete("/_synapse/admin/v1/media/other.org/abc".into(), ADMIN)).await;
    assert_error(resp, StatusCode::BAD_REQUEST, "M_INVALID_PARAM").await;

    let resp = e.send(delete("/_synapse/admin/v1/users/@alice:example.org/media".into(), ADMIN)).await;
    let body = json(resp).await;
    assert_eq!(body["total"], 1);
    assert_eq!(body["deleted_media"][0], a2.as_str());
    assert_error(e.get(&dl(&a2), Some(ADMIN)).await, StatusCode::NOT_FOUND, "M_NOT_FOUND").await;
    assert_eq!(bytes(e.get(&dl(&shared), Some(BOB)).await).await, b"alice 2", "identical bytes still used by bob");
    let resp = e.send(delete("/_synapse/admin/v1/users/not-a-user/media".into(), ADMIN)).await;
    assert_error(resp, StatusCode::BAD_REQUEST, "M_INVALID_PARAM").await;
}

#[tokio::test]
async fn admins_quarantine_the_media_a_room_refers_to() {
    use ganglion_storage::NewEvent;
    use ruma::{OwnedEventId, owned_room_id, owned_user_id};
    let e = env().await;
    let in_room = e.upload(ALICE, "image/png", None, png(8, 8)).await;
    let avatar = e.upload(ALICE, "image/png", None, png(9, 9)).await;
    let elsewhere = e.upload(ALICE, "image/png", None, png(10, 10)).await;
    let room = owned_room_id!("!r:example.org");
    let alice = owned_user_id!("@alice:example.org");
    let events = EventStore::new(e._db.db.clone());
    let contents = [
        serde_json::json!({ "type": "m.room.create", "content": {} }),
        serde_json::json!({ "type": "m.room.message", "content": { "msgtype": "m.image", "url": format!("mxc://example.org/{in_room}") } }),
        serde_json::json!({ "type": "m.room.avatar", "content": { "url": format!("mxc://example.org/{avatar}") } }),
    ];
    for (i, json) in contents.iter().enumerate() {
        let pos = i as i64 + 1;
        let ty = json["type"].as_str().unwrap();
        events
            .persist(&NewEvent {
                stream_ordering: pos,
                event_id: OwnedEventId::try_from(format!("$e{pos}").as_str()).unwrap(),
                room_id: room.clone(),
                sender: alice.clone(),
                event_type: ty.to_owned(),
                state_key: (ty != "m.room.message").then(String::new),
                membership: None,
                depth: pos,
                origin_server_ts: pos,
                json: json.to_string(),
                prev_events: if pos == 1 {
                    vec![]
                } else {
                    vec![OwnedEventId::try_from(format!("$e{}", pos - 1).as_str()).unwrap()]
                },
                txn: None,
                request_id: format!("r{pos}"),
                creates_room: (pos == 1).then(|| ("11".to_owned(), alice.clone())),
                redacts: None,
                push_actions: Vec::new(),
                relation: None,
                auth_events: Vec::new(),
                status: Default::default(),
                state_before: Default::default(),
                new_current_state: None,
            })
            .await
            .unwrap();
    }
    let uri = "/_synapse/admin/v1/room/!r:example.org/media/quarantine";
    let resp = e.send(req("POST", uri, Some(ALICE)).body(Body::empty()).unwrap()).await;
    assert_error(resp, StatusCode::FORBIDDEN, "M_FORBIDDEN").await;
    let resp = e.send(req("POST", uri, Some(ADMIN)).body(Body::empty()).unwrap()).await;
    assert_eq!(json(resp).await["num_quarantined"], 2);
    assert_error(e.get(&dl(&in_room), Some(BOB)).await, StatusCode::NOT_FOUND, "M_NOT_FOUND").await;
    assert_error(e.get(&dl(&avatar), Some(BOB)).await, StatusCode::NOT_FOUND, "M_NOT_FOUND").await;
    assert_eq!(e.get(&dl(&elsewhere), Some(BOB)).await.status(), StatusCode::OK);
    let bad = e
        .send(req("POST", "/_synapse/admin/v1/room/nope/media/quarantine", Some(ADMIN)).body(Body::empty()).unwrap())
        .await;
    assert_error(bad, StatusCode::BAD_REQUEST, "M_INVALID_PARAM").await;
}

/// A stand-in for the federation work: "fetches" remote media by storing known bytes.
#[derive(Debug)]
struct FakeRemote {
    store: MediaStore,
    backend: Arc<dyn crate::MediaBackend>,
}

#[async_trait::async_trait]
impl crate::RemoteMedia for FakeRemote {
    async fn fetch(
        &self,
        origin: &ruma::ServerName,
        media_id: &str,
        _timeout: Duration,
    ) -> Result<Option<ganglion_storage::MediaRecord>, crate::RemoteError> {
        if media_id != "known" {
            return Ok(None);
        }
        if let Some(r) = self.store.get(origin, media_id).await.map_err(|e| crate::RemoteError(e.to_string()))? {
            return Ok(Some(r));
        }
        let body: crate::ByteStream =
            Box::pin(futures::stream::once(async { Ok::<_, std::io::Error>(bytes::Bytes::from(png(64, 32))) }));
        let stored = self.backend.put(body, 1 << 20).await.map_err(|e| crate::RemoteError(e.to_string()))?;
        let content = ganglion_storage::UploadedContent {
            content_type: Some("image/png".into()),
            upload_name: Some("remote.png".into()),
            size_bytes: stored.size_bytes,
            sha256: stored.sha256,
        };
        self.store.insert_remote(origin, media_id, &content).await.map_err(|e| crate::RemoteError(e.to_string()))?;
        self.store.get(origin, media_id).await.map_err(|e| crate::RemoteError(e.to_string()))
    }
}

#[tokio::test]
async fn remote_media_is_served_through_the_remote_media_seam() {
    let db = TestDb::new(Backend::Sqlite).await;
    let users = UserStore::new(db.db.clone());
    let alice = OwnedUserId::try_from("@alice:example.org").unwrap();
    users.create_user(&alice, None, false).await.unwrap();
    users.add_access_token(&hash_token(ALICE), &alice, "DEV").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let backend: Arc<dyn crate::MediaBackend> = Arc::new(FsBackend::open(dir.path()).await.unwrap());
    let store = MediaStore::new(db.db.clone());
    let remote = FakeRemote { store: store.clone(), backend: backend.clone() };
    let repo =
        MediaRepo::new(owned_server_name!("example.org"), store, backend, Arc::new(remote), MediaConfig::default());
    let app = router(MediaState::new(
        Authenticator::new(users, Default::default()),
        repo.clone(),
        EventStore::new(db.db.clone()),
    ));
    let e = Env { app, repo, _db: db, _dir: dir };

    let resp = e.get("/_matrix/client/v1/media/download/remote.example/known", Some(ALICE)).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_safety_headers(&resp);
    assert_eq!(
        resp.headers()[header::CONTENT_DISPOSITION],
        "inline; filename=\"remote.png\"; filename*=utf-8''remote.png"
    );
    assert_eq!(bytes(resp).await, png(64, 32));
    let t = e
        .get("/_matrix/client/v1/media/thumbnail/remote.example/known?width=16&height=16&method=crop", Some(ALICE))
        .await;
    assert_eq!(image_dims(&bytes(t).await), (16, 16));
    let missing = e.get("/_matrix/client/v1/media/download/remote.example/unknown", Some(ALICE)).await;
    assert_error(missing, StatusCode::NOT_FOUND, "M_NOT_FOUND").await;
}

//! The media repository end to end: `ganglion serve` (SQLite, every role in one process) and two
//! media workers behind nginx sharing one store (PostgreSQL, Redis).

use std::time::Duration;

use ganglion_e2e::{Moto, OneProcess, RawClient, Split, errcode};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

#[path = "support/images.rs"]
mod images;
use images::{dims, png};

struct Media {
    http: reqwest::Client,
    url: String,
    token: String,
}

impl Media {
    fn new(url: &str, user: &RawClient) -> Self {
        Self { http: reqwest::Client::new(), url: url.to_owned(), token: user.token.clone() }
    }

    fn at(&self, url: &str) -> Self {
        Self { http: self.http.clone(), url: url.to_owned(), token: self.token.clone() }
    }

    async fn upload(&self, content_type: &str, body: Vec<u8>) -> String {
        let resp = self
            .http
            .post(format!("{}/_matrix/media/v3/upload?filename=f.bin", self.url))
            .bearer_auth(&self.token)
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let v: Value = resp.json().await.unwrap();
        v["content_uri"].as_str().unwrap().strip_prefix("mxc://").unwrap().to_owned()
    }

    async fn get(&self, path: &str) -> reqwest::Response {
        self.http.get(format!("{}{path}", self.url)).bearer_auth(&self.token).send().await.unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_uploads_downloads_thumbnails_and_refuses_what_it_must() {
    let media = json!({
        "max_upload_bytes": 1_000_000,
        "url_preview": { "enabled": true, "ip_range_allowlist": ["127.0.0.1/32"] },
    });
    let server = OneProcess::start_with(json!({ "media": media })).await.expect("server");
    let alice = RawClient::register(&server.url, "alice").await.unwrap();
    let m = Media::new(&server.url, &alice);

    let original = png(300, 150);
    let mxc = m.upload("image/png", original.clone()).await;
    assert!(mxc.starts_with("localhost/"), "{mxc}");

    // Authenticated download: the bytes and every safety header.
    let resp = m.get(&format!("/_matrix/client/v1/media/download/{mxc}")).await;
    assert_eq!(resp.status(), 200);
    let h = resp.headers().clone();
    assert!(h["content-security-policy"].to_str().unwrap().starts_with("sandbox;"));
    assert_eq!(h["x-content-type-options"], "nosniff");
    assert_eq!(h["cross-origin-resource-policy"], "cross-origin");
    assert_eq!(h["content-type"], "image/png");
    assert!(h["content-disposition"].to_str().unwrap().starts_with("inline;"));
    assert_eq!(resp.bytes().await.unwrap().to_vec(), original);

    // Without a token: refused; on the legacy endpoints new media is frozen out.
    let anon = reqwest::get(format!("{}/_matrix/client/v1/media/download/{mxc}", server.url)).await.unwrap();
    assert_eq!(errcode(anon).await, (401, "M_MISSING_TOKEN".into()));
    let legacy = reqwest::get(format!("{}/_matrix/media/v3/download/{mxc}", server.url)).await.unwrap();
    assert_eq!(errcode(legacy).await, (404, "M_NOT_FOUND".into()));

    // Thumbnails, scale and crop.
    let t = m.get(&format!("/_matrix/client/v1/media/thumbnail/{mxc}?width=64&height=64&method=scale")).await;
    assert_eq!(t.status(), 200);
    assert_eq!(t.headers()["x-content-type-options"], "nosniff");
    assert_eq!(dims(&t.bytes().await.unwrap()), (64, 32));
    let t = m.get(&format!("/_matrix/client/v1/media/thumbnail/{mxc}?width=40&height=40&method=crop")).await;
    assert_eq!(dims(&t.bytes().await.unwrap()), (40, 40));

    // Ranges.
    let r = m
        .http
        .get(format!("{}/_matrix/client/v1/media/download/{mxc}", server.url))
        .bearer_auth(&m.token)
        .header("range", "bytes=1-3")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(r.headers()["content-range"], format!("bytes 1-3/{}", original.len()));
    assert_eq!(r.bytes().await.unwrap().to_vec(), original[1..4].to_vec());

    // Config on both prefixes; limits and unknown media.
    let config: Value = m.get("/_matrix/client/v1/media/config").await.json().await.unwrap();
    assert_eq!(config["m.upload.size"], 1_000_000);
    let big = m
        .http
        .post(format!("{}/_matrix/media/v3/upload", server.url))
        .bearer_auth(&m.token)
        .body(vec![0u8; 1_000_001])
        .send()
        .await
        .unwrap();
    assert_eq!(errcode(big).await, (413, "M_TOO_LARGE".into()));
    let none = m.get("/_matrix/client/v1/media/download/localhost/doesNotExist").await;
    assert_eq!(errcode(none).await, (404, "M_NOT_FOUND".into()));
    // A remote server that cannot be reached (nothing listens on port 1): a gateway error.
    let remote = m.get("/_matrix/client/v1/media/download/127.0.0.1:1/abc").await;
    assert_eq!(errcode(remote).await, (502, "M_UNKNOWN".into()));

    // create + PUT, and the errors around it.
    let created: Value = m
        .http
        .post(format!("{}/_matrix/media/v1/create", server.url))
        .bearer_auth(&m.token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let pending = created["content_uri"].as_str().unwrap().strip_prefix("mxc://").unwrap().to_owned();
    let early = m.get(&format!("/_matrix/client/v1/media/download/{pending}?timeout_ms=100")).await;
    assert_eq!(errcode(early).await, (504, "M_NOT_YET_UPLOADED".into()));
    let bob = RawClient::register(&server.url, "bob").await.unwrap();
    let put = |token: &str, body: &'static str| {
        m.http
            .put(format!("{}/_matrix/media/v3/upload/{pending}", server.url))
            .bearer_auth(token)
            .header("content-type", "text/plain")
            .body(body)
            .send()
    };
    assert_eq!(errcode(put(&bob.token, "bob").await.unwrap()).await, (403, "M_FORBIDDEN".into()));
    assert_eq!(put(&alice.token, "hello").await.unwrap().status(), 200);
    assert_eq!(errcode(put(&alice.token, "again").await.unwrap()).await, (409, "M_CANNOT_OVERWRITE_MEDIA".into()));
    let got = m.get(&format!("/_matrix/client/v1/media/download/{pending}")).await;
    assert_eq!(got.text().await.unwrap(), "hello");

    // URL previews: an allow-listed loopback page works, other loopback addresses do not.
    let site = tiny_site().await;
    let enc = |u: &str| u.replace(':', "%3A").replace('/', "%2F").replace('[', "%5B").replace(']', "%5D");
    let og: Value = m
        .get(&format!("/_matrix/client/v1/media/preview_url?url={}", enc(&format!("http://{site}/"))))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(og["og:title"], "E2E page", "{og}");
    let refused = m
        .get(&format!("/_matrix/client/v1/media/preview_url?url={}", enc(&format!("http://[::1]:{}/", site.port()))))
        .await;
    assert_eq!(errcode(refused).await, (403, "M_FORBIDDEN".into()));

    // Unknown paths under the media prefixes are still Matrix-shaped.
    let unknown = m.get("/_matrix/client/v1/media/nope").await;
    assert_eq!(errcode(unknown).await, (404, "M_UNRECOGNIZED".into()));
}

/// A one-page web site on loopback, for URL previews.
async fn tiny_site() -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let body = r#"<html><head><meta property="og:title" content="E2E page"></head></html>"#;
                let resp = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/html\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
            });
        }
    });
    addr
}

/// Peak resident memory of a process, in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_100_mb_file_streams_through_in_flat_memory() {
    streams_in_flat_memory(json!({ "max_upload_bytes": 200 * 1024 * 1024 })).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_100_mb_file_streams_through_s3_in_flat_memory() {
    let Some(moto) = Moto::start().await.expect("moto starts") else { return };
    let s3 = moto.bucket().await.unwrap();
    streams_in_flat_memory(json!({ "max_upload_bytes": 200 * 1024 * 1024, "s3": s3 })).await;
}

async fn streams_in_flat_memory(media: Value) {
    const SIZE: usize = 100 * 1024 * 1024;
    let server = OneProcess::start_with(json!({ "media": media })).await.expect("server");
    let alice = RawClient::register(&server.url, "alice").await.unwrap();
    let m = Media::new(&server.url, &alice);
    let pid = server.proc.pid().expect("server pid");
    let before = peak_rss(pid);

    let body: Vec<u8> = (0..SIZE).map(|i| (i % 251) as u8).collect();
    let expected = Sha256::digest(&body);
    let mxc = m.upload("application/octet-stream", body).await;

    let mut resp = m.get(&format!("/_matrix/client/v1/media/download/{mxc}")).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-length"], SIZE.to_string());
    assert!(resp.headers()["content-disposition"].to_str().unwrap().starts_with("attachment"));
    let mut hasher = Sha256::new();
    let mut got = 0usize;
    while let Some(chunk) = resp.chunk().await.unwrap() {
        got += chunk.len();
        hasher.update(&chunk);
    }
    assert_eq!(got, SIZE);
    assert_eq!(hasher.finalize(), expected);

    let after = peak_rss(pid);
    let grown = after.saturating_sub(before);
    eprintln!("server peak RSS: {} MiB before, {} MiB after a 100 MiB upload and download", before >> 20, after >> 20);
    assert!(grown < 40 * 1024 * 1024, "peak RSS grew by {} MiB moving a 100 MiB file", grown >> 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_media_workers_behind_nginx_share_one_filesystem_store() {
    two_media_workers_share_one_store(json!({})).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_media_workers_behind_nginx_share_one_s3_bucket() {
    let Some(moto) = Moto::start().await.expect("moto starts") else { return };
    let s3 = moto.bucket().await.unwrap();
    two_media_workers_share_one_store(json!({ "s3": s3 })).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_on_s3() {
    let Some(moto) = Moto::start().await.expect("moto starts") else { return };
    let s3 = moto.bucket().await.unwrap();
    let server = OneProcess::start_with(json!({ "media": { "s3": s3 } })).await.expect("server");
    let alice = RawClient::register(&server.url, "alice").await.unwrap();
    let m = Media::new(&server.url, &alice);
    let original = png(120, 60);
    let mxc = m.upload("image/png", original.clone()).await;
    let resp = m.get(&format!("/_matrix/client/v1/media/download/{mxc}")).await;
    assert_eq!(resp.bytes().await.unwrap().to_vec(), original);
    let t = m.get(&format!("/_matrix/client/v1/media/thumbnail/{mxc}?width=30&height=30&method=crop")).await;
    assert_eq!(dims(&t.bytes().await.unwrap()), (30, 30));
    // The bytes really are in the bucket.
    let listing = reqwest::get(format!("{}/{}?list-type=2", moto.url, s3["bucket"].as_str().unwrap()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(listing.contains("<Key>media/content/"), "{listing}");
    assert!(listing.contains("<Key>media/thumbnail/"), "{listing}");
}

async fn two_media_workers_share_one_store(media: Value) {
    let split = Split::start_with_media(1, 2, media).await.expect("split deployment starts");
    let alice = RawClient::register(&split.url, "alice").await.unwrap();
    let via_nginx = Media::new(&split.url, &alice);
    let (w0, w1) = (via_nginx.at(&split.media_urls[0]), via_nginx.at(&split.media_urls[1]));

    // Uploaded on one worker, served (and thumbnailed) by the other.
    let original = png(200, 100);
    let mxc = w0.upload("image/png", original.clone()).await;
    let resp = w1.get(&format!("/_matrix/client/v1/media/download/{mxc}")).await;
    assert_eq!(resp.status(), 200, "{}", split.logs());
    assert_eq!(resp.bytes().await.unwrap().to_vec(), original);
    let t = w1.get(&format!("/_matrix/client/v1/media/thumbnail/{mxc}?width=50&height=50&method=crop")).await;
    assert_eq!(dims(&t.bytes().await.unwrap()), (50, 50));

    // Through nginx: round-robin over both, every answer the same.
    for i in 0..6u8 {
        let body = vec![i; 1000 + usize::from(i)];
        let mxc = via_nginx.upload("application/octet-stream", body.clone()).await;
        for _ in 0..2 {
            let resp = via_nginx.get(&format!("/_matrix/client/v1/media/download/{mxc}")).await;
            assert_eq!(resp.status(), 200);
            assert_eq!(resp.headers()["x-content-type-options"], "nosniff");
            assert_eq!(resp.bytes().await.unwrap().to_vec(), body);
        }
    }

    // A download waiting on one worker sees the upload that lands on the other.
    let created: Value = w0
        .http
        .post(format!("{}/_matrix/media/v1/create", w0.url))
        .bearer_auth(&w0.token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let pending = created["content_uri"].as_str().unwrap().strip_prefix("mxc://").unwrap().to_owned();
    let waiter = {
        let w1 = w1.at(&w1.url);
        let pending = pending.clone();
        tokio::spawn(
            async move { w1.get(&format!("/_matrix/client/v1/media/download/{pending}?timeout_ms=15000")).await },
        )
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let put = w0
        .http
        .put(format!("{}/_matrix/media/v3/upload/{pending}", w0.url))
        .bearer_auth(&w0.token)
        .header("content-type", "text/plain")
        .body("late bytes")
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 200);
    let resp = waiter.await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), "late bytes");

    // main does not serve media; nginx sends it to the media workers only.
    let config: Value = via_nginx.get("/_matrix/client/v1/media/config").await.json().await.unwrap();
    assert!(config["m.upload.size"].is_u64(), "{config}");
    split.stop().await;
}

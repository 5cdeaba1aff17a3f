//! Media over federation: serving ours at `/_matrix/federation/v1/media/{download,thumbnail}`
//! (signed requests only, answered as `multipart/mixed`: a JSON metadata part, then the bytes),
//! and [`FederatedRemoteMedia`], which fetches other servers' media the same way into the local
//! store, where it stays cached.
//!
//! Both directions stream: the bytes are never held whole in memory.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::response::Response;
use futures::{StreamExt as _, TryStreamExt as _, stream};
use ganglion_federation::{FederationClient, InboundAuth};
use ganglion_http::MatrixError;
use ganglion_storage::{MediaRecord, MediaStore, UploadedContent};
use http::{HeaderValue, StatusCode, header};
use rand::Rng as _;
use rand::distributions::Alphanumeric;
use ruma::ServerName;

use crate::backend::{ByteStream, MediaBackend};
use crate::client::{DownloadQuery, ThumbnailQuery, path, query};
use crate::remote::{RemoteError, RemoteMedia};
use crate::repo::{Access, MediaRepo};
use crate::response::content_disposition;

/// Headers and the JSON part are small; a remote that sends more before the bytes is refused.
const MAX_PREAMBLE: usize = 64 * 1024;

/// What the federation media routes need.
#[derive(Debug, Clone)]
pub(crate) struct FederationMedia {
    pub(crate) auth: InboundAuth,
    pub(crate) repo: MediaRepo,
}

fn boundary() -> String {
    rand::thread_rng().sample_iter(&Alphanumeric).take(32).map(char::from).collect()
}

/// `multipart/mixed`: empty metadata, then the content with its type and disposition.
fn multipart(content: ByteStream, content_type: &str, disposition: &HeaderValue) -> Response {
    let b = boundary();
    let head = format!(
        "--{b}\r\nContent-Type: application/json\r\n\r\n{{}}\r\n--{b}\r\nContent-Type: {content_type}\r\nContent-Disposition: {}\r\n\r\n",
        disposition.to_str().unwrap_or("attachment")
    );
    let tail = format!("\r\n--{b}--\r\n");
    let body = stream::once(async move { Ok::<_, io::Error>(Bytes::from(head)) })
        .chain(content)
        .chain(stream::once(async move { Ok(Bytes::from(tail)) }));
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, format!("multipart/mixed; boundary={b}"))
        .body(Body::from_stream(body))
        .expect("a valid response")
}

async fn authenticate(fed: &FederationMedia, req: &http::request::Parts) -> Result<(), MatrixError> {
    let origin = fed.auth.authenticate(req, &[]).await?;
    tracing::debug!(%origin, uri = %req.uri, "federation media request");
    Ok(())
}

/// `GET /_matrix/federation/v1/media/download/{mediaId}`: our media only.
pub(crate) async fn download(
    State(fed): State<FederationMedia>,
    p: Result<Path<String>, PathRejection>,
    q: Result<Query<DownloadQuery>, QueryRejection>,
    req: http::request::Parts,
) -> Result<Response, MatrixError> {
    authenticate(&fed, &req).await?;
    let media_id = path(p)?;
    let q = query(q)?;
    let ours = fed.auth.server_name().to_owned();
    let record = fed.repo.find(&ours, &media_id, q.wait(), Access::Authenticated).await?;
    let content_type = record.content_type.clone().unwrap_or_else(|| "application/octet-stream".to_owned());
    let disposition = content_disposition(&content_type, record.upload_name.as_deref());
    let body = fed.repo.open(&record, None).await?.body.unwrap_or_else(|| Box::pin(stream::empty()));
    Ok(multipart(body, &content_type, &disposition))
}

/// `GET /_matrix/federation/v1/media/thumbnail/{mediaId}`.
pub(crate) async fn thumbnail(
    State(fed): State<FederationMedia>,
    p: Result<Path<String>, PathRejection>,
    q: Result<Query<ThumbnailQuery>, QueryRejection>,
    req: http::request::Parts,
) -> Result<Response, MatrixError> {
    authenticate(&fed, &req).await?;
    let media_id = path(p)?;
    let q = query(q)?;
    let method = q.method()?;
    let ours = fed.auth.server_name().to_owned();
    let record = fed.repo.find(&ours, &media_id, q.wait(), Access::Authenticated).await?;
    let served = fed.repo.thumbnail(&record, q.width, q.height, method, q.animated()).await?;
    let ext = served.content_type.rsplit('/').next().unwrap_or("bin").to_owned();
    let disposition = content_disposition(&served.content_type, Some(&format!("thumbnail.{ext}")));
    let body = served.body.unwrap_or_else(|| Box::pin(stream::empty()));
    Ok(multipart(body, &served.content_type, &disposition))
}

/// Other servers' media, fetched over federation into the local backend and recorded under
/// their origin; later requests are served from there.
#[derive(Debug)]
pub struct FederatedRemoteMedia {
    client: FederationClient,
    store: MediaStore,
    backend: Arc<dyn MediaBackend>,
    max_bytes: u64,
}

impl FederatedRemoteMedia {
    /// Fetches through `client` into `backend`, recording in `store`; refuses media larger than
    /// `max_bytes`.
    pub fn new(client: FederationClient, store: MediaStore, backend: Arc<dyn MediaBackend>, max_bytes: u64) -> Self {
        Self { client, store, backend, max_bytes }
    }
}

fn remote_err(e: impl std::fmt::Display) -> RemoteError {
    RemoteError(e.to_string())
}

/// Reads a byte stream as one `multipart/mixed` body with two parts, without buffering the
/// second (the content).
struct MultipartReader {
    stream: ByteStream,
    buf: Vec<u8>,
    boundary: Vec<u8>,
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

impl MultipartReader {
    /// Bytes up to `pat` (dropping `pat`), reading more as needed, within [`MAX_PREAMBLE`].
    async fn until(&mut self, pat: &[u8]) -> Result<Vec<u8>, RemoteError> {
        let mut searched = 0usize;
        loop {
            let from = searched.saturating_sub(pat.len());
            if let Some(i) = find(&self.buf[from..], pat).map(|i| from + i) {
                let head = self.buf[..i].to_vec();
                self.buf.drain(..i + pat.len());
                return Ok(head);
            }
            searched = self.buf.len();
            if self.buf.len() > MAX_PREAMBLE {
                return Err(RemoteError("multipart preamble too long".into()));
            }
            match self.stream.next().await {
                Some(chunk) => self.buf.extend_from_slice(&chunk.map_err(remote_err)?),
                None => return Err(RemoteError("multipart body ended early".into())),
            }
        }
    }

    /// The metadata part, then the content part's headers; leaves the reader at its bytes.
    async fn content_headers(&mut self) -> Result<Vec<(String, String)>, RemoteError> {
        let mut dashed = b"--".to_vec();
        dashed.extend_from_slice(&self.boundary);
        self.until(&dashed).await?; // preamble
        self.until(b"\r\n\r\n").await?; // metadata part headers
        let mut next = b"\r\n".to_vec();
        next.extend_from_slice(&dashed);
        let metadata = self.until(&next).await?;
        serde_json::from_slice::<serde_json::Value>(&metadata).map_err(|e| remote_err(format!("metadata: {e}")))?;
        let headers = self.until(b"\r\n\r\n").await?;
        let text = String::from_utf8_lossy(&headers);
        Ok(text
            .split("\r\n")
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect())
    }

    /// The content part's bytes, ending at the closing delimiter.
    fn content(self) -> ByteStream {
        let mut delimiter = b"\r\n--".to_vec();
        delimiter.extend_from_slice(&self.boundary);
        // (stream, unsent bytes, how far they were searched, finished)
        let state = (self.stream, self.buf, 0usize, false);
        Box::pin(stream::try_unfold(state, move |(mut stream, mut buf, mut searched, done)| {
            let delimiter = delimiter.clone();
            async move {
                if done {
                    return Ok(None);
                }
                loop {
                    // Only the new bytes (and a delimiter's length before them) need searching.
                    let from = searched.saturating_sub(delimiter.len());
                    if let Some(i) = find(&buf[from..], &delimiter) {
                        buf.truncate(from + i);
                        return Ok(Some((Bytes::from(buf), (stream, Vec::new(), 0, true))));
                    }
                    searched = buf.len();
                    // Send what cannot be the start of the delimiter; hold back the rest.
                    if buf.len() > delimiter.len() + 64 * 1024 {
                        let keep = buf.split_off(buf.len() - delimiter.len());
                        let kept = keep.len();
                        return Ok(Some((Bytes::from(buf), (stream, keep, kept, false))));
                    }
                    match stream.next().await {
                        Some(chunk) => buf.extend_from_slice(&chunk?),
                        None => {
                            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "multipart content not closed"));
                        }
                    }
                }
            }
        }))
    }
}

fn boundary_of(content_type: &str) -> Option<Vec<u8>> {
    let (kind, params) = content_type.split_once(';')?;
    if !kind.trim().eq_ignore_ascii_case("multipart/mixed") {
        return None;
    }
    params.split(';').find_map(|p| {
        let (k, v) = p.split_once('=')?;
        k.trim().eq_ignore_ascii_case("boundary").then(|| v.trim().trim_matches('"').as_bytes().to_vec())
    })
}

/// `filename` or `filename*=utf-8''…` of a `Content-Disposition`.
fn disposition_filename(value: &str) -> Option<String> {
    value.split(';').find_map(|p| {
        let (k, v) = p.split_once('=')?;
        match k.trim().to_ascii_lowercase().as_str() {
            "filename*" => {
                let encoded = v.trim().split_once("''").map_or(v.trim(), |(_, e)| e);
                Some(url::form_urlencoded::parse(format!("x={encoded}").as_bytes()).next()?.1.into_owned())
            }
            "filename" => Some(v.trim().trim_matches('"').to_owned()),
            _ => None,
        }
    })
}

#[async_trait::async_trait]
impl RemoteMedia for FederatedRemoteMedia {
    async fn fetch(
        &self,
        origin: &ServerName,
        media_id: &str,
        timeout: Duration,
    ) -> Result<Option<MediaRecord>, RemoteError> {
        if let Some(r) = self.store.get(origin, media_id).await.map_err(remote_err)?
            && r.is_uploaded()
        {
            return Ok(Some(r));
        }
        let path = format!("/_matrix/federation/v1/media/download/{media_id}?timeout_ms={}", timeout.as_millis());
        let resp = self.client.get(origin, &path).await.map_err(remote_err)?;
        match resp.status() {
            StatusCode::OK => {}
            StatusCode::NOT_FOUND => return Ok(None),
            other => return Err(RemoteError(format!("{origin} answered {other} for {media_id}"))),
        }
        let content_type = resp.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
        let boundary = boundary_of(content_type)
            .ok_or_else(|| RemoteError(format!("{origin} did not answer multipart/mixed but {content_type:?}")))?;
        let mut reader = MultipartReader {
            stream: Box::pin(resp.bytes_stream().map_err(io::Error::other)),
            buf: Vec::new(),
            boundary,
        };
        let headers = reader.content_headers().await?;
        let get = |name: &str| headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
        let (content, content_type, disposition) = match get("location") {
            // The remote may point at where the bytes are instead of sending them.
            Some(location) => {
                let resp = self.client.get_url(&location).await.map_err(|e| RemoteError(e.to_string()))?;
                if !resp.status().is_success() {
                    return Err(RemoteError(format!("{location} answered {}", resp.status())));
                }
                let ct = resp.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_owned);
                let cd =
                    resp.headers().get(header::CONTENT_DISPOSITION).and_then(|v| v.to_str().ok()).map(str::to_owned);
                let body: ByteStream = Box::pin(resp.bytes_stream().map_err(io::Error::other));
                (body, ct, cd)
            }
            None => (reader.content(), get("content-type"), get("content-disposition")),
        };
        let stored = self.backend.put(content, self.max_bytes).await.map_err(remote_err)?;
        let uploaded = UploadedContent {
            content_type: content_type.filter(|t| !t.is_empty()),
            upload_name: disposition.as_deref().and_then(disposition_filename),
            size_bytes: stored.size_bytes,
            sha256: stored.sha256,
        };
        self.store.insert_remote(origin, media_id, &uploaded).await.map_err(remote_err)?;
        tracing::debug!(%origin, media_id, size = uploaded.size_bytes, "remote media cached");
        self.store.get(origin, media_id).await.map_err(remote_err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn collect(s: ByteStream) -> Result<Vec<u8>, io::Error> {
        let chunks: Vec<Bytes> = s.try_collect().await?;
        Ok(chunks.concat())
    }

    fn chunked(body: Vec<u8>, size: usize) -> ByteStream {
        let chunks: Vec<io::Result<Bytes>> = body.chunks(size).map(|c| Ok(Bytes::copy_from_slice(c))).collect();
        Box::pin(stream::iter(chunks))
    }

    #[tokio::test]
    async fn what_we_serve_we_can_read_back_in_any_chunking() {
        let content: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let disposition = content_disposition("image/png", Some("a b.png"));
        let resp = multipart(chunked(content.clone(), 4096), "image/png", &disposition);
        let ct = resp.headers()[header::CONTENT_TYPE].to_str().unwrap().to_owned();
        let raw = axum::body::to_bytes(resp.into_body(), usize::MAX).await.unwrap().to_vec();
        for size in [1, 7, 4096, raw.len()] {
            let mut reader = MultipartReader {
                stream: chunked(raw.clone(), size),
                buf: Vec::new(),
                boundary: boundary_of(&ct).unwrap(),
            };
            let headers = reader.content_headers().await.unwrap();
            assert!(headers.contains(&("content-type".to_owned(), "image/png".to_owned())), "{headers:?}");
            let cd = headers.iter().find(|(k, _)| k == "content-disposition").map(|(_, v)| v.clone()).unwrap();
            assert_eq!(disposition_filename(&cd).as_deref(), Some("a b.png"));
            assert_eq!(collect(reader.content()).await.unwrap(), content, "chunk size {size}");
        }
    }

    #[tokio::test]
    async fn truncated_or_foreign_bodies_are_errors() {
        assert_eq!(boundary_of("application/json"), None);
        assert_eq!(boundary_of("multipart/mixed; boundary=\"abc\"").as_deref(), Some(&b"abc"[..]));
        let body =
            b"--abc\r\nContent-Type: application/json\r\n\r\n{}\r\n--abc\r\nContent-Type: text/plain\r\n\r\nhello"
                .to_vec();
        let mut reader = MultipartReader { stream: chunked(body, 5), buf: Vec::new(), boundary: b"abc".to_vec() };
        reader.content_headers().await.unwrap();
        assert!(collect(reader.content()).await.is_err(), "no closing delimiter");
        let bad_json = b"--abc\r\n\r\nnot json\r\n--abc\r\n\r\nx\r\n--abc--".to_vec();
        let mut reader = MultipartReader { stream: chunked(bad_json, 3), buf: Vec::new(), boundary: b"abc".to_vec() };
        assert!(reader.content_headers().await.is_err());
    }
}

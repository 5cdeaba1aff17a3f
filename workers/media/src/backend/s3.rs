//! [`S3Backend`]: media in an S3-compatible bucket, over plain HTTP requests signed with SigV4.
//!
//! An upload is first spooled to a local temporary file (hashed while written, so its
//! content-addressed key is known), then sent with its exact `Content-Length`, streamed from the
//! file; identical content already in the bucket is not sent again. Downloads stream the response
//! body, with `Range` passed through.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use futures::TryStreamExt as _;
use ganglion_config::S3Config;
use http::StatusCode;
use reqwest::Method;

use super::sigv4::{self, Credentials, UNSIGNED_PAYLOAD};
use super::{BackendError, ByteRange, ByteStream, MediaBackend, Stored, content_key, spool, temp_path_in};

/// An S3-compatible bucket, addressed path-style (`endpoint/bucket/key`).
#[derive(Debug, Clone)]
pub struct S3Backend {
    http: reqwest::Client,
    endpoint: String,
    host: String,
    bucket: String,
    prefix: String,
    creds: Credentials,
    spool_dir: PathBuf,
}

fn store_err(e: impl std::fmt::Display) -> BackendError {
    BackendError::Store(io::Error::other(e.to_string()))
}

impl S3Backend {
    /// A client for `cfg`'s bucket, spooling uploads under `spool_dir` (created when missing).
    /// Nothing is requested yet: see [`S3Backend::check_bucket`].
    ///
    /// # Errors
    /// When the endpoint is not an http(s) URL or the spool directory cannot be created.
    pub async fn open(cfg: &S3Config, spool_dir: PathBuf) -> Result<Self, BackendError> {
        let url = reqwest::Url::parse(&cfg.endpoint).map_err(|e| store_err(format!("media.s3.endpoint: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(store_err("media.s3.endpoint must be an http or https URL"));
        }
        let host = match (url.host_str(), url.port()) {
            (Some(h), Some(p)) => format!("{h}:{p}"),
            (Some(h), None) => h.to_owned(),
            (None, _) => return Err(store_err("media.s3.endpoint has no host")),
        };
        tokio::fs::create_dir_all(&spool_dir).await.map_err(BackendError::Store)?;
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .read_timeout(Duration::from_secs(60))
            .build()
            .map_err(store_err)?;
        Ok(Self {
            http,
            endpoint: cfg.endpoint.trim_end_matches('/').to_owned(),
            host,
            bucket: cfg.bucket.clone(),
            prefix: cfg.key_prefix.clone(),
            creds: Credentials {
                access_key_id: cfg.access_key_id.clone(),
                secret_access_key: cfg.secret_access_key.clone(),
                region: cfg.region.clone(),
            },
            spool_dir,
        })
    }

    /// Checks the bucket exists and the credentials can reach it.
    ///
    /// # Errors
    /// When they cannot.
    pub async fn check_bucket(&self) -> Result<(), BackendError> {
        let resp = self.send(Method::HEAD, None, None, None, None).await?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(store_err(format!("bucket {} is not reachable: {}", self.bucket, resp.status())))
        }
    }

    /// Creates the bucket (for tests and first-time setup); an existing bucket of ours is fine.
    ///
    /// # Errors
    /// When the service refuses.
    pub async fn create_bucket(&self) -> Result<(), BackendError> {
        let resp = self.send(Method::PUT, None, None, None, Some(0)).await?;
        if resp.status().is_success() || resp.status() == StatusCode::CONFLICT {
            Ok(())
        } else {
            Err(store_err(format!("cannot create bucket {}: {}", self.bucket, resp.status())))
        }
    }

    fn path(&self, key: Option<&str>) -> String {
        match key {
            Some(k) => sigv4::encode_path(&format!("/{}/{}{k}", self.bucket, self.prefix)),
            None => sigv4::encode_path(&format!("/{}", self.bucket)),
        }
    }

    /// One signed request.
    async fn send(
        &self,
        method: Method,
        key: Option<&str>,
        range: Option<ByteRange>,
        body: Option<reqwest::Body>,
        content_length: Option<u64>,
    ) -> Result<reqwest::Response, BackendError> {
        let path = self.path(key);
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let date = sigv4::amz_date(now);
        let auth = sigv4::authorization(
            &self.creds,
            method.as_str(),
            &path,
            "",
            &[("host", &self.host), ("x-amz-content-sha256", UNSIGNED_PAYLOAD), ("x-amz-date", &date)],
            UNSIGNED_PAYLOAD,
            &date,
        );
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.endpoint))
            .header("x-amz-date", &date)
            .header("x-amz-content-sha256", UNSIGNED_PAYLOAD)
            .header(http::header::AUTHORIZATION, auth);
        if let Some(r) = range {
            req = req.header(http::header::RANGE, format!("bytes={}-{}", r.start, r.end));
        }
        if let Some(len) = content_length {
            req = req.header(http::header::CONTENT_LENGTH, len);
        }
        if let Some(b) = body {
            req = req.body(b);
        }
        req.send().await.map_err(store_err)
    }

    async fn expect_success(resp: reqwest::Response, what: &str) -> Result<(), BackendError> {
        if resp.status().is_success() {
            return Ok(());
        }
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        Err(store_err(format!("S3 {what}: {status}: {}", text.chars().take(300).collect::<String>())))
    }

    async fn upload_file(&self, tmp: &std::path::Path, stored: &Stored) -> Result<(), BackendError> {
        let key = content_key(&stored.sha256);
        // Identical content is already there: nothing to send.
        let head = self.send(Method::HEAD, Some(&key), None, None, None).await?;
        if head.status().is_success() {
            return Ok(());
        }
        let file = tokio::fs::File::open(tmp).await.map_err(BackendError::Store)?;
        let body = reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::with_capacity(file, 256 * 1024));
        let resp = self.send(Method::PUT, Some(&key), None, Some(body), Some(stored.size_bytes)).await?;
        Self::expect_success(resp, "PUT").await
    }
}

#[async_trait::async_trait]
impl MediaBackend for S3Backend {
    async fn put(&self, body: ByteStream, max_bytes: u64) -> Result<Stored, BackendError> {
        let tmp = temp_path_in(&self.spool_dir);
        let result = match spool(&tmp, body, max_bytes).await {
            Ok(stored) => self.upload_file(&tmp, &stored).await.map(|()| stored),
            Err(e) => Err(e),
        };
        let _ = tokio::fs::remove_file(&tmp).await;
        result
    }

    async fn put_named(&self, key: &str, bytes: Bytes) -> Result<(), BackendError> {
        let len = bytes.len() as u64;
        let resp = self.send(Method::PUT, Some(key), None, Some(reqwest::Body::from(bytes)), Some(len)).await?;
        Self::expect_success(resp, "PUT").await
    }

    async fn get(&self, key: &str, range: Option<ByteRange>) -> Result<Option<ByteStream>, BackendError> {
        let resp = self.send(Method::GET, Some(key), range, None, None).await?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !resp.status().is_success() {
            Self::expect_success(resp, "GET").await?;
            return Ok(None);
        }
        Ok(Some(Box::pin(resp.bytes_stream().map_err(io::Error::other))))
    }

    async fn delete(&self, key: &str) -> Result<(), BackendError> {
        let resp = self.send(Method::DELETE, Some(key), None, None, None).await?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Ok(());
        }
        Self::expect_success(resp, "DELETE").await
    }
}

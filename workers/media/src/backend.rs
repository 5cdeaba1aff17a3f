//! Where media bytes live: the [`MediaBackend`] trait and its local filesystem implementation.
//!
//! Originals are content-addressed: an upload streams into a temporary file while it is hashed,
//! then is renamed to a path derived from its SHA-256, so two identical uploads share one file and a
//! half-written upload is never visible. Thumbnails are stored under names derived from the
//! original's hash and their size. Every media worker of a deployment must see the same store.

use std::fmt::Debug;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;

use bytes::Bytes;
use futures::{Stream, StreamExt as _, TryStreamExt as _};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt as _, AsyncSeekExt as _, AsyncWriteExt as _};

mod s3;
mod sigv4;

pub use s3::S3Backend;

/// A stream of bytes from or to a backend.
pub type ByteStream = Pin<Box<dyn Stream<Item = io::Result<Bytes>> + Send>>;

/// Why a backend operation failed.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The body was larger than allowed; nothing was stored.
    #[error("body larger than {0} bytes")]
    TooLarge(u64),
    /// Reading the request body failed (the client went away); nothing was stored.
    #[error("reading the body: {0}")]
    Body(io::Error),
    /// The store failed.
    #[error("media store: {0}")]
    Store(io::Error),
}

/// What [`MediaBackend::put`] stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    /// Lower-case hex SHA-256 of the bytes; [`content_key`] of it names them.
    pub sha256: String,
    /// Number of bytes.
    pub size_bytes: u64,
}

/// An inclusive byte range of a stored object, already checked against its size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteRange {
    /// First byte.
    pub start: u64,
    /// Last byte (inclusive).
    pub end: u64,
}

/// A store of media bytes, shared by every media worker of a deployment.
#[async_trait::async_trait]
pub trait MediaBackend: Send + Sync + Debug {
    /// Streams `body` into the store, content-addressed: the bytes end up under
    /// [`content_key`]`(sha256)`. Never holds the whole body in memory.
    ///
    /// # Errors
    /// [`BackendError::TooLarge`] past `max_bytes`, [`BackendError::Body`] when the body fails,
    /// [`BackendError::Store`] when the store does; in every case nothing is stored.
    async fn put(&self, body: ByteStream, max_bytes: u64) -> Result<Stored, BackendError>;

    /// Stores small derived bytes (a thumbnail) under `key`, replacing what was there.
    ///
    /// # Errors
    /// When the store fails.
    async fn put_named(&self, key: &str, bytes: Bytes) -> Result<(), BackendError>;

    /// Streams the object under `key`, or the given range of it; `None` when it does not exist.
    ///
    /// # Errors
    /// When the store fails.
    async fn get(&self, key: &str, range: Option<ByteRange>) -> Result<Option<ByteStream>, BackendError>;

    /// Deletes the object under `key`; deleting a missing object succeeds.
    ///
    /// # Errors
    /// When the store fails.
    async fn delete(&self, key: &str) -> Result<(), BackendError>;
}

/// The key of an original, from its SHA-256: `content/ab/cd/abcd…`, sharded so no directory grows
/// past 65536 entries per level.
pub fn content_key(sha256: &str) -> String {
    format!("content/{}/{}/{sha256}", &sha256[..2.min(sha256.len())], &sha256[2.min(sha256.len())..4.min(sha256.len())])
}

/// The key of a thumbnail of the original with `sha256`.
pub fn thumbnail_key(sha256: &str, width: u32, height: u32, method: &str, animated: bool) -> String {
    let anim = if animated { "-animated" } else { "" };
    format!("thumbnail/{}/{sha256}/{width}x{height}-{method}{anim}", &sha256[..2.min(sha256.len())])
}

/// Media on the local filesystem under one directory (`media.path`).
#[derive(Debug, Clone)]
pub struct FsBackend {
    root: PathBuf,
}

impl FsBackend {
    /// A store rooted at `root`, creating it (and its `tmp/`) when missing.
    ///
    /// # Errors
    /// When the directory cannot be created.
    pub async fn open(root: impl Into<PathBuf>) -> io::Result<Self> {
        let root = root.into();
        tokio::fs::create_dir_all(root.join("tmp")).await?;
        Ok(Self { root })
    }

    /// Maps a key to a path, refusing anything that could leave the root.
    fn path(&self, key: &str) -> io::Result<PathBuf> {
        let ok = !key.is_empty()
            && key.split('/').all(|seg| {
                !seg.is_empty()
                    && !seg.starts_with('.')
                    && seg.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            });
        if !ok {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("bad media key {key:?}")));
        }
        Ok(self.root.join(key))
    }

    fn temp_path(&self) -> PathBuf {
        temp_path_in(&self.root.join("tmp"))
    }

    async fn move_into_place(&self, tmp: &Path, key: &str) -> io::Result<()> {
        let dest = self.path(key)?;
        if let Some(parent) = dest.parent() {
            tokio::fs::create_dir_all(parent).await?;
        }
        tokio::fs::rename(tmp, &dest).await
    }
}

/// Writes `body` to the new file `tmp`, hashing as it goes, refusing past `max_bytes`. The caller
/// removes `tmp` on failure.
async fn spool(tmp: &Path, mut body: ByteStream, max_bytes: u64) -> Result<Stored, BackendError> {
    {
        let mut file = tokio::fs::File::create(tmp).await.map_err(BackendError::Store)?;
        let mut hasher = Sha256::new();
        let mut size: u64 = 0;
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(BackendError::Body)?;
            size += chunk.len() as u64;
            if size > max_bytes {
                return Err(BackendError::TooLarge(max_bytes));
            }
            hasher.update(&chunk);
            file.write_all(&chunk).await.map_err(BackendError::Store)?;
        }
        file.flush().await.map_err(BackendError::Store)?;
        file.sync_all().await.map_err(BackendError::Store)?;
        let sha256 = hasher.finalize().iter().map(|b| format!("{b:02x}")).collect();
        Ok(Stored { sha256, size_bytes: size })
    }
}

/// A fresh path in `dir` for a spooled upload.
fn temp_path_in(dir: &Path) -> PathBuf {
    dir.join(format!("{:016x}{:016x}", rand::random::<u64>(), rand::random::<u64>()))
}

#[async_trait::async_trait]
impl MediaBackend for FsBackend {
    async fn put(&self, body: ByteStream, max_bytes: u64) -> Result<Stored, BackendError> {
        let tmp = self.temp_path();
        let written = spool(&tmp, body, max_bytes).await;
        let result = match written {
            Ok(stored) => self
                .move_into_place(&tmp, &content_key(&stored.sha256))
                .await
                .map_err(BackendError::Store)
                .map(|()| stored),
            Err(e) => Err(e),
        };
        if result.is_err() {
            let _ = tokio::fs::remove_file(&tmp).await;
        }
        result
    }

    async fn put_named(&self, key: &str, bytes: Bytes) -> Result<(), BackendError> {
        self.path(key).map_err(BackendError::Store)?;
        let tmp = self.temp_path();
        let result = async {
            tokio::fs::write(&tmp, &bytes).await?;
            self.move_into_place(&tmp, key).await
        }
        .await;
        if result.is_err() {
            let _ = tokio::fs::remove_file(&tmp).await;
        }
        result.map_err(BackendError::Store)
    }

    async fn get(&self, key: &str, range: Option<ByteRange>) -> Result<Option<ByteStream>, BackendError> {
        let path = self.path(key).map_err(BackendError::Store)?;
        let mut file = match tokio::fs::File::open(&path).await {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(BackendError::Store(e)),
        };
        let stream: ByteStream = match range {
            None => Box::pin(tokio_util::io::ReaderStream::with_capacity(file, 64 * 1024)),
            Some(r) => {
                file.seek(io::SeekFrom::Start(r.start)).await.map_err(BackendError::Store)?;
                let reader = file.take(r.end - r.start + 1);
                Box::pin(tokio_util::io::ReaderStream::with_capacity(reader, 64 * 1024))
            }
        };
        Ok(Some(stream))
    }

    async fn delete(&self, key: &str) -> Result<(), BackendError> {
        let path = self.path(key).map_err(BackendError::Store)?;
        match tokio::fs::remove_file(&path).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(BackendError::Store(e)),
        }
    }
}

/// Reads a whole (small) object into memory: thumbnailing needs the decoded image anyway.
///
/// # Errors
/// When the store fails.
pub(crate) async fn read_all(backend: &dyn MediaBackend, key: &str) -> Result<Option<Vec<u8>>, BackendError> {
    let Some(stream) = backend.get(key, None).await? else { return Ok(None) };
    let chunks: Vec<Bytes> = stream.try_collect().await.map_err(BackendError::Store)?;
    Ok(Some(chunks.concat()))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A `moto_server` (PyPI `moto[server]`) on a free loopback port, killed on drop: the S3 the
    /// tests run against. `None`, with a note on stderr, when it is not installed.
    pub(crate) struct Moto {
        child: std::process::Child,
        pub(crate) url: String,
    }

    impl Moto {
        pub(crate) async fn start() -> Option<Self> {
            let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).ok()?.port();
            let child = match std::process::Command::new("moto_server")
                .args(["-H", "127.0.0.1", "-p", &port.to_string()])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
            {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("NOTE: skipping the S3 part: moto_server cannot run ({e}); pip install 'moto[server]'");
                    return None;
                }
            };
            let moto = Self { child, url: format!("http://127.0.0.1:{port}") };
            let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
            while reqwest::get(&moto.url).await.is_err() {
                assert!(tokio::time::Instant::now() < deadline, "moto_server did not start");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            Some(moto)
        }

        /// An S3 backend on a fresh bucket of this server.
        pub(crate) async fn backend(&self, spool: &Path) -> S3Backend {
            let cfg = ganglion_config::S3Config {
                endpoint: self.url.clone(),
                bucket: format!("media-{:08x}", rand::random::<u32>()),
                region: "us-east-1".into(),
                access_key_id: "test".into(),
                secret_access_key: "test".into(),
                key_prefix: "ganglion/".into(),
            };
            let b = S3Backend::open(&cfg, spool.to_owned()).await.unwrap();
            assert!(b.check_bucket().await.is_err(), "the bucket does not exist yet");
            b.create_bucket().await.unwrap();
            b.check_bucket().await.unwrap();
            b
        }
    }

    impl Drop for Moto {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    fn body(chunks: &[&'static [u8]]) -> ByteStream {
        let items: Vec<io::Result<Bytes>> = chunks.iter().map(|c| Ok(Bytes::from_static(c))).collect();
        Box::pin(futures::stream::iter(items))
    }

    async fn collect(s: ByteStream) -> Vec<u8> {
        let chunks: Vec<Bytes> = s.try_collect().await.unwrap();
        chunks.concat()
    }

    /// What every backend must do; `spool` is where it writes uploads in progress.
    async fn conformance(b: &dyn MediaBackend, spool: &Path) {
        let stored = b.put(body(&[b"hello ", b"world"]), 100).await.unwrap();
        assert_eq!(stored.size_bytes, 11);
        assert_eq!(stored.sha256, "b94d27b9934d3e08a52e52d7da7dabfac484efe37a5380ee9088f7ace2efcde9");
        let key = content_key(&stored.sha256);
        assert!(key.starts_with("content/b9/4d/b94d27"));
        assert_eq!(collect(b.get(&key, None).await.unwrap().unwrap()).await, b"hello world");
        let part = b.get(&key, Some(ByteRange { start: 6, end: 9 })).await.unwrap().unwrap();
        assert_eq!(collect(part).await, b"worl");
        // The same content again is the same object.
        assert_eq!(b.put(body(&[b"hello world"]), 100).await.unwrap(), stored);

        // Refused and failed bodies store nothing and leave no spool file.
        assert!(matches!(b.put(body(&[b"12345", b"6"]), 5).await, Err(BackendError::TooLarge(5))));
        let failing: ByteStream = Box::pin(futures::stream::iter(vec![
            Ok(Bytes::from_static(b"ab")),
            Err(io::Error::new(io::ErrorKind::ConnectionReset, "gone")),
        ]));
        assert!(matches!(b.put(failing, 100).await, Err(BackendError::Body(_))));
        assert_eq!(std::fs::read_dir(spool).unwrap().count(), 0);

        let tkey = thumbnail_key(&stored.sha256, 32, 32, "crop", false);
        b.put_named(&tkey, Bytes::from_static(b"thumb")).await.unwrap();
        b.put_named(&tkey, Bytes::from_static(b"thumb2")).await.unwrap();
        assert_eq!(collect(b.get(&tkey, None).await.unwrap().unwrap()).await, b"thumb2");

        b.delete(&key).await.unwrap();
        b.delete(&key).await.unwrap();
        assert!(b.get(&key, None).await.unwrap().is_none());
        assert!(b.get("content/00/00/missing", None).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn filesystem_backend_conformance() {
        let dir = tempfile::tempdir().unwrap();
        let fs = FsBackend::open(dir.path()).await.unwrap();
        conformance(&fs, &dir.path().join("tmp")).await;
        assert!(dir.path().join("content/b9/4d").is_dir(), "sharded directories");
    }

    #[tokio::test]
    async fn s3_backend_conformance_against_moto() {
        let Some(moto) = Moto::start().await else { return };
        let dir = tempfile::tempdir().unwrap();
        let s3 = moto.backend(dir.path()).await;
        conformance(&s3, dir.path()).await;
    }

    #[tokio::test]
    async fn s3_refuses_bad_endpoints_and_wrong_buckets() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = |endpoint: &str| ganglion_config::S3Config {
            endpoint: endpoint.into(),
            bucket: "b".into(),
            region: "us-east-1".into(),
            access_key_id: "k".into(),
            secret_access_key: "s".into(),
            key_prefix: String::new(),
        };
        assert!(S3Backend::open(&cfg("ftp://x"), dir.path().to_owned()).await.is_err());
        assert!(S3Backend::open(&cfg("not a url"), dir.path().to_owned()).await.is_err());
        // Nothing listens here.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let b = S3Backend::open(&cfg(&format!("http://127.0.0.1:{port}")), dir.path().to_owned()).await.unwrap();
        assert!(b.check_bucket().await.is_err());
    }

    #[tokio::test]
    async fn keys_cannot_escape_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let fs = FsBackend::open(dir.path()).await.unwrap();
        for bad in ["../x", "a/../../x", "/etc/passwd", "a//b", "", ".hidden"] {
            assert!(fs.get(bad, None).await.is_err(), "{bad}");
            assert!(fs.put_named(bad, Bytes::new()).await.is_err(), "{bad}");
        }
        fs.put_named(&thumbnail_key("abcdef", 32, 32, "crop", false), Bytes::from_static(b"t")).await.unwrap();
        let got = fs.get("thumbnail/ab/abcdef/32x32-crop", None).await.unwrap().unwrap();
        assert_eq!(collect(got).await, b"t");
    }
}

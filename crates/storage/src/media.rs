//! The media repository's metadata: one row per piece of media (local uploads, pending `create`
//! reservations and, later, cached remote media) and one per stored thumbnail. The bytes live in a
//! media backend (filesystem or object store), never in the database.

use ruma::{OwnedServerName, OwnedUserId, ServerName, UserId};
use sqlx::Row;
use sqlx::any::AnyRow;

use crate::{Db, Error, Result, now_ms};

/// A piece of media as recorded in the database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaRecord {
    /// The server the media belongs to (ours for local uploads).
    pub origin: OwnedServerName,
    /// The media ID: the path part of its `mxc://` URI.
    pub media_id: String,
    /// Who uploaded it (local media only).
    pub uploader: Option<OwnedUserId>,
    /// `Content-Type` given at upload.
    pub content_type: Option<String>,
    /// The file name given at upload.
    pub upload_name: Option<String>,
    /// Size in bytes, once uploaded.
    pub size_bytes: Option<u64>,
    /// Lower-case hex SHA-256 of the bytes, once uploaded.
    pub sha256: Option<String>,
    /// When the row was created (ms since the epoch).
    pub created_ts: i64,
    /// When the bytes arrived; `None` while a `create` reservation waits for its upload.
    pub uploaded_ts: Option<i64>,
    /// When an unused `create` reservation lapses.
    pub unused_expires_ts: Option<i64>,
    /// Quarantined media is never served.
    pub quarantined: bool,
    /// Uploaded after the unauthenticated endpoints were frozen: served only by the authenticated
    /// ones.
    pub authenticated_only: bool,
}

impl MediaRecord {
    /// Whether the bytes have been uploaded.
    pub fn is_uploaded(&self) -> bool {
        self.uploaded_ts.is_some()
    }
}

/// What an upload stores about the bytes it received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadedContent {
    /// `Content-Type` given at upload.
    pub content_type: Option<String>,
    /// The file name given at upload.
    pub upload_name: Option<String>,
    /// Size in bytes.
    pub size_bytes: u64,
    /// Lower-case hex SHA-256 of the bytes.
    pub sha256: String,
}

/// How much a user has uploaded, for quotas.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MediaUsage {
    /// Bytes of uploaded media (not counting thumbnails or pending reservations).
    pub bytes: u64,
    /// Number of uploaded files.
    pub count: u64,
}

/// The outcome of [`MediaStore::complete_upload`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompleteUpload {
    /// The reservation now holds the bytes.
    Done,
    /// No such reservation (never created, or expired and removed).
    NotFound,
    /// The reservation belongs to another user.
    NotOwner,
    /// Bytes were already uploaded to this media ID.
    AlreadyUploaded,
    /// The reservation lapsed before the upload finished.
    Expired,
}

/// A stored thumbnail's identity: its media and its requested shape.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ThumbnailKey {
    /// Width in pixels of the size it answers.
    pub width: u32,
    /// Height in pixels of the size it answers.
    pub height: u32,
    /// `scale` or `crop`.
    pub method: String,
    /// Whether it keeps the animation of the original.
    pub animated: bool,
}

/// A stored thumbnail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThumbnailRecord {
    /// Its size and method.
    pub key: ThumbnailKey,
    /// Its `Content-Type`.
    pub content_type: String,
    /// Its size in bytes.
    pub size_bytes: u64,
}

/// Media metadata.
#[derive(Debug, Clone)]
pub struct MediaStore {
    db: Db,
}

const COLUMNS: &str = "origin, media_id, uploader, content_type, upload_name, size_bytes, sha256, created_ts, \
                       uploaded_ts, unused_expires_ts, quarantined, authenticated_only";

fn decode_record(r: &AnyRow) -> Result<MediaRecord> {
    let origin: String = r.try_get(0)?;
    let uploader: Option<String> = r.try_get(2)?;
    let size: Option<i64> = r.try_get(5)?;
    Ok(MediaRecord {
        origin: OwnedServerName::try_from(origin.as_str()).map_err(|e| Error::Decode(format!("media origin: {e}")))?,
        media_id: r.try_get(1)?,
        uploader: uploader
            .map(|u| OwnedUserId::try_from(u.as_str()).map_err(|e| Error::Decode(format!("media uploader: {e}"))))
            .transpose()?,
        content_type: r.try_get(3)?,
        upload_name: r.try_get(4)?,
        size_bytes: size
            .map(|s| u64::try_from(s).map_err(|_| Error::Decode("negative media size".into())))
            .transpose()?,
        sha256: r.try_get(6)?,
        created_ts: r.try_get(7)?,
        uploaded_ts: r.try_get(8)?,
        unused_expires_ts: r.try_get(9)?,
        quarantined: r.try_get::<i64, _>(10)? != 0,
        authenticated_only: r.try_get::<i64, _>(11)? != 0,
    })
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl MediaStore {
    /// A store on `db`.
    pub fn new(db: Db) -> Self {
        Self { db }
    }

    /// Records a completed upload (`POST /upload`).
    ///
    /// # Errors
    /// [`Error::Conflict`] when the media ID exists.
    pub async fn insert_uploaded(
        &self,
        origin: &ServerName,
        media_id: &str,
        uploader: &UserId,
        content: &UploadedContent,
        authenticated_only: bool,
    ) -> Result<()> {
        let now = now_ms();
        let res = sqlx::query(
            "INSERT INTO media (origin, media_id, uploader, content_type, upload_name, size_bytes, sha256,
                 created_ts, uploaded_ts, unused_expires_ts, quarantined, authenticated_only)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8, NULL, 0, $9) ON CONFLICT (origin, media_id) DO NOTHING",
        )
        .bind(origin.as_str())
        .bind(media_id)
        .bind(uploader.as_str())
        .bind(content.content_type.as_deref())
        .bind(content.upload_name.as_deref())
        .bind(to_i64(content.size_bytes))
        .bind(content.sha256.as_str())
        .bind(now)
        .bind(i64::from(authenticated_only))
        .execute(self.db.pool())
        .await?;
        if res.rows_affected() == 0 {
            return Err(Error::Conflict(format!("media {origin}/{media_id} exists")));
        }
        Ok(())
    }

    /// Records another server's media fetched into the local store (no uploader of ours). A second
    /// fetch of the same media keeps the first record.
    ///
    /// # Errors
    /// On database failure.
    pub async fn insert_remote(&self, origin: &ServerName, media_id: &str, content: &UploadedContent) -> Result<()> {
        sqlx::query(
            "INSERT INTO media (origin, media_id, uploader, content_type, upload_name, size_bytes, sha256,
                 created_ts, uploaded_ts, unused_expires_ts, quarantined, authenticated_only)
             VALUES ($1, $2, NULL, $3, $4, $5, $6, $7, $7, NULL, 0, 0) ON CONFLICT (origin, media_id) DO NOTHING",
        )
        .bind(origin.as_str())
        .bind(media_id)
        .bind(content.content_type.as_deref())
        .bind(content.upload_name.as_deref())
        .bind(to_i64(content.size_bytes))
        .bind(content.sha256.as_str())
        .bind(now_ms())
        .execute(self.db.pool())
        .await?;
        Ok(())
    }

    /// Reserves a media ID for a later upload (`POST /create`), lapsing at `expires_ts`.
    ///
    /// # Errors
    /// [`Error::Conflict`] when the media ID exists.
    pub async fn create_pending(
        &self,
        origin: &ServerName,
        media_id: &str,
        uploader: &UserId,
        expires_ts: i64,
        authenticated_only: bool,
    ) -> Result<()> {
        let res = sqlx::query(
            "INSERT INTO media (origin, media_id, uploader, created_ts, unused_expires_ts, quarantined, authenticated_only)
             VALUES ($1, $2, $3, $4, $5, 0, $6) ON CONFLICT (origin, media_id) DO NOTHING",
        )
        .bind(origin.as_str())
        .bind(media_id)
        .bind(uploader.as_str())
        .bind(now_ms())
        .bind(expires_ts)
        .bind(i64::from(authenticated_only))
        .execute(self.db.pool())
        .await?;
        if res.rows_affected() == 0 {
            return Err(Error::Conflict(format!("media {origin}/{media_id} exists")));
        }
        Ok(())
    }

    /// Fills a `create` reservation with its bytes (`PUT /upload/{serverName}/{mediaId}`). Only the
    /// reserving user may, only once, and only before the reservation lapses; the conditional update
    /// makes two racing uploads store exactly one.
    ///
    /// # Errors
    /// On database failure.
    pub async fn complete_upload(
        &self,
        origin: &ServerName,
        media_id: &str,
        uploader: &UserId,
        content: &UploadedContent,
    ) -> Result<CompleteUpload> {
        let now = now_ms();
        let res = sqlx::query(
            "UPDATE media SET content_type = $1, upload_name = $2, size_bytes = $3, sha256 = $4,
                 uploaded_ts = $5, unused_expires_ts = NULL
             WHERE origin = $6 AND media_id = $7 AND uploader = $8 AND uploaded_ts IS NULL
               AND (unused_expires_ts IS NULL OR unused_expires_ts > $5)",
        )
        .bind(content.content_type.as_deref())
        .bind(content.upload_name.as_deref())
        .bind(to_i64(content.size_bytes))
        .bind(content.sha256.as_str())
        .bind(now)
        .bind(origin.as_str())
        .bind(media_id)
        .bind(uploader.as_str())
        .execute(self.db.pool())
        .await?;
        if res.rows_affected() == 1 {
            return Ok(CompleteUpload::Done);
        }
        Ok(match self.get(origin, media_id).await? {
            None => CompleteUpload::NotFound,
            Some(m) if m.uploader.as_deref() != Some(uploader) => CompleteUpload::NotOwner,
            Some(m) if m.is_uploaded() => CompleteUpload::AlreadyUploaded,
            Some(_) => CompleteUpload::Expired,
        })
    }

    /// A piece of media's record.
    ///
    /// # Errors
    /// On database failure or an undecodable row.
    pub async fn get(&self, origin: &ServerName, media_id: &str) -> Result<Option<MediaRecord>> {
        let row = sqlx::query(&format!("SELECT {COLUMNS} FROM media WHERE origin = $1 AND media_id = $2"))
            .bind(origin.as_str())
            .bind(media_id)
            .fetch_optional(self.db.pool())
            .await?;
        row.as_ref().map(decode_record).transpose()
    }

    /// Every piece of media a user uploaded or reserved, oldest first.
    ///
    /// # Errors
    /// On database failure or an undecodable row.
    pub async fn by_uploader(&self, uploader: &UserId) -> Result<Vec<MediaRecord>> {
        let rows =
            sqlx::query(&format!("SELECT {COLUMNS} FROM media WHERE uploader = $1 ORDER BY created_ts, media_id"))
                .bind(uploader.as_str())
                .fetch_all(self.db.pool())
                .await?;
        rows.iter().map(decode_record).collect()
    }

    /// Whether any media record holds the bytes with this SHA-256: identical uploads share them, so
    /// they may be deleted only when this is false.
    ///
    /// # Errors
    /// On database failure.
    pub async fn sha256_in_use(&self, sha256: &str) -> Result<bool> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM media WHERE sha256 = $1")
            .bind(sha256)
            .fetch_one(self.db.pool())
            .await?;
        Ok(n > 0)
    }

    /// How much `user` has uploaded.
    ///
    /// # Errors
    /// On database failure.
    pub async fn usage(&self, user: &UserId) -> Result<MediaUsage> {
        let row = sqlx::query(
            "SELECT CAST(COALESCE(SUM(size_bytes), 0) AS BIGINT), COUNT(*) FROM media
             WHERE uploader = $1 AND uploaded_ts IS NOT NULL",
        )
        .bind(user.as_str())
        .fetch_one(self.db.pool())
        .await?;
        let bytes: i64 = row.try_get(0)?;
        let count: i64 = row.try_get(1)?;
        Ok(MediaUsage { bytes: u64::try_from(bytes).unwrap_or(0), count: u64::try_from(count).unwrap_or(0) })
    }

    /// How many unexpired `create` reservations `user` holds.
    ///
    /// # Errors
    /// On database failure.
    pub async fn pending_count(&self, user: &UserId) -> Result<u64> {
        let n: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM media WHERE uploader = $1 AND uploaded_ts IS NULL AND unused_expires_ts > $2",
        )
        .bind(user.as_str())
        .bind(now_ms())
        .fetch_one(self.db.pool())
        .await?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// Removes reservations that lapsed before `now_ts` without an upload. Returns how many.
    ///
    /// # Errors
    /// On database failure.
    pub async fn delete_expired_pending(&self, now_ts: i64) -> Result<u64> {
        let res = sqlx::query("DELETE FROM media WHERE uploaded_ts IS NULL AND unused_expires_ts <= $1")
            .bind(now_ts)
            .execute(self.db.pool())
            .await?;
        Ok(res.rows_affected())
    }

    /// Sets or clears quarantine. Returns whether the media exists.
    ///
    /// # Errors
    /// On database failure.
    pub async fn set_quarantined(&self, origin: &ServerName, media_id: &str, quarantined: bool) -> Result<bool> {
        let res = sqlx::query("UPDATE media SET quarantined = $1 WHERE origin = $2 AND media_id = $3")
            .bind(i64::from(quarantined))
            .bind(origin.as_str())
            .bind(media_id)
            .execute(self.db.pool())
            .await?;
        Ok(res.rows_affected() > 0)
    }

    /// Sets or clears quarantine on every piece of media `uploader` uploaded. Returns how many rows
    /// changed.
    ///
    /// # Errors
    /// On database failure.
    pub async fn set_quarantined_by_uploader(&self, uploader: &UserId, quarantined: bool) -> Result<u64> {
        let res = sqlx::query("UPDATE media SET quarantined = $1 WHERE uploader = $2 AND quarantined <> $1")
            .bind(i64::from(quarantined))
            .bind(uploader.as_str())
            .execute(self.db.pool())
            .await?;
        Ok(res.rows_affected())
    }

    /// Deletes a piece of media's record and its thumbnails' records. Returns the thumbnails that
    /// were recorded, so the caller can delete their bytes, or `None` when there was no such media.
    ///
    /// # Errors
    /// On database failure.
    pub async fn delete(&self, origin: &ServerName, media_id: &str) -> Result<Option<Vec<ThumbnailRecord>>> {
        let thumbs = self.thumbnails(origin, media_id).await?;
        let mut tx = self.db.begin_write().await?;
        sqlx::query("DELETE FROM media_thumbnails WHERE origin = $1 AND media_id = $2")
            .bind(origin.as_str())
            .bind(media_id)
            .execute(&mut *tx)
            .await?;
        let res = sqlx::query("DELETE FROM media WHERE origin = $1 AND media_id = $2")
            .bind(origin.as_str())
            .bind(media_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok((res.rows_affected() > 0).then_some(thumbs))
    }

    /// Records a stored thumbnail; a second record of the same key replaces the first (two
    /// workers generating the same size at once store the same bytes).
    ///
    /// # Errors
    /// On database failure.
    pub async fn put_thumbnail(&self, origin: &ServerName, media_id: &str, thumb: &ThumbnailRecord) -> Result<()> {
        sqlx::query(
            "INSERT INTO media_thumbnails (origin, media_id, width, height, method, animated, content_type,
                 size_bytes, created_ts)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
             ON CONFLICT (origin, media_id, width, height, method, animated)
             DO UPDATE SET content_type = excluded.content_type, size_bytes = excluded.size_bytes",
        )
        .bind(origin.as_str())
        .bind(media_id)
        .bind(i64::from(thumb.key.width))
        .bind(i64::from(thumb.key.height))
        .bind(thumb.key.method.as_str())
        .bind(i64::from(thumb.key.animated))
        .bind(thumb.content_type.as_str())
        .bind(to_i64(thumb.size_bytes))
        .bind(now_ms())
        .execute(self.db.pool())
        .await?;
        Ok(())
    }

    /// The thumbnails stored for a piece of media, smallest first.
    ///
    /// # Errors
    /// On database failure.
    pub async fn thumbnails(&self, origin: &ServerName, media_id: &str) -> Result<Vec<ThumbnailRecord>> {
        let rows = sqlx::query(
            "SELECT width, height, method, animated, content_type, size_bytes FROM media_thumbnails
             WHERE origin = $1 AND media_id = $2 ORDER BY width, height, method, animated",
        )
        .bind(origin.as_str())
        .bind(media_id)
        .fetch_all(self.db.pool())
        .await?;
        rows.iter()
            .map(|r| {
                let dim = |i: usize| -> Result<u32> {
                    let v: i64 = r.try_get(i)?;
                    u32::try_from(v).map_err(|_| Error::Decode("thumbnail dimension".into()))
                };
                let size: i64 = r.try_get(5)?;
                Ok(ThumbnailRecord {
                    key: ThumbnailKey {
                        width: dim(0)?,
                        height: dim(1)?,
                        method: r.try_get(2)?,
                        animated: r.try_get::<i64, _>(3)? != 0,
                    },
                    content_type: r.try_get(4)?,
                    size_bytes: u64::try_from(size).map_err(|_| Error::Decode("negative thumbnail size".into()))?,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests;

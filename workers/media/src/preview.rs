//! URL previews (`preview_url`): fetch a page for a client and return its OpenGraph data.
//!
//! The server fetches on behalf of clients, so every hop is checked before connecting: only http(s);
//! an IP-literal host, and every address a name resolves to, must be global unicast unless inside
//! `media.url_preview.ip_range_allowlist` (the resolver itself filters, so DNS rebinding between
//! the check and the connection is not possible); redirects are followed by hand, at most
//! `max_redirects`; at most `max_bytes` are read; the whole fetch has `timeout_ms`; no proxy from
//! the environment is used. Results are cached per worker for an hour. `og:image` (relative URLs
//! resolved) is fetched under the same rules and stored as media of the requesting user.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::TryStreamExt as _;
use ganglion_config::UrlPreviewConfig;
use ganglion_egress::AddressPolicy;
use ruma::UserId;
use serde_json::{Map, Value};

use crate::backend::ByteStream;
use crate::repo::{MediaRepo, UploadMeta};

/// How long a preview is reused.
const CACHE_TTL: Duration = Duration::from_secs(3600);
/// Previews kept per worker.
const CACHE_MAX: usize = 1024;
/// Longest text value returned.
const MAX_VALUE_CHARS: usize = 1000;

/// Why a preview failed.
#[derive(Debug, thiserror::Error)]
pub enum PreviewError {
    /// Not an absolute http(s) URL.
    #[error("invalid URL: {0}")]
    InvalidUrl(String),
    /// The URL (or a redirect) leads to an address that is not allowed.
    #[error("URL not allowed: {0}")]
    Blocked(String),
    /// The page could not be fetched.
    #[error("fetch failed: {0}")]
    Fetch(String),
}

/// Fetches and parses previews. Cheap to clone.
#[derive(Clone)]
pub struct Previewer {
    http: reqwest::Client,
    policy: AddressPolicy,
    cfg: UrlPreviewConfig,
    cache: Arc<Mutex<HashMap<String, (Instant, Value)>>>,
}

impl std::fmt::Debug for Previewer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Previewer").field("cfg", &self.cfg).finish_non_exhaustive()
    }
}

impl Previewer {
    /// A previewer for `cfg`.
    ///
    /// # Errors
    /// When an allow-list entry is not a CIDR range, or the HTTP client cannot be built.
    pub fn new(cfg: &UrlPreviewConfig) -> Result<Self, String> {
        let policy = AddressPolicy::new(&cfg.ip_range_allowlist, "media.url_preview.ip_range_allowlist")?;
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .dns_resolver(policy.resolver())
            .connect_timeout(Duration::from_secs(5))
            .user_agent("Ganglion URL preview (Matrix homeserver)")
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Self { http, policy, cfg: cfg.clone(), cache: Arc::new(Mutex::new(HashMap::new())) })
    }

    /// The OpenGraph data of `url`. With `images`, the page's `og:image` (or the URL itself when
    /// it is an image) is fetched the same guarded way, stored as media of the requesting user
    /// (`repo.upload`: size limit and quota apply) and returned as an `mxc://` URI with
    /// `og:image:type` and `matrix:image:size`.
    ///
    /// # Errors
    /// See [`PreviewError`].
    #[tracing::instrument(skip_all)]
    pub async fn preview(&self, url: &str, images: Option<(&MediaRepo, &UserId)>) -> Result<Value, PreviewError> {
        if let Some(hit) = self.cached(url) {
            return Ok(hit);
        }
        let timeout = Duration::from_millis(self.cfg.timeout_ms);
        let value = tokio::time::timeout(timeout, self.fetch(url, images))
            .await
            .map_err(|_| PreviewError::Fetch("timed out".into()))??;
        self.remember(url, &value);
        Ok(value)
    }

    fn cached(&self, url: &str) -> Option<Value> {
        let cache = self.cache.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        cache.get(url).filter(|(at, _)| at.elapsed() < CACHE_TTL).map(|(_, v)| v.clone())
    }

    fn remember(&self, url: &str, value: &Value) {
        let mut cache = self.cache.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if cache.len() >= CACHE_MAX {
            cache.retain(|_, (at, _)| at.elapsed() < CACHE_TTL);
            if cache.len() >= CACHE_MAX {
                cache.clear();
            }
        }
        cache.insert(url.to_owned(), (Instant::now(), value.clone()));
    }

    fn check(&self, url: &reqwest::Url) -> Result<(), PreviewError> {
        if !matches!(url.scheme(), "http" | "https") {
            return Err(PreviewError::InvalidUrl("only http and https URLs can be previewed".into()));
        }
        if url.host().is_none() {
            return Err(PreviewError::InvalidUrl("URL has no host".into()));
        }
        self.policy.check_url(url).map_err(|b| PreviewError::Blocked(b.0))
    }

    /// GETs `url`, following at most `max_redirects` redirects, checking every hop.
    async fn get(&self, mut url: reqwest::Url) -> Result<(reqwest::Response, reqwest::Url), PreviewError> {
        for _ in 0..=self.cfg.max_redirects {
            self.check(&url)?;
            let resp = self.http.get(url.clone()).send().await.map_err(|e| classify(&e))?;
            if resp.status().is_redirection() {
                let location = resp
                    .headers()
                    .get(http::header::LOCATION)
                    .and_then(|l| l.to_str().ok())
                    .ok_or_else(|| PreviewError::Fetch("redirect without a location".into()))?;
                url = url.join(location).map_err(|e| PreviewError::Fetch(format!("bad redirect: {e}")))?;
                continue;
            }
            if !resp.status().is_success() {
                return Err(PreviewError::Fetch(format!("the page answered {}", resp.status())));
            }
            return Ok((resp, url));
        }
        Err(PreviewError::Fetch(format!("more than {} redirects", self.cfg.max_redirects)))
    }

    async fn fetch(&self, raw: &str, images: Option<(&MediaRepo, &UserId)>) -> Result<Value, PreviewError> {
        let url = reqwest::Url::parse(raw).map_err(|e| PreviewError::InvalidUrl(e.to_string()))?;
        let (mut resp, url) = self.get(url).await?;
        let page_type = content_type(&resp);
        if page_type.starts_with("image/") {
            let mut og = Map::new();
            og.insert("og:url".into(), Value::String(url.to_string()));
            if let Some((repo, user)) = images {
                store_image(repo, user, resp, &page_type, &mut og).await;
            }
            return Ok(Value::Object(og));
        }
        if !page_type.contains("html") {
            return Ok(Value::Object(Map::new()));
        }
        // Read at most max_bytes; the head of a page is what matters.
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| classify(&e))? {
            let room = (self.cfg.max_bytes as usize).saturating_sub(body.len());
            body.extend_from_slice(&chunk[..chunk.len().min(room)]);
            if body.len() as u64 >= self.cfg.max_bytes {
                break;
            }
        }
        let (mut og, image) = opengraph(&String::from_utf8_lossy(&body), &url);
        if let (Some(image), Some((repo, user))) = (image, images) {
            match self.get(image).await {
                Ok((resp, _)) => {
                    let ct = content_type(&resp);
                    if ct.starts_with("image/") {
                        store_image(repo, user, resp, &ct, &mut og).await;
                    }
                }
                Err(e) => tracing::debug!(error = %e, "og:image not fetched"),
            }
        }
        Ok(Value::Object(og))
    }
}

fn content_type(resp: &reqwest::Response) -> String {
    resp.headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase()
}

/// Stores a fetched image as media of `user` and points `og:image` at it; on failure (too large,
/// over quota) the preview simply has no image.
async fn store_image(repo: &MediaRepo, user: &UserId, resp: reqwest::Response, ct: &str, og: &mut Map<String, Value>) {
    let meta = UploadMeta { content_type: Some(ct.to_owned()), filename: None, content_length: resp.content_length() };
    let body: ByteStream = Box::pin(resp.bytes_stream().map_err(std::io::Error::other));
    match repo.upload(user, meta, body).await {
        Ok(mxc) => {
            let size = match (mxc.server_name(), mxc.media_id()) {
                (Ok(server), Ok(id)) => repo.store().get(server, id).await.ok().flatten().and_then(|r| r.size_bytes),
                _ => None,
            };
            og.insert("og:image".into(), Value::String(mxc.to_string()));
            og.insert("og:image:type".into(), Value::String(ct.to_owned()));
            if let Some(size) = size {
                og.insert("matrix:image:size".into(), Value::from(size));
            }
        }
        Err(e) => tracing::debug!(error = %e, "preview image not stored"),
    }
}

/// Finds our resolver's refusal in a reqwest error chain.
fn classify(e: &reqwest::Error) -> PreviewError {
    match ganglion_egress::blocked_in(e) {
        Some(b) => PreviewError::Blocked(b.to_string()),
        None => PreviewError::Fetch(e.to_string()),
    }
}

/// Decodes the HTML character references pages use in attribute values and titles.
fn decode_entities(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('&') {
        out.push_str(&rest[..i]);
        rest = &rest[i..];
        let Some(end) = rest[..rest.len().min(12)].find(';') else {
            out.push('&');
            rest = &rest[1..];
            continue;
        };
        let entity = &rest[1..end];
        let decoded = match entity {
            "amp" => Some('&'),
            "lt" => Some('<'),
            "gt" => Some('>'),
            "quot" => Some('"'),
            "apos" => Some('\''),
            "nbsp" => Some('\u{a0}'),
            _ => entity
                .strip_prefix("#x")
                .or_else(|| entity.strip_prefix("#X"))
                .and_then(|h| u32::from_str_radix(h, 16).ok())
                .or_else(|| entity.strip_prefix('#').and_then(|d| d.parse().ok()))
                .and_then(char::from_u32),
        };
        match decoded {
            Some(c) => {
                out.push(c);
                rest = &rest[end + 1..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// The attributes of one tag's inside (`meta property="og:title" content="x"`), names lower-cased.
fn attributes(tag: &str) -> HashMap<String, String> {
    let mut attrs = HashMap::new();
    let b = tag.as_bytes();
    let mut i = 0;
    while i < b.len() {
        while i < b.len() && (b[i].is_ascii_whitespace() || b[i] == b'/') {
            i += 1;
        }
        let start = i;
        while i < b.len() && !b[i].is_ascii_whitespace() && b[i] != b'=' && b[i] != b'/' {
            i += 1;
        }
        let name = tag[start..i].to_ascii_lowercase();
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        let mut value = String::new();
        if i < b.len() && b[i] == b'=' {
            i += 1;
            while i < b.len() && b[i].is_ascii_whitespace() {
                i += 1;
            }
            if i < b.len() && (b[i] == b'"' || b[i] == b'\'') {
                let quote = b[i];
                let vstart = i + 1;
                i = vstart;
                while i < b.len() && b[i] != quote {
                    i += 1;
                }
                value = tag[vstart..i.min(b.len())].to_owned();
                i += 1;
            } else {
                let vstart = i;
                while i < b.len() && !b[i].is_ascii_whitespace() {
                    i += 1;
                }
                value = tag[vstart..i].to_owned();
            }
        }
        if !name.is_empty() {
            attrs.entry(name).or_insert_with(|| decode_entities(&value));
        }
    }
    attrs
}

fn clip(s: &str) -> String {
    let s = s.split_whitespace().collect::<Vec<_>>().join(" ");
    s.chars().take(MAX_VALUE_CHARS).collect()
}

/// OpenGraph properties of an HTML page (`og:*` metas), with the `<title>` and the description
/// meta as fallbacks for `og:title` and `og:description`, and the page's `og:image` as an absolute
/// URL to fetch. `og:image*` is left out of the map: clients expect an `mxc://` URI there.
pub fn opengraph(html: &str, page: &reqwest::Url) -> (Map<String, Value>, Option<reqwest::Url>) {
    let lower = html.to_ascii_lowercase();
    let mut og = Map::new();
    let mut description = None;
    let mut image = None;
    let mut from = 0;
    while let Some(i) = lower[from..].find("<meta") {
        let start = from + i + 5;
        let Some(len) = lower[start..].find('>') else { break };
        let attrs = attributes(&html[start..start + len]);
        from = start + len;
        let key = attrs.get("property").or_else(|| attrs.get("name")).map(|k| k.to_ascii_lowercase());
        let (Some(key), Some(content)) = (key, attrs.get("content")) else { continue };
        if key == "og:image" || key == "og:image:url" || key == "og:image:secure_url" {
            image = image.or_else(|| page.join(content.trim()).ok());
        } else if key == "description" {
            description.get_or_insert_with(|| clip(content));
        } else if key.starts_with("og:") && !key.starts_with("og:image") && !og.contains_key(&key) {
            og.insert(key, Value::String(clip(content)));
        }
    }
    if !og.contains_key("og:title")
        && let Some(i) = lower.find("<title")
        && let Some(open_end) = lower[i..].find('>')
        && let Some(close) = lower[i + open_end..].find("</title")
    {
        let title = &html[i + open_end + 1..i + open_end + close];
        og.insert("og:title".into(), Value::String(clip(&decode_entities(title))));
    }
    if !og.contains_key("og:description")
        && let Some(d) = description
    {
        og.insert("og:description".into(), Value::String(d));
    }
    og.entry("og:url").or_insert_with(|| Value::String(page.to_string()));
    (og, image)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opengraph_with_fallbacks() {
        let page = reqwest::Url::parse("https://example.org/a").unwrap();
        let html = r#"<html><head><title> Fallback &amp; title </title>
            <META property="og:title" content="The &quot;Title&quot;">
            <meta content='Desc &#x2014; here' property=og:description>
            <meta property="og:image" content="https://evil/x.png">
            <meta name="description" content="plain description">
            <meta property="og:type" content="article" /></head>"#;
        let (og, image) = opengraph(html, &page);
        assert_eq!(image.unwrap().as_str(), "https://evil/x.png");
        assert_eq!(og["og:title"], "The \"Title\"");
        assert_eq!(og["og:description"], "Desc \u{2014} here");
        assert_eq!(og["og:type"], "article");
        assert_eq!(og["og:url"], "https://example.org/a");
        assert!(!og.contains_key("og:image"));

        let (bare, image) = opengraph("<title>Only &lt;title&gt;</title><meta name=description content=\"d\">", &page);
        assert!(image.is_none());
        assert_eq!(bare["og:title"], "Only <title>");
        assert_eq!(bare["og:description"], "d");
        assert_eq!(decode_entities("a &bogus; &#65;&"), "a &bogus; A&");
    }
}

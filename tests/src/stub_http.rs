//! Just enough HTTP/1.1 for the recording servers (push gateway, application service): one
//! request at a time on a keep-alive connection, JSON answers.

use anyhow::Result;
use serde_json::Value;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// One request.
pub(crate) struct Request {
    pub(crate) method: String,
    /// The path and query, as sent.
    pub(crate) target: String,
    /// The `Authorization` header, if any.
    pub(crate) authorization: Option<String>,
    pub(crate) body: Vec<u8>,
}

impl Request {
    /// The path, percent-decoded, without the query.
    pub(crate) fn path(&self) -> String {
        unescape(self.target.split('?').next().unwrap_or_default(), b'%')
    }
}

/// The next request on the connection; `None` when the client closed it.
pub(crate) async fn read_request(reader: &mut (impl AsyncBufRead + Unpin)) -> Result<Option<Request>> {
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).await? == 0 {
        return Ok(None);
    }
    let mut length = 0usize;
    let mut authorization = None;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).await?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().unwrap_or(0);
            } else if name.eq_ignore_ascii_case("authorization") {
                authorization = Some(value.trim().to_owned());
            }
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).await?;
    let mut parts = request_line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_owned();
    let target = parts.next().unwrap_or_default().to_owned();
    Ok(Some(Request { method, target, authorization, body }))
}

/// Writes a JSON answer with `status` (e.g. `"200 OK"`).
pub(crate) async fn write_json(write: &mut (impl AsyncWrite + Unpin), status: &str, answer: &Value) -> Result<()> {
    let body = answer.to_string();
    let head = format!("HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n", body.len());
    write.write_all(format!("{head}{body}").as_bytes()).await?;
    Ok(())
}

/// Undoes `{marker}XX` hex escapes (`%` for URLs, `=` for quoted-printable).
pub(crate) fn unescape(s: &str, marker: u8) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == marker
            && i + 2 < bytes.len()
            && let Ok(b) = u8::from_str_radix(&s[i + 1..i + 3], 16)
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

//! A recording SMTP server on a loopback port (plain, no TLS): enough of RFC 5321 for a real
//! client (lettre) to deliver, keeping each message's recipients and decoded text.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// One delivered message.
#[derive(Debug, Clone)]
pub struct Mail {
    /// `RCPT TO` addresses.
    pub to: Vec<String>,
    /// The message as sent, with quoted-printable soft breaks and escapes decoded.
    pub text: String,
}

/// A running server; stops when dropped.
pub struct RecordingSmtp {
    /// Its port on 127.0.0.1.
    pub port: u16,
    mails: Arc<Mutex<Vec<Mail>>>,
    task: JoinHandle<()>,
}

impl Drop for RecordingSmtp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Undoes quoted-printable: soft line breaks and `=XX` escapes.
fn decode_qp(s: &str) -> String {
    crate::stub_http::unescape(&s.replace("=\r\n", "").replace("=\n", ""), b'=')
}

impl RecordingSmtp {
    /// Starts listening.
    ///
    /// # Errors
    /// When no port can be bound.
    pub async fn start() -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let mails = Arc::new(Mutex::new(Vec::new()));
        let task = {
            let mails = mails.clone();
            tokio::spawn(async move {
                while let Ok((stream, _)) = listener.accept().await {
                    let mails = mails.clone();
                    tokio::spawn(async move {
                        let _ = session(stream, mails).await;
                    });
                }
            })
        };
        Ok(Self { port, mails, task })
    }

    /// Every message delivered so far.
    pub fn mails(&self) -> Vec<Mail> {
        self.mails.lock().unwrap().clone()
    }

    /// Waits until `n` messages have arrived, up to `limit`.
    ///
    /// # Errors
    /// When they do not.
    pub async fn wait_for(&self, n: usize, limit: Duration) -> Result<Vec<Mail>> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let got = self.mails();
            if got.len() >= n {
                return Ok(got);
            }
            if tokio::time::Instant::now() >= deadline {
                anyhow::bail!("expected {n} emails, got {}: {got:#?}", got.len());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn session(stream: tokio::net::TcpStream, mails: Arc<Mutex<Vec<Mail>>>) -> Result<()> {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    write.write_all(b"220 localhost ESMTP test\r\n").await?;
    let mut to = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let upper = line.to_ascii_uppercase();
        if upper.starts_with("EHLO") || upper.starts_with("HELO") {
            write.write_all(b"250-localhost\r\n250 8BITMIME\r\n").await?;
        } else if upper.starts_with("MAIL FROM") {
            to.clear();
            write.write_all(b"250 OK\r\n").await?;
        } else if upper.starts_with("RCPT TO") {
            let addr = line.split_once(':').map_or("", |(_, a)| a).trim().trim_start_matches('<');
            to.push(addr.split('>').next().unwrap_or_default().to_owned());
            write.write_all(b"250 OK\r\n").await?;
        } else if upper.starts_with("DATA") {
            write.write_all(b"354 go ahead\r\n").await?;
            let mut data = String::new();
            loop {
                let mut l = String::new();
                if reader.read_line(&mut l).await? == 0 {
                    return Ok(());
                }
                if l == ".\r\n" || l == ".\n" {
                    break;
                }
                data.push_str(l.strip_prefix('.').unwrap_or(&l));
            }
            mails.lock().unwrap().push(Mail { to: to.clone(), text: decode_qp(&data) });
            write.write_all(b"250 OK queued\r\n").await?;
        } else if upper.starts_with("QUIT") {
            write.write_all(b"221 bye\r\n").await?;
            return Ok(());
        } else {
            write.write_all(b"250 OK\r\n").await?;
        }
    }
}

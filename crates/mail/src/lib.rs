//! Outgoing email over SMTP, for the two things Ganglion mails: the link that validates an
//! address added to an account (`main`), and notification emails (the `pusher` role).
//!
//! Depends on: `ganglion-config` (the `email` section). Never on storage or a worker.

use std::path::Path;
use std::time::Duration;

use ganglion_config::{EmailConfig, SmtpSecurity};
use lettre::message::{Mailbox, MultiPart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

/// Why mail could not be sent.
#[derive(Debug, thiserror::Error)]
pub enum MailError {
    /// The configuration cannot work (a bad `From`, an unusable host).
    #[error("email config: {0}")]
    Config(String),
    /// An address is not one.
    #[error("invalid address {0:?}")]
    Address(String),
    /// The SMTP server refused or could not be reached.
    #[error("smtp: {0}")]
    Smtp(String),
}

/// The notification templates: plain text and HTML, with `{name}` placeholders.
#[derive(Debug, Clone)]
struct Templates {
    text: String,
    html: String,
}

const BUILTIN_TEXT: &str = "Hello,\n\n{summary}\n\n{messages}\nOpen {app_name}: {link}\n\n\
You are receiving this email because {user_id} has email notifications turned on. To stop them,\n\
turn email notifications off in your client's settings.\n";

const BUILTIN_HTML: &str = "<!DOCTYPE html>\n<html><body style=\"font-family: sans-serif\">\n\
<p>Hello,</p>\n<p>{summary}</p>\n{messages}\n<p><a href=\"{link}\">Open {app_name}</a></p>\n\
<p style=\"color: #666; font-size: small\">You are receiving this email because {user_id} has email \
notifications turned on. To stop them, turn email notifications off in your client's settings.</p>\n\
</body></html>\n";

/// What a notification email says.
#[derive(Debug, Clone, Default)]
pub struct Notification {
    /// Whose notifications these are.
    pub user_id: String,
    /// One line: "You have 3 unread messages in 2 rooms." and the like.
    pub summary: String,
    /// Per room: the room's name and its messages as `(sender, body)`.
    pub rooms: Vec<(String, Vec<(String, String)>)>,
    /// Where the email's link goes.
    pub link: String,
}

/// Escapes text for HTML.
#[must_use]
pub fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Replaces each `{name}` of `vars` in `template`, one pass, so a value never expands again.
fn fill(template: &str, vars: &[(&str, &str)]) -> String {
    let mut out = String::with_capacity(template.len() + 256);
    let mut rest = template;
    while let Some(start) = rest.find('{') {
        out.push_str(&rest[..start]);
        let after = &rest[start + 1..];
        match after.find('}').map(|end| (&after[..end], end)) {
            Some((name, end)) if vars.iter().any(|(n, _)| *n == name) => {
                out.push_str(vars.iter().find(|(n, _)| *n == name).map_or("", |(_, v)| v));
                rest = &after[end + 1..];
            }
            _ => {
                out.push('{');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// Sends mail through the configured SMTP server. Cheap to clone.
#[derive(Clone)]
pub struct Mailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    app_name: String,
    client_base_url: String,
    templates: Templates,
}

impl std::fmt::Debug for Mailer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mailer").field("from", &self.from.to_string()).finish_non_exhaustive()
    }
}

impl Mailer {
    /// A mailer for the `email` section. Connects only when sending.
    ///
    /// # Errors
    /// When `notif_from` is not an address, the host is unusable, or a template cannot be read.
    pub fn new(cfg: &EmailConfig) -> Result<Self, MailError> {
        let from: Mailbox =
            cfg.notif_from.parse().map_err(|_| MailError::Config(format!("notif_from {:?}", cfg.notif_from)))?;
        let builder = match cfg.security {
            SmtpSecurity::Tls => AsyncSmtpTransport::<Tokio1Executor>::relay(&cfg.smtp_host),
            SmtpSecurity::Starttls => AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(&cfg.smtp_host),
            SmtpSecurity::None => Ok(AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&cfg.smtp_host)),
        }
        .map_err(|e| MailError::Config(format!("smtp_host {:?}: {e}", cfg.smtp_host)))?;
        let mut builder = builder.port(cfg.smtp_port).timeout(Some(Duration::from_secs(30)));
        if let (Some(user), Some(pass)) = (&cfg.smtp_user, &cfg.smtp_pass) {
            builder = builder.credentials(Credentials::new(user.clone(), pass.clone()));
        }
        let templates = match &cfg.templates_dir {
            Some(dir) => Templates { text: read(dir, "notif_mail.txt")?, html: read(dir, "notif_mail.html")? },
            None => Templates { text: BUILTIN_TEXT.to_owned(), html: BUILTIN_HTML.to_owned() },
        };
        Ok(Self {
            transport: builder.build(),
            from,
            app_name: cfg.app_name.clone(),
            client_base_url: cfg.client_base_url.clone(),
            templates,
        })
    }

    /// The service's name in emails.
    #[must_use]
    pub fn app_name(&self) -> &str {
        &self.app_name
    }

    /// Where notification links point, for `room_id`.
    #[must_use]
    pub fn room_link(&self, room_id: &str) -> String {
        format!("{}{room_id}", self.client_base_url)
    }

    /// Sends one message with a plain-text and an HTML part.
    ///
    /// # Errors
    /// When `to` is not an address or the SMTP server refuses.
    pub async fn send(&self, to: &str, subject: &str, text: String, html: String) -> Result<(), MailError> {
        let to: Mailbox = to.parse().map_err(|_| MailError::Address(to.to_owned()))?;
        let message = Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(subject)
            .multipart(MultiPart::alternative_plain_html(text, html))
            .map_err(|e| MailError::Smtp(e.to_string()))?;
        self.transport.send(message).await.map_err(|e| MailError::Smtp(e.to_string()))?;
        Ok(())
    }

    /// The address validation email: its subject, text and HTML.
    #[must_use]
    pub fn validation(&self, link: &str) -> (String, String, String) {
        let subject = format!("[{}] Validate your email", self.app_name);
        let text = format!(
            "Hello,\n\nFollow this link to add this address to your {} account:\n\n{link}\n\n\
             If you did not ask for this, ignore this email.\n",
            self.app_name
        );
        let html = format!(
            "<!DOCTYPE html>\n<html><body style=\"font-family: sans-serif\"><p>Hello,</p>\
             <p><a href=\"{}\">Follow this link</a> to add this address to your {} account.</p>\
             <p>If you did not ask for this, ignore this email.</p></body></html>\n",
            escape_html(link),
            escape_html(&self.app_name)
        );
        (subject, text, html)
    }

    /// A notification email's text and HTML, from the templates.
    #[must_use]
    pub fn notification(&self, n: &Notification) -> (String, String) {
        let mut text_messages = String::new();
        let mut html_messages = String::new();
        for (room, messages) in &n.rooms {
            text_messages.push_str(&format!("{room}\n"));
            html_messages.push_str(&format!("<h3>{}</h3>\n<ul>\n", escape_html(room)));
            for (sender, body) in messages {
                text_messages.push_str(&format!("  {sender}: {body}\n"));
                html_messages.push_str(&format!("<li><b>{}</b>: {}</li>\n", escape_html(sender), escape_html(body)));
            }
            text_messages.push('\n');
            html_messages.push_str("</ul>\n");
        }
        let text = fill(
            &self.templates.text,
            &[
                ("app_name", &self.app_name),
                ("user_id", &n.user_id),
                ("summary", &n.summary),
                ("messages", &text_messages),
                ("link", &n.link),
            ],
        );
        let html = fill(
            &self.templates.html,
            &[
                ("app_name", &escape_html(&self.app_name)),
                ("user_id", &escape_html(&n.user_id)),
                ("summary", &escape_html(&n.summary)),
                ("messages", &html_messages),
                ("link", &escape_html(&n.link)),
            ],
        );
        (text, html)
    }
}

fn read(dir: &Path, name: &str) -> Result<String, MailError> {
    std::fs::read_to_string(dir.join(name)).map_err(|e| MailError::Config(format!("{}: {e}", dir.join(name).display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mailer() -> Mailer {
        let cfg = EmailConfig {
            notif_from: "Chat <noreply@example.org>".into(),
            security: SmtpSecurity::None,
            app_name: "Chat & Co".into(),
            ..EmailConfig::default()
        };
        Mailer::new(&cfg).unwrap()
    }

    #[test]
    fn templates_fill_once_and_escape_html() {
        assert_eq!(fill("{a} {b} {c} {", &[("a", "{b}"), ("b", "2")]), "{b} 2 {c} {");
        let n = Notification {
            user_id: "@alice:example.org".into(),
            summary: "You have 2 unread messages.".into(),
            rooms: vec![("Room <1>".into(), vec![("Bob".into(), "hi & <b>bye</b>".into())])],
            link: "https://matrix.to/#/!r:x".into(),
        };
        let (text, html) = mailer().notification(&n);
        assert!(text.contains("Bob: hi & <b>bye</b>") && text.contains("Open Chat & Co: https://matrix.to/#/!r:x"));
        assert!(html.contains("<b>Bob</b>: hi &amp; &lt;b&gt;bye&lt;/b&gt;") && html.contains("Room &lt;1&gt;"));
        assert!(html.contains("Open Chat &amp; Co"));
    }

    #[test]
    fn a_bad_from_is_a_config_error() {
        let cfg = EmailConfig { notif_from: "not an address".into(), ..EmailConfig::default() };
        assert!(matches!(Mailer::new(&cfg), Err(MailError::Config(_))));
    }
}

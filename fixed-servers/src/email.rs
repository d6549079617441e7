//! The `email` server: sends mail through SMTP from named accounts, only to allowed recipients,
//! at most a set number of messages per run (one server process lives for one run), with
//! attachments read from the run's workspace only.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use lettre::message::header::ContentType;
use lettre::message::{Attachment, Mailbox, MultiPart, SinglePart};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use rmcp::model::{CallToolResult, JsonObject};
use schemars::JsonSchema;
use serde::Deserialize;

use crate::catalog::{FixedServer, EMAIL};
use crate::serve::{arguments, failure, schema, success, Quota, Tools};

const DEFAULT_MAX_PER_RUN: u32 = 10;
const MAX_ATTACHMENT_BYTES: u64 = 10 * 1024 * 1024;
const MAX_ATTACHMENTS_BYTES: u64 = 20 * 1024 * 1024;
const SMTP_TIMEOUT: Duration = Duration::from_secs(30);

/// The server's settings, as read from its environment.
#[derive(Debug, PartialEq)]
pub struct Settings {
    /// Account name → (SMTP URL, sender).
    pub accounts: BTreeMap<String, (String, String)>,
    /// Addresses (lowercase) or `*@domain`.
    pub allowed: Vec<String>,
    pub max_per_run: u32,
}

#[derive(Deserialize)]
struct AccountSetting {
    smtp_url: String,
    from: String,
}

impl Settings {
    /// Reads the settings through `var`; an error names the variable and what to write.
    pub fn read(var: impl Fn(&str) -> Option<String>) -> Result<Self, String> {
        let accounts = match var("EMAIL_ACCOUNTS") {
            Some(json) => serde_json::from_str::<BTreeMap<String, AccountSetting>>(&json)
                .map_err(|err| {
                    format!(
                        "EMAIL_ACCOUNTS is not a JSON object of accounts \
                         ({{\"name\": {{\"smtp_url\": …, \"from\": …}}}}): {err}"
                    )
                })?
                .into_iter()
                .map(|(name, account)| (name, (account.smtp_url, account.from)))
                .collect(),
            None => match (var("EMAIL_SMTP_URL"), var("EMAIL_FROM")) {
                (Some(url), Some(from)) => BTreeMap::from([("default".to_owned(), (url, from))]),
                _ => {
                    return Err("no account: set EMAIL_SMTP_URL and EMAIL_FROM, or \
                                EMAIL_ACCOUNTS"
                        .to_owned())
                }
            },
        };
        if accounts.is_empty() {
            return Err("EMAIL_ACCOUNTS names no account".to_owned());
        }
        let allowed: Vec<String> = var("EMAIL_ALLOWED_RECIPIENTS")
            .unwrap_or_default()
            .split(',')
            .map(|entry| entry.trim().to_ascii_lowercase())
            .filter(|entry| !entry.is_empty())
            .collect();
        if allowed.is_empty() {
            return Err(
                "EMAIL_ALLOWED_RECIPIENTS is empty: list who may receive mail \
                        (addresses or `*@domain`, comma-separated)"
                    .to_owned(),
            );
        }
        let max_per_run = match var("EMAIL_MAX_PER_RUN") {
            None => DEFAULT_MAX_PER_RUN,
            Some(text) => text
                .trim()
                .parse()
                .map_err(|_| format!("EMAIL_MAX_PER_RUN must be a whole number, not `{text}`"))?,
        };
        Ok(Self {
            accounts,
            allowed,
            max_per_run,
        })
    }

    /// Whether `address` may receive mail.
    pub fn allows(&self, address: &str) -> bool {
        let address = address.to_ascii_lowercase();
        let domain = address.rsplit_once('@').map(|(_, domain)| domain);
        self.allowed
            .iter()
            .any(|entry| match entry.strip_prefix("*@") {
                Some(allowed_domain) => domain == Some(allowed_domain),
                None => *entry == address,
            })
    }
}

struct Account {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
}

pub struct Email {
    settings: Settings,
    accounts: BTreeMap<String, Account>,
    quota: Quota,
    workspace: PathBuf,
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct SendEmail {
    /// Recipients, e.g. `["ana@example.com", "Bo <bo@example.com>"]`.
    to: Vec<String>,
    /// Copy recipients.
    #[serde(default)]
    cc: Vec<String>,
    subject: String,
    /// The plain-text body.
    #[serde(default)]
    text: Option<String>,
    /// An HTML body (sent beside `text` when both are given).
    #[serde(default)]
    html: Option<String>,
    /// Files to attach, as paths inside the workspace (e.g. `reports/summary.pdf`).
    #[serde(default)]
    attachments: Vec<String>,
    /// The account to send from; the only one when there is one.
    #[serde(default)]
    account: Option<String>,
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct NoArguments {}

impl Email {
    pub fn new(settings: Settings, workspace: PathBuf) -> Result<Self, String> {
        let mut accounts = BTreeMap::new();
        for (name, (url, from)) in &settings.accounts {
            let transport = AsyncSmtpTransport::<Tokio1Executor>::from_url(url)
                // The URL may hold a password: the error names the account, never the URL.
                .map_err(|err| format!("account `{name}`: the SMTP URL is not valid: {err}"))?
                .timeout(Some(SMTP_TIMEOUT))
                .build();
            let from: Mailbox = from.parse().map_err(|err| {
                format!("account `{name}`: the sender `{from}` is not a mailbox: {err}")
            })?;
            accounts.insert(name.clone(), Account { transport, from });
        }
        Ok(Self {
            quota: Quota::new(settings.max_per_run),
            settings,
            accounts,
            workspace,
        })
    }

    /// The server as its settings (see [`crate::serve::settings`]) describe it.
    pub fn from_settings() -> Result<Self, String> {
        let settings = Settings::read(crate::serve::settings()?)?;
        let workspace = std::env::current_dir()
            .map_err(|err| format!("cannot tell the workspace (current directory): {err}"))?;
        Self::new(settings, workspace)
    }

    fn account(&self, name: Option<&str>) -> Result<&Account, String> {
        let names = || self.accounts.keys().cloned().collect::<Vec<_>>().join(", ");
        match name {
            Some(name) => self
                .accounts
                .get(name)
                .ok_or_else(|| format!("no account `{name}`; the accounts are: {}", names())),
            None if self.accounts.len() == 1 => Ok(self.accounts.values().next().unwrap()),
            None => Err(format!(
                "several accounts: name one in `account` ({})",
                names()
            )),
        }
    }

    fn recipients(&self, field: &str, list: &[String]) -> Result<Vec<Mailbox>, String> {
        list.iter()
            .map(|text| {
                let mailbox: Mailbox = text
                    .parse()
                    .map_err(|err| format!("`{field}`: `{text}` is not an address: {err}"))?;
                if !self.settings.allows(mailbox.email.as_ref()) {
                    return Err(format!(
                        "`{field}`: {} may not receive mail from this job (allowed: {})",
                        mailbox.email,
                        self.settings.allowed.join(", ")
                    ));
                }
                Ok(mailbox)
            })
            .collect()
    }

    /// Reads an attachment, which must lie inside the workspace.
    fn attachment(&self, path: &str, total: &mut u64) -> Result<SinglePart, String> {
        let workspace = self
            .workspace
            .canonicalize()
            .map_err(|err| format!("the workspace cannot be read: {err}"))?;
        let file = workspace
            .join(path)
            .canonicalize()
            .map_err(|err| format!("attachment `{path}`: {err}"))?;
        if !file.starts_with(&workspace) {
            return Err(format!(
                "attachment `{path}` is outside the workspace; only the workspace's files can \
                 be attached"
            ));
        }
        let size = std::fs::metadata(&file)
            .map_err(|err| format!("attachment `{path}`: {err}"))?
            .len();
        *total += size;
        if size > MAX_ATTACHMENT_BYTES || *total > MAX_ATTACHMENTS_BYTES {
            return Err(format!(
                "attachment `{path}` is too large ({size} bytes; at most {MAX_ATTACHMENT_BYTES} \
                 a file, {MAX_ATTACHMENTS_BYTES} in all)"
            ));
        }
        let bytes = std::fs::read(&file).map_err(|err| format!("attachment `{path}`: {err}"))?;
        let name = file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "attachment".to_owned());
        Ok(Attachment::new(name).body(bytes, content_type(&file)))
    }

    fn message(&self, request: &SendEmail, account: &Account) -> Result<Message, String> {
        if request.subject.trim().is_empty() {
            return Err("`subject` must not be empty".to_owned());
        }
        if request.to.is_empty() {
            return Err("`to` must name at least one recipient".to_owned());
        }
        let mut builder = Message::builder()
            .from(account.from.clone())
            .subject(request.subject.clone());
        for mailbox in self.recipients("to", &request.to)? {
            builder = builder.to(mailbox);
        }
        for mailbox in self.recipients("cc", &request.cc)? {
            builder = builder.cc(mailbox);
        }
        let body = match (&request.text, &request.html) {
            (Some(text), Some(html)) => {
                MultiPart::alternative_plain_html(text.clone(), html.clone())
            }
            (Some(text), None) => MultiPart::mixed().singlepart(SinglePart::plain(text.clone())),
            (None, Some(html)) => MultiPart::mixed().singlepart(SinglePart::html(html.clone())),
            (None, None) => return Err("give `text`, `html` or both".to_owned()),
        };
        let mut total = 0;
        let mut parts = MultiPart::mixed().multipart(body);
        for path in &request.attachments {
            parts = parts.singlepart(self.attachment(path, &mut total)?);
        }
        builder
            .multipart(parts)
            .map_err(|err| format!("the message cannot be built: {err}"))
    }

    async fn send(&self, request: SendEmail) -> Result<String, String> {
        let account = self.account(request.account.as_deref())?;
        let message = self.message(&request, account)?;
        let max = self.quota.max;
        let Some(number) = self.quota.take() else {
            return Err(format!(
                "this run has sent its {max} messages (EMAIL_MAX_PER_RUN); nothing was sent"
            ));
        };
        match account.transport.send(message).await {
            Ok(response) => Ok(format!(
                "Sent \"{}\" to {} ({}; message {number} of {max} this run).",
                request.subject,
                request.to.join(", "),
                response.message().collect::<Vec<_>>().join(" ").trim()
            )),
            Err(err) => {
                self.quota.give_back();
                Err(format!("the SMTP server did not take the message: {err}"))
            }
        }
    }

    fn accounts_text(&self) -> String {
        let accounts: Vec<String> = self
            .accounts
            .iter()
            .map(|(name, account)| format!("{name}: {}", account.from))
            .collect();
        let left = self.quota.left();
        format!(
            "Accounts: {}. Allowed recipients: {}. Messages this run may still send: {left}.",
            accounts.join("; "),
            self.settings.allowed.join(", ")
        )
    }
}

fn content_type(path: &Path) -> ContentType {
    let extension = path
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    let mime = match extension.as_str() {
        "txt" | "md" | "log" => "text/plain; charset=utf-8",
        "csv" => "text/csv; charset=utf-8",
        "html" | "htm" => "text/html; charset=utf-8",
        "json" => "application/json",
        "pdf" => "application/pdf",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "zip" => "application/zip",
        _ => "application/octet-stream",
    };
    ContentType::parse(mime).unwrap_or(ContentType::TEXT_PLAIN)
}

impl Tools for Arc<Email> {
    fn server(&self) -> &'static FixedServer {
        &EMAIL
    }

    fn input_schema(&self, tool: &str) -> Arc<JsonObject> {
        match tool {
            "send_email" => schema::<SendEmail>(),
            _ => schema::<NoArguments>(),
        }
    }

    async fn call(&self, tool: &str, args: JsonObject) -> CallToolResult {
        match tool {
            "send_email" => {
                let request: SendEmail = match arguments(args) {
                    Ok(request) => request,
                    Err(result) => return result,
                };
                match self.send(request).await {
                    Ok(text) => success(text),
                    Err(text) => failure(text),
                }
            }
            _ => success(self.accounts_text()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::serve::vars;

    fn settings() -> Settings {
        Settings::read(vars(&[
            ("EMAIL_SMTP_URL", "smtp://127.0.0.1:2525"),
            ("EMAIL_FROM", "Bot <bot@example.com>"),
            (
                "EMAIL_ALLOWED_RECIPIENTS",
                "ana@example.com, *@team.example",
            ),
            ("EMAIL_MAX_PER_RUN", "1"),
        ]))
        .unwrap()
    }

    #[test]
    fn settings_are_read_and_each_mistake_names_its_variable() {
        let settings = settings();
        assert_eq!(settings.max_per_run, 1);
        assert!(settings.allows("Ana@Example.com"));
        assert!(settings.allows("bo@team.example"));
        assert!(!settings.allows("bo@evil.example"));
        assert!(!settings.allows("ana@example.com.evil"));
        let error = Settings::read(vars(&[("EMAIL_SMTP_URL", "smtp://x")])).unwrap_err();
        assert!(error.contains("EMAIL_FROM"), "{error}");
        let error = Settings::read(vars(&[
            ("EMAIL_SMTP_URL", "smtp://x"),
            ("EMAIL_FROM", "a@b.c"),
        ]))
        .unwrap_err();
        assert!(error.contains("EMAIL_ALLOWED_RECIPIENTS"), "{error}");
        let error = Settings::read(vars(&[
            ("EMAIL_ACCOUNTS", "[1]"),
            ("EMAIL_ALLOWED_RECIPIENTS", "a@b.c"),
        ]))
        .unwrap_err();
        assert!(error.contains("EMAIL_ACCOUNTS"), "{error}");
    }

    #[tokio::test]
    async fn recipients_outside_the_list_and_files_outside_the_workspace_are_refused() {
        let workspace = tempfile::tempdir().unwrap();
        std::fs::write(workspace.path().join("report.md"), "# Report").unwrap();
        let outside = tempfile::NamedTempFile::new().unwrap();
        let email = Email::new(settings(), workspace.path().to_path_buf()).unwrap();
        let request = |to: &str, attachments: Vec<String>| SendEmail {
            to: vec![to.to_owned()],
            cc: vec![],
            subject: "Weekly".into(),
            text: Some("Hello".into()),
            html: None,
            attachments,
            account: None,
        };
        let account = email.account(None).unwrap();
        let error = email
            .message(&request("eve@evil.example", vec![]), account)
            .unwrap_err();
        assert!(
            error.contains("eve@evil.example may not receive"),
            "{error}"
        );
        let error = email
            .message(
                &request(
                    "ana@example.com",
                    vec![outside.path().display().to_string()],
                ),
                account,
            )
            .unwrap_err();
        assert!(error.contains("outside the workspace"), "{error}");
        let error = email
            .message(&request("ana@example.com", vec!["../x".into()]), account)
            .unwrap_err();
        assert!(error.contains("attachment `../x`"), "{error}");
        let message = email
            .message(
                &request("ana@example.com", vec!["report.md".into()]),
                account,
            )
            .unwrap();
        let text = String::from_utf8(message.formatted()).unwrap();
        assert!(text.contains("filename=\"report.md\""), "{text}");
        assert!(email
            .account(Some("other"))
            .err()
            .unwrap()
            .contains("default"));
    }

    #[test]
    fn a_bad_smtp_url_is_named_by_its_account_without_the_url() {
        let mut settings = settings();
        settings.accounts.insert(
            "team".into(),
            ("smtp://user:hunter2@[bad".into(), "a@b.c".into()),
        );
        let error = Email::new(settings, PathBuf::from(".")).err().unwrap();
        assert!(error.contains("account `team`"), "{error}");
        assert!(!error.contains("hunter2"), "{error}");
    }
}

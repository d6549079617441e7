//! The `web` server: `fetch_url` reads a web page as markdown (plain text and JSON as they are),
//! a page of text at a time; `web_search` asks the search provider the job configures, if any.
//!
//! What a run may reach is the point of the design: a fetch goes only to public addresses unless
//! the job allows private ones (a run must not read the cloud's metadata service or the services
//! beside it), and only to the listed hosts when there is a list. Every redirect hop is checked
//! again, and each connection goes to the addresses just checked (the client is given them; it
//! never asks DNS itself), so a host that resolves to a public address once and a private one
//! next cannot slip past. The client uses no proxy, for the same reason.
//!
//! - `address`: which addresses and hosts may be reached.
//! - `document`: reading a body by its content type and charset; pages.
//! - `html`: HTML to markdown, bounded against hostile pages.
//! - `search`: the search provider.

pub(crate) mod address;
pub(crate) mod document;
mod html;
mod search;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::header::{HeaderValue, ACCEPT, CONTENT_TYPE, LOCATION};
use reqwest::Url;
use rmcp::model::{CallToolResult, JsonObject};
use schemars::JsonSchema;
use serde::Deserialize;

use crate::catalog::{FixedServer, WEB};
use crate::serve::{arguments, failure, schema, success, Tools};
pub use address::{non_public_kind, Policy};
use document::{Document, Form};
use search::{Provider, ProviderSettings};

/// How much one fetch may take: all of its redirects, and the body.
#[derive(Clone, Debug)]
pub struct Limits {
    /// For the whole fetch, redirects and DNS included.
    pub timeout: Duration,
    /// Most of a body read; a longer one is cut (and the reader told).
    pub max_body_bytes: usize,
    /// Characters on one page of a document.
    pub page_chars: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(20),
            max_body_bytes: 5 * 1024 * 1024,
            page_chars: 20_000,
        }
    }
}

/// Redirects followed before a fetch gives up.
const MAX_REDIRECTS: usize = 5;
/// Documents kept so that later pages come from the copy the first page did.
const KEPT_DOCUMENTS: usize = 4;

/// The server's settings, as read from its environment.
#[derive(Debug, PartialEq)]
pub struct Settings {
    pub allow_private: bool,
    /// Host names or `*.domain`; `None`: any host.
    pub allowed_hosts: Option<Vec<String>>,
    pub user_agent: String,
    pub search: Option<ProviderSettings>,
}

impl Settings {
    /// Reads the settings through `var`; an error names the variable and what to write.
    pub fn read(var: impl Fn(&str) -> Option<String>) -> Result<Self, String> {
        let allow_private = crate::serve::flag(&var, "WEB_ALLOW_PRIVATE")?;
        let allowed_hosts = match var("WEB_ALLOWED_HOSTS") {
            None => None,
            Some(list) => {
                let hosts = list
                    .split(',')
                    .map(address::normal_host)
                    .filter(|host| !host.is_empty())
                    .map(|host| match is_host_pattern(&host) {
                        true => Ok(host),
                        false => Err(format!(
                            "WEB_ALLOWED_HOSTS: `{host}` is not a host name or `*.domain`; write \
                             hosts without scheme, port or path, e.g. `example.com, *.example.org`"
                        )),
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                Some(hosts).filter(|hosts| !hosts.is_empty())
            }
        };
        let user_agent = match var("WEB_USER_AGENT").filter(|agent| !agent.trim().is_empty()) {
            None => format!("autopilot-web/{}", env!("CARGO_PKG_VERSION")),
            Some(agent) => {
                HeaderValue::from_str(agent.trim()).map_err(|_| {
                    "WEB_USER_AGENT is not a valid header value (one line of visible text)"
                        .to_owned()
                })?;
                agent.trim().to_owned()
            }
        };
        Ok(Self {
            allow_private,
            allowed_hosts,
            user_agent,
            search: ProviderSettings::read(&var)?,
        })
    }
}

/// A host name, an IP address or `*.` and a domain (lowercase, as `normal_host` writes it).
fn is_host_pattern(entry: &str) -> bool {
    let name = entry.strip_prefix("*.").unwrap_or(entry);
    !name.is_empty()
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | ':' | '_'))
}

pub struct Web {
    policy: Policy,
    user_agent: HeaderValue,
    limits: Limits,
    search: Option<Provider>,
    /// The documents fetched last, by the URL asked for, the newest last.
    kept: Mutex<VecDeque<(String, Arc<Document>)>>,
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct FetchUrl {
    /// The http or https URL to read, e.g. `https://example.com/docs`.
    url: String,
    /// The page of the text to return, from 1 (default); later pages reuse page 1's copy.
    #[serde(default)]
    #[schemars(range(min = 1))]
    page: Option<usize>,
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct WebSearch {
    /// What to search for.
    query: String,
    /// How many results to return: 1 to 10 (default 5).
    #[serde(default)]
    #[schemars(range(min = 1, max = search::MAX_COUNT))]
    count: Option<u8>,
}

impl Web {
    pub fn new(settings: Settings, limits: Limits) -> Result<Self, String> {
        let user_agent = HeaderValue::from_str(&settings.user_agent)
            .map_err(|_| "WEB_USER_AGENT is not a valid header value".to_owned())?;
        let search = settings
            .search
            .map(|provider| Provider::new(provider, limits.timeout))
            .transpose()?;
        Ok(Self {
            policy: Policy {
                allow_private: settings.allow_private,
                allowed_hosts: settings.allowed_hosts,
                classify: non_public_kind,
            },
            user_agent,
            limits,
            search,
            kept: Mutex::new(VecDeque::new()),
        })
    }

    /// The server as its settings (see [`crate::serve::settings`]) describe it.
    pub fn from_settings() -> Result<Self, String> {
        Self::new(
            Settings::read(crate::serve::settings()?)?,
            Limits::default(),
        )
    }

    async fn fetch_url(&self, request: FetchUrl) -> Result<String, String> {
        let url = Url::parse(request.url.trim()).map_err(|err| {
            format!(
                "`url` must be a full http(s) URL, e.g. https://example.com/page, not `{}` \
                 ({err})",
                request.url
            )
        })?;
        check_scheme(&url)?;
        let page = request.page.unwrap_or(1);
        let kept = if page > 1 { self.kept(&url) } else { None };
        let document = match kept {
            Some(document) => document,
            None => {
                let document = Arc::new(self.fetch(url.clone()).await?);
                self.keep(&url, document.clone());
                document
            }
        };
        document.page(page)
    }

    fn kept(&self, url: &Url) -> Option<Arc<Document>> {
        let kept = self
            .kept
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        kept.iter()
            .find(|(kept_url, _)| kept_url == url.as_str())
            .map(|(_, document)| document.clone())
    }

    fn keep(&self, url: &Url, document: Arc<Document>) {
        let mut kept = self
            .kept
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        kept.retain(|(kept_url, _)| kept_url != url.as_str());
        kept.push_back((url.to_string(), document));
        while kept.len() > KEPT_DOCUMENTS {
            kept.pop_front();
        }
    }

    /// Fetches `url` and makes it a document: the network part within the time limit, then the
    /// conversion (bounded on its own, see `html`).
    async fn fetch(&self, url: Url) -> Result<Document, String> {
        let seconds = self.limits.timeout.as_secs_f32();
        let (downloaded, form) = tokio::time::timeout(self.limits.timeout, self.download(&url))
            .await
            .map_err(|_| format!("{url} did not answer within {seconds} s"))??;
        let Downloaded {
            url: final_url,
            content_type,
            body,
            cut,
        } = downloaded;
        let mut notes = Vec::new();
        if cut {
            notes.push(format!(
                "only the first {} of the page were read",
                size(self.limits.max_body_bytes)
            ));
        }
        let form = match form {
            Some(form) => form,
            None => document::form_of(None, &body).map_err(|err| format!("{final_url}: {err}"))?,
        };
        let text = document::decode(&body, content_type.as_deref(), form);
        drop(body);
        let (title, text) = match form {
            Form::Text => (None, text),
            Form::Html => {
                let converted = html::to_markdown(text, final_url.clone()).await?;
                notes.extend(converted.notes);
                (converted.title, converted.markdown)
            }
        };
        Ok(Document::new(
            title,
            final_url.to_string(),
            text,
            notes,
            self.limits.page_chars,
        ))
    }

    /// Follows `url` through its redirects, each hop's addresses checked, to a successful
    /// answer; reads its body. The form is known here unless the answer has no content type.
    async fn download(&self, url: &Url) -> Result<(Downloaded, Option<Form>), String> {
        let mut current = url.clone();
        for _hop in 0..=MAX_REDIRECTS {
            check_scheme(&current)?;
            let addresses = self.policy.addresses(&current).await.map_err(|err| {
                if current == *url {
                    err
                } else {
                    format!("{err} ({url} redirected there)")
                }
            })?;
            let response = self
                .client_for(&current, &addresses)?
                .get(current.clone())
                .header(
                    ACCEPT,
                    "text/html,application/xhtml+xml,text/plain;q=0.9,application/json;q=0.9,\
                     */*;q=0.1",
                )
                .send()
                .await
                .map_err(|err| {
                    format!(
                        "cannot fetch {current}: {}",
                        error_chain(&err.without_url())
                    )
                })?;
            let status = response.status();
            if status.is_redirection() {
                if let Some(location) = response.headers().get(LOCATION) {
                    current = location
                        .to_str()
                        .ok()
                        .and_then(|location| current.join(location).ok())
                        .ok_or_else(|| {
                            format!("{current} redirected to a location that is not a URL")
                        })?;
                    continue;
                }
            }
            if !status.is_success() {
                return Err(format!("{current} answered HTTP {status}"));
            }
            let content_type = response
                .headers()
                .get(CONTENT_TYPE)
                .and_then(|value| value.to_str().ok())
                .map(str::to_owned);
            // Known from the header alone, before a body that will not be read is downloaded.
            let form = match &content_type {
                Some(value) => Some(
                    document::form_of(Some(value), &[])
                        .map_err(|err| format!("{current}: {err}"))?,
                ),
                None => None,
            };
            let (body, cut) = read_body(response, self.limits.max_body_bytes)
                .await
                .map_err(|err| format!("reading {current} failed: {err}"))?;
            let downloaded = Downloaded {
                url: current,
                content_type,
                body,
                cut,
            };
            return Ok((downloaded, form));
        }
        Err(format!(
            "{url} redirected more than {MAX_REDIRECTS} times (the last to {current}); it was \
             not followed further"
        ))
    }

    /// A client that connects to `addresses` for `url`'s host and nowhere else (see
    /// [`address::pinned_client`]). One per hop, as each hop has its own.
    fn client_for(&self, url: &Url, addresses: &[SocketAddr]) -> Result<reqwest::Client, String> {
        address::pinned_client(url, addresses)
            .user_agent(self.user_agent.clone())
            .build()
            .map_err(|err| format!("cannot make the HTTP client: {err}"))
    }

    async fn web_search(&self, request: WebSearch) -> Result<String, String> {
        let Some(provider) = &self.search else {
            return Err(
                "web_search is not available: no search provider is configured. The \
                        job's `web` server needs the setting WEB_SEARCH_URL (with \
                        WEB_SEARCH_HEADERS for the provider's key) to search; fetch_url works \
                        without it."
                    .to_owned(),
            );
        };
        let query = request.query.trim();
        if query.is_empty() {
            return Err("`query` must not be empty".to_owned());
        }
        let count = request.count.unwrap_or(search::DEFAULT_COUNT);
        if !(1..=search::MAX_COUNT).contains(&count) {
            return Err(format!(
                "`count` must be 1 to {}, not {count}",
                search::MAX_COUNT
            ));
        }
        let hits = provider.search(query, count).await?;
        Ok(search::list(query, &hits))
    }
}

/// A successful answer's body.
struct Downloaded {
    /// After redirects.
    url: Url,
    content_type: Option<String>,
    body: Vec<u8>,
    /// Whether the body was longer than the limit (and so cut).
    cut: bool,
}

fn check_scheme(url: &Url) -> Result<(), String> {
    match url.scheme() {
        "http" | "https" => Ok(()),
        other => Err(format!(
            "{url}: only http and https URLs can be fetched, not `{other}:`"
        )),
    }
}

/// A size in its largest unit, rounded down (the limits are round numbers), e.g. `5 MiB`.
fn size(bytes: usize) -> String {
    const KIB: usize = 1024;
    const MIB: usize = 1024 * KIB;
    match bytes {
        MIB.. => format!("{} MiB", bytes / MIB),
        KIB.. => format!("{} KiB", bytes / KIB),
        _ => format!("{bytes} bytes"),
    }
}

/// Reads at most `max` bytes of a response's body; true with them when there was more.
pub(crate) async fn read_body(
    mut response: reqwest::Response,
    max: usize,
) -> Result<(Vec<u8>, bool), String> {
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|err| error_chain(&err.without_url()))?
    {
        let room = max - body.len();
        if chunk.len() > room {
            body.extend_from_slice(&chunk[..room]);
            return Ok((body, true));
        }
        body.extend_from_slice(&chunk);
    }
    Ok((body, false))
}

/// An error and its causes, which for a connection hold the useful part (refused, timed out,
/// certificate not valid, …).
pub(crate) fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

impl Tools for Arc<Web> {
    fn server(&self) -> &'static FixedServer {
        &WEB
    }

    fn input_schema(&self, tool: &str) -> Arc<JsonObject> {
        match tool {
            "web_search" => schema::<WebSearch>(),
            _ => schema::<FetchUrl>(),
        }
    }

    async fn call(&self, tool: &str, args: JsonObject) -> CallToolResult {
        let result = match tool {
            "web_search" => match arguments(args) {
                Ok(request) => self.web_search(request).await,
                Err(result) => return result,
            },
            _ => match arguments(args) {
                Ok(request) => self.fetch_url(request).await,
                Err(result) => return result,
            },
        };
        match result {
            Ok(text) => success(text),
            Err(text) => failure(text),
        }
    }
}

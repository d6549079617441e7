//! The `http` server: REST calls to the hosts a job configures, each host's credentials (its
//! headers) added by the server. The model names a host, a method the host allows and a path
//! under its base URL; it never sees the credentials, which are redacted (with their base64 and
//! URL-encoded forms, and the token after `Bearer` or `Basic`) from whatever comes back, so a
//! host that echoes a request's headers does not leak them.
//!
//! A host's base URL is not a secret by design (`list_hosts` shows it): credentials go in
//! headers, and a base URL holding a user, a password or a query is refused. Its host is
//! resolved and checked as `web` does at each call (private and loopback addresses refused
//! unless allowed), and the connection goes to exactly the addresses checked. Redirects are
//! reported, never followed: following one would carry the credentials elsewhere.
//!
//! - `target`: the method, the URL a path makes under the base URL, the headers a call may set.
//! - `answer`: the answer as the model reads it.

mod answer;
mod target;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use reqwest::header::HeaderMap;
use reqwest::{Method, Url};
use rmcp::model::{CallToolResult, JsonObject};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value;

use crate::catalog::{FixedServer, HTTP};
use crate::outbound::{
    bad_entry_name, credential_parts, header_map, is_entry_name, json_entries, pinned_client,
    reachable_addresses, Entry, Unreachable,
};
use crate::redact::Redactor;
use crate::serve::{arguments, failure, flag, schema, success, whole_number, Quota, Tools};
use crate::web::address::normal_host;
use crate::web::{error_chain, read_body};
use answer::Answer;
pub use target::METHODS;

const DEFAULT_MAX_RESPONSE_BYTES: u64 = 1024 * 1024;
const DEFAULT_MAX_CALLS_PER_RUN: u64 = 100;
/// For one call: DNS, connection, the whole answer.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// One host. Its header values are its credentials: `Debug` leaves them out.
pub struct Host {
    /// https (or http when private addresses are allowed), without credentials, query or
    /// fragment.
    pub base_url: Url,
    pub headers: BTreeMap<String, String>,
    pub methods: Vec<Method>,
}

impl fmt::Debug for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Host")
            .field("base_url", &self.base_url.as_str())
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .field("methods", &self.methods)
            .finish()
    }
}

/// The server's settings, as read from its settings file or environment.
#[derive(Debug)]
pub struct Settings {
    pub hosts: BTreeMap<String, Host>,
    pub allow_private: bool,
    pub max_response_bytes: usize,
    pub max_calls_per_run: u32,
}

impl Settings {
    /// Reads the settings through `var`; an error names the variable (and a host, a field or a
    /// header by its name), never a value.
    pub fn read(var: impl Fn(&str) -> Option<String>) -> Result<Self, String> {
        let allow_private = flag(&var, "HTTP_ALLOW_PRIVATE")?;
        let entries = json_entries(&var, "HTTP_HOSTS")?.ok_or_else(|| {
            "HTTP_HOSTS is required: the hosts as JSON, e.g. {\"github\": {\"base_url\": \
             \"https://api.github.com\", \"headers\": {\"Authorization\": \"Bearer \
             ${GITHUB_TOKEN}\"}, \"allow_methods\": [\"GET\"]}}"
                .to_owned()
        })?;
        if entries.is_empty() {
            return Err("HTTP_HOSTS names no host".to_owned());
        }
        let mut hosts = BTreeMap::new();
        for (name, value) in &entries {
            if !is_entry_name(name) {
                return Err(bad_entry_name("HTTP_HOSTS", "host"));
            }
            let entry = Entry::new(format!("HTTP_HOSTS: host `{name}`"), value)?;
            hosts.insert(name.clone(), host(&entry, allow_private)?);
        }
        let max_response_bytes = whole_number(
            &var,
            "HTTP_MAX_RESPONSE_BYTES",
            DEFAULT_MAX_RESPONSE_BYTES,
            1,
        )?;
        let max_calls_per_run =
            whole_number(&var, "HTTP_MAX_CALLS_PER_RUN", DEFAULT_MAX_CALLS_PER_RUN, 0)?;
        Ok(Self {
            hosts,
            allow_private,
            max_response_bytes: usize::try_from(max_response_bytes).unwrap_or(usize::MAX),
            max_calls_per_run: u32::try_from(max_calls_per_run).unwrap_or(u32::MAX),
        })
    }
}

fn host(entry: &Entry, allow_private: bool) -> Result<Host, String> {
    let label = &entry.label;
    entry.only(&["base_url", "headers", "allow_methods"])?;
    // The URL is not shown in these errors: one that is wrong may be wrong by holding a secret.
    let base_url = Url::parse(entry.required_string("base_url")?.trim())
        .map_err(|err| format!("{label}: `base_url` is not a URL ({err})"))?;
    match base_url.scheme() {
        "https" => {}
        "http" if allow_private => {}
        "http" => {
            return Err(format!(
                "{label}: `base_url` must be https (the credentials would cross the network in \
                 the clear); plain http is allowed only when HTTP_ALLOW_PRIVATE is true, for a \
                 host on a private network"
            ))
        }
        _ => return Err(format!("{label}: `base_url` must be an https URL")),
    }
    if base_url.host_str().is_none_or(str::is_empty) {
        return Err(format!("{label}: `base_url` has no host"));
    }
    if !base_url.username().is_empty() || base_url.password().is_some() {
        return Err(format!(
            "{label}: `base_url` must not hold credentials (`user:password@`), as it is shown \
             to the model: put them in `headers`, e.g. {{\"Authorization\": \"Basic …\"}}"
        ));
    }
    if base_url.query().is_some() || base_url.fragment().is_some() {
        return Err(format!(
            "{label}: `base_url` must not have a query or a fragment, as it is shown to the \
             model: put a key in `headers`"
        ));
    }
    let methods = match entry.fields.get("allow_methods") {
        None | Some(Value::Null) => vec![Method::GET],
        Some(Value::Array(items)) if !items.is_empty() => {
            let mut methods = Vec::new();
            for item in items {
                let method = item.as_str().and_then(target::method).ok_or_else(|| {
                    format!(
                        "{label}: `allow_methods` holds something other than {}",
                        METHODS.join(", ")
                    )
                })?;
                if !methods.contains(&method) {
                    methods.push(method);
                }
            }
            methods
        }
        Some(_) => {
            return Err(format!(
                "{label}: `allow_methods` must be a list of methods, e.g. [\"GET\", \"POST\"]"
            ))
        }
    };
    Ok(Host {
        base_url,
        headers: entry.headers()?,
        methods,
    })
}

pub struct Http {
    settings: Settings,
    quota: Quota,
    /// Every host's header values, and their parts.
    redactor: Redactor,
    timeout: Duration,
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct HttpRequest {
    /// The host's name, as list_hosts gives it.
    host: String,
    /// GET, HEAD, POST, PUT, PATCH, DELETE or OPTIONS: one the host allows (see list_hosts).
    method: String,
    /// The path from the host's base URL, starting with `/`, e.g. `/repos/octocat/hello/issues`;
    /// a query string may follow `?`. No `..` segments, no full URLs.
    path: String,
    /// Query parameters, added to the path's, e.g. {"state": "open", "per_page": 50}.
    #[serde(default)]
    query: Option<BTreeMap<String, QueryValue>>,
    /// A JSON body, sent as `application/json` (not with GET or HEAD).
    #[serde(default)]
    body: Option<Value>,
    /// Extra request headers, e.g. {"Accept": "application/vnd.github+json"}. Credentials are
    /// added by the server: Authorization, Cookie, Proxy-*, Host and the host's configured
    /// headers cannot be set.
    #[serde(default)]
    headers: Option<BTreeMap<String, String>>,
}

/// A query value: a string, a number or a boolean.
#[derive(Deserialize, JsonSchema)]
#[serde(untagged)]
enum QueryValue {
    Text(String),
    Number(serde_json::Number),
    Flag(bool),
}

impl QueryValue {
    fn into_text(self) -> String {
        match self {
            QueryValue::Text(text) => text,
            QueryValue::Number(number) => number.to_string(),
            QueryValue::Flag(flag) => flag.to_string(),
        }
    }
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct NoArguments {}

/// A call checked and ready to send.
struct Call<'a> {
    name: &'a str,
    host: &'a Host,
    method: Method,
    url: Url,
    /// The call's own and the host's configured headers.
    headers: HeaderMap,
    body: Option<Value>,
}

/// How a call ended: the answer, as text, and whether it is an error (HTTP 4xx and 5xx).
struct Called {
    text: String,
    is_error: bool,
}

impl Http {
    pub fn new(settings: Settings) -> Self {
        let mut secrets = BTreeMap::new();
        for (name, host) in &settings.hosts {
            for (header, value) in &host.headers {
                secrets.insert(format!("{name} {header}"), value.clone());
                for (number, part) in credential_parts(value).into_iter().enumerate() {
                    secrets.insert(format!("{name} {header} part {}", number + 1), part);
                }
            }
        }
        Self {
            quota: Quota::new(settings.max_calls_per_run),
            redactor: Redactor::new(&secrets),
            settings,
            timeout: CALL_TIMEOUT,
        }
    }

    /// The server as its settings (see [`crate::serve::settings`]) describe it.
    pub fn from_settings() -> Result<Self, String> {
        Ok(Self::new(Settings::read(crate::serve::settings()?)?))
    }

    async fn request(&self, request: HttpRequest) -> Result<Called, String> {
        let call = self.prepare(request)?;
        let name = call.name;
        match tokio::time::timeout(self.timeout, self.send(call)).await {
            Ok(result) => result.map_err(|err| self.redactor.text(&err).into_owned()),
            Err(_) => Err(format!(
                "host `{name}` did not answer within {} s; a call that changes something may or \
                 may not have taken effect",
                self.timeout.as_secs_f32()
            )),
        }
    }

    /// The call `request` asks for, checked: its host, method, URL and headers.
    fn prepare(&self, request: HttpRequest) -> Result<Call<'_>, String> {
        let Some((name, host)) = self.settings.hosts.get_key_value(request.host.trim()) else {
            let names: Vec<&str> = self.settings.hosts.keys().map(String::as_str).collect();
            return Err(format!(
                "no host `{}`; the hosts are: {}",
                request.host.trim(),
                names.join(", ")
            ));
        };
        let allowed: Vec<&str> = host.methods.iter().map(Method::as_str).collect();
        let method = target::method(&request.method)
            .filter(|method| host.methods.contains(method))
            .ok_or_else(|| {
                format!(
                    "host `{name}` allows only {}, not `{}` (the job's HTTP_HOSTS setting \
                     decides)",
                    allowed.join(", "),
                    request.method
                )
            })?;
        if request.body.is_some() && matches!(method, Method::GET | Method::HEAD) {
            return Err(format!(
                "a {method} request takes no `body`; give parameters in `query`"
            ));
        }
        let query: Vec<(String, String)> = request
            .query
            .unwrap_or_default()
            .into_iter()
            .map(|(key, value)| (key, value.into_text()))
            .collect();
        let url = target::join(&host.base_url, &request.path, &query)?;
        let mut headers =
            target::request_headers(&host.headers, &request.headers.unwrap_or_default())?;
        // After the call's own: the configured headers are the host's credentials.
        headers.extend(header_map(&host.headers));
        Ok(Call {
            name,
            host,
            method,
            url,
            headers,
            body: request.body,
        })
    }

    /// Sends `call` to the addresses its host may be reached at, and reads the answer.
    async fn send(&self, call: Call<'_>) -> Result<Called, String> {
        let Call {
            name,
            host,
            method,
            url,
            headers,
            body,
        } = call;
        let addresses = reachable_addresses(&url, self.settings.allow_private)
            .await
            .map_err(|why| unreachable(name, &url, why))?;
        let client = pinned_client(&url, &addresses)
            .user_agent(concat!("autopilot-http/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|err| format!("cannot make the HTTP client: {err}"))?;
        // Counted once sent, whatever the answer: a call that fails halfway may still have
        // changed something.
        if self.quota.take().is_none() {
            return Err(format!(
                "this run has made its {} calls (HTTP_MAX_CALLS_PER_RUN); nothing was sent",
                self.quota.max
            ));
        }
        let mut request = client.request(method.clone(), url.clone()).headers(headers);
        if let Some(body) = &body {
            request = request.json(body);
        }
        let response = request.send().await.map_err(|err| {
            format!(
                "host `{name}` cannot be reached: {}",
                error_chain(&err.without_url())
            )
        })?;
        let status = response.status();
        let response_headers = response.headers().clone();
        let max_bytes = self.settings.max_response_bytes;
        let (body, cut) = read_body(response, max_bytes)
            .await
            .map_err(|err| format!("reading the answer of host `{name}` failed: {err}"))?;
        let answer = Answer {
            status,
            headers: &response_headers,
            body: &body,
            cut,
            max_bytes,
        };
        Ok(Called {
            text: answer::render(
                &answer,
                method.as_str(),
                &url,
                &host.base_url,
                &self.redactor,
            ),
            is_error: status.is_client_error() || status.is_server_error(),
        })
    }

    fn hosts_text(&self) -> String {
        let mut out =
            "Hosts (call them with http_request and a path from the base URL):\n".to_owned();
        for (name, host) in &self.settings.hosts {
            let methods: Vec<&str> = host.methods.iter().map(Method::as_str).collect();
            out.push_str(&format!(
                "- {name}: {} ({})\n",
                host.base_url.as_str().trim_end_matches('/'),
                methods.join(", ")
            ));
        }
        out.push_str(&format!(
            "Calls this run may still make: {} of {}.",
            self.quota.left(),
            self.quota.max
        ));
        out
    }
}

/// Why host `name` (its base URL's host, not a secret) was not called.
fn unreachable(name: &str, url: &Url, why: Unreachable) -> String {
    let host = normal_host(url.host_str().unwrap_or_default());
    match why {
        Unreachable::Unresolved(reason) => {
            format!("host `{name}`: {host} cannot be resolved ({reason})")
        }
        Unreachable::NotPublic { ip, kind } => {
            let address = match host == ip.to_string() {
                true => format!("{host} is"),
                false => format!("{host} is {ip},"),
            };
            format!(
                "host `{name}`: {address} a {kind} address; http_request reaches only public \
                 addresses unless the job's HTTP_ALLOW_PRIVATE setting is true"
            )
        }
    }
}

impl Tools for Arc<Http> {
    fn server(&self) -> &'static FixedServer {
        &HTTP
    }

    fn input_schema(&self, tool: &str) -> Arc<JsonObject> {
        match tool {
            "http_request" => schema::<HttpRequest>(),
            _ => schema::<NoArguments>(),
        }
    }

    async fn call(&self, tool: &str, args: JsonObject) -> CallToolResult {
        match tool {
            "http_request" => {
                let request: HttpRequest = match arguments(args) {
                    Ok(request) => request,
                    Err(result) => return result,
                };
                match self.request(request).await {
                    Ok(Called {
                        text,
                        is_error: false,
                    }) => success(text),
                    Ok(Called { text, .. }) | Err(text) => failure(text),
                }
            }
            _ => success(self.hosts_text()),
        }
    }
}

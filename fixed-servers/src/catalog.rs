//! What each fixed server is, its settings and its tools: the one description the servers
//! answer `tools/list` from and the control plane registers them with.

/// The program that runs the fixed servers, named by its subcommand.
pub const PROGRAM: &str = "autopilot-servers";

/// Names the variable through which a fixed server, or the guard, finds its settings file.
pub const SETTINGS_FILE_VAR: &str = "AUTOPILOT_SETTINGS_FILE";

/// The program every other stdio server of a run is started under (see `guard`).
pub const GUARD_PROGRAM: &str = "autopilot-mcp-guard";

/// Variables of the guard's own environment a server it starts also gets, beside its own
/// settings: none of them is a secret (the CLI's environment, which holds the model proxy's
/// token, is not passed on).
pub const GUARD_PASSES_ON: [&str; 9] = [
    "PATH",
    "HOME",
    "LANG",
    "LC_ALL",
    "TZ",
    "TMPDIR",
    "PYTHONPATH",
    "PYTHONDONTWRITEBYTECODE",
    "NODE_PATH",
];

/// One tool of a fixed server.
#[derive(Debug)]
pub struct FixedTool {
    pub name: &'static str,
    pub description: &'static str,
    /// Only reads (MCP `readOnlyHint`).
    pub read_only: bool,
}

/// One environment variable a fixed server reads.
#[derive(Debug)]
pub struct Setting {
    pub name: &'static str,
    pub description: &'static str,
    pub required: bool,
}

#[derive(Debug)]
pub struct FixedServer {
    /// Its subcommand, and the name it is registered under by default.
    pub name: &'static str,
    pub description: &'static str,
    pub settings: &'static [Setting],
    pub tools: &'static [FixedTool],
}

pub const EMAIL: FixedServer = FixedServer {
    name: "email",
    description: "Sends email through SMTP, only to allowed recipients, a bounded number of \
                  messages per run.",
    settings: &[
        Setting {
            name: "EMAIL_SMTP_URL",
            description: "the SMTP server, e.g. `smtps://bot%40example.com:${SMTP_PASSWORD}@smtp.example.com` \
                          or `smtp://smtp.example.com:587?tls=required` (one account, named `default`)",
            required: false,
        },
        Setting {
            name: "EMAIL_FROM",
            description: "the sender of the `default` account, e.g. `Autopilot <bot@example.com>`",
            required: false,
        },
        Setting {
            name: "EMAIL_ACCOUNTS",
            description: "instead of the two above, named accounts as JSON: \
                          {\"team\": {\"smtp_url\": \"…\", \"from\": \"…\"}}",
            required: false,
        },
        Setting {
            name: "EMAIL_ALLOWED_RECIPIENTS",
            description: "who may receive mail, comma-separated: addresses or `*@domain`",
            required: true,
        },
        Setting {
            name: "EMAIL_MAX_PER_RUN",
            description: "most messages one run may send (default 10)",
            required: false,
        },
    ],
    tools: &[
        FixedTool {
            name: "send_email",
            description: "Sends an email (text and/or HTML, with attachments from the \
                          workspace) to allowed recipients. Each call counts against the run's \
                          quota.",
            read_only: false,
        },
        FixedTool {
            name: "list_email_accounts",
            description: "Lists the accounts mail can be sent from, who may receive it, and how \
                          many messages this run may still send.",
            read_only: true,
        },
    ],
};

pub const WEB: FixedServer = FixedServer {
    name: "web",
    description: "Fetches web pages as readable markdown, a page of text at a time, and searches \
                  the web when a search provider is configured. Private and loopback addresses \
                  are refused unless allowed.",
    settings: &[
        Setting {
            name: "WEB_ALLOW_PRIVATE",
            description: "`true` lets fetch_url reach private, loopback, link-local and other \
                          non-public addresses (default `false`)",
            required: false,
        },
        Setting {
            name: "WEB_ALLOWED_HOSTS",
            description: "if set, the only hosts fetch_url may reach, comma-separated: names or \
                          `*.domain` (its subdomains)",
            required: false,
        },
        Setting {
            name: "WEB_USER_AGENT",
            description: "the User-Agent header of fetches (default `autopilot-web/<version>`)",
            required: false,
        },
        Setting {
            name: "WEB_SEARCH_URL",
            description: "enables web_search: a URL answering JSON, with `{query}` (and \
                          optionally `{count}`) filled in, e.g. \
                          `https://api.search.brave.com/res/v1/web/search?q={query}&count={count}`",
            required: false,
        },
        Setting {
            name: "WEB_SEARCH_HEADERS",
            description: "headers of search requests as a JSON object, e.g. \
                          {\"X-Subscription-Token\": \"${BRAVE_API_KEY}\"}",
            required: false,
        },
    ],
    tools: &[
        FixedTool {
            name: "fetch_url",
            description: "Fetches an http(s) URL and returns its title, final URL and text as \
                          markdown (HTML converted; plain text and JSON as they are), one page \
                          of about 20,000 characters at a time: pass `page` for the next.",
            read_only: true,
        },
        FixedTool {
            name: "web_search",
            description: "Searches the web through the configured provider and returns a \
                          numbered list of results (title, URL, snippet).",
            read_only: true,
        },
    ],
};

pub const NOTIFY: FixedServer = FixedServer {
    name: "notify",
    description: "Posts messages to named Slack, Discord, Teams or webhook channels, a bounded \
                  number per run. The channels' URLs and headers are secrets and never shown.",
    settings: &[
        Setting {
            name: "NOTIFY_CHANNELS",
            description: "the channels as JSON, each with `kind` (slack, discord, teams or \
                          webhook), `url` and optional `headers`, e.g. {\"team\": {\"kind\": \
                          \"slack\", \"url\": \"${SLACK_WEBHOOK_URL}\"}, \"ci\": {\"kind\": \
                          \"webhook\", \"url\": \"https://ci.example/hook\", \"headers\": \
                          {\"Authorization\": \"Bearer ${CI_TOKEN}\"}}}",
            required: true,
        },
        Setting {
            name: "NOTIFY_MAX_PER_RUN",
            description: "most notifications one run may send (default 20)",
            required: false,
        },
        Setting {
            name: "NOTIFY_ALLOW_PRIVATE",
            description: "`true` lets channels reach private, loopback and link-local addresses, \
                          and use plain http (default `false`: https to public addresses only)",
            required: false,
        },
    ],
    tools: &[
        FixedTool {
            name: "send_notification",
            description: "Posts a message (`text`, optional `title`) to one of the configured \
                          channels, by name. Each call counts against the run's quota; a \
                          Discord message is at most 2,000 characters.",
            read_only: false,
        },
        FixedTool {
            name: "list_channels",
            description: "Lists the channels notifications can be sent to (names and kinds) and \
                          how many this run may still send.",
            read_only: true,
        },
    ],
};

pub const HTTP: FixedServer = FixedServer {
    name: "http",
    description: "Calls the REST APIs of configured hosts, with each host's credentials added by \
                  the server and never shown. Private and loopback addresses are refused unless \
                  allowed.",
    settings: &[
        Setting {
            name: "HTTP_HOSTS",
            description: "the hosts as JSON, each with `base_url`, optional `headers` (the \
                          credentials: the base URL holds none) and `allow_methods` (default \
                          [\"GET\"]), e.g. {\"github\": {\"base_url\": \
                          \"https://api.github.com\", \"headers\": {\"Authorization\": \
                          \"Bearer ${GITHUB_TOKEN}\"}, \"allow_methods\": [\"GET\", \"POST\"]}}",
            required: true,
        },
        Setting {
            name: "HTTP_ALLOW_PRIVATE",
            description: "`true` lets hosts be private, loopback and link-local addresses, and \
                          use plain http (default `false`: https to public addresses only)",
            required: false,
        },
        Setting {
            name: "HTTP_MAX_RESPONSE_BYTES",
            description: "most bytes of an answer's body read; a longer one is cut (default \
                          1048576, 1 MiB)",
            required: false,
        },
        Setting {
            name: "HTTP_MAX_CALLS_PER_RUN",
            description: "most requests one run may make (default 100)",
            required: false,
        },
    ],
    tools: &[
        FixedTool {
            name: "http_request",
            description: "Calls a configured host: `host` (its name), `method`, `path` from the \
                          host's base URL, optional `query`, JSON `body` and `headers`; the \
                          host's credentials are added. Returns the status, useful headers and \
                          the body (JSON pretty-printed). Redirects are reported, not followed. \
                          A host allowed only GET and HEAD can only be read.",
            read_only: false,
        },
        FixedTool {
            name: "list_hosts",
            description: "Lists the hosts http_request can call: names, base URLs, allowed \
                          methods, and how many calls this run may still make.",
            read_only: true,
        },
    ],
};

pub const MEMORY: FixedServer = FixedServer {
    name: crate::memory_wire::SERVER,
    description: "A small document store kept for the job (or webhook) across its runs and \
                  across the fleet: what one run puts, the next can get, list and search. \
                  Quick runs, which belong to neither, have none.",
    settings: &[Setting {
        name: "MEMORY_MAX_WRITES_PER_RUN",
        description: "most puts and deletes one run may make (default 50)",
        required: false,
    }],
    tools: &[
        FixedTool {
            name: "memory_get",
            description: "Reads the entry stored under `key`, with when it was written.",
            read_only: true,
        },
        FixedTool {
            name: "memory_put",
            description: "Stores `value` (text, at most 64 KiB; JSON is fine) under `key` (at \
                          most 200 characters, e.g. `reports/last-sent`), replacing what was \
                          there. The job keeps at most 1,000 entries.",
            read_only: false,
        },
        FixedTool {
            name: "memory_delete",
            description: "Removes the entry stored under `key`.",
            read_only: false,
        },
        FixedTool {
            name: "memory_list",
            description: "Lists the keys (with sizes and when each was written), most recent \
                          first, optionally only those starting with `prefix`.",
            read_only: true,
        },
        FixedTool {
            name: "memory_search",
            description: "Finds the entries whose key or value contains `query` (ignoring \
                          case), most recent first, with their values.",
            read_only: true,
        },
    ],
};

/// The permission prompt tool of a run whose job gates tools ([`crate::approval`]). The worker
/// adds it to such runs; it is not in [`SERVERS`], so no operator registers it.
pub const APPROVAL: FixedServer = FixedServer {
    name: crate::approval_wire::SERVER,
    description: "Asks Autopilot's operators to approve a tool call of this run, and waits for \
                  their decision.",
    settings: &[],
    tools: &[FixedTool {
        name: crate::approval_wire::TOOL,
        description: "Decides whether the run may make a tool call (used by Claude Code as its \
                      permission prompt tool).",
        read_only: false,
    }],
};

/// Every fixed server.
pub const SERVERS: &[FixedServer] = &[EMAIL, WEB, NOTIFY, HTTP, MEMORY];

pub fn find(name: &str) -> Option<&'static FixedServer> {
    SERVERS.iter().find(|server| server.name == name)
}

//! The JSON body each kind of channel takes, built from a title and a text.

use serde_json::{json, Value};

/// What a channel's URL is, and so which body it takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A Slack incoming webhook.
    Slack,
    /// A Discord channel webhook.
    Discord,
    /// A Microsoft Teams incoming webhook (an Office 365 connector), which takes a MessageCard.
    Teams,
    /// Any other receiver: `{"channel", "title", "text"}` with the channel's headers.
    Webhook,
}

impl Kind {
    pub const ALL: [Kind; 4] = [Kind::Slack, Kind::Discord, Kind::Teams, Kind::Webhook];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Slack => "slack",
            Kind::Discord => "discord",
            Kind::Teams => "teams",
            Kind::Webhook => "webhook",
        }
    }

    pub fn parse(text: &str) -> Option<Kind> {
        Kind::ALL
            .into_iter()
            .find(|kind| kind.name().eq_ignore_ascii_case(text.trim()))
    }

    /// The most characters a message (title and text together) may have on this kind.
    pub fn max_chars(self) -> usize {
        match self {
            // Discord refuses a `content` longer than this.
            Kind::Discord => 2_000,
            // Slack cuts a message's text at 40,000 characters and Teams refuses a card over
            // about 28 KB: one bound for all, well inside both, that a notification never needs.
            _ => MAX_MESSAGE_CHARS,
        }
    }
}

/// The most characters of any notification (see [`Kind::max_chars`]).
pub const MAX_MESSAGE_CHARS: usize = 20_000;

/// The body of a notification to the channel `channel` of kind `kind`, or what is wrong with
/// the message. The title, if any, is one line; the text must not be empty.
pub fn body(kind: Kind, channel: &str, title: Option<&str>, text: &str) -> Result<Value, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("`text` must not be empty".to_owned());
    }
    // A title is one line: a line break in it would read as the start of the text.
    let title = title
        .map(|title| title.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|title| !title.is_empty());
    let body = match kind {
        Kind::Slack => {
            // Slack reads `&`, `<` and `>` as its own markup (`<!channel>` notifies everyone,
            // `<url|label>` is a link): escaped, as Slack asks, the text shows as written and
            // cannot ping a whole channel. Bare URLs are still linked by Slack.
            let text = slack_escape(text);
            let message = match &title {
                Some(title) => format!("*{}*\n{text}", slack_escape(title)),
                None => text,
            };
            json!({ "text": message })
        }
        Kind::Discord => {
            let message = match &title {
                Some(title) => format!("**{title}**\n{text}"),
                None => text.to_owned(),
            };
            // No `@everyone`, role or user pings from text the model wrote.
            json!({ "content": message, "allowed_mentions": { "parse": [] } })
        }
        Kind::Teams => {
            let mut card = json!({
                "@type": "MessageCard",
                "@context": "http://schema.org/extensions",
                "text": text,
            });
            if let Some(title) = &title {
                card["title"] = json!(title);
            }
            card
        }
        Kind::Webhook => json!({ "channel": channel, "title": title, "text": text }),
    };
    // As sent: Discord's limit is on `content`, title markup included.
    let chars = match kind {
        Kind::Slack => body["text"].as_str().map_or(0, |text| text.chars().count()),
        Kind::Discord => body["content"]
            .as_str()
            .map_or(0, |text| text.chars().count()),
        Kind::Teams | Kind::Webhook => {
            title
                .as_deref()
                .map_or(0, |title| title.chars().count() + 1)
                + text.chars().count()
        }
    };
    let max = kind.max_chars();
    if chars > max {
        // Refused rather than split: several posts would each count against the quota, and one
        // failing halfway would leave half a message posted.
        return Err(format!(
            "the message has {chars} characters as sent (title and text); a {} channel takes \
             at most {max}: shorten it, or send it as several notifications",
            kind.name()
        ));
    }
    Ok(body)
}

fn slack_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_gets_its_own_body() {
        let title = Some("Build  failed\non main");
        let text = "Tests: 3 <failed> & 2 skipped\n";
        assert_eq!(
            body(Kind::Slack, "team", title, text).unwrap(),
            json!({"text": "*Build failed on main*\nTests: 3 &lt;failed&gt; &amp; 2 skipped"})
        );
        assert_eq!(
            body(Kind::Slack, "team", None, "<!channel> hi").unwrap(),
            json!({"text": "&lt;!channel&gt; hi"})
        );
        assert_eq!(
            body(Kind::Discord, "alerts", title, text).unwrap(),
            json!({
                "content": "**Build failed on main**\nTests: 3 <failed> & 2 skipped",
                "allowed_mentions": {"parse": []}
            })
        );
        assert_eq!(
            body(Kind::Teams, "ops", title, text).unwrap(),
            json!({
                "@type": "MessageCard",
                "@context": "http://schema.org/extensions",
                "title": "Build failed on main",
                "text": "Tests: 3 <failed> & 2 skipped"
            })
        );
        assert_eq!(
            body(Kind::Teams, "ops", Some("  "), "hi").unwrap(),
            json!({"@type": "MessageCard", "@context": "http://schema.org/extensions", "text": "hi"})
        );
        assert_eq!(
            body(Kind::Webhook, "ci", None, "hi").unwrap(),
            json!({"channel": "ci", "title": null, "text": "hi"})
        );
        assert_eq!(Kind::parse(" Teams "), Some(Kind::Teams));
        assert_eq!(Kind::parse("email"), None);
    }

    #[test]
    fn empty_and_overlong_messages_are_refused_with_the_limit() {
        assert_eq!(
            body(Kind::Slack, "team", Some("t"), " \n").unwrap_err(),
            "`text` must not be empty"
        );
        // `**Done**`, a line break and 1,991 characters: 2,000 fit on Discord.
        let text = "é".repeat(1_991);
        assert!(body(Kind::Discord, "alerts", Some("Done"), &text).is_ok());
        let error = body(Kind::Discord, "alerts", Some("Done!"), &text).unwrap_err();
        assert!(
            error.contains("2001 characters") && error.contains("at most 2000"),
            "{error}"
        );
        let long = "x".repeat(MAX_MESSAGE_CHARS + 1);
        for kind in [Kind::Slack, Kind::Teams, Kind::Webhook] {
            let error = body(kind, "c", None, &long).unwrap_err();
            assert!(error.contains("at most 20000"), "{error}");
        }
    }
}

//! Agent text as HTML: markdown rendered by pulldown-cmark, then cleaned by ammonia, so what a
//! run wrote (which may be hostile) can only ever be inert formatting. Raw HTML in the text is
//! escaped; links keep only `http`, `https` and `mailto` (a `javascript:` or `data:` link loses
//! its target) and open without a referrer; images are dropped, so a page never loads what a
//! run pointed at.

use std::collections::HashSet;
use std::sync::LazyLock;

use pulldown_cmark::{html, Event, Options, Parser};

static CLEANER: LazyLock<ammonia::Builder<'static>> = LazyLock::new(|| {
    let mut builder = ammonia::Builder::default();
    builder
        .rm_tags(["img"])
        .url_schemes(HashSet::from(["http", "https", "mailto"]))
        .url_relative(ammonia::UrlRelative::Deny)
        .link_rel(Some("noopener noreferrer nofollow"));
    builder
});

/// Markdown to clean HTML.
pub fn to_html(markdown: &str) -> String {
    let options =
        Options::ENABLE_TABLES | Options::ENABLE_STRIKETHROUGH | Options::ENABLE_TASKLISTS;
    // Raw HTML in agent text is shown as text, not parsed: escape it before rendering.
    let parser = Parser::new_ext(markdown, options).map(|event| match event {
        Event::Html(raw) | Event::InlineHtml(raw) => Event::Text(raw),
        other => other,
    });
    let mut rendered = String::with_capacity(markdown.len() + markdown.len() / 4);
    html::push_html(&mut rendered, parser);
    CLEANER.clean(&rendered).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_markdown_comes_out_inert() {
        let html = to_html(
            "# Hi\n<script>alert(1)</script>\n[click](javascript:alert(1)) \
             [data](data:text/html,x) ![img](https://tracker.example/p.png) \
             <img src=x onerror=alert(1)> [ok](https://example.com)",
        );
        assert!(!html.contains("<script"), "{html}");
        assert!(html.contains("&lt;script&gt;"), "{html}");
        assert!(!html.contains("javascript:"), "{html}");
        assert!(!html.contains("data:text"), "{html}");
        assert!(!html.contains("<img"), "{html}");
        assert!(html.contains("href=\"https://example.com\""), "{html}");
        assert!(
            html.contains("rel=\"noopener noreferrer nofollow\""),
            "{html}"
        );
        assert!(html.contains("<h1>Hi</h1>"), "{html}");
    }
}

//! HTML to readable markdown: html5ever builds the tree, this module tidies it (title, absolute
//! links, no inline data), htmd writes the markdown.
//!
//! The HTML standard's tree building can cost far more than the page's size: formatting elements
//! left open are re-opened in every later paragraph (a 20 KB page makes millions of nodes) and each
//! element opened inside thousands of others costs time in proportion to their number. The page is
//! the one input here that nobody trusts, so the parse is bounded: the tree may hold at most
//! [`MAX_NODES`] nodes, the input is fed in small chunks until [`PARSE_TIME`] has passed, and the
//! tree is cut at [`MAX_DEPTH`] before htmd (which recurses once per level) walks it, on a thread
//! with a stack made for that depth. A page past a bound is converted up to it, and says so.

use std::borrow::Cow;
use std::cell::Cell;
use std::time::{Duration, Instant};

use html5ever::interface::{ElementFlags, NodeOrText, QuirksMode, TreeSink};
use html5ever::tendril::{StrTendril, TendrilSink};
use html5ever::{ns, Attribute, ExpandedName, ParseOpts, QualName};
use markup5ever_rcdom::{Handle, NodeData, RcDom};
use reqwest::Url;

/// Most nodes (elements and texts) one page's tree may hold, about 150 MB at most. A dense page
/// of the largest size read (5 MiB) has some 450,000; a page built to blow up the tree would
/// have millions.
pub const MAX_NODES: usize = 600_000;
/// Deepest element kept; deeper content is left out (real pages nest a few dozen deep).
pub const MAX_DEPTH: usize = 512;
/// Longest the parse may take before the rest of the page is left out.
pub const PARSE_TIME: Duration = Duration::from_secs(10);
/// Input fed to the parser between two checks of the bounds.
const CHUNK_BYTES: usize = 4096;
/// The converting thread's stack: htmd recurses once per level, up to [`MAX_DEPTH`] levels of a
/// few KiB each (more in debug builds). Reserved, not committed, until used.
const STACK_BYTES: usize = 64 * 1024 * 1024;

/// Elements whose content is not readable text.
const SKIPPED: &[&str] = &[
    "head", "script", "style", "noscript", "template", "svg", "canvas", "iframe", "object",
    "embed", "select",
];

/// A page converted to markdown.
#[derive(Debug, Default, PartialEq)]
pub struct Converted {
    pub title: Option<String>,
    pub markdown: String,
    /// What was left out, if anything, in words for the reader.
    pub notes: Vec<String>,
}

/// Converts `html`, whose links are relative to `base`, on a thread of its own (the conversion is
/// CPU work, and needs a deeper stack than an async task has).
pub async fn to_markdown(html: String, base: Url) -> Result<Converted, String> {
    let (sender, receiver) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("web-html".to_owned())
        .stack_size(STACK_BYTES)
        .spawn(move || {
            let _ = sender.send(to_markdown_here(&html, &base));
        })
        .map_err(|err| format!("cannot start converting the page: {err}"))?;
    receiver
        .await
        .map_err(|_| "converting the page failed".to_owned())
}

/// Converts `html` on this thread, which needs a stack of [`STACK_BYTES`].
pub fn to_markdown_here(html: &str, base: &Url) -> Converted {
    let (document, mut notes) = parse(html, MAX_NODES, PARSE_TIME);
    let tidied = tidy(&document, base);
    if tidied.pruned {
        notes.push(format!(
            "parts nested more than {MAX_DEPTH} elements deep are left out"
        ));
    }
    let converter = htmd::HtmlToMarkdown::builder()
        .skip_tags(SKIPPED.to_vec())
        .build();
    Converted {
        title: tidied.title,
        markdown: converter.tree_to_markdown(&document),
        notes,
    }
}

/// The text of a small piece of HTML (a search result's snippet), tags dropped, entities
/// decoded, white space collapsed. Walks the tree without recursion, so any thread may call it.
pub fn text_of(fragment: &str) -> String {
    let (document, _) = parse(fragment, MAX_NODES / 100, PARSE_TIME / 10);
    let mut text = String::new();
    // `document` stays held: dropping a node empties the child lists below it.
    let mut stack = vec![document.clone()];
    while let Some(node) = stack.pop() {
        if let NodeData::Text { contents } = &node.data {
            text.push_str(&contents.borrow());
        }
        stack.extend(node.children.borrow().iter().rev().cloned());
    }
    collapse_whitespace(&text)
}

fn collapse_whitespace(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Parses `html` within the bounds; the notes say what was left out.
fn parse(html: &str, max_nodes: usize, time: Duration) -> (Handle, Vec<String>) {
    let deadline = Instant::now() + time;
    let sink = Bounded {
        dom: RcDom::default(),
        nodes_left: Cell::new(max_nodes),
        dropped: Cell::new(false),
    };
    let mut parser = html5ever::parse_document(sink, ParseOpts::default());
    let mut notes = Vec::new();
    let mut rest = html;
    while !rest.is_empty() && parser.tokenizer.sink.sink.nodes_left.get() > 0 {
        if Instant::now() > deadline {
            notes.push(format!(
                "the page took more than {} s to read; the rest is left out",
                time.as_secs()
            ));
            break;
        }
        let mut end = rest.len().min(CHUNK_BYTES);
        while !rest.is_char_boundary(end) {
            end += 1;
        }
        parser.process(StrTendril::from_slice(&rest[..end]));
        rest = &rest[end..];
    }
    let sink = parser.finish();
    if sink.dropped.get() || (sink.nodes_left.get() == 0 && !rest.is_empty()) {
        notes.push(format!(
            "the page has more than {max_nodes} elements and texts; the rest is left out"
        ));
    }
    (sink.dom.document, notes)
}

/// An `RcDom` that stops growing once it holds `nodes_left` more nodes: past that, nodes are
/// still made (the parser holds on to the open ones) but never added to the tree, so they are
/// freed as the parser lets go of them. Parse errors are not kept (hostile input has millions).
struct Bounded {
    dom: RcDom,
    nodes_left: Cell<usize>,
    /// Whether a node was left out of the tree.
    dropped: Cell<bool>,
}

impl Bounded {
    /// Takes one node from the budget; false once it is spent.
    fn spend(&self) -> bool {
        let left = self.nodes_left.get();
        if left == 0 {
            self.dropped.set(true);
            return false;
        }
        self.nodes_left.set(left - 1);
        true
    }
}

impl TreeSink for Bounded {
    type Handle = Handle;
    type Output = Self;
    type ElemName<'a>
        = ExpandedName<'a>
    where
        Self: 'a;

    fn finish(self) -> Self {
        self
    }

    fn parse_error(&self, _message: Cow<'static, str>) {}

    fn get_document(&self) -> Handle {
        self.dom.get_document()
    }

    fn elem_name<'a>(&'a self, target: &'a Handle) -> ExpandedName<'a> {
        self.dom.elem_name(target)
    }

    fn create_element(&self, name: QualName, attrs: Vec<Attribute>, flags: ElementFlags) -> Handle {
        self.dom.create_element(name, attrs, flags)
    }

    fn create_comment(&self, text: StrTendril) -> Handle {
        self.dom.create_comment(text)
    }

    fn create_pi(&self, target: StrTendril, data: StrTendril) -> Handle {
        self.dom.create_pi(target, data)
    }

    fn append(&self, parent: &Handle, child: NodeOrText<Handle>) {
        if self.spend() {
            self.dom.append(parent, child);
        }
    }

    fn append_based_on_parent_node(
        &self,
        element: &Handle,
        prev_element: &Handle,
        child: NodeOrText<Handle>,
    ) {
        if self.spend() {
            self.dom
                .append_based_on_parent_node(element, prev_element, child);
        }
    }

    fn append_doctype_to_document(
        &self,
        name: StrTendril,
        public_id: StrTendril,
        system_id: StrTendril,
    ) {
        self.dom
            .append_doctype_to_document(name, public_id, system_id);
    }

    fn get_template_contents(&self, target: &Handle) -> Handle {
        self.dom.get_template_contents(target)
    }

    fn same_node(&self, x: &Handle, y: &Handle) -> bool {
        self.dom.same_node(x, y)
    }

    fn set_quirks_mode(&self, mode: QuirksMode) {
        self.dom.set_quirks_mode(mode);
    }

    fn append_before_sibling(&self, sibling: &Handle, new_node: NodeOrText<Handle>) {
        // Also called to move a node already in the tree (misnested tags); counting the moves
        // too keeps the bound simple, and there are few of them.
        if self.spend() {
            self.dom.append_before_sibling(sibling, new_node);
        }
    }

    fn add_attrs_if_missing(&self, target: &Handle, attrs: Vec<Attribute>) {
        self.dom.add_attrs_if_missing(target, attrs);
    }

    fn remove_from_parent(&self, target: &Handle) {
        self.dom.remove_from_parent(target);
    }

    fn reparent_children(&self, node: &Handle, new_parent: &Handle) {
        self.dom.reparent_children(node, new_parent);
    }

    fn is_mathml_annotation_xml_integration_point(&self, handle: &Handle) -> bool {
        self.dom.is_mathml_annotation_xml_integration_point(handle)
    }
}

struct Tidied {
    title: Option<String>,
    pruned: bool,
}

/// Walks the tree once, in document order and without recursion: takes the title, makes links
/// and image sources absolute (against `<base href>` when the page has one), drops links and
/// images htmd would copy whole into the text (`data:`, `javascript:`) or that only point within
/// the page, and cuts the tree below [`MAX_DEPTH`].
fn tidy(document: &Handle, page_url: &Url) -> Tidied {
    let mut tidied = Tidied {
        title: None,
        pruned: false,
    };
    let mut base = page_url.clone();
    let mut stack = vec![(document.clone(), 0usize)];
    while let Some((node, depth)) = stack.pop() {
        if let NodeData::Element { name, attrs, .. } = &node.data {
            if name.ns == ns!(html) {
                match &*name.local {
                    "title" if tidied.title.is_none() => {
                        let text = collapse_whitespace(&child_text(&node));
                        tidied.title = Some(text).filter(|text| !text.is_empty());
                    }
                    "base" => {
                        if let Some(href) = attribute(&attrs.borrow(), "href") {
                            if let Ok(url) = page_url.join(&href) {
                                base = url;
                            }
                        }
                    }
                    "a" => absolute(&mut attrs.borrow_mut(), "href", &base),
                    "img" => absolute(&mut attrs.borrow_mut(), "src", &base),
                    _ => {}
                }
            }
        }
        if depth >= MAX_DEPTH && !node.children.borrow().is_empty() {
            node.children.borrow_mut().clear();
            tidied.pruned = true;
            continue;
        }
        let children = node.children.borrow();
        stack.extend(
            children
                .iter()
                .rev()
                .map(|child| (child.clone(), depth + 1)),
        );
    }
    tidied
}

fn child_text(node: &Handle) -> String {
    let mut text = String::new();
    for child in node.children.borrow().iter() {
        if let NodeData::Text { contents } = &child.data {
            text.push_str(&contents.borrow());
        }
    }
    text
}

fn attribute(attrs: &[Attribute], name: &str) -> Option<String> {
    attrs
        .iter()
        .find(|attr| &*attr.name.local == name)
        .map(|attr| attr.value.to_string())
}

/// Makes the attribute `name` an absolute http(s) or mailto URL, or removes it.
fn absolute(attrs: &mut Vec<Attribute>, name: &str, base: &Url) {
    let Some(position) = attrs.iter().position(|attr| &*attr.name.local == name) else {
        return;
    };
    let value = attrs[position].value.trim().to_owned();
    let resolved = if value.starts_with('#') {
        None
    } else {
        base.join(&value)
            .ok()
            .filter(|url| matches!(url.scheme(), "http" | "https" | "mailto"))
    };
    match resolved {
        Some(url) => attrs[position].value = StrTendril::from_slice(url.as_str()),
        None => {
            attrs.remove(position);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Url {
        Url::parse("https://example.com/docs/guide.html").unwrap()
    }

    #[test]
    fn a_page_becomes_markdown_with_its_title_and_absolute_links() {
        let html = r##"<!doctype html><html><head><title>
              The  Guide &amp; more</title><style>p { color: red }</style>
              <script>alert("x")</script></head>
            <body><h1>Guide</h1><p>Read the <a href="intro.html">intro</a>, the
            <a href="/api">API</a>, <a href="#top">this</a> and
            <a href="javascript:void(0)">that</a>.</p>
            <img src="data:image/png;base64,AAAA" alt="inline"><img src="logo.png" alt="Logo">
            <ul><li>one</li><li>two</li></ul><noscript>enable JS</noscript>
            <svg><title>icon</title></svg></body></html>"##;
        let converted = to_markdown_here(html, &base());
        assert_eq!(converted.title.as_deref(), Some("The Guide & more"));
        assert!(converted.notes.is_empty(), "{:?}", converted.notes);
        let markdown = converted.markdown;
        assert!(markdown.starts_with("# Guide\n\n"), "{markdown}");
        for expected in [
            "[intro](https://example.com/docs/intro.html)",
            "[API](https://example.com/api)",
            "[API](https://example.com/api), this and that.",
            "![Logo](https://example.com/docs/logo.png)",
            "*   one\n*   two",
        ] {
            assert!(markdown.contains(expected), "{expected:?} in {markdown}");
        }
        for absent in [
            "color",
            "alert",
            "base64",
            "enable JS",
            "icon",
            "javascript",
            "#top",
        ] {
            assert!(!markdown.contains(absent), "{absent:?} in {markdown}");
        }
    }

    #[test]
    fn links_follow_the_base_element() {
        let html = r#"<head><base href="https://cdn.example.org/v2/"></head>
            <body><a href="page">page</a></body>"#;
        let markdown = to_markdown_here(html, &base()).markdown;
        assert_eq!(markdown, "[page](https://cdn.example.org/v2/page)");
    }

    #[test]
    fn a_page_built_to_blow_up_the_tree_is_cut_at_the_node_limit() {
        // Every paragraph re-opens all 1,000 formatting elements left open before it: unbounded,
        // these 30 KB would build three million nodes.
        let mut html = String::from("<p>");
        for n in 0..1000 {
            html.push_str(&format!("<b class=c{n}>"));
        }
        html.push_str(&"<p>x".repeat(3000));
        let (document, notes) = parse(&html, MAX_NODES, PARSE_TIME);
        assert_eq!(notes.len(), 1, "{notes:?}");
        assert!(
            notes[0].contains(&format!("more than {MAX_NODES}")),
            "{notes:?}"
        );
        let mut nodes = 0;
        let mut stack = vec![document.clone()];
        while let Some(node) = stack.pop() {
            nodes += 1;
            stack.extend(node.children.borrow().iter().cloned());
        }
        assert!(
            (MAX_NODES / 2..=MAX_NODES + 10).contains(&nodes),
            "{nodes} nodes"
        );
    }

    #[tokio::test]
    async fn a_page_nested_too_deep_is_cut_and_converted_without_overflowing() {
        let depth = 3000;
        let html = format!(
            "<title>Deep</title><p>top</p>{}bottom{}",
            "<div>".repeat(depth),
            "</div>".repeat(depth)
        );
        let converted = to_markdown(html, base()).await.unwrap();
        assert_eq!(converted.title.as_deref(), Some("Deep"));
        assert!(
            converted.markdown.starts_with("top"),
            "{}",
            converted.markdown
        );
        assert!(!converted.markdown.contains("bottom"));
        assert_eq!(
            converted.notes,
            ["parts nested more than 512 elements deep are left out"]
        );
    }

    #[test]
    fn a_snippet_becomes_plain_text() {
        assert_eq!(
            text_of("An <strong>async</strong>\n runtime &amp; more &lt;3"),
            "An async runtime & more <3"
        );
        assert_eq!(text_of("plain"), "plain");
        assert_eq!(text_of(""), "");
    }
}

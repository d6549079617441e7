//! A fetched document as the model reads it: how a response's body is read (by its media type
//! and character set), and the text cut into pages at line ends.

use std::ops::Range;

use encoding_rs::Encoding;

/// How a response's body is read.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Form {
    /// Converted to markdown.
    Html,
    /// Passed through as it is (plain text, markdown, CSV, JSON, XML, …).
    Text,
}

/// How to read a body of media type `content_type` (the header's value, if any). Without one,
/// a body that starts like HTML is HTML and one that is valid UTF-8 is text.
pub fn form_of(content_type: Option<&str>, body: &[u8]) -> Result<Form, String> {
    let media = content_type
        .and_then(|value| value.split(';').next())
        .map(|media| media.trim().to_ascii_lowercase())
        .unwrap_or_default();
    let form = match media.as_str() {
        "" => return sniff(body),
        "text/html" | "application/xhtml+xml" => Form::Html,
        "application/json"
        | "application/xml"
        | "application/yaml"
        | "application/x-yaml"
        | "application/x-ndjson"
        | "application/javascript" => Form::Text,
        _ if media.starts_with("text/") => Form::Text,
        _ if media.ends_with("+json") || media.ends_with("+xml") => Form::Text,
        _ => {
            return Err(format!(
                "its content is `{media}`, which fetch_url does not read: it reads web pages \
                 (HTML), text, JSON and XML"
            ))
        }
    };
    Ok(form)
}

fn sniff(body: &[u8]) -> Result<Form, String> {
    let start = &body[..body.len().min(512)];
    let text = String::from_utf8_lossy(start)
        .trim_start()
        .to_ascii_lowercase();
    if text.starts_with("<!doctype html") || text.starts_with("<html") {
        return Ok(Form::Html);
    }
    if std::str::from_utf8(body).is_ok() && !body.contains(&0) {
        return Ok(Form::Text);
    }
    Err("it has no content type and is not text, so fetch_url does not read it".to_owned())
}

/// The body as text: in the character set its byte order mark, the header's `charset` or (for
/// HTML) a `<meta charset>` near its start names, else UTF-8. Bytes that are not valid in that
/// set become U+FFFD.
pub fn decode(body: &[u8], content_type: Option<&str>, form: Form) -> String {
    let declared = content_type
        .and_then(charset_parameter)
        .or_else(|| (form == Form::Html).then(|| meta_charset(body)).flatten());
    let encoding = declared
        .and_then(|label| Encoding::for_label(label.as_bytes()))
        .unwrap_or(encoding_rs::UTF_8);
    // `decode` lets a byte order mark override the label, as browsers do.
    encoding.decode(body).0.into_owned()
}

fn charset_parameter(content_type: &str) -> Option<String> {
    content_type.split(';').skip(1).find_map(|parameter| {
        let (name, value) = parameter.split_once('=')?;
        name.trim()
            .eq_ignore_ascii_case("charset")
            .then(|| value.trim().trim_matches('"').to_owned())
    })
}

/// The charset a `<meta charset=…>` or `<meta http-equiv … content="…; charset=…">` in the first
/// 1024 bytes names (where the HTML standard's prescan looks).
fn meta_charset(body: &[u8]) -> Option<String> {
    let head = String::from_utf8_lossy(&body[..body.len().min(1024)]).to_ascii_lowercase();
    let mut rest = head.as_str();
    while let Some(start) = rest.find("<meta") {
        let tag = &rest[start..];
        let tag = &tag[..tag.find('>').unwrap_or(tag.len())];
        if let Some(at) = tag.find("charset") {
            let value = tag[at + "charset".len()..]
                .trim_start()
                .strip_prefix('=')
                .map(|value| value.trim_start().trim_start_matches(['"', '\'']))
                .unwrap_or_default();
            let label: String = value
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | ':' | '.'))
                .collect();
            if !label.is_empty() {
                return Some(label);
            }
        }
        rest = &rest[start + "<meta".len()..];
    }
    None
}

/// A document ready to be read a page at a time.
#[derive(Debug)]
pub struct Document {
    pub title: Option<String>,
    /// Where it was fetched from, after redirects.
    pub url: String,
    pub text: String,
    /// What was left out or changed, for the reader.
    pub notes: Vec<String>,
    pages: Vec<Range<usize>>,
}

impl Document {
    pub fn new(
        title: Option<String>,
        url: String,
        text: String,
        notes: Vec<String>,
        page_chars: usize,
    ) -> Self {
        // Leading blank lines and trailing space go; a first line's indentation stays.
        let text = text.trim_end().trim_start_matches(['\n', '\r']).to_owned();
        let pages = pages(&text, page_chars);
        Self {
            title,
            url,
            text,
            notes,
            pages,
        }
    }

    pub fn page_count(&self) -> usize {
        self.pages.len()
    }

    /// Page `number` (from 1) with the title, URL and notes above it and, when more follow, how
    /// to read the next.
    pub fn page(&self, number: usize) -> Result<String, String> {
        let count = self.page_count();
        let Some(range) = number
            .checked_sub(1)
            .and_then(|index| self.pages.get(index))
        else {
            return Err(format!(
                "`page` {number} does not exist: {} has {count} page{} (from 1)",
                self.url,
                if count == 1 { "" } else { "s" }
            ));
        };
        let mut out = String::new();
        if let Some(title) = &self.title {
            out.push_str(&format!("Title: {title}\n"));
        }
        out.push_str(&format!("URL: {}\n", self.url));
        for note in &self.notes {
            out.push_str(&format!("Note: {note}\n"));
        }
        if count > 1 {
            out.push_str(&format!("Page {number} of {count}\n"));
        }
        out.push('\n');
        match &self.text[range.clone()] {
            "" => out.push_str("(no readable text)"),
            text => out.push_str(text.trim_end()),
        }
        if number < count {
            out.push_str(&format!(
                "\n\npage {number} of {count}; call fetch_url with page={} for more",
                number + 1
            ));
        } else if count > 1 {
            out.push_str(&format!("\n\npage {number} of {count} (the last)"));
        }
        Ok(out)
    }
}

/// `text` cut into pages of at most `page_chars` characters, each ending at a line end when the
/// page has one (a line longer than a page is cut where the page ends). Always one page at least.
pub fn pages(text: &str, page_chars: usize) -> Vec<Range<usize>> {
    let page_chars = page_chars.max(1);
    let mut pages = Vec::new();
    let mut start = 0;
    while start < text.len() {
        let rest = &text[start..];
        let end = match rest.char_indices().nth(page_chars) {
            None => text.len(),
            Some((limit, _)) => match rest[..limit].rfind('\n') {
                Some(newline) if newline > 0 => start + newline + 1,
                _ => start + limit,
            },
        };
        pages.push(start..end);
        start = end;
    }
    if pages.is_empty() {
        pages.push(0..0);
    }
    pages
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_end_at_line_ends_and_cut_lines_longer_than_a_page() {
        let text = "aaaa\nbbbb\ncccc\n";
        let cut: Vec<&str> = pages(text, 12).into_iter().map(|r| &text[r]).collect();
        assert_eq!(cut, ["aaaa\nbbbb\n", "cccc\n"]);
        let cut: Vec<&str> = pages("abcdefgh", 3)
            .into_iter()
            .map(|r| &"abcdefgh"[r])
            .collect();
        assert_eq!(cut, ["abc", "def", "gh"]);
        // Characters, not bytes: a page of 2 holds two 'é'.
        let text = "ééé";
        let cut: Vec<&str> = pages(text, 2).into_iter().map(|r| &text[r]).collect();
        assert_eq!(cut, ["éé", "é"]);
        assert_eq!(pages("", 10), vec![0..0]);
        let text = "x".repeat(10);
        assert_eq!(pages(&text, 10), vec![0..10], "exactly one page");
    }

    #[test]
    fn a_page_has_its_header_and_says_how_to_read_the_next() {
        let text = (1..=30).map(|n| format!("line {n}\n")).collect::<String>();
        let document = Document::new(
            Some("Lines".into()),
            "https://example.com/lines".into(),
            text,
            vec!["the body was cut".into()],
            100,
        );
        let count = document.page_count();
        assert!(count > 2, "{count}");
        let first = document.page(1).unwrap();
        assert!(first.starts_with("Title: Lines\nURL: https://example.com/lines\n"));
        assert!(first.contains("Note: the body was cut\n"), "{first}");
        assert!(
            first.contains(&format!("Page 1 of {count}\n\nline 1\n")),
            "{first}"
        );
        assert!(
            first.ends_with(&format!(
                "page 1 of {count}; call fetch_url with page=2 for more"
            )),
            "{first}"
        );
        let last = document.page(count).unwrap();
        assert!(last.contains("line 30"), "{last}");
        assert!(last.ends_with("(the last)"), "{last}");
        let joined: String = (1..=count)
            .map(|n| {
                let page = document.page(n).unwrap();
                let body = page.split_once("\n\n").unwrap().1;
                body.split("\n\npage ").next().unwrap().to_owned() + "\n"
            })
            .collect();
        assert_eq!(
            joined,
            document.text.clone() + "\n",
            "no line lost or doubled"
        );
        let error = document.page(count + 1).unwrap_err();
        assert!(error.contains(&format!("has {count} pages")), "{error}");
        assert!(document.page(0).is_err());
        let single = Document::new(None, "https://e.x/".into(), " ".into(), vec![], 100);
        assert_eq!(
            single.page(1).unwrap(),
            "URL: https://e.x/\n\n(no readable text)"
        );
    }

    #[test]
    fn bodies_are_read_by_their_content_type_and_charset() {
        assert_eq!(
            form_of(Some("text/html; charset=utf-8"), b""),
            Ok(Form::Html)
        );
        assert_eq!(form_of(Some("application/json"), b"{}"), Ok(Form::Text));
        assert_eq!(form_of(Some("application/ld+json"), b"{}"), Ok(Form::Text));
        assert_eq!(form_of(Some("text/plain"), b"hi"), Ok(Form::Text));
        assert_eq!(form_of(None, b"  <!DOCTYPE html><p>x"), Ok(Form::Html));
        assert_eq!(form_of(None, b"plain words"), Ok(Form::Text));
        assert!(form_of(None, b"\x00\x01\xff").is_err());
        let error = form_of(Some("application/pdf"), b"%PDF").unwrap_err();
        assert!(error.contains("`application/pdf`"), "{error}");

        let latin1 = b"caf\xe9";
        assert_eq!(
            decode(latin1, Some("text/plain; charset=ISO-8859-1"), Form::Text),
            "café"
        );
        let html = b"<html><head><meta charset=\"windows-1252\"></head>caf\xe9 \x80";
        assert!(decode(html, Some("text/html"), Form::Html).contains("café €"));
        let http_equiv =
            b"<meta http-equiv=\"Content-Type\" content=\"text/html; charset=iso-8859-1\">\xe9";
        assert!(decode(http_equiv, None, Form::Html).ends_with('é'));
        assert_eq!(decode("ünï".as_bytes(), None, Form::Text), "ünï");
        assert_eq!(decode(b"bad \xff", None, Form::Text), "bad \u{fffd}");
        assert_eq!(
            decode(
                b"\xef\xbb\xbfbom",
                Some("text/plain; charset=latin1"),
                Form::Text
            ),
            "bom",
            "a byte order mark wins"
        );
    }
}

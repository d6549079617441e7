//! A submitted form (`application/x-www-form-urlencoded`) as name–value pairs: fields that repeat
//! (checkbox lists) keep every value.

use axum::body::to_bytes;
use axum::extract::Request;

use super::pages::PageError;
use crate::domain::limits::MAX_REQUEST_BODY_BYTES;

#[derive(Debug, Default)]
pub struct Fields(Vec<(String, String)>);

impl Fields {
    pub async fn read(request: Request) -> Result<Fields, PageError> {
        let bytes = to_bytes(request.into_body(), MAX_REQUEST_BODY_BYTES)
            .await
            .map_err(|_| {
                PageError::BadRequest(format!(
                    "the form is larger than {} KiB, or its upload broke off",
                    MAX_REQUEST_BODY_BYTES / 1024
                ))
            })?;
        Ok(Fields::parse(&bytes))
    }

    pub fn parse(bytes: &[u8]) -> Fields {
        Fields(
            form_urlencoded::parse(bytes)
                .map(|(name, value)| (name.into_owned(), value.into_owned()))
                .collect(),
        )
    }

    /// The first value of a field.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }

    /// The value of a field, trimmed; `None` when absent or blank.
    pub fn text(&self, name: &str) -> Option<&str> {
        self.get(name)
            .map(str::trim)
            .filter(|value| !value.is_empty())
    }

    /// Every value of a field, in order.
    pub fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0
            .iter()
            .filter(move |(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }

    /// A checkbox: checked when present with any value but `false`.
    pub fn checked(&self, name: &str) -> bool {
        self.get(name).is_some_and(|value| value != "false")
    }

    /// A text area of one item per line (blank lines dropped).
    pub fn lines(&self, name: &str) -> Vec<String> {
        self.get(name)
            .unwrap_or_default()
            .lines()
            .map(str::trim)
            .filter(|line| !line.is_empty())
            .map(str::to_owned)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_fields_keep_every_value_and_blank_text_is_none() {
        let form = Fields::parse(b"tool=Read&tool=Write&name=+&lines=a%0A%0Ab%0D%0A");
        assert_eq!(form.all("tool").collect::<Vec<_>>(), ["Read", "Write"]);
        assert_eq!(form.text("name"), None);
        assert_eq!(form.lines("lines"), ["a", "b"]);
        assert!(!form.checked("enabled"));
    }
}

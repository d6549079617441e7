//! What the fuzz targets share: cutting one fuzz input into the parts of a call, in a layout a
//! person can write seeds in (parts separated by NUL bytes, headers one `name: value` a line).

/// The first `N` parts of `data`, split at NUL bytes; parts the input lacks are empty, and the
/// last part keeps any further NULs.
pub fn parts<const N: usize>(data: &[u8]) -> [&[u8]; N] {
    let mut parts = [&data[..0]; N];
    let mut rest = data;
    for (index, part) in parts.iter_mut().enumerate() {
        if index + 1 == N {
            *part = rest;
            break;
        }
        match rest.iter().position(|&byte| byte == 0) {
            Some(at) => {
                *part = &rest[..at];
                rest = &rest[at + 1..];
            }
            None => {
                *part = rest;
                rest = &rest[rest.len()..];
            }
        }
    }
    parts
}

/// `name: value` lines as pairs (lines without a colon are skipped); values are trimmed.
pub fn header_lines(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_owned(), value.trim().to_owned()))
        .collect()
}

/// The pairs as an HTTP header map; pairs that are not a valid header name and value are left
/// out (a real request could not carry them).
pub fn header_map(pairs: &[(String, String)]) -> http::HeaderMap {
    let mut map = http::HeaderMap::new();
    for (name, value) in pairs {
        let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(name.as_bytes()),
            http::HeaderValue::from_str(value),
        ) else {
            continue;
        };
        map.append(name, value);
    }
    map
}

/// A decimal integer in `text`, if it is one.
pub fn number<T: std::str::FromStr>(text: &[u8]) -> Option<T> {
    std::str::from_utf8(text).ok()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_split_at_nul_and_pad_with_empty_parts() {
        let [a, b, c] = parts::<3>(b"x\0y");
        assert_eq!((a, b, c), (&b"x"[..], &b"y"[..], &b""[..]));
        let [a, b] = parts::<2>(b"x\0y\0z");
        assert_eq!((a, b), (&b"x"[..], &b"y\0z"[..]));
    }
}

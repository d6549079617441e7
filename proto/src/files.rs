//! File watches' paths: which files a watched path names, shared by the workers that watch and
//! the control plane that checks what they report.

/// A watched path's directory and its last part (the file name or its pattern).
pub fn split_watch_path(path: &str) -> Result<(&str, &str), String> {
    if !path.starts_with('/') {
        return Err(format!("`{path}` is not an absolute path"));
    }
    let trimmed = path.trim_end_matches('/');
    let (directory, name) = trimmed.rsplit_once('/').unwrap_or(("", trimmed));
    if name.is_empty() {
        return Err(format!("`{path}` names no file or pattern"));
    }
    Ok((if directory.is_empty() { "/" } else { directory }, name))
}

/// Whether `path` is one `pattern` watches: in its directory (or below it, `recursive`), with a
/// file name matching its last part.
pub fn watch_matches(pattern: &str, path: &str, recursive: bool) -> bool {
    let (Ok((directory, name_pattern)), Some((parent, name))) =
        (split_watch_path(pattern), path.rsplit_once('/'))
    else {
        return false;
    };
    let parent = if parent.is_empty() { "/" } else { parent };
    let in_place = parent == directory
        || (recursive
            && parent
                .strip_prefix(directory.trim_end_matches('/'))
                .is_some_and(|rest| rest.starts_with('/')));
    in_place && glob_matches(name_pattern, name)
}

/// `*` (any run of characters) and `?` (one character) against a whole name.
fn glob_matches(pattern: &str, name: &str) -> bool {
    let (pattern, name): (Vec<char>, Vec<char>) =
        (pattern.chars().collect(), name.chars().collect());
    let (mut p, mut n, mut star, mut mark) = (0, 0, None, 0);
    while n < name.len() {
        if p < pattern.len() && (pattern[p] == '?' || pattern[p] == name[n]) {
            p += 1;
            n += 1;
        } else if p < pattern.len() && pattern[p] == '*' {
            star = Some(p);
            mark = n;
            p += 1;
        } else if let Some(at) = star {
            p = at + 1;
            mark += 1;
            n = mark;
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|c| *c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_whole_names() {
        assert!(watch_matches("/in/*", "/in/a", false));
        assert!(watch_matches("/in/a*b?c", "/in/a-long-bxc", false));
        assert!(!watch_matches("/in/a*b?c", "/in/a-long-bc", false));
        assert!(!watch_matches("/in/*.csv", "/in/.csv.tmp", false));
        assert_eq!(
            split_watch_path("/"),
            Err("`/` names no file or pattern".to_owned())
        );
    }
}

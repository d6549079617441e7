//! `${NAME}` placeholders: where an MCP server's settings (environment, headers, URL) name a
//! credential, filled in with its value only where the server is started, on the worker (or
//! when the control plane asks a server for its tools).

use crate::sealed::Secrets;

/// The names in the `${NAME}` placeholders of `text`, in order (repeats included).
pub fn names(text: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else { break };
        names.push(after[..end].to_owned());
        rest = &after[end + 1..];
    }
    names
}

/// `text` with each placeholder replaced by its value from `secrets`, each used noted in
/// `used`; the first name `secrets` lacks is the error.
pub fn fill(text: &str, secrets: &Secrets, used: &mut Secrets) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else { break };
        let name = &after[..end];
        let value = secrets.get(name).ok_or_else(|| name.to_owned())?;
        used.insert(name.to_owned(), value.clone());
        out.push_str(&rest[..start]);
        out.push_str(value);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_named_and_filled() {
        assert_eq!(names("Bearer ${A_1} and ${B}${A_1}"), ["A_1", "B", "A_1"]);
        assert!(names("${unclosed").is_empty());
        let secrets = Secrets::from([("A_1".to_owned(), "x".to_owned())]);
        let mut used = Secrets::new();
        assert_eq!(
            fill("Bearer ${A_1}!", &secrets, &mut used).unwrap(),
            "Bearer x!"
        );
        assert_eq!(used, secrets);
        assert_eq!(fill("${B}", &secrets, &mut used).unwrap_err(), "B");
        assert_eq!(fill("no ${ end", &secrets, &mut used).unwrap(), "no ${ end");
    }
}

//! A client for the dashboard as a browser uses it: signs in with the operator password, keeps
//! the session cookie, sends the form token, and never follows redirects (tests look at them).

use reqwest::header::{HeaderMap, COOKIE, LOCATION, SET_COOKIE};
use reqwest::StatusCode;

use crate::harness::OPERATOR_PASSWORD;

/// A response as a test reads it.
pub struct Page {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
    /// The body's length as sent (compressed, when asked for).
    pub bytes: usize,
}

impl Page {
    pub fn location(&self) -> &str {
        self.headers
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    }

    /// The form token of the first form on the page.
    pub fn csrf(&self) -> Option<String> {
        let at = self.body.find(r#"name="_csrf" value=""#)?;
        let rest = &self.body[at + r#"name="_csrf" value=""#.len()..];
        Some(rest[..rest.find('"')?].to_owned())
    }
}

pub struct DashboardClient {
    pub base_url: String,
    client: reqwest::Client,
    /// `name=value` of the session cookie, once signed in.
    pub cookie: Option<String>,
    pub csrf: String,
}

impl DashboardClient {
    pub fn new(base_url: &str) -> Self {
        DashboardClient {
            base_url: base_url.trim_end_matches('/').to_owned(),
            client: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("client"),
            cookie: None,
            csrf: String::new(),
        }
    }

    /// Signs in with the tests' operator password; panics if that fails.
    pub async fn signed_in(base_url: &str) -> Self {
        let mut client = Self::new(base_url);
        let page = client.sign_in(OPERATOR_PASSWORD).await;
        assert_eq!(page.status, StatusCode::SEE_OTHER, "sign-in: {}", page.body);
        let home = client.get("/").await;
        assert_eq!(home.status, StatusCode::OK, "{}", home.body);
        client.csrf = home.csrf().expect("a form token on the overview");
        client
    }

    /// Posts the sign-in form; keeps the cookie it sets.
    pub async fn sign_in(&mut self, password: &str) -> Page {
        let page = self
            .post_form("/sign-in", &[("password", password), ("next", "/")])
            .await;
        if let Some(cookie) = page
            .headers
            .get(SET_COOKIE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
        {
            self.cookie = Some(cookie.to_owned());
        }
        page
    }

    pub async fn get(&self, path: &str) -> Page {
        self.get_with(path, &[]).await
    }

    pub async fn get_with(&self, path: &str, headers: &[(&str, &str)]) -> Page {
        let mut request = self
            .client
            .get(format!("{}{path}", self.base_url))
            .header("accept", "text/html");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        if let Some(cookie) = &self.cookie {
            request = request.header(COOKIE, cookie);
        }
        read(request.send().await.expect("GET")).await
    }

    /// Posts a form as the dashboard's own page would (same origin), with the form token.
    pub async fn post(&self, path: &str, fields: &[(&str, &str)]) -> Page {
        let mut all = vec![("_csrf", self.csrf.as_str())];
        all.extend_from_slice(fields);
        self.post_form(path, &all).await
    }

    /// Posts exactly these fields, with `Sec-Fetch-Site: same-origin`.
    pub async fn post_form(&self, path: &str, fields: &[(&str, &str)]) -> Page {
        self.post_with(path, fields, &[("sec-fetch-site", "same-origin")])
            .await
    }

    pub async fn post_with(
        &self,
        path: &str,
        fields: &[(&str, &str)],
        headers: &[(&str, &str)],
    ) -> Page {
        let mut serializer = form_urlencoded::Serializer::new(String::new());
        for (name, value) in fields {
            serializer.append_pair(name, value);
        }
        let body = serializer.finish();
        let mut request = self
            .client
            .post(format!("{}{path}", self.base_url))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        if let Some(cookie) = &self.cookie {
            request = request.header(COOKIE, cookie);
        }
        read(request.send().await.expect("POST")).await
    }
}

async fn read(response: reqwest::Response) -> Page {
    let status = response.status();
    let headers = response.headers().clone();
    let raw = response.bytes().await.unwrap_or_default();
    Page {
        status,
        headers,
        bytes: raw.len(),
        body: String::from_utf8_lossy(&raw).into_owned(),
    }
}

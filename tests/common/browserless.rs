//! A client of the web UI without a browser: it keeps the UI's cookies by hand (checking their
//! attributes), follows no redirects, and logs in through the form.

use super::Edge;

/// A client that does not follow redirects and keeps the UI's cookies by hand.
pub struct Browserless {
    pub client: reqwest::Client,
    pub base: String,
    cookies: Vec<(String, String)>,
}

impl Browserless {
    pub fn new(edge: &Edge) -> Browserless {
        let ca = reqwest::Certificate::from_pem(&edge.ca_pem()).unwrap();
        Browserless {
            client: reqwest::Client::builder()
                .use_rustls_tls()
                .tls_built_in_root_certs(false)
                .add_root_certificate(ca)
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            base: edge.url(),
            cookies: Vec::new(),
        }
    }

    pub fn cookie_header(&self) -> String {
        self.cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    pub fn cookie(&self, name: &str) -> Option<String> {
        self.cookies
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    }

    pub fn set_cookie(&mut self, name: &str, value: &str) {
        self.cookies.retain(|(k, _)| k != name);
        if !value.is_empty() {
            self.cookies.push((name.to_owned(), value.to_owned()));
        }
    }

    pub fn keep(&mut self, r: &reqwest::Response) {
        for c in r.headers().get_all("set-cookie") {
            let c = c.to_str().unwrap();
            let (kv, attrs) = c.split_once(';').unwrap_or((c, ""));
            assert!(
                attrs.contains("HttpOnly") && attrs.contains("Secure"),
                "{c}"
            );
            assert!(attrs.contains("SameSite=Strict"), "{c}");
            let (k, v) = kv.split_once('=').unwrap();
            self.set_cookie(k, v);
        }
    }

    pub async fn get(&mut self, path: &str) -> (u16, String, String) {
        let r = self.client.get(format!("{}{path}", self.base));
        self.send(r).await
    }

    pub async fn post(&mut self, path: &str, form: &[(&str, &str)]) -> (u16, String, String) {
        let r = self
            .client
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form_body(form));
        self.send(r).await
    }

    /// Sends with the cookies kept; keeps the ones set. Status, `Location` and body.
    pub async fn send(&mut self, r: reqwest::RequestBuilder) -> (u16, String, String) {
        let r = r
            .header("cookie", self.cookie_header())
            .send()
            .await
            .unwrap();
        self.keep(&r);
        let status = r.status().as_u16();
        let location = r
            .headers()
            .get("location")
            .map_or(String::new(), |l| l.to_str().unwrap().to_owned());
        (status, location, r.text().await.unwrap())
    }

    /// Logs in through the form; returns the session's CSRF token.
    pub async fn login(&mut self, user: &str, password: &str) -> String {
        let (status, _, page) = self.get("/login").await;
        assert_eq!(status, 200);
        let token = field(&page, "csrf");
        assert_eq!(Some(token.clone()), self.cookie("__Host-regedge-login"));
        let (status, location, _) = self
            .post(
                "/login",
                &[("csrf", &token), ("user", user), ("password", password)],
            )
            .await;
        assert_eq!((status, location.as_str()), (303, "/"));
        let (_, _, page) = self.get("/").await;
        field(&page, "csrf")
    }
}

pub fn form_body(form: &[(&str, &str)]) -> String {
    form_urlencoded::Serializer::new(String::new())
        .extend_pairs(form)
        .finish()
}

/// The value of the first hidden input `name` in a page.
pub fn field(page: &str, name: &str) -> String {
    let marker = format!("name=\"{name}\" value=\"");
    let start = page
        .find(&marker)
        .unwrap_or_else(|| panic!("no {name} in {page}"))
        + marker.len();
    page[start..].split('"').next().unwrap().to_owned()
}

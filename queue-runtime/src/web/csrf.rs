//! Cross-site request forgery protection of the dashboard's `POST`s: the
//! browser's own word on where the request comes from (`Sec-Fetch-Site`,
//! else `Origin` against `Host`), and a secret token in every form (see
//! the module docs of `web`).

use axum::http::{HeaderMap, header};

/// The secret token of one router.
pub(super) struct Csrf {
    token: String,
}

impl std::fmt::Debug for Csrf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Csrf(..)")
    }
}

impl Csrf {
    /// A token of 244 random bits: two version-4 UUIDs, from the operating
    /// system's random source.
    pub(super) fn random() -> Csrf {
        Csrf {
            token: format!(
                "{}{}",
                uuid::Uuid::new_v4().simple(),
                uuid::Uuid::new_v4().simple()
            ),
        }
    }

    /// The token given by the host application, if it is 16 to 256 visible
    /// ASCII characters (it goes into HTML attributes and form bodies as is).
    pub(super) fn from_key(key: &str) -> Option<Csrf> {
        let ok = (16..=256).contains(&key.len()) && key.bytes().all(|b| b.is_ascii_graphic());
        ok.then(|| Csrf {
            token: key.to_owned(),
        })
    }

    /// The token to write into forms.
    pub(super) fn token(&self) -> &str {
        &self.token
    }

    /// Whether a `POST` with these headers and this form token may act;
    /// `Err` says why not.
    pub(super) fn check(
        &self,
        headers: &HeaderMap,
        form_token: Option<&str>,
    ) -> Result<(), &'static str> {
        same_origin(headers)?;
        match form_token {
            Some(t) if constant_time_eq(t.as_bytes(), self.token.as_bytes()) => Ok(()),
            Some(_) => {
                Err("the form's CSRF token is not this dashboard's (reload the page and try again)")
            }
            None => Err("the form has no CSRF token"),
        }
    }
}

/// The browser's own report of where a request comes from. `Sec-Fetch-Site`
/// (sent by current browsers) must be `same-origin`; without it, an
/// `Origin` header, if any, must name the host the request was sent to.
/// A request with neither (not from a current browser, or a very old one)
/// passes on to the token check.
fn same_origin(headers: &HeaderMap) -> Result<(), &'static str> {
    if let Some(site) = headers.get("sec-fetch-site") {
        return if site.as_bytes() == b"same-origin" {
            Ok(())
        } else {
            Err("the request comes from another site (Sec-Fetch-Site)")
        };
    }
    let Some(origin) = headers.get(header::ORIGIN) else {
        return Ok(());
    };
    let origin_host = origin
        .to_str()
        .ok()
        .and_then(|o| o.split_once("://"))
        .map(|(_, host)| host.trim_end_matches('/'))
        .filter(|h| !h.is_empty());
    let Some(origin_host) = origin_host else {
        return Err("the request's Origin is opaque or malformed");
    };
    let matches = [header::HOST.as_str(), "x-forwarded-host"]
        .iter()
        .filter_map(|name| headers.get(*name))
        .filter_map(|v| v.to_str().ok())
        .any(|host| host.eq_ignore_ascii_case(origin_host));
    if matches {
        Ok(())
    } else {
        Err("the request's Origin is not this host")
    }
}

/// Equality whose time depends on the lengths only, not on where the
/// bytes first differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn tokens_are_random_and_compared_whole() {
        let (a, b) = (Csrf::random(), Csrf::random());
        assert_ne!(a.token(), b.token());
        assert_eq!(a.token().len(), 64);
        let h = headers(&[]);
        assert!(a.check(&h, Some(a.token())).is_ok());
        assert!(a.check(&h, Some(b.token())).is_err());
        assert!(a.check(&h, Some(&a.token()[..63])).is_err());
        assert!(a.check(&h, None).is_err());
    }

    #[test]
    fn the_browser_must_say_same_origin() {
        let c = Csrf::from_key("0123456789abcdef").unwrap();
        let t = Some("0123456789abcdef");
        let ok = [
            headers(&[("sec-fetch-site", "same-origin")]),
            headers(&[
                ("origin", "http://127.0.0.1:8080"),
                ("host", "127.0.0.1:8080"),
            ]),
            headers(&[
                ("origin", "https://ops.example"),
                ("host", "10.0.0.5"),
                ("x-forwarded-host", "ops.example"),
            ]),
        ];
        for h in &ok {
            assert!(c.check(h, t).is_ok(), "{h:?}");
        }
        let refused = [
            headers(&[("sec-fetch-site", "cross-site")]),
            headers(&[("sec-fetch-site", "same-site")]),
            headers(&[
                ("origin", "http://evil.example"),
                ("host", "127.0.0.1:8080"),
            ]),
            headers(&[("origin", "null"), ("host", "127.0.0.1:8080")]),
        ];
        for h in &refused {
            assert!(c.check(h, t).is_err(), "{h:?}");
        }
    }

    #[test]
    fn host_keys_must_be_long_and_printable() {
        assert!(Csrf::from_key("short").is_none());
        assert!(Csrf::from_key("has a space in it!").is_none());
        assert!(Csrf::from_key(&"x".repeat(257)).is_none());
        assert_eq!(
            Csrf::from_key("0123456789abcdef").unwrap().token(),
            "0123456789abcdef"
        );
    }
}

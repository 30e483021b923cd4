//! Which handler a request goes to (pure: method and path in, [`Route`] out).

/// Where a request goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Route {
    /// `GET /healthz`.
    Healthz,
    /// `GET /readyz`.
    Readyz,
    /// `GET /metrics`.
    Metrics,
    /// `GET /ws`: the WebSocket upgrade.
    Ws,
    /// `POST /api/v1/publish`.
    Publish,
    /// `POST /api/v1/tokens`.
    Tokens,
    /// `DELETE /api/v1/users/{user}/sessions`.
    Disconnect(String),
    /// `GET /api/v1/users/{user}`.
    User(String),
    /// `GET /api/v1/rooms/{room}`.
    Room(String),
    /// Another path under `/api/`.
    ApiNotFound,
    /// Any other `GET`: an asset of the browser page (the path).
    Asset(String),
    /// A known path, another method: the methods it allows.
    MethodNotAllowed(&'static str),
    /// Nothing here.
    NotFound,
    /// A path segment that does not decode (bad percent-encoding, not UTF-8).
    BadPath(String),
}

impl Route {
    /// True for the backend API's routes (bearer key, off without a key file).
    pub(crate) fn is_api(&self) -> bool {
        matches!(
            self,
            Route::Publish
                | Route::Tokens
                | Route::Disconnect(_)
                | Route::User(_)
                | Route::Room(_)
                | Route::ApiNotFound
        )
    }
}

/// Decodes one percent-encoded path segment.
pub(crate) fn decode_segment(s: &str) -> Result<String, String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("bad percent-encoding in {s:?}"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("path segment {s:?} is not UTF-8"))
}

/// Routes `method` on `path` (percent-encoded, no query).
pub(crate) fn route(method: &str, path: &str) -> Route {
    // HEAD is answered like GET, without the body.
    let get = method == "GET" || method == "HEAD";
    let only = |ok: bool, allow: &'static str, r: Route| {
        if ok {
            r
        } else {
            Route::MethodNotAllowed(allow)
        }
    };
    match path {
        "/healthz" => return only(get, "GET, HEAD", Route::Healthz),
        "/readyz" => return only(get, "GET, HEAD", Route::Readyz),
        "/metrics" => return only(get, "GET, HEAD", Route::Metrics),
        "/ws" => return only(method == "GET", "GET", Route::Ws),
        "/api/v1/publish" => return only(method == "POST", "POST", Route::Publish),
        "/api/v1/tokens" => return only(method == "POST", "POST", Route::Tokens),
        _ => {}
    }
    if let Some(rest) = path.strip_prefix("/api/") {
        let parts: Vec<&str> = rest.split('/').collect();
        // A name given empty (`/api/v1/users/`) is a bad request, as in a JSON body.
        let named = |seg: &str, make: fn(String) -> Route| match decode_segment(seg) {
            Ok(name) if name.is_empty() => Route::BadPath("the name is empty".into()),
            Ok(name) => make(name),
            Err(e) => Route::BadPath(e),
        };
        return match parts.as_slice() {
            ["v1", "users", user, "sessions"] => {
                only(method == "DELETE", "DELETE", named(user, Route::Disconnect))
            }
            ["v1", "users", user] => only(get, "GET, HEAD", named(user, Route::User)),
            ["v1", "rooms", room] => only(get, "GET, HEAD", named(room, Route::Room)),
            _ => Route::ApiNotFound,
        };
    }
    if get {
        Route::Asset(path.to_owned())
    } else {
        Route::NotFound
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(route("GET", "/healthz"), Route::Healthz);
        assert_eq!(route("HEAD", "/metrics"), Route::Metrics);
        assert_eq!(
            route("POST", "/healthz"),
            Route::MethodNotAllowed("GET, HEAD")
        );
        assert_eq!(route("GET", "/ws"), Route::Ws);
        assert_eq!(route("POST", "/api/v1/publish"), Route::Publish);
        assert_eq!(
            route("GET", "/api/v1/publish"),
            Route::MethodNotAllowed("POST")
        );
        assert_eq!(
            route("GET", "/api/v1/users/ann%20b"),
            Route::User("ann b".into())
        );
        assert_eq!(
            route("DELETE", "/api/v1/users/%C3%A9/sessions"),
            Route::Disconnect("é".into())
        );
        assert_eq!(route("GET", "/api/v1/rooms/r1"), Route::Room("r1".into()));
        assert!(matches!(
            route("GET", "/api/v1/rooms/%ZZ"),
            Route::BadPath(_)
        ));
        assert!(matches!(
            route("GET", "/api/v1/rooms/%FF"),
            Route::BadPath(_)
        ));
        for empty in ["/api/v1/rooms/", "/api/v1/users/"] {
            assert!(matches!(route("GET", empty), Route::BadPath(_)), "{empty}");
        }
        assert!(matches!(
            route("DELETE", "/api/v1/users//sessions"),
            Route::BadPath(_)
        ));
        assert_eq!(route("GET", "/api/v1/rooms/a/b"), Route::ApiNotFound);
        assert_eq!(route("GET", "/api/v2/x"), Route::ApiNotFound);
        assert_eq!(route("GET", "/"), Route::Asset("/".into()));
        assert_eq!(route("GET", "/app.js"), Route::Asset("/app.js".into()));
        assert_eq!(route("PUT", "/app.js"), Route::NotFound);
        assert!(route("POST", "/api/v1/tokens").is_api());
        assert!(!route("GET", "/metrics").is_api());
    }
}

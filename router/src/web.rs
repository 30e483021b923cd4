//! The browser chat page (`web/`), built into the binary and served at `/` on the
//! HTTP port.
//!
//! The files are embedded with `include_bytes!` when the router is compiled: the page
//! needs no files at run time, and nothing but these files can be served (there is no
//! path to resolve, so no way out of `web/`).

/// `(path, content type, bytes)` of every file of `web/`.
const ASSETS: &[(&str, &str, &[u8])] = &[
    (
        "/index.html",
        "text/html; charset=utf-8",
        include_bytes!("../../web/index.html"),
    ),
    (
        "/app.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../web/app.js"),
    ),
    (
        "/style.css",
        "text/css; charset=utf-8",
        include_bytes!("../../web/style.css"),
    ),
];

/// The asset at `path` (`/` is `index.html`): its content type and bytes. A query
/// string or fragment is ignored; any other path is `None`.
#[allow(dead_code)]
pub(crate) fn asset(path: &str) -> Option<(&'static str, &'static [u8])> {
    let path = path.split(['?', '#']).next().unwrap_or_default();
    let path = if path == "/" { "/index.html" } else { path };
    ASSETS
        .iter()
        .find(|(p, _, _)| *p == path)
        .map(|&(_, ty, bytes)| (ty, bytes))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn web_dir() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../web")
    }

    #[test]
    fn root_is_the_page() {
        let (ty, body) = asset("/").unwrap();
        assert_eq!(ty, "text/html; charset=utf-8");
        assert_eq!(Some((ty, body)), asset("/index.html"));
        assert!(body.starts_with(b"<!doctype html>"));
        assert_eq!(asset("/?user=alice"), asset("/"));
        assert_eq!(
            asset("/app.js?v=2#x").map(|a| a.0),
            Some("text/javascript; charset=utf-8")
        );
        assert_eq!(
            asset("/style.css").map(|a| a.0),
            Some("text/css; charset=utf-8")
        );
    }

    #[test]
    fn every_file_of_web_is_served_as_it_is_on_disk() {
        let mut n = 0;
        for entry in std::fs::read_dir(web_dir()).unwrap() {
            let entry = entry.unwrap();
            let name = entry.file_name().into_string().unwrap();
            let (_, body) = asset(&format!("/{name}"))
                .unwrap_or_else(|| panic!("web/{name} is not served: add it to ASSETS"));
            assert_eq!(body, std::fs::read(entry.path()).unwrap(), "web/{name}");
            n += 1;
        }
        assert_eq!(n, ASSETS.len());
    }

    #[test]
    fn nothing_else_is_served() {
        for path in [
            "",
            "index.html",
            "//index.html",
            "/index.htm",
            "/INDEX.HTML",
            "/../Cargo.toml",
            "/web/index.html",
            "/%2e%2e/Cargo.toml",
            "/app.js/",
            "/ws",
            "/metrics",
            "/favicon.ico",
            "/.",
            "/app.js\0",
        ] {
            assert_eq!(asset(path), None, "{path:?}");
        }
    }

    /// The page loads only files that are served (scripts, styles, icons).
    #[test]
    fn the_page_refers_only_to_served_files() {
        let html = std::str::from_utf8(asset("/").unwrap().1).unwrap();
        let mut refs = 0;
        for attr in ["src=\"", "href=\""] {
            for (i, _) in html.match_indices(attr) {
                let value = &html[i + attr.len()..];
                let value = &value[..value.find('"').unwrap()];
                if value.starts_with("data:") || value.starts_with('#') {
                    continue;
                }
                assert!(
                    value.starts_with('/') && asset(value).is_some(),
                    "index.html refers to {value}, which is not served"
                );
                refs += 1;
            }
        }
        assert!(refs >= 2, "index.html loads app.js and style.css");
    }
}

//! The browser chat page (`web/`), built into the binary and served at `/` on the
//! HTTP port.

/// The asset at `path` (`/` is `index.html`): its content type and bytes.
#[allow(dead_code)]
pub(crate) fn asset(path: &str) -> Option<(&'static str, &'static [u8])> {
    let _ = path;
    None
}

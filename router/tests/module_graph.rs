//! No module of router/src imports one that imports it back: runs
//! `scripts/check-module-cycles.py` (python3, stdlib only) on this crate's sources.

use std::path::Path;
use std::process::Command;

#[test]
fn router_modules_import_each_other_without_cycles() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let script = root.join("../scripts/check-module-cycles.py");
    let out = Command::new("python3")
        .arg(&script)
        .arg(root.join("src"))
        .output()
        .expect("python3 runs scripts/check-module-cycles.py");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

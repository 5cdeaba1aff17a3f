//! The generated files checked into the repository match what the table generates now.

use std::path::Path;

#[test]
fn generated_files_are_up_to_date() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut stale = Vec::new();
    for file in ganglion_routing::repository_files() {
        let current = std::fs::read_to_string(root.join(file.path)).unwrap_or_default();
        if current != file.contents {
            stale.push(file.path);
        }
    }
    assert!(
        stale.is_empty(),
        "out of date: {stale:?}; regenerate with `cargo run -p ganglion-routing --example generate`"
    );
}

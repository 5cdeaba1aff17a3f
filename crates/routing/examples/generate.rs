//! Writes the files generated from the routing table into the repository:
//! `deploy/nginx.conf`, `deploy/haproxy.cfg`, `helm/ganglion/files/nginx.conf`, `docs/workers.md`.
//!
//! ```text
//! cargo run -p ganglion-routing --example generate            # write them
//! cargo run -p ganglion-routing --example generate -- --check # fail if any is out of date
//! ```

use std::path::Path;
use std::process::ExitCode;

fn main() -> ExitCode {
    let check = std::env::args().skip(1).any(|arg| arg == "--check");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut stale = 0;
    for file in ganglion_routing::repository_files() {
        let path = root.join(file.path);
        let current = std::fs::read_to_string(&path).ok();
        if current.as_deref() == Some(file.contents.as_str()) {
            println!("up to date  {}", file.path);
        } else if check {
            println!("OUT OF DATE {}", file.path);
            stale += 1;
        } else {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).expect("create directory");
            }
            std::fs::write(&path, &file.contents).expect("write generated file");
            println!("wrote       {}", file.path);
        }
    }
    if stale > 0 {
        eprintln!("{stale} file(s) out of date: run `cargo run -p ganglion-routing --example generate`");
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

//! Small text helpers shared by the generators.

use std::fmt::Write as _;

/// Appends `text` indented by `indent` levels of four spaces, and a newline; an empty `text`
/// appends a bare newline (no trailing spaces).
pub(crate) fn line(out: &mut String, indent: usize, text: &str) {
    if text.is_empty() {
        out.push('\n');
    } else {
        let _ = writeln!(out, "{:indent$}{text}", "", indent = indent * 4);
    }
}

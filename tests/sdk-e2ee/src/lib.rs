//! Helpers shared by the matrix-sdk encryption and sliding-sync tests (in `tests/`).

use std::future::Future;
use std::time::{Duration, Instant};

/// How long any one thing may take to show up.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// Polls `check` until it yields a value or [`PATIENCE`] runs out.
///
/// # Panics
/// When it runs out: the test's failure, naming `what`.
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

//! See tests/: matrix-sdk end-to-end encryption tests against ganglion.

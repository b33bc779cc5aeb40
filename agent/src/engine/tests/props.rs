//! Property tests: see below.

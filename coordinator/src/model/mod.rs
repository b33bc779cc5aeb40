//! The JSON values stored under each key (see [`crate::keys`]), and how a value read from etcd is
//! decoded: a value that does not parse or breaks a rule becomes a [`DecodeError`] naming its
//! key, which callers log and skip (keeping the last good value) — never a panic.

mod decode;
mod duration;
mod instance;
mod job;
mod pages;
mod records;

pub use decode::{DecodeError, decode, decode_job};
pub use duration::{BadDuration, HumanDuration};
pub use instance::{InstanceInfo, MAX_WEIGHT};
pub use job::{
    ConfigError, JobConfig, MAX_DESCRIPTION, MAX_INTERVAL, MAX_JOB_PARAM, MAX_RETRIES,
    MAX_SHARD_PARAM, MAX_TIMEOUT, MAX_TOTAL, MIN_INTERVAL, Schedule,
};
pub use pages::{AssignedPage, PAGES, PageEntry, decode_page, page_of, records_of};
pub use records::{AssignmentRecord, Cursor, Done, Owner, Running, Trigger};

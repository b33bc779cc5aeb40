//! Ready-made job kinds: [`ScriptJob`] runs a program per shard, [`Dataflow`] turns a
//! fetch/process pair into a job that drains its shard's work.

mod dataflow;
mod script;

pub use dataflow::{Dataflow, DataflowJob};
pub use script::ScriptJob;

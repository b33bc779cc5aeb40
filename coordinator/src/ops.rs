//! Operations on a namespace, for the CLI and for tests: trigger, drain, create, change and
//! delete jobs. Every change of a job config is validated exactly as agents validate it and
//! written with a compare on the revision it was read at, so two operators cannot silently
//! overwrite each other.

use std::time::Duration;

use chrono::Utc;
use etcd_client::{Client, Compare, CompareOp, DeleteOptions, GetOptions, Txn, TxnOp};
use shardjob_sharding::validate_name;
use tokio::time::timeout;

use crate::keys::{Keys, prefix_end};
use crate::model::{ConfigError, JobConfig, Trigger, decode_job};

const OP_TIMEOUT: Duration = Duration::from_secs(10);

/// Why an operation was not done.
#[derive(Debug, Clone, thiserror::Error)]
pub enum OpsError {
    #[error("no such job: {0}")]
    NoSuchJob(String),
    #[error("job {0} already exists (use `config set` to change it)")]
    JobExists(String),
    #[error("{0}")]
    Invalid(#[from] ConfigError),
    #[error("invalid name: {0}")]
    BadName(String),
    #[error("{0}")]
    Refused(String),
    #[error("the config of job {0} changed while it was being edited; try again")]
    Conflict(String),
    #[error("{step}: {cause}")]
    Etcd { step: String, cause: String },
}

fn etcd(step: impl Into<String>) -> impl FnOnce(String) -> OpsError {
    let step = step.into();
    move |cause| OpsError::Etcd { step, cause }
}

async fn within<T>(
    step: &str,
    f: impl Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, OpsError> {
    timeout(OP_TIMEOUT, f)
        .await
        .map_err(|_| OpsError::Etcd {
            step: step.into(),
            cause: format!("no answer within {OP_TIMEOUT:?}"),
        })?
        .map_err(|e| etcd(step)(e.to_string()))
}

/// The config of `job` and the revision it was read at.
pub async fn read_job(
    client: &Client,
    keys: &Keys,
    job: &str,
) -> Result<(JobConfig, i64), OpsError> {
    validate_name("job name", job).map_err(|e| OpsError::BadName(e.to_string()))?;
    let key = keys.job(job);
    let resp = within(
        &format!("reading {key}"),
        client.clone().get(key.clone(), None),
    )
    .await?;
    let kv = resp
        .kvs()
        .first()
        .ok_or_else(|| OpsError::NoSuchJob(job.to_owned()))?;
    let config = decode_job(&key, job, kv.value())
        .map_err(|e| OpsError::Refused(format!("{e} (fix it with `config set` or etcdctl)")))?;
    Ok((config, kv.mod_revision()))
}

/// Creates `job`; fails if it exists.
pub async fn create_job(
    client: &Client,
    keys: &Keys,
    job: &str,
    config: &JobConfig,
) -> Result<(), OpsError> {
    config.validate_new(job, chrono::Utc::now())?;
    let key = keys.job(job);
    let value = serde_json::to_vec(config).map_err(|e| etcd("encoding")(e.to_string()))?;
    let txn = Txn::new()
        .when(vec![Compare::create_revision(
            key.clone(),
            CompareOp::Equal,
            0,
        )])
        .and_then(vec![TxnOp::put(key.clone(), value, None)]);
    let resp = within(&format!("writing {key}"), client.clone().txn(txn)).await?;
    if !resp.succeeded() {
        return Err(OpsError::JobExists(job.to_owned()));
    }
    Ok(())
}

/// The ops that delete every key of `job` (its config, trigger, and every owner, running
/// marker, cursor and done record): one txn's worth, used by `delete_job` and by the leader
/// retiring a finished one-shot. Its shards leave the `assigned/` pages with the leader's
/// next pass (a job without a config is assigned to nobody).
pub fn delete_job_ops(keys: &Keys, job: &str) -> Vec<TxnOp> {
    let jk = keys.job_keys(job);
    let mut ops = vec![
        TxnOp::delete(jk.config, None),
        TxnOp::delete(jk.trigger, None),
    ];
    for prefix in &jk.prefixes {
        ops.push(TxnOp::delete(
            prefix.clone(),
            Some(DeleteOptions::new().with_range(prefix_end(prefix))),
        ));
    }
    ops
}

/// Changes `job`'s config with `change`, validated, written only if nobody changed it meanwhile.
pub async fn update_job(
    client: &Client,
    keys: &Keys,
    job: &str,
    change: impl FnOnce(&mut JobConfig),
) -> Result<JobConfig, OpsError> {
    let (mut config, revision) = read_job(client, keys, job).await?;
    change(&mut config);
    config.validate(job)?;
    let key = keys.job(job);
    let value = serde_json::to_vec(&config).map_err(|e| etcd("encoding")(e.to_string()))?;
    let txn = Txn::new()
        .when(vec![Compare::mod_revision(
            key.clone(),
            CompareOp::Equal,
            revision,
        )])
        .and_then(vec![TxnOp::put(key.clone(), value, None)]);
    let resp = within(&format!("writing {key}"), client.clone().txn(txn)).await?;
    if !resp.succeeded() {
        return Err(OpsError::Conflict(job.to_owned()));
    }
    Ok(config)
}

/// Asks every owner of `job`'s shards to run it once now; returns the trigger id.
pub async fn trigger(client: &Client, keys: &Keys, job: &str) -> Result<String, OpsError> {
    read_job(client, keys, job).await?;
    let now = Utc::now();
    let id = format!("cli-{}", now.timestamp_micros());
    let t = Trigger {
        id: id.clone(),
        requested_at: now,
    };
    let value = serde_json::to_vec(&t).map_err(|e| etcd("encoding")(e.to_string()))?;
    let key = keys.trigger(job);
    within(
        &format!("writing {key}"),
        client.clone().put(key.clone(), value, None),
    )
    .await?;
    Ok(id)
}

/// Drains (`true`) or restores (`false`) an instance: the leader assigns a drained one nothing.
pub async fn set_instance_disabled(
    client: &Client,
    keys: &Keys,
    instance: &str,
    disabled: bool,
    reason: &str,
) -> Result<(), OpsError> {
    validate_name("instance id", instance).map_err(|e| OpsError::BadName(e.to_string()))?;
    let key = keys.disabled(instance);
    let mut c = client.clone();
    if disabled {
        within(&format!("writing {key}"), c.put(key.clone(), reason, None)).await?;
    } else {
        within(&format!("deleting {key}"), c.delete(key.clone(), None)).await?;
    }
    Ok(())
}

/// What a job deletion removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Deleted {
    pub keys: i64,
}

/// Deletes every key of `job` (config, assignment, trigger, owners, running markers, cursors)
/// in one txn. Refuses while the job is enabled or has a running marker, unless `force`.
pub async fn delete_job(
    client: &Client,
    keys: &Keys,
    job: &str,
    force: bool,
) -> Result<Deleted, OpsError> {
    let disabled = match read_job(client, keys, job).await {
        Ok((config, _)) => config.disabled,
        // A config that does not decode can still be removed, with --force.
        Err(OpsError::Refused(_)) if force => true,
        Err(e) => return Err(e),
    };
    let jk = keys.job_keys(job);
    if !force {
        if !disabled {
            return Err(OpsError::Refused(format!(
                "job {job} is enabled; disable it first (`shardjob disable job {job}`) or use --force"
            )));
        }
        let running = within(
            "reading running markers",
            client.clone().get(
                jk.prefixes[1].clone(),
                Some(GetOptions::new().with_prefix().with_count_only()),
            ),
        )
        .await?;
        if running.count() > 0 {
            return Err(OpsError::Refused(format!(
                "job {job} has {} execution(s) running; wait or use --force",
                running.count()
            )));
        }
    }
    let ops = delete_job_ops(keys, job);
    let resp = within(
        &format!("deleting job {job}"),
        client.clone().txn(Txn::new().and_then(ops)),
    )
    .await?;
    let keys_deleted = resp
        .op_responses()
        .iter()
        .map(|r| match r {
            etcd_client::TxnOpResponse::Delete(d) => d.deleted(),
            _ => 0,
        })
        .sum();
    Ok(Deleted { keys: keys_deleted })
}

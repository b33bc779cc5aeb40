//! `shardjob`: the operator's CLI. Flags follow etcdctl's (`--endpoints`, `--cacert`, `--cert`,
//! `--key`, `--user`, `--dial-timeout`); every error is one line on stderr and a non-zero exit.

mod args;
mod render;
mod tasks;

use std::process::ExitCode;

use clap::Parser as _;
use etcd_client::Client;
use serde_json::json;
use shardjob_coordinator::connect::{ConnectConfig, connect};
use shardjob_coordinator::keys::Keys;
use shardjob_coordinator::model::{JobConfig, Schedule};
use shardjob_coordinator::ops;
use shardjob_coordinator::view::{ClusterView, JobView};

use args::{Cli, Cmd, ConfigCmd, JobCmd, ScheduleArgs, Settings, Target};
use render::table;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => e.exit(), // --help, --version
        Err(e) => {
            // clap explains at length; the first line says what is wrong.
            let text = e.to_string();
            let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
            let mut first = lines.next().unwrap_or("invalid arguments").to_owned();
            // "the following required arguments were not provided:" names them on the next line.
            if first.ends_with(':') {
                if let Some(next) = lines.next() {
                    first = format!("{first} {next}");
                }
            }
            eprintln!(
                "shardjob: {} (see shardjob --help)",
                first.trim_start_matches("error: ")
            );
            return ExitCode::from(2);
        }
    };
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("shardjob: {e}");
            ExitCode::FAILURE
        }
    }
}

fn connect_config(cli: &Cli) -> Result<ConnectConfig, String> {
    let endpoints = cli
        .endpoints
        .clone()
        .or_else(|| env_list("SHARDJOB_ENDPOINTS"))
        .or_else(|| env_list("ETCDCTL_ENDPOINTS"))
        .unwrap_or_else(|| vec!["http://127.0.0.1:2379".into()]);
    let user = match &cli.user {
        None => None,
        Some(u) => Some(match u.split_once(':') {
            Some((name, password)) => (name.to_owned(), password.to_owned()),
            None => {
                let password = rpassword::prompt_password(format!("password for {u}: "))
                    .map_err(|e| format!("reading the password: {e}"))?;
                (u.clone(), password)
            }
        }),
    };
    Ok(ConnectConfig {
        endpoints,
        ca: cli.cacert.clone(),
        cert: cli.cert.clone(),
        key: cli.key.clone(),
        user,
        dial_timeout: cli.dial_timeout,
    })
}

fn env_list(var: &str) -> Option<Vec<String>> {
    let v = std::env::var(var).ok()?;
    let list: Vec<String> = v
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    (!list.is_empty()).then_some(list)
}

async fn run(cli: Cli) -> Result<(), String> {
    // The task store needs no etcd.
    if let Cmd::Tasks { pg_url, cmd } = &cli.cmd {
        println!("{}", tasks::run(pg_url, cmd, cli.json).await?);
        return Ok(());
    }
    if let Cmd::History {
        job,
        shard,
        since,
        limit,
        pg_url,
    } = &cli.cmd
    {
        println!(
            "{}",
            tasks::history(pg_url, job, *shard, since.as_deref(), *limit, cli.json).await?
        );
        return Ok(());
    }
    let keys = Keys::with_prefix(&cli.prefix, &cli.namespace).map_err(|e| e.to_string())?;
    let client = connect(&connect_config(&cli)?)
        .await
        .map_err(|e| e.to_string())?;
    let out = match &cli.cmd {
        Cmd::Tasks { pg_url, cmd } => tasks::run(pg_url, cmd, cli.json).await?,
        Cmd::History { .. } => String::new(), // answered above, before connecting to etcd
        Cmd::Status => status(&client, &keys, cli.json).await?,
        Cmd::Instances => instances(&load(&client, &keys).await?, cli.json),
        Cmd::Jobs => jobs(&load(&client, &keys).await?, cli.json),
        Cmd::Job {
            cmd: JobCmd::Show { job },
        } => job_show(&load(&client, &keys).await?, job, cli.json)?,
        Cmd::Job {
            cmd:
                JobCmd::Create {
                    job,
                    handler,
                    schedule,
                    settings,
                },
        } => {
            let parsed =
                schedule_of(schedule)?.ok_or("job create needs --cron, --every or --at")?;
            let mut config = JobConfig::new(parsed, settings.shards.unwrap_or(1));
            config.handler = handler.clone();
            if let Some(tz) = &schedule.time_zone {
                config.time_zone = tz.clone();
            }
            set_offset(&mut config, schedule);
            apply(&mut config, settings);
            ops::create_job(&client, &keys, job, &config)
                .await
                .map_err(|e| e.to_string())?;
            done(
                cli.json,
                json!({"created": job}),
                format!("created job {job}"),
            )
        }
        Cmd::Job {
            cmd: JobCmd::Delete { job, force },
        } => {
            let deleted = ops::delete_job(&client, &keys, job, *force)
                .await
                .map_err(|e| e.to_string())?;
            done(
                cli.json,
                json!({"deleted": job, "keys": deleted.keys}),
                format!("deleted job {job} ({} keys)", deleted.keys),
            )
        }
        Cmd::Config {
            cmd:
                ConfigCmd::Set {
                    job,
                    handler,
                    schedule,
                    settings,
                },
        } => {
            let new_schedule = schedule_of(schedule)?;
            let handler = handler.clone();
            let config = ops::update_job(&client, &keys, job, |c| {
                if let Some(s) = new_schedule {
                    c.schedule = s;
                }
                if let Some(tz) = &schedule.time_zone {
                    c.time_zone = tz.clone();
                }
                set_offset(c, schedule);
                if handler.is_some() {
                    c.handler = handler;
                }
                apply(c, settings);
            })
            .await
            .map_err(|e| e.to_string())?;
            let text = serde_json::to_string(&config).unwrap_or_default();
            done(
                cli.json,
                json!({"updated": job, "config": config}),
                format!("updated job {job}: {text}"),
            )
        }
        Cmd::Trigger { job } => {
            let id = ops::trigger(&client, &keys, job)
                .await
                .map_err(|e| e.to_string())?;
            done(
                cli.json,
                json!({"triggered": job, "id": id}),
                format!("triggered job {job} (id {id})"),
            )
        }
        Cmd::Disable { target } | Cmd::Enable { target } => {
            let disable = matches!(cli.cmd, Cmd::Disable { .. });
            let verb = if disable { "disabled" } else { "enabled" };
            match target {
                Target::Job { name } => {
                    ops::update_job(&client, &keys, name, |c| c.disabled = disable)
                        .await
                        .map_err(|e| e.to_string())?;
                    done(
                        cli.json,
                        json!({verb: {"job": name}}),
                        format!("{verb} job {name}"),
                    )
                }
                Target::Instance { id, reason } => {
                    ops::set_instance_disabled(&client, &keys, id, disable, reason)
                        .await
                        .map_err(|e| e.to_string())?;
                    let what = if disable {
                        "drained instance"
                    } else {
                        "restored instance"
                    };
                    done(
                        cli.json,
                        json!({verb: {"instance": id}}),
                        format!("{what} {id}"),
                    )
                }
            }
        }
        Cmd::Dump => {
            serde_json::to_string_pretty(&load(&client, &keys).await?).map_err(|e| e.to_string())?
        }
    };
    println!("{out}");
    Ok(())
}

fn schedule_of(s: &ScheduleArgs) -> Result<Option<Schedule>, String> {
    Ok(match (&s.cron, s.every, s.at) {
        (Some(c), None, None) => Some(Schedule::Cron(c.clone())),
        (None, Some(d), None) => Some(Schedule::Every(d)),
        (None, None, Some(t)) => Some(Schedule::At(t)),
        (None, None, None) => None,
        _ => return Err("give only one of --cron, --every, --at".into()),
    })
}

fn set_offset(c: &mut JobConfig, s: &ScheduleArgs) {
    if let Some(off) = s.offset {
        c.offset = (!off.0.is_zero()).then_some(off);
    }
}

fn apply(c: &mut JobConfig, s: &Settings) {
    if s.clear_shard_params {
        c.shard_params.clear();
    }
    if s.clear_selector {
        c.selector = Default::default();
    }
    if s.clear_timeout {
        c.timeout = None;
    }
    if let Some(n) = s.shards {
        c.total = n;
    }
    if let Some(p) = &s.param {
        c.job_param = p.clone();
    }
    for (shard, value) in &s.shard_params {
        c.shard_params.insert(*shard, value.clone());
    }
    if let Some(v) = s.strategy {
        c.strategy = v;
    }
    if let Some(v) = &s.selector {
        c.selector = v.clone();
    }
    if let Some(v) = s.failover {
        c.failover = v;
    }
    if let Some(v) = s.misfire {
        c.misfire = v;
    }
    if let Some(v) = s.timeout {
        c.timeout = Some(v);
    }
    if let Some(v) = s.retries {
        c.max_retries = v;
    }
    if let Some(v) = s.retry_timeouts {
        c.retry_timeouts = v;
    }
    if let Some(v) = &s.description {
        c.description = v.clone();
    }
}

fn done(as_json: bool, value: serde_json::Value, text: String) -> String {
    if as_json { value.to_string() } else { text }
}

async fn load(client: &Client, keys: &Keys) -> Result<ClusterView, String> {
    ClusterView::load(client, keys)
        .await
        .map_err(|e| e.to_string())
}

fn schedule_text(c: &JobConfig) -> String {
    match &c.schedule {
        Schedule::Cron(e) if c.time_zone == "UTC" => format!("cron {e}"),
        Schedule::Cron(e) => format!("cron {e} ({})", c.time_zone),
        Schedule::Every(d) => match c.offset {
            Some(off) => format!("every {d} +{off}"),
            None => format!("every {d}"),
        },
        Schedule::At(t) => format!("at {}", t.to_rfc3339()),
        Schedule::Resident => "resident".to_owned(),
    }
}

async fn status(client: &Client, keys: &Keys, as_json: bool) -> Result<String, String> {
    let view = load(client, keys).await?;
    let rows: Vec<(String, &JobView)> = view.jobs.iter().map(|(n, j)| (n.clone(), j)).collect();
    if as_json {
        let jobs: Vec<_> = rows
            .iter()
            .map(|(name, j)| {
                json!({"job": name, "shards": j.config.as_ref().map(|c| c.total),
                "assigned": j.assigned(), "owned": j.owned_by_assignee(), "converged": j.converged(),
                "generation": j.assignment.as_ref().map(|a| a.generation),
                "disabled": j.config.as_ref().map(|c| c.disabled)})
            })
            .collect();
        return Ok(json!({"namespace": keys.root(), "revision": view.revision,
            "leader": view.leader.as_ref().map(|l| &l.instance), "instances": view.instances.len(),
            "drained": view.disabled, "jobs": jobs, "problems": view.problems})
        .to_string());
    }
    let mut out = format!(
        "namespace {}  leader {}  instances {} ({} drained)  revision {}\n\n",
        keys.root(),
        view.leader.as_ref().map_or("none", |l| l.instance.as_str()),
        view.instances.len(),
        view.disabled.len(),
        view.revision
    );
    let table_rows: Vec<Vec<String>> = rows
        .iter()
        .map(|(name, j)| {
            vec![
                name.clone(),
                j.config
                    .as_ref()
                    .map_or("?".into(), |c| c.total.to_string()),
                j.assigned().to_string(),
                j.owned_by_assignee().to_string(),
                if j.converged() { "yes" } else { "no" }.into(),
                j.assignment
                    .as_ref()
                    .map_or("-".into(), |a| a.generation.to_string()),
                j.config
                    .as_ref()
                    .map_or("(no valid config)".into(), schedule_text),
                state(j),
            ]
        })
        .collect();
    out.push_str(&table(
        &[
            "JOB",
            "SHARDS",
            "ASSIGNED",
            "OWNED",
            "CONVERGED",
            "GEN",
            "SCHEDULE",
            "STATE",
        ],
        &table_rows,
    ));
    if !view.problems.is_empty() {
        out.push_str("\n\nPROBLEMS (values skipped by agents and leader):");
        for p in &view.problems {
            out.push_str(&format!("\n  {}", p.error));
        }
    }
    Ok(out)
}

/// enabled/disabled, and what keeps shards from running.
fn state(j: &JobView) -> String {
    let Some(c) = &j.config else {
        return "-".into();
    };
    let mut s = if c.disabled { "disabled" } else { "enabled" }.to_owned();
    let unassigned = (c.total as usize).saturating_sub(j.assigned());
    if j.assignment.is_some() && unassigned > 0 {
        s.push_str(&format!(
            ", {unassigned} shard(s) with no eligible instance"
        ));
    }
    s
}

fn instances(view: &ClusterView, as_json: bool) -> String {
    if as_json {
        return serde_json::to_string(
            &json!({"instances": view.instances, "drained": view.disabled}),
        )
        .unwrap_or_default();
    }
    let rows: Vec<Vec<String>> = view
        .instances
        .values()
        .map(|i| {
            let labels: Vec<String> = i.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let handlers: Vec<&str> = i.handlers.iter().map(String::as_str).collect();
            vec![
                i.id.to_string(),
                i.host.clone(),
                i.pid.to_string(),
                i.weight.to_string(),
                labels.join(","),
                handlers.join(","),
                if view.disabled.contains(i.id.as_str()) {
                    "drained"
                } else {
                    ""
                }
                .into(),
                i.started_at.format("%Y-%m-%d %H:%M:%S").to_string(),
            ]
        })
        .collect();
    table(
        &[
            "ID", "HOST", "PID", "WEIGHT", "LABELS", "HANDLERS", "DRAINED", "STARTED",
        ],
        &rows,
    )
}

fn jobs(view: &ClusterView, as_json: bool) -> String {
    if as_json {
        let configs: serde_json::Map<String, serde_json::Value> = view
            .jobs
            .iter()
            .filter_map(|(n, j)| Some((n.clone(), serde_json::to_value(j.config.as_ref()?).ok()?)))
            .collect();
        return serde_json::Value::Object(configs).to_string();
    }
    let rows: Vec<Vec<String>> = view
        .jobs
        .iter()
        .filter_map(|(n, j)| {
            let c = j.config.as_ref()?;
            Some(vec![
                n.clone(),
                c.handler_name(n).to_owned(),
                schedule_text(c),
                c.total.to_string(),
                c.strategy.to_string(),
                if c.failover { "failover" } else { "" }.into(),
                if c.disabled { "disabled" } else { "enabled" }.into(),
            ])
        })
        .collect();
    table(
        &[
            "JOB", "HANDLER", "SCHEDULE", "SHARDS", "STRATEGY", "FLAGS", "STATE",
        ],
        &rows,
    )
}

fn job_show(view: &ClusterView, job: &str, as_json: bool) -> Result<String, String> {
    let j = view
        .jobs
        .get(job)
        .ok_or_else(|| format!("no such job: {job}"))?;
    if as_json {
        return serde_json::to_string(j).map_err(|e| e.to_string());
    }
    let mut out = match &j.config {
        Some(c) => format!(
            "job {job}\nconfig {}\n",
            serde_json::to_string(c).unwrap_or_default()
        ),
        None => format!("job {job}\nconfig (missing or invalid; see `shardjob status`)\n"),
    };
    match &j.assignment {
        None => out.push_str("assignment: none yet\n"),
        Some(a) => {
            out.push_str(&format!(
                "assignment generation {}, converged: {}\n\n",
                a.generation,
                if j.converged() { "yes" } else { "no" }
            ));
            let rows: Vec<Vec<String>> = (0..a.owners.len() as u32)
                .map(|s| {
                    let owner = j.owners.get(&s);
                    vec![
                        s.to_string(),
                        a.owner(s).map_or("-".into(), |i| i.to_string()),
                        owner.map_or("-".into(), |o| o.owner.instance.to_string()),
                        owner.map_or("-".into(), |o| o.token.to_string()),
                        j.running.get(&s).map_or(String::new(), |r| {
                            format!("{} since fire {}", r.instance, r.fire_time.to_rfc3339())
                        }),
                        j.cursors
                            .get(&s)
                            .and_then(|c| c.last_fire)
                            .map_or(String::new(), |f| f.to_rfc3339()),
                    ]
                })
                .collect();
            out.push_str(&table(
                &[
                    "SHARD",
                    "ASSIGNEE",
                    "OWNER",
                    "TOKEN",
                    "RUNNING",
                    "LAST FIRE (cursor)",
                ],
                &rows,
            ));
        }
    }
    if !j.done.is_empty() {
        let total = j.config.as_ref().map_or(j.done.len(), |c| c.total as usize);
        out.push_str(&format!("\n\ndone: {} of {total} shards\n", j.done.len()));
        let rows: Vec<Vec<String>> = j
            .done
            .iter()
            .map(|(s, d)| {
                vec![
                    s.to_string(),
                    d.outcome.clone(),
                    d.instance.to_string(),
                    d.token.to_string(),
                    d.fire_time.to_rfc3339(),
                    d.ended_at.to_rfc3339(),
                ]
            })
            .collect();
        out.push_str(&table(
            &["SHARD", "OUTCOME", "INSTANCE", "TOKEN", "FIRE", "ENDED"],
            &rows,
        ));
    }
    Ok(out.trim_end().to_owned())
}

//! `bench-moves`: how many shards each strategy moves on a single join or leave, against the
//! least any balanced assignment could move.
//!
//! For every strategy, total and instance count `n` (before the event), over several seeds with
//! random instance ids and job names: assign from scratch, then apply one join (a new random id)
//! or one leave (a random instance), assign again from the previous assignment, and count the
//! shards whose owner changed. Prints one line per case:
//!
//! `bench=moves strategy=sticky total=100 n=4 event=join moved=20 min=20 balance=1`
//!
//! `moved` and `min` are medians over seeds, `balance` the worst max−min after the event. The
//! last line sums up: `bench=moves event=summary ...`.
//!
//! Usage: `bench-moves [--seeds 9] [--totals 16,100,1000] [--sizes 3,4,8,32]`

use std::process::ExitCode;

use shardjob_integration::rng::SplitMix64;
use shardjob_sharding::{Instance, InstanceId, StrategyKind, min_moves};

struct Args {
    seeds: u64,
    totals: Vec<u32>,
    sizes: Vec<usize>,
}

fn parse_list<T: std::str::FromStr>(flag: &str, v: &str) -> Result<Vec<T>, String> {
    v.split(',')
        .map(|x| {
            x.trim()
                .parse()
                .map_err(|_| format!("{flag}: {x:?} is not a number"))
        })
        .collect()
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        seeds: 9,
        totals: vec![16, 100, 1000],
        sizes: vec![3, 4, 8, 32],
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--seeds" => args.seeds = value.parse().map_err(|_| format!("--seeds: {value:?}"))?,
            "--totals" => args.totals = parse_list(&flag, &value)?,
            "--sizes" => args.sizes = parse_list(&flag, &value)?,
            _ => {
                return Err(format!(
                    "unknown flag {flag}; known: --seeds --totals --sizes"
                ));
            }
        }
    }
    if args.seeds == 0 || args.sizes.contains(&0) || args.totals.contains(&0) {
        return Err("--seeds, --totals and --sizes must be positive".into());
    }
    Ok(args)
}

fn random_instance(rng: &mut SplitMix64) -> Instance {
    // Random ids, so results do not hinge on where a joiner sorts among the others.
    let id = format!("inst-{:012x}", rng.next_u64() >> 16);
    Instance::new(InstanceId::new(id).unwrap_or_else(|e| unreachable!("{e}")))
}

fn median(v: &mut [u32]) -> u32 {
    v.sort_unstable();
    v[v.len() / 2]
}

struct Outcome {
    moved: u32,
    min: u32,
    balance: u32,
}

fn run_case(kind: StrategyKind, total: u32, n: usize, join: bool, seed: u64) -> Outcome {
    let mut rng = SplitMix64::new(seed);
    let job = format!("job-{:08x}", rng.next_u64() as u32);
    let mut eligible: Vec<Instance> = (0..n).map(|_| random_instance(&mut rng)).collect();
    let before = kind.assign(&job, total, &eligible, None);
    if join {
        eligible.push(random_instance(&mut rng));
    } else {
        eligible.remove(rng.below(n as u64) as usize);
    }
    let after = kind.assign(&job, total, &eligible, Some(&before));
    Outcome {
        moved: before.moves_to(&after).len() as u32,
        min: min_moves(total, &eligible, Some(&before)),
        balance: after.spread(&eligible),
    }
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("bench-moves: {e}");
            return ExitCode::from(2);
        }
    };
    let (mut cases, mut sticky_cases, mut sticky_at_min, mut sticky_balance) = (0, 0, 0, 0);
    for kind in StrategyKind::ALL {
        for &total in &args.totals {
            for &n in &args.sizes {
                for join in [true, false] {
                    let runs: Vec<Outcome> = (0..args.seeds)
                        .map(|s| run_case(kind, total, n, join, s * 1_000_003 + total as u64))
                        .collect();
                    let moved = median(&mut runs.iter().map(|o| o.moved).collect::<Vec<_>>());
                    let min = median(&mut runs.iter().map(|o| o.min).collect::<Vec<_>>());
                    let balance = runs.iter().map(|o| o.balance).max().unwrap_or(0);
                    let event = if join { "join" } else { "leave" };
                    println!(
                        "bench=moves strategy={kind} total={total} n={n} event={event} moved={moved} min={min} balance={balance}"
                    );
                    cases += 1;
                    if kind == StrategyKind::Sticky {
                        sticky_cases += runs.len();
                        sticky_at_min += runs.iter().filter(|o| o.moved == o.min).count();
                        sticky_balance = sticky_balance.max(balance);
                    }
                }
            }
        }
    }
    println!(
        "bench=moves event=summary cases={cases} seeds={} sticky_runs_at_min={sticky_at_min}/{sticky_cases} sticky_max_balance={sticky_balance}",
        args.seeds
    );
    ExitCode::SUCCESS
}

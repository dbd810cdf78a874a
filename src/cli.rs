//! The command line: `map`, `run`, `tail`, `demo`, `stub`, `replay`, `redrive`, `status`
//! (SPEC §6).

use crate::app::Role;
use crate::config::Config;
use clap::{Parser, Subcommand};
use std::path::PathBuf;

/// eventrelay: Segment events from Kafka to Segment-style destinations.
#[derive(Debug, Parser)]
#[command(name = "eventrelay", version, about)]
pub struct Cli {
    /// Log format: human or json.
    #[arg(long, global = true, default_value = "human", value_parser = ["human", "json"])]
    pub log_format: String,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Offline event tester: NDJSON events in, the requests that would be sent out. Sends nothing.
    Map {
        /// Config file (destinations and their settings).
        #[arg(long)]
        config: PathBuf,
        /// NDJSON file of events; stdin when absent.
        file: Option<PathBuf>,
    },
    /// The service: map stage, send stage, or both.
    Run {
        /// Config file.
        #[arg(long)]
        config: PathBuf,
        /// Which stages to run.
        #[arg(long, value_enum, default_value = "all")]
        role: Role,
    },
    /// Follow the last delivery attempts of a destination (the ops endpoint's `/deliveries`)
    /// until Ctrl-C.
    Tail {
        /// Config file of the process to follow (its `metrics.listen`).
        #[arg(long)]
        config: PathBuf,
        /// Destination whose attempts to show (e.g. `seg`, `owneriq`).
        #[arg(long)]
        destination: String,
        /// Only attempts that did not succeed.
        #[arg(long)]
        failed: bool,
        /// One line per attempt (text) or one JSON object per line (json).
        #[arg(long, value_enum, default_value = "text")]
        output: crate::ops::Output,
        /// How often to ask, in milliseconds.
        #[arg(long, default_value_t = 1000)]
        interval_ms: u64,
    },
    /// Stand-in HTTP server for both destinations (checks shape, records, injects faults).
    Stub {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:9000")]
        listen: String,
        /// Also append every request as NDJSON to this file.
        #[arg(long)]
        record: Option<PathBuf>,
        /// Answer this status instead of success (fault injection from the start).
        #[arg(long)]
        fault_status: Option<u16>,
        /// Fraction of requests the fault applies to.
        #[arg(long)]
        fault_rate: Option<f64>,
        /// How long the start-up fault lasts, in seconds.
        #[arg(long)]
        fault_for_secs: Option<f64>,
    },
    /// Move a consumer group's offsets (dry run unless --execute).
    Replay {
        /// Config file (Kafka connection).
        #[arg(long)]
        config: PathBuf,
        /// Consumer group to move (e.g. `eventrelay`, `eventrelay.send.seg`).
        #[arg(long)]
        group: String,
        /// Topic whose offsets to move.
        #[arg(long)]
        topic: String,
        /// Only these partitions, comma-separated (default: all).
        #[arg(long, value_delimiter = ',')]
        partitions: Vec<i32>,
        /// To the log start.
        #[arg(long, group = "to")]
        to_earliest: bool,
        /// To the log end.
        #[arg(long, group = "to")]
        to_latest: bool,
        /// To this offset (clamped to the log).
        #[arg(long, group = "to")]
        to_offset: Option<i64>,
        /// To the first record at or after this time (RFC 3339).
        #[arg(long, group = "to")]
        to_datetime: Option<String>,
        /// By this many records from the committed offset (negative re-reads).
        #[arg(long, group = "to", allow_hyphen_values = true)]
        shift_by: Option<i64>,
        /// Commit the new offsets (otherwise print the plan only).
        #[arg(long)]
        execute: bool,
        /// Go ahead when the broker cannot describe the group (liveness then unchecked).
        #[arg(long)]
        force: bool,
        /// Print the plan as a table (text) or as one JSON document (json).
        #[arg(long, value_enum, default_value = "text")]
        output: crate::ops::Output,
    },
    /// Copy dead letters back to the topic they came from (dry run unless --execute).
    Redrive {
        /// Config file (Kafka connection).
        #[arg(long)]
        config: PathBuf,
        /// Dead-letter topic to read.
        #[arg(long)]
        from: String,
        /// Only dead letters with this reason (e.g. http_400).
        #[arg(long)]
        reason: Option<String>,
        /// Only dead letters written at or after this time (RFC 3339).
        #[arg(long)]
        since: Option<String>,
        /// At most this many.
        #[arg(long)]
        limit: Option<usize>,
        /// Start at the beginning of the topic, not after the last redrive.
        #[arg(long)]
        from_beginning: bool,
        /// Copy them (otherwise report only).
        #[arg(long)]
        execute: bool,
        /// Print the result as a table (text) or as one JSON document (json).
        #[arg(long, value_enum, default_value = "text")]
        output: crate::ops::Output,
    },
    /// One screen for an operator: lag per group, circuit and recent deliveries per
    /// destination, dead letters by reason.
    Status {
        /// Config file (Kafka connection, destinations, metrics.listen).
        #[arg(long)]
        config: PathBuf,
        /// Metrics endpoint (HOST:PORT or URL) instead of metrics.listen; repeat for several
        /// processes (map and send run apart).
        #[arg(long = "metrics")]
        metrics: Vec<String>,
        /// Seconds between the two reads of the delivery counters (0: one read, totals only).
        #[arg(long, default_value_t = crate::ops::status::DEFAULT_WINDOW_SECS)]
        window_secs: f64,
        /// Newest dead letters read per partition to count their reasons.
        #[arg(long, default_value_t = crate::ops::status::DEFAULT_SCAN_PER_PARTITION)]
        scan: usize,
        /// Print a table (text) or one JSON document (json).
        #[arg(long, value_enum, default_value = "text")]
        output: crate::ops::Output,
    },
    /// The whole system on one machine: embedded Kafka, stand-in destinations, sample events.
    Demo {
        /// How many times to send the sample events (each copy with fresh messageIds).
        #[arg(long, default_value_t = 50)]
        repeat: usize,
    },
}

/// Run the CLI; returns the process exit code.
pub fn main() -> i32 {
    let cli = Cli::parse();
    // The demo draws its own progress; keep the logs to warnings there unless RUST_LOG says.
    let default_level = match cli.command {
        Command::Demo { .. } => "warn",
        _ => "info",
    };
    crate::ops::init_logging(&cli.log_format, default_level);
    let result = match cli.command {
        Command::Map { config, file } => crate::tester::run(&config, file.as_deref()),
        Command::Run { config, role } => Config::load(Some(&config)).and_then(|cfg| {
            crate::app::runtime()?.block_on(crate::app::run(
                cfg,
                role,
                crate::app::shutdown_signal(),
            ))
        }),
        Command::Demo { repeat } => crate::demo::run(repeat),
        Command::Tail {
            config,
            destination,
            failed,
            output,
            interval_ms,
        } => Config::load(Some(&config)).and_then(|cfg| {
            crate::ops::deliveries::run_tail(
                &cfg,
                &crate::ops::deliveries::TailArgs {
                    destination,
                    failed,
                    output,
                    interval: std::time::Duration::from_millis(interval_ms.max(100)),
                },
            )
        }),
        Command::Replay {
            config,
            group,
            topic,
            partitions,
            to_earliest,
            to_latest,
            to_offset,
            to_datetime,
            shift_by,
            execute,
            force,
            output,
        } => (|| {
            use crate::ops::replay::{parse_datetime, ReplayArgs, Target};
            let target = match (to_earliest, to_latest, to_offset, to_datetime, shift_by) {
                (true, ..) => Target::Earliest,
                (_, true, ..) => Target::Latest,
                (_, _, Some(o), ..) => Target::Offset(o),
                (_, _, _, Some(d), _) => Target::Datetime(parse_datetime(&d)?),
                (.., Some(n)) => Target::ShiftBy(n),
                _ => anyhow::bail!("say where to: --to-earliest, --to-latest, --to-offset N, --to-datetime T or --shift-by N"),
            };
            let cfg = Config::load(Some(&config))?;
            let report = crate::ops::replay::run(
                &cfg,
                &ReplayArgs {
                    group: &group,
                    topic: &topic,
                    partitions: &partitions,
                    target,
                    execute,
                    force,
                },
            )?;
            crate::ops::print_report(output, &report, crate::ops::replay::ReplayReport::to_text)
        })(),
        Command::Redrive {
            config,
            from,
            reason,
            since,
            limit,
            from_beginning,
            execute,
            output,
        } => (|| {
            let cfg = Config::load(Some(&config))?;
            let since_ms = since
                .as_deref()
                .map(crate::ops::replay::parse_datetime)
                .transpose()?;
            let report = crate::ops::redrive::run(
                &cfg,
                &crate::ops::redrive::RedriveArgs {
                    from: &from,
                    reason: reason.as_deref(),
                    since_ms,
                    limit,
                    from_beginning,
                    execute,
                },
            )?;
            crate::ops::print_report(output, &report, crate::ops::redrive::RedriveReport::to_text)
        })(),
        Command::Status {
            config,
            metrics,
            window_secs,
            scan,
            output,
        } => (|| {
            let cfg = Config::load(Some(&config))?;
            let window = std::time::Duration::try_from_secs_f64(window_secs)
                .map_err(|_| anyhow::anyhow!("--window-secs must be 0 or more"))?;
            let args = crate::ops::status::StatusArgs {
                metrics,
                window,
                scan_per_partition: scan,
            };
            let report = crate::app::runtime()?.block_on(crate::ops::status::run(&cfg, &args))?;
            crate::ops::print_report(output, &report, crate::ops::status::StatusReport::to_text)
        })(),
        Command::Stub {
            listen,
            record,
            fault_status,
            fault_rate,
            fault_for_secs,
        } => crate::testkit::stub::run(
            &listen,
            record.as_deref(),
            crate::testkit::stub::Fault {
                status: fault_status,
                rate: fault_rate,
                for_secs: fault_for_secs,
                ..Default::default()
            },
        ),
    };
    match result {
        Ok(()) => 0,
        // `eventrelay map … | head` closing the pipe early is not an error.
        Err(e)
            if e.downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe) =>
        {
            0
        }
        Err(e) => {
            eprintln!("eventrelay: error: {e:#}");
            1
        }
    }
}

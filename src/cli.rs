//! The command line: `map`, `run`, `tail`, `demo`, `stub`, `replay`, `redrive`, `status`
//! (SPEC §6).

use crate::app::Role;
use crate::config::Config;
use anyhow::Result;
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
    Map(MapCmd),
    /// The service: map stage, send stage, or both.
    Run(RunCmd),
    /// Follow the last delivery attempts of a destination (the ops endpoint's `/deliveries`)
    /// until Ctrl-C.
    Tail(TailCmd),
    /// Stand-in HTTP server for both destinations (checks shape, records, injects faults).
    Stub(StubCmd),
    /// Move a consumer group's offsets (dry run unless --execute).
    Replay(ReplayCmd),
    /// Copy dead letters back to the topic they came from (dry run unless --execute).
    Redrive(RedriveCmd),
    /// One screen for an operator: lag per group, circuit and recent deliveries per
    /// destination, dead letters by reason.
    Status(StatusCmd),
    /// The whole system on one machine: embedded Kafka, ingest, stand-in destinations, sample
    /// events.
    Demo(DemoCmd),
}

/// Run the CLI; returns the process exit code.
pub fn main() -> i32 {
    let cli = Cli::parse();
    // The demo draws its own progress; keep the logs to warnings there unless RUST_LOG says.
    let default_level = match cli.command {
        Command::Demo(_) => "warn",
        _ => "info",
    };
    crate::ops::init_logging(&cli.log_format, default_level);
    let result = match cli.command {
        Command::Map(c) => c.run(),
        Command::Run(c) => c.run(),
        Command::Demo(c) => c.run(),
        Command::Tail(c) => c.run(),
        Command::Replay(c) => c.run(),
        Command::Redrive(c) => c.run(),
        Command::Status(c) => c.run(),
        Command::Stub(c) => c.run(),
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

/// Arguments of `eventrelay map`.
#[derive(Debug, clap::Args)]
pub struct MapCmd {
    /// Config file (destinations and their settings).
    #[arg(long)]
    pub config: PathBuf,
    /// NDJSON file of events; stdin when absent.
    pub file: Option<PathBuf>,
}

/// Arguments of `eventrelay run`.
#[derive(Debug, clap::Args)]
pub struct RunCmd {
    /// Config file.
    #[arg(long)]
    pub config: PathBuf,
    /// Which stages to run.
    #[arg(long, value_enum, default_value = "all")]
    pub role: Role,
}

/// Arguments of `eventrelay tail`.
#[derive(Debug, clap::Args)]
pub struct TailCmd {
    /// Config file of the process to follow (its `metrics.listen`).
    #[arg(long)]
    pub config: PathBuf,
    /// Destination whose attempts to show (e.g. `seg`, `owneriq`).
    #[arg(long)]
    pub destination: String,
    /// Only attempts that did not succeed.
    #[arg(long)]
    pub failed: bool,
    /// One line per attempt (text) or one JSON object per line (json).
    #[arg(long, value_enum, default_value = "text")]
    pub output: crate::ops::Output,
    /// How often to ask, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    pub interval_ms: u64,
}

/// Arguments of `eventrelay stub`.
#[derive(Debug, clap::Args)]
pub struct StubCmd {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9000")]
    pub listen: String,
    /// Also append every request as NDJSON to this file.
    #[arg(long)]
    pub record: Option<PathBuf>,
    /// Answer this status instead of success (fault injection from the start).
    #[arg(long)]
    pub fault_status: Option<u16>,
    /// Fraction of requests the fault applies to.
    #[arg(long)]
    pub fault_rate: Option<f64>,
    /// How long the start-up fault lasts, in seconds.
    #[arg(long)]
    pub fault_for_secs: Option<f64>,
}

/// Arguments of `eventrelay replay`.
#[derive(Debug, clap::Args)]
pub struct ReplayCmd {
    /// Config file (Kafka connection).
    #[arg(long)]
    pub config: PathBuf,
    /// Consumer group to move (e.g. `eventrelay`, `eventrelay.send.seg`).
    #[arg(long)]
    pub group: String,
    /// Topic whose offsets to move.
    #[arg(long)]
    pub topic: String,
    /// Only these partitions, comma-separated (default: all).
    #[arg(long, value_delimiter = ',')]
    pub partitions: Vec<i32>,
    /// To the log start.
    #[arg(long, group = "to")]
    pub to_earliest: bool,
    /// To the log end.
    #[arg(long, group = "to")]
    pub to_latest: bool,
    /// To this offset (clamped to the log).
    #[arg(long, group = "to")]
    pub to_offset: Option<i64>,
    /// To the first record at or after this time (RFC 3339).
    #[arg(long, group = "to")]
    pub to_datetime: Option<String>,
    /// By this many records from the committed offset (negative re-reads).
    #[arg(long, group = "to", allow_hyphen_values = true)]
    pub shift_by: Option<i64>,
    /// Commit the new offsets (otherwise print the plan only).
    #[arg(long)]
    pub execute: bool,
    /// Go ahead when the broker cannot describe the group (liveness then unchecked).
    #[arg(long)]
    pub force: bool,
    /// Print the plan as a table (text) or as one JSON document (json).
    #[arg(long, value_enum, default_value = "text")]
    pub output: crate::ops::Output,
}

/// Arguments of `eventrelay redrive`.
#[derive(Debug, clap::Args)]
pub struct RedriveCmd {
    /// Config file (Kafka connection).
    #[arg(long)]
    pub config: PathBuf,
    /// Dead-letter topic to read.
    #[arg(long)]
    pub from: String,
    /// Only dead letters with this reason (e.g. http_400).
    #[arg(long)]
    pub reason: Option<String>,
    /// Only dead letters written at or after this time (RFC 3339).
    #[arg(long)]
    pub since: Option<String>,
    /// At most this many.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Start at the beginning of the topic, not after the last redrive.
    #[arg(long)]
    pub from_beginning: bool,
    /// Copy them (otherwise report only).
    #[arg(long)]
    pub execute: bool,
    /// Print the result as a table (text) or as one JSON document (json).
    #[arg(long, value_enum, default_value = "text")]
    pub output: crate::ops::Output,
}

/// Arguments of `eventrelay status`.
#[derive(Debug, clap::Args)]
pub struct StatusCmd {
    /// Config file (Kafka connection, destinations, metrics.listen).
    #[arg(long)]
    pub config: PathBuf,
    /// Metrics endpoint (HOST:PORT or URL) instead of metrics.listen; repeat for several
    /// processes (map and send run apart).
    #[arg(long = "metrics")]
    pub metrics: Vec<String>,
    /// Seconds between the two reads of the delivery counters (0: one read, totals only).
    #[arg(long, default_value_t = crate::ops::status::DEFAULT_WINDOW_SECS)]
    pub window_secs: f64,
    /// Newest dead letters read per partition to count their reasons.
    #[arg(long, default_value_t = crate::ops::status::DEFAULT_SCAN_PER_PARTITION)]
    pub scan: usize,
    /// Print a table (text) or one JSON document (json).
    #[arg(long, value_enum, default_value = "text")]
    pub output: crate::ops::Output,
}

impl MapCmd {
    /// Carry the command out.
    fn run(self) -> Result<()> {
        let MapCmd { config, file } = self;
        crate::tester::run(&config, file.as_deref())
    }
}

impl RunCmd {
    /// Carry the command out.
    fn run(self) -> Result<()> {
        let RunCmd { config, role } = self;
        let cfg = Config::load(Some(&config))?;
        let rt = crate::app::runtime()?;
        let result = rt.block_on(crate::app::run(cfg, role, crate::app::shutdown_signal()));
        // Stages that did not stop within the drain bound must not keep the process alive.
        rt.shutdown_timeout(std::time::Duration::from_secs(5));
        result
    }
}

impl DemoCmd {
    /// Carry the command out.
    fn run(self) -> Result<()> {
        let DemoCmd { repeat } = self;
        crate::demo::run(repeat)
    }
}

impl TailCmd {
    /// Carry the command out.
    fn run(self) -> Result<()> {
        let TailCmd {
            config,
            destination,
            failed,
            output,
            interval_ms,
        } = self;
        let cfg = Config::load(Some(&config))?;
        let args = crate::ops::deliveries::TailArgs {
            destination,
            failed,
            output,
            interval: std::time::Duration::from_millis(interval_ms.max(100)),
        };
        crate::app::runtime()?.block_on(crate::ops::deliveries::run_tail(&cfg, &args))
    }
}

impl ReplayCmd {
    /// Carry the command out.
    fn run(self) -> Result<()> {
        let ReplayCmd {
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
        } = self;
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
    }
}

impl RedriveCmd {
    /// Carry the command out.
    fn run(self) -> Result<()> {
        let RedriveCmd {
            config,
            from,
            reason,
            since,
            limit,
            from_beginning,
            execute,
            output,
        } = self;
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
    }
}

impl StatusCmd {
    /// Carry the command out.
    fn run(self) -> Result<()> {
        let StatusCmd {
            config,
            metrics,
            window_secs,
            scan,
            output,
        } = self;
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
    }
}

impl StubCmd {
    /// Carry the command out.
    fn run(self) -> Result<()> {
        let StubCmd {
            listen,
            record,
            fault_status,
            fault_rate,
            fault_for_secs,
        } = self;
        crate::testkit::stub::run(
            &listen,
            record.as_deref(),
            crate::testkit::stub::Fault {
                status: fault_status,
                rate: fault_rate,
                for_secs: fault_for_secs,
                ..Default::default()
            },
        )
    }
}

/// Arguments of `eventrelay demo`.
#[derive(Debug, clap::Args)]
pub struct DemoCmd {
    /// How many times to send the sample events (each copy with fresh messageIds).
    #[arg(long, default_value_t = 50)]
    pub repeat: usize,
}

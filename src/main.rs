//! The `portcullis` binary: parse the command line, set up logging, run until a signal.

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use portcullis::cli::{Cli, Command, LogFormat, RunArgs};
use portcullis::telemetry::diag::{DiagStats, Diagnostics};
use portcullis::{RunError, cmd, policy_file};

#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let code = match cli.command {
        Command::Check(args) => cmd::check(&args, &mut std::io::stdout().lock()),
        Command::Explain(args) => cmd::explain(
            &args,
            &mut std::io::stdout().lock(),
            &mut std::io::stderr().lock(),
        ),
        Command::Test(args) => cmd::test::run(
            &args,
            &mut std::io::stdout().lock(),
            &mut std::io::stderr().lock(),
        ),
        Command::Diff(args) => cmd::diff(
            &args,
            &mut std::io::stdout().lock(),
            &mut std::io::stderr().lock(),
        ),
        Command::Health(args) => cmd::health::check(
            &args,
            &mut std::io::stdout().lock(),
            &mut std::io::stderr().lock(),
        ),
        Command::Schema(args) => {
            portcullis::schema::print(args.kind, &mut std::io::stdout().lock())
        }
        Command::Suggest(args) => cmd::suggest::run(
            &args,
            &mut std::io::stdout().lock(),
            &mut std::io::stderr().lock(),
        ),
        Command::Token(_) => {
            cmd::token::run(&mut std::io::stdout().lock(), &mut std::io::stderr().lock())
        }
        Command::Import(args) => cmd::import::run(
            &args,
            &mut std::io::stdout().lock(),
            &mut std::io::stderr().lock(),
        ),
        Command::Run(args) => return run(*args),
    };
    match code {
        Ok(code) => ExitCode::from(code as u8),
        Err(e) => {
            eprintln!("portcullis: {e}");
            ExitCode::from(cmd::exit::USAGE as u8)
        }
    }
}

fn run(args: RunArgs) -> ExitCode {
    let diagnostics = match Diagnostics::stderr() {
        Ok(d) => d,
        Err(e) => {
            eprintln!("portcullis: cannot set up the diagnostic log: {e}");
            return ExitCode::FAILURE;
        }
    };
    init_tracing(args.log_format, &diagnostics);
    let code = serve(args, diagnostics.stats());
    // Bounded: a stalled stderr must not keep the process from exiting.
    diagnostics.finish(LAST_LINES);
    code
}

/// How long the last diagnostic lines get to reach stderr at exit.
const LAST_LINES: Duration = Duration::from_secs(1);

fn serve(args: RunArgs, diagnostics: DiagStats) -> ExitCode {
    // This thread serves connections too; `--workers` adds one thread (and
    // event loop) per further core.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("portcullis: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let policy = args.policy.clone();
    match runtime.block_on(portcullis::run(args, diagnostics, shutdown_signal())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(RunError::Policy { problems, .. }) => {
            for p in &problems {
                eprintln!("{}", policy_file::render(&policy, p));
            }
            tracing::error!(policy = %policy.display(), errors = problems.len(), "policy does not load; not starting");
            ExitCode::FAILURE
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot start");
            eprintln!("portcullis: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Diagnostics go to stderr, through a bounded non-blocking writer; stdout is the audit
/// log's by default.
fn init_tracing(format: LogFormat, diagnostics: &Diagnostics) {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_env("PORTCULLIS_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(diagnostics.make_writer())
        .with_ansi(ansi);
    match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init(),
        LogFormat::Text => builder.init(),
    }
}

/// Resolves on SIGTERM (what ECS and Kubernetes send) or SIGINT (Ctrl-C).
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!(signal = "SIGTERM", "shutting down"),
        _ = int.recv() => tracing::info!(signal = "SIGINT", "shutting down"),
    }
}

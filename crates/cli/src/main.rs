//! `rustformers`: run pipelines, inspect checkpoints, report the environment.
//!
//! Every failure is one line on stderr and exit code 2; nothing already printed is lost.

mod args;
mod bench;
mod commands;
mod serve;
mod train;

use std::process::ExitCode;

fn main() -> ExitCode {
    // A bug must still not dump a backtrace on users: one line, distinct exit code.
    std::panic::set_hook(Box::new(|info| {
        let msg = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        let at = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        eprintln!("rustformers: internal error{at}: {msg} (please report this)");
    }));
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("RUSTFORMERS_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .with_target(false)
        .without_time()
        .init();
    match commands::main() {
        Ok(code) => code,
        Err(e) => {
            let text = format!("{e:#}").replace('\n', " ");
            eprintln!("rustformers: error: {text}");
            ExitCode::from(2)
        }
    }
}

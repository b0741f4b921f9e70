//! `rustformers`: run pipelines, inspect checkpoints, report the environment.
//!
//! Every failure is one line on stderr and exit code 2; nothing already printed is lost.

mod args;
mod bench;
mod commands;
mod serve;
mod train;

use std::process::ExitCode;

/// glibc's allocator hands every buffer above its mmap threshold (128 KB, rising to at
/// most 32 MB) straight back to the kernel and trims the heap above 128 KB free, so a
/// training step, which allocates and frees tens of megabytes op by op, page-faults its
/// way through fresh zeroed pages every step. Keeping up to 256 MB of freed heap and
/// serving buffers below 64 MB from it made `bench train-seqcls` 19% faster (8.1 ->
/// 9.6 samples/s; peak RSS 1123 -> 1330 MB, PyTorch's is 1502 MB) and left the other work
/// items unchanged. With the fused training ops a step frees more than 256 MB at its
/// end, so the heap was trimmed and refilled every step (2.0 M page faults in a bench
/// run): keeping up to 1 GB took that to 0.2 M and train-seqcls from 29.7 to 35.2
/// samples/s, peak RSS unchanged (636 MB). A `GLIBC_TUNABLES` that sets malloc options
/// wins.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn tune_allocator() {
    if std::env::var("GLIBC_TUNABLES").is_ok_and(|t| t.contains("malloc")) {
        return;
    }
    // SAFETY: mallopt only sets allocator parameters; called before any other thread.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 64 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn tune_allocator() {}

fn main() -> ExitCode {
    tune_allocator();
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

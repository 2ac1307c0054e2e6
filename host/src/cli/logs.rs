//! Logs: every gateway event (swap, refusal, rollback, auto-revert, fault) is one `tracing`
//! event with its fields. On stderr as human lines by default (`flowgate: MESSAGE key=value`,
//! warnings and errors marked), or one JSON object a line for log pipelines.

use std::fmt;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// `flowgate: MESSAGE key=value ...`, for people.
    #[default]
    Human,
    /// One JSON object a line (timestamp, level, message and fields), for log pipelines.
    Json,
}

/// Installs the subscriber for the process; `FLOWGATE_LOG` (an env-filter-like level: `error`,
/// `warn`, `info`, `debug`) sets the level, `info` by default.
pub fn init(format: LogFormat) {
    let level = match std::env::var("FLOWGATE_LOG").as_deref() {
        Ok("error") => Level::ERROR,
        Ok("warn") => Level::WARN,
        Ok("debug") => Level::DEBUG,
        Ok("trace") => Level::TRACE,
        _ => Level::INFO,
    };
    let builder = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr);
    // A second init (never in the binary) is not worth failing for.
    let _ = match format {
        LogFormat::Human => builder.event_format(Human).try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .try_init(),
    };
}

/// `flowgate: [warning: |error: ]MESSAGE key=value ...`
struct Human;

impl<S, N> FormatEvent<S, N> for Human
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mark = match *event.metadata().level() {
            Level::ERROR => "error: ",
            Level::WARN => "warning: ",
            _ => "",
        };
        write!(writer, "flowgate: {mark}")?;
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}

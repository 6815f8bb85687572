//! A tracing subscriber that writes through Slurm's log functions, so the plugin's messages
//! land where Slurm's own do (slurmd's log, srun's terminal for errors).

use std::fmt::Write as _;

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;

use crate::ffi;

/// Installs the subscriber once per process. In srun/sbatch (`local`), informational
/// messages go to verbose level so they do not clutter the user's terminal.
pub(crate) fn init(local: bool) {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let subscriber = tracing_subscriber::registry().with(SlurmLayer { local });
        let _ = tracing::subscriber::set_global_default(subscriber);
    });
}

struct SlurmLayer {
    local: bool,
}

#[derive(Default)]
struct Message(String);

impl Visit for Message {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.0, "{value:?}");
        } else {
            let _ = write!(self.0, " {}={value:?}", field.name());
        }
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.0.push_str(value);
        } else {
            let _ = write!(self.0, " {}={value}", field.name());
        }
    }
}

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for SlurmLayer {
    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let mut m = Message::default();
        event.record(&mut m);
        // The one place log lines get their prefix.
        let mut line = format!("flexmig: {}", m.0);
        if let Some(span) = ctx.event_span(event) {
            if *event.metadata().level() >= Level::DEBUG {
                line.push_str(&format!(" [{}]", span.name()));
            }
        }
        let level = match *event.metadata().level() {
            Level::ERROR => ffi::Level::Error,
            Level::WARN | Level::INFO if self.local => ffi::Level::Verbose,
            Level::WARN | Level::INFO => ffi::Level::Info,
            Level::DEBUG => ffi::Level::Debug,
            Level::TRACE => ffi::Level::Debug2,
        };
        ffi::log(level, &line);
    }
}

//! [`EventLog`]: the engine's recent notable log lines, for the console's event list — reloads
//! with their outcome and error, plugin faults with their reason, restarts and hand-overs,
//! rollouts, the cluster's link. A `tracing` layer ([`layer`]) keeps every line the engine logs
//! at `info` or above (a plugin's own lines at `warn` or above) in a ring of the last [`KEPT`].
//!
//! Each call site keeps at most [`PER_SITE_PER_SEC`] lines a second: a burst (a plugin faulting on
//! every connection, a flood of refused clients) cannot push everything else out of the ring.
//! The lines past the limit are counted, and the next line the site keeps says how many.
//!
//! The log is the process's, as the `tracing` dispatcher it listens to is: one engine per
//! process, read by its admin endpoint through [`recent`].

use std::collections::{HashMap, VecDeque};
use std::fmt::Write as _;
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};
use tracing::field::{Field, Visit};
use tracing::{Level, Subscriber};
use tracing_subscriber::Layer;
use tracing_subscriber::filter::{Filtered, Targets};
use tracing_subscriber::layer::Context;

use crate::wall_clock::unix_ms;

/// Lines kept.
pub const KEPT: usize = 500;

/// Lines one call site keeps per second at most.
pub const PER_SITE_PER_SEC: u32 = 5;

/// Bytes of a line's message and fields kept.
const MAX_TEXT: usize = 2048;

/// One line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Its place in the log: one more than the line before.
    pub id: u64,
    /// When, in milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// `ERROR`, `WARN` or `INFO`.
    pub level: String,
    /// What happened, as the line says it.
    pub message: String,
    /// The line's other fields, `name=value`, space separated.
    pub fields: String,
    /// The plugin the line is about, if it names one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plugin: Option<String>,
    /// Lines of the same call site left out since its last kept one (over its rate).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub suppressed: u64,
}

fn is_zero(count: &u64) -> bool {
    *count == 0
}

/// The recent lines, and each call site's rate.
#[derive(Debug, Default)]
pub struct EventLog {
    inner: Mutex<Ring>,
}

#[derive(Debug, Default)]
struct Ring {
    /// The id the next line gets (ids start at 1).
    next_id: u64,
    lines: VecDeque<Event>,
    /// Per call site (by its name, `event FILE:LINE`): when its current second began, its lines
    /// in it, and those left out.
    sites: HashMap<&'static str, Site>,
}

#[derive(Debug)]
struct Site {
    since: Instant,
    kept: u32,
    suppressed: u64,
}

impl EventLog {
    /// Keeps a line of call site `site`, unless the site is over its rate (then counts it).
    fn record(&self, site: &'static str, now: Instant, line: impl FnOnce() -> Event) {
        let mut ring = self.inner.lock().unwrap_or_else(|poison| poison.into_inner());
        let site = ring.sites.entry(site).or_insert(Site { since: now, kept: 0, suppressed: 0 });
        if now.duration_since(site.since) >= Duration::from_secs(1) {
            (site.since, site.kept) = (now, 0);
        }
        if site.kept >= PER_SITE_PER_SEC {
            site.suppressed += 1;
            return;
        }
        site.kept += 1;
        let suppressed = std::mem::take(&mut site.suppressed);
        ring.next_id += 1;
        let mut event = line();
        (event.id, event.suppressed) = (ring.next_id, suppressed);
        if ring.lines.len() == KEPT {
            ring.lines.pop_front();
        }
        ring.lines.push_back(event);
    }

    /// The lines kept after line `after` (every kept line for 0), oldest first.
    pub fn since(&self, after: u64) -> Vec<Event> {
        let ring = self.inner.lock().unwrap_or_else(|poison| poison.into_inner());
        let first = ring.lines.partition_point(|event| event.id <= after);
        ring.lines.range(first..).cloned().collect()
    }
}

/// The process's log.
static LOG: LazyLock<EventLog> = LazyLock::new(EventLog::default);

/// The process's recent notable lines.
pub fn recent() -> &'static EventLog {
    &LOG
}

/// The layer that keeps the engine's lines (`info` and above) and plugins' (`warn` and above) in
/// [`recent`], whatever `RUST_LOG` lets through to standard error.
pub fn layer<S: Subscriber>() -> Filtered<Keeper, Targets, S> {
    let targets = Targets::new().with_target("wasmpush", Level::INFO).with_target("plugin", Level::WARN);
    Keeper(&LOG).with_filter(targets)
}

/// Writes the lines it is given to an [`EventLog`].
#[derive(Debug)]
pub struct Keeper(&'static EventLog);

impl<S: Subscriber> Layer<S> for Keeper {
    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
        let metadata = event.metadata();
        self.0.record(metadata.name(), Instant::now(), || {
            let mut text = Text::default();
            event.record(&mut text);
            Event {
                id: 0,
                at_ms: unix_ms(SystemTime::now()),
                level: metadata.level().to_string(),
                message: cut(text.message),
                fields: cut(text.fields),
                plugin: text.plugin,
                suppressed: 0,
            }
        });
    }
}

/// A line's message and fields, as text.
#[derive(Default)]
struct Text {
    message: String,
    fields: String,
    plugin: Option<String>,
}

impl Visit for Text {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.record(field, value.to_owned());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.record(field, format!("{value:?}"));
    }
}

impl Text {
    fn record(&mut self, field: &Field, value: String) {
        match field.name() {
            "message" => self.message = value,
            name => {
                if name == "plugin" {
                    self.plugin = Some(value.clone());
                }
                let gap = if self.fields.is_empty() { "" } else { " " };
                let _ = write!(self.fields, "{gap}{name}={value}");
            }
        }
    }
}

/// `text` cut to [`MAX_TEXT`] bytes.
fn cut(mut text: String) -> String {
    if text.len() > MAX_TEXT {
        text.truncate(text.floor_char_boundary(MAX_TEXT));
        text.push('…');
    }
    text
}

#[cfg(test)]
mod tests {
    use tracing_subscriber::layer::SubscriberExt;

    use super::*;

    fn line(message: &str) -> Event {
        Event {
            id: 0,
            at_ms: 0,
            level: "WARN".into(),
            message: message.into(),
            fields: String::new(),
            plugin: None,
            suppressed: 0,
        }
    }

    #[test]
    fn a_site_keeps_its_rate_and_the_next_kept_line_counts_what_it_left_out() {
        let log = EventLog::default();
        let (site, start) = ("event a.rs:1", Instant::now());
        for n in 0..12 {
            log.record(site, start, || line(&format!("burst {n}")));
        }
        let kept = log.since(0);
        assert_eq!(kept.len(), PER_SITE_PER_SEC as usize);
        assert!(kept.iter().all(|event| event.suppressed == 0));
        log.record(site, start + Duration::from_secs(1), || line("after"));
        let after = log.since(kept.last().unwrap().id);
        assert_eq!((after.len(), after[0].message.as_str(), after[0].suppressed), (1, "after", 7));
    }

    #[test]
    fn the_ring_keeps_the_newest_lines() {
        let log = EventLog::default();
        let start = Instant::now();
        for n in 0..KEPT + 10 {
            // A second apart: no line is over its site's rate.
            log.record("event a.rs:1", start + Duration::from_secs(n as u64), || line("x"));
        }
        let kept = log.since(0);
        assert_eq!((kept.len(), kept[0].id, kept.last().unwrap().id), (KEPT, 11, KEPT as u64 + 10));
        assert_eq!(log.since(KEPT as u64 + 5).len(), 5);
    }

    #[test]
    fn the_layer_keeps_engine_lines_with_their_fields_and_plugin() {
        let subscriber = tracing_subscriber::registry().with(layer());
        let before = recent().since(0).last().map_or(0, |event| event.id);
        tracing::subscriber::with_default(subscriber, || {
            tracing::error!(plugin = "quote", cause = "not wasm", "plugin load failed");
            tracing::debug!("not kept: below info");
            tracing::warn!(target: "plugin", plugin = "quote", "a plugin's own warning");
            tracing::info!(target: "plugin", "not kept: a plugin's info line");
        });
        let kept: Vec<_> = recent().since(before).into_iter().filter(|event| event.plugin.is_some()).collect();
        assert_eq!(kept.len(), 2, "{kept:?}");
        assert_eq!((kept[0].level.as_str(), kept[0].message.as_str()), ("ERROR", "plugin load failed"));
        assert_eq!(kept[0].fields, "plugin=quote cause=not wasm");
        assert_eq!(kept[1].message, "a plugin's own warning");
    }
}

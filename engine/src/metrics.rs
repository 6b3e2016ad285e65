//! [`Metrics`]: the engine's counters and histograms, shared by the server, the connections, the
//! shards and the reloader, exposed by the admin endpoint as Prometheus text (`/metrics`) and
//! summarised in `/status`. Built on `prometheus-client`; nothing here is global.
//!
//! Hot-path counters are plain atomics; shards add a whole batch's counts at once.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Metric, Registry};

use crate::call_stats::PluginStatsTable;

/// Labels of a labelled counter: one `(name, value)` pair.
type Labels = Vec<(&'static str, &'static str)>;

/// Every metric the engine exports.
#[derive(Debug)]
pub struct Metrics {
    /// Holds every metric below, for encoding.
    registry: Registry,
    /// Connections open now (handshake completed, not yet closed).
    pub connections: Gauge,
    /// Handshakes completed.
    pub handshakes_accepted: Counter,
    /// Handshakes refused (404, 400, 403) or failed (timeout, protocol error).
    pub handshakes_rejected: Counter,
    /// Handshakes refused 401: a token missing or invalid.
    pub handshakes_unauthorized: Counter,
    /// Sockets answered 503 at once: over a connection or handshake limit.
    pub handshakes_over_limit: Counter,
    /// Data frames pushed.
    pub frames_pushed: Counter,
    /// Bytes of data frames pushed.
    pub bytes_pushed: Counter,
    /// Plugin calls by outcome.
    pub calls: CallCounters,
    /// Duration of one batch call, in seconds.
    pub call_duration: Histogram,
    /// How late a shard's tick started, in seconds.
    pub tick_lateness: Histogram,
    /// Plugin loads that published a version.
    pub reloads_ok: Counter,
    /// Plugin loads that failed (the previous version kept serving).
    pub reloads_failed: Counter,
    /// Connections closed because the client did not read.
    pub slow_consumer_closes: Counter,
    /// Connections closed because the client was silent past the idle timeout.
    pub idle_closes: Counter,
    /// Connections closed because the client kept sending over its message rate.
    pub flood_closes: Counter,
    /// Connections closed because their plugin kept faulting on them.
    pub faulting_closes: Counter,
    /// Connections closed because their token expired (not refreshed in time).
    pub token_expired_closes: Counter,
    /// Token refreshes accepted.
    pub token_refreshes: Counter,
    /// Frames left unsent because they were identical to the last one (`skip_unchanged`).
    pub frames_unchanged: Counter,
    /// Frames pushed by calls that a data change triggered.
    pub data_pushes: Counter,
    /// Keys whose value a published batch changed.
    pub data_updates: Counter,
    /// Keys the data store holds now.
    pub data_keys: Gauge,
    /// Bytes of every key and value the data store holds now.
    pub data_bytes: Gauge,
    /// Rollouts ended, by outcome (`promoted`, `rolled_back`, `aborted`, `finished`, `ended`).
    pub rollouts: Family<Labels, Counter>,
    /// Shard phases that started on time (less than a whole phase late).
    pub phases_on_time: Counter,
    /// Shard phases that started a whole phase or more late: their connections' ticks came late.
    pub phases_late: Counter,
    /// Writes to the publish API that were applied.
    pub publishes_ok: Counter,
    /// Writes to the publish API refused for what they asked (4xx).
    pub publishes_refused: Counter,
    /// Writes to the publish API that failed in the engine or its cluster (5xx).
    pub publishes_failed: Counter,
    /// Time the console's sampler spent (its reading every second, and while a console is open
    /// the update it sends), in microseconds.
    pub console_sampling_us: Counter,
    /// Each plugin's calls and connections, for the console (not exported: a label per plugin
    /// is the console's business, not every scrape's).
    pub plugins: PluginStatsTable,
}

/// Plugin calls by outcome: one counter each of `wasmpush_plugin_calls_total{outcome=…}`.
#[derive(Debug)]
pub struct CallCounters {
    /// A payload was pushed.
    pub ok: Counter,
    /// The plugin had nothing to push.
    pub none: Counter,
    /// The plugin returned a business error.
    pub error: Counter,
    /// The call trapped.
    pub trap: Counter,
    /// The call ran past its deadline.
    pub timeout: Counter,
    /// The instance hit its memory cap.
    pub memory_limit: Counter,
    /// The payload was over `max_payload_bytes`.
    pub payload_too_large: Counter,
    /// The plugin broke the contract.
    pub contract: Counter,
    /// The call failed in the host (a host function or the component ABI), not in the guest.
    pub host_error: Counter,
}

impl CallCounters {
    /// Calls that faulted (trap, timeout, memory, contract, host).
    pub fn faults(&self) -> u64 {
        self.trap.get() + self.timeout.get() + self.memory_limit.get() + self.contract.get() + self.host_error.get()
    }
}

/// `metric`, registered in `registry` under `name` with `help`.
fn registered<M: Metric + Clone>(registry: &mut Registry, name: &str, help: &str, metric: M) -> M {
    registry.register(name, help, metric.clone());
    metric
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("wasmpush");
        let connections = registered(&mut registry, "connections", "Connections open now", Gauge::default());
        let handshakes = registered(
            &mut registry,
            "handshakes",
            "WebSocket handshakes by result",
            Family::<Labels, Counter>::default(),
        );
        let calls =
            registered(&mut registry, "plugin_calls", "Plugin calls by outcome", Family::<Labels, Counter>::default());
        let reloads =
            registered(&mut registry, "reloads", "Plugin loads by result", Family::<Labels, Counter>::default());
        let closes = registered(
            &mut registry,
            "closes",
            "Connections the engine closed, by reason",
            Family::<Labels, Counter>::default(),
        );
        let frames_pushed = registered(&mut registry, "frames_pushed", "Data frames pushed", Counter::default());
        let bytes_pushed = registered(&mut registry, "bytes_pushed", "Bytes of data frames pushed", Counter::default());
        // 10 µs to ~2.6 s: batch calls range from one connection to tens of thousands.
        let call_duration = registered(
            &mut registry,
            "plugin_call_duration_seconds",
            "Duration of one batch call",
            Histogram::new(exponential_buckets(0.000_01, 4.0, 10)),
        );
        // 100 µs to ~1.6 s.
        let tick_lateness = registered(
            &mut registry,
            "tick_lateness_seconds",
            "How late a shard tick started",
            Histogram::new(exponential_buckets(0.000_1, 2.0, 15)),
        );
        let frames_unchanged = registered(
            &mut registry,
            "frames_unchanged",
            "Frames left unsent as identical to the last (skip_unchanged)",
            Counter::default(),
        );
        let token_refreshes =
            registered(&mut registry, "token_refreshes", "Token refreshes accepted", Counter::default());
        let data_pushes = registered(
            &mut registry,
            "data_pushes",
            "Frames pushed by calls a data change triggered",
            Counter::default(),
        );
        let data_updates =
            registered(&mut registry, "data_updates", "Keys whose value a published batch changed", Counter::default());
        let data_keys = registered(&mut registry, "data_keys", "Keys the data store holds", Gauge::default());
        let data_bytes = registered(
            &mut registry,
            "data_bytes",
            "Bytes of every key and value the data store holds",
            Gauge::default(),
        );

        let rollouts = registered(
            &mut registry,
            "rollouts",
            "Rollouts (canaries, shadow runs) ended, by outcome",
            Family::<Labels, Counter>::default(),
        );
        let phases = registered(
            &mut registry,
            "shard_phases",
            "Shard phases run, on time or a whole phase late",
            Family::<Labels, Counter>::default(),
        );
        let console_sampling_us = registered(
            &mut registry,
            "console_sampling_microseconds",
            "Time the console's sampler spent, in microseconds",
            Counter::default(),
        );
        let publishes = registered(
            &mut registry,
            "publish_requests",
            "Writes to the publish API, by result",
            Family::<Labels, Counter>::default(),
        );

        let labelled = |family: &Family<Labels, Counter>, key: &'static str, value: &'static str| {
            family.get_or_create(&vec![(key, value)]).clone()
        };
        let outcome = |value| labelled(&calls, "outcome", value);
        Metrics {
            connections,
            handshakes_accepted: labelled(&handshakes, "result", "accepted"),
            handshakes_rejected: labelled(&handshakes, "result", "rejected"),
            handshakes_unauthorized: labelled(&handshakes, "result", "unauthorized"),
            handshakes_over_limit: labelled(&handshakes, "result", "over_limit"),
            frames_pushed,
            bytes_pushed,
            calls: CallCounters {
                ok: outcome("ok"),
                none: outcome("none"),
                error: outcome("error"),
                trap: outcome("trap"),
                timeout: outcome("timeout"),
                memory_limit: outcome("memory_limit"),
                payload_too_large: outcome("payload_too_large"),
                contract: outcome("contract"),
                host_error: outcome("host_error"),
            },
            call_duration,
            tick_lateness,
            reloads_ok: labelled(&reloads, "result", "ok"),
            reloads_failed: labelled(&reloads, "result", "failed"),
            slow_consumer_closes: labelled(&closes, "reason", "slow_consumer"),
            idle_closes: labelled(&closes, "reason", "idle"),
            flood_closes: labelled(&closes, "reason", "flood"),
            faulting_closes: labelled(&closes, "reason", "plugin_faults"),
            token_expired_closes: labelled(&closes, "reason", "token_expired"),
            token_refreshes,
            frames_unchanged,
            data_pushes,
            data_updates,
            data_keys,
            data_bytes,
            rollouts,
            phases_on_time: labelled(&phases, "timing", "on_time"),
            phases_late: labelled(&phases, "timing", "late"),
            publishes_ok: labelled(&publishes, "result", "ok"),
            publishes_refused: labelled(&publishes, "result", "refused"),
            publishes_failed: labelled(&publishes, "result", "failed"),
            console_sampling_us,
            plugins: PluginStatsTable::default(),
            registry,
        }
    }
}

impl Metrics {
    /// Every metric in the OpenMetrics text format (which Prometheus scrapes), with `extra`
    /// metric families (OpenMetrics text, each with its `# TYPE` line) before the closing
    /// `# EOF`.
    pub fn encode(&self, extra: &str) -> String {
        let mut text = String::new();
        encode(&mut text, &self.registry).expect("writing to a String cannot fail");
        match text.strip_suffix("# EOF\n") {
            Some(body) => format!("{body}{extra}# EOF\n"),
            None => text + extra,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_appear_under_their_names_and_labels() {
        let metrics = Metrics::default();
        metrics.calls.error.inc();
        metrics.frames_pushed.inc_by(3);
        let text = metrics.encode("# TYPE extra counter\nextra_total 1\n");
        assert!(text.contains("wasmpush_plugin_calls_total{outcome=\"error\"} 1"), "{text}");
        assert!(text.contains("wasmpush_frames_pushed_total 3"), "{text}");
        assert!(text.contains("wasmpush_tick_lateness_seconds_bucket"), "{text}");
        assert!(text.ends_with("extra_total 1\n# EOF\n"), "{text}");
    }
}

//! Pushes arrive every tick, for one connection and for a thousand at once.

use std::time::Duration;

use futures_util::future::join_all;
use wasmpush_tests::{Client, TestEngine, artifacts};

use crate::cpu_work::{hostile_with_timeout, rounds_taking_cpu, work};
use crate::util::{SOON, TICK, encode, engine, number_of, seq_of};

#[tokio::test]
async fn pushes_arrive_every_tick() {
    let engine = engine().await;
    let mut client = Client::connect(&engine.url(&format!("/ws/quote?params={}", encode(r#"{"symbol":"a"}"#)))).await;
    client.next_text(SOON).await;
    // 3 s at 200 ms is 15 ticks; allow for scheduling noise, not for a missing or doubled tick.
    let frames = client.texts_during(Duration::from_secs(3)).await;
    assert!((13..=17).contains(&frames.len()), "{} frames in 3 s", frames.len());
    let seqs: Vec<u64> = frames.iter().map(|f| seq_of(f)).collect();
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "seq must go up by one per frame: {seqs:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_connections_each_receive_ticks() {
    const CONNECTIONS: usize = 1000;
    let engine = engine().await;
    // Each client starts counting at its own first frame, so connecting the others does not
    // pile frames up in its socket before it reads.
    let counts = join_all((0..CONNECTIONS).map(|i| {
        let url = engine.url(&format!("/ws/quote?params={}", encode(&format!(r#"{{"symbol":"SYM{i}"}}"#))));
        tokio::spawn(async move {
            let mut client = Client::connect(&url).await;
            let first = client.next_text(SOON).await;
            assert!(first.contains(&format!("\"symbol\":\"SYM{i}\"")), "{first}");
            // Ten ticks of the engine's time (the frames' `ts`), read with room to spare: the
            // test's clients share two cores with the engine and other tests, and one that reads
            // late must not count a burst of frames it let pile up.
            let frames = client.texts_during(TICK * 14).await;
            let start = number_of(frames.first().expect("frames within fourteen ticks"), "ts");
            let end = start + 10 * TICK.as_millis() as u64;
            let seqs: Vec<u64> = frames.iter().filter(|f| number_of(f, "ts") < end).map(|f| seq_of(f)).collect();
            (seqs.len(), seqs)
        })
    }))
    .await;
    for (i, result) in counts.into_iter().enumerate() {
        let (count, seqs) = result.expect("client task");
        assert!((8..=12).contains(&count), "connection {i} was pushed {count} frames in ten ticks");
        // Never doubled or reordered. A push may be superseded by the next one when the machine
        // stalls a writer for a whole tick (the outbound queue conflates: latest wins), so allow a
        // rare skipped seq, but not a pattern of them.
        assert!(seqs.windows(2).all(|w| w[1] > w[0]), "connection {i}: seqs not increasing: {seqs:?}");
        let skipped = seqs.last().unwrap() - seqs.first().unwrap() + 1 - count as u64;
        assert!(skipped <= 1, "connection {i}: {skipped} pushes superseded: {seqs:?}");
    }
}

/// A phase that runs late is made up at once: the shard keeps to its schedule, so a neighbour
/// whose every call takes 60 ms of CPU delays the other connections' pushes but costs them none.
/// (Had each late phase pushed the schedule back, it would cost them about a quarter.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_neighbour_delays_pushes_but_costs_none() {
    let rounds = tokio::task::spawn_blocking(|| {
        rounds_taking_cpu(&hostile_with_timeout(Duration::from_secs(10)), Duration::from_millis(60))
    })
    .await
    .unwrap();
    let plugins = [("quote", artifacts::QUOTE), ("hostile", artifacts::HOSTILE)];
    // One shard, so both connections share its schedule (a shard this small puts both in phase 0).
    let engine = TestEngine::start(&plugins, |config| config.workers = 1).await;
    let mut slow = Client::connect(&engine.url(&format!("/ws/hostile?params={}", encode(&work(rounds))))).await;
    slow.next_text(SOON).await;
    let mut client = Client::connect(&engine.url(&format!("/ws/quote?params={}", encode("{}")))).await;
    client.next_text(SOON).await;
    // 4 s at 200 ms is 20 ticks; a schedule slipping 60 ms a tick would give about 15.
    let frames = client.texts_during(Duration::from_secs(4)).await;
    assert!(frames.len() >= 18, "{} frames in 4 s beside a slow neighbour", frames.len());
}

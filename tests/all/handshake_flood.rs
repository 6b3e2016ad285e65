//! Handshake limits under attack, against the real binary: 2,000 sockets from ten addresses each
//! send half a request head and wait. Each address keeps at most `max_handshakes_per_ip` of them
//! in their handshake, the rest are answered 503 once their grace to finish the head is over and
//! closed, so the engine's open descriptors stay bounded, and a client from another address still
//! connects and is pushed. The engine's CPU while the flood waits is printed (measured, not
//! asserted). And the other side of the limit: an honest burst of 300 clients from one address,
//! every one sending its head at once, is served whole.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use wasmpush_tests::Client;

use crate::util::{SOON, encode, plugins_dir_with_quote, start_in_foreground, write_config};

const ADDRESSES: u8 = 10;
const SOCKETS_PER_ADDRESS: usize = 200;
const PER_IP: usize = 16;

/// Open descriptors of process `pid`.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |dir| dir.count())
}

/// CPU time process `pid` has used, in clock ticks (user + system).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which may hold spaces) start at `state`, field 3.
    let fields: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// A socket from `source` to `port` that has sent half a request head.
async fn half_open(source: Ipv4Addr, port: u16) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(IpAddr::V4(source), 0)).unwrap();
    let mut stream = socket.connect(SocketAddr::from(([127, 0, 0, 1], port))).await.unwrap();
    let _ = stream.write_all(b"GET /ws/quote HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n").await;
    stream
}

/// Whether the engine refused `stream` within `wait`: answered 503 and closed it, or — over the
/// total cap, where it answers the moment it accepts, possibly before this socket's head arrived
/// — closed it with a reset that can overtake the answer. Otherwise what it saw.
async fn answered_503(stream: &mut TcpStream, wait: Duration) -> Result<(), String> {
    let mut answer = Vec::new();
    match tokio::time::timeout(wait, stream.read_to_end(&mut answer)).await {
        Ok(_) if answer.starts_with(b"HTTP/1.1 503") => Ok(()),
        Ok(Err(err)) if err.kind() == std::io::ErrorKind::ConnectionReset => Ok(()),
        Ok(read) => Err(format!("{read:?} {:?}", String::from_utf8_lossy(&answer))),
        Err(_) => Err(format!("no answer within {wait:?}")),
    }
}

#[tokio::test]
async fn two_thousand_half_open_handshakes_stay_bounded_and_others_still_connect() {
    let dir = tempfile::tempdir().unwrap();
    let plugins = plugins_dir_with_quote(dir.path());
    let limits = format!("max_handshakes = 1024\nmax_handshakes_per_ip = {PER_IP}\nhandshake_timeout_secs = 30\n");
    let (config, port, _) = write_config(dir.path(), &plugins, &limits);
    let engine = start_in_foreground(&config, &dir.path().join("wasmpush.pid"));
    let url = format!("ws://127.0.0.1:{port}/ws/quote?params={}", encode(r#"{"symbol":"AAPL"}"#));
    let mut before = Client::connect_retrying(&url, SOON * 10).await;
    before.next_text(SOON).await;
    let baseline = open_fds(engine.id());

    let mut held = Vec::new();
    let mut over = Vec::new();
    for address in 0..ADDRESSES {
        let source = Ipv4Addr::new(127, 0, 0, 2 + address);
        for _ in 0..SOCKETS_PER_ADDRESS {
            let stream = half_open(source, port).await;
            if held.iter().filter(|(from, _)| *from == source).count() < PER_IP {
                held.push((source, stream));
            } else {
                over.push(stream);
            }
        }
    }
    // Each is answered once its grace is over; on a loaded machine the engine may still be
    // accepting the last of them when this starts waiting.
    let wait = Duration::from_secs(15);
    let answers = futures_util::future::join_all(over.iter_mut().map(|stream| answered_503(stream, wait))).await;
    let refused = answers.iter().filter(|answered| answered.is_ok()).count();
    let missed: Vec<&String> = answers.iter().filter_map(|answered| answered.as_ref().err()).take(3).collect();
    assert_eq!(
        refused,
        ADDRESSES as usize * (SOCKETS_PER_ADDRESS - PER_IP),
        "every over-limit socket gets 503: {missed:?}"
    );
    let during = open_fds(engine.id());
    // Each held socket is one descriptor; the refused ones are closed already.
    assert!(
        during <= baseline + ADDRESSES as usize * PER_IP + 16,
        "the engine holds {during} descriptors with the flood waiting (baseline {baseline})"
    );

    let cpu_before = cpu_ticks(engine.id());
    let mut after = Client::connect(&url).await;
    assert!(after.next_text(SOON).await.contains("AAPL"), "a client from another address is pushed");
    let pushes = after.texts_during(Duration::from_secs(2)).await;
    // Linux reports CPU time in USER_HZ ticks, 100 a second on every architecture this runs on.
    let ticks_per_sec = 100.0;
    let cpu = (cpu_ticks(engine.id()) - cpu_before) as f64 / ticks_per_sec;
    eprintln!(
        "handshake flood: {} sockets held of {}, {refused} answered 503; engine descriptors {baseline} -> {during}; \
         engine CPU {cpu:.2} s over 2 s while the flood waited ({} frames to the other client)",
        held.len(),
        ADDRESSES as usize * SOCKETS_PER_ADDRESS,
        pushes.len()
    );
    assert!(!pushes.is_empty());
    // Held sockets are still waiting for the rest of their head, not answered.
    let (_, first) = held.first_mut().unwrap();
    let mut byte = [0; 1];
    assert!(
        tokio::time::timeout(Duration::from_millis(100), first.read(&mut byte)).await.is_err(),
        "a held socket waits for its head"
    );
}

/// Regression (#23.11): 300 clients connecting at once from one address got exactly 256
/// accepted and 44 refused with 503, every time, although every one sent its head at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_honest_burst_from_one_address_is_served_whole() {
    const BURST: usize = 300;
    // In this process, on a port bound here: a port picked free and bound by another process can
    // be taken meanwhile by one of the flood test's thousands of client sockets.
    // The default cap (256), which the test engine otherwise raises for tests of other things.
    let defaults = wasmpush::Config::default();
    let engine = wasmpush_tests::TestEngine::start(&[("quote", wasmpush_tests::artifacts::QUOTE)], |config| {
        config.max_handshakes_per_ip = defaults.max_handshakes_per_ip;
    })
    .await;
    assert!(BURST > defaults.max_handshakes_per_ip, "the burst is larger than the cap");
    let url = engine.url(&format!("/ws/quote?params={}", encode("{}")));
    let source = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 7));
    let burst = (0..BURST).map(|_| Client::try_connect_from(source, &url));
    let clients = futures_util::future::join_all(burst).await;
    let refused: Vec<String> =
        clients.iter().filter_map(|client| client.as_ref().err().map(|e| e.to_string())).collect();
    assert!(refused.is_empty(), "{} of {BURST} refused: {:?}", refused.len(), &refused[..refused.len().min(3)]);
}

//! Load generator for `bench/run`: a TCP echo backend and three client modes.
//!
//! It measures connection set-up ("new tunnels per second") and idle-connection
//! cost, which iperf3, sockperf and wrk do not. Every mode is bounded in time,
//! prints one JSON object per result line on stdout, and touches only the
//! address it is given.
//!
//! ```text
//! loadgen echo  --listen ADDR [--max-secs 3600]
//! loadgen probe --addr ADDR [--timeout-secs 20] [--size 32]
//! loadgen rate  --addr ADDR [--workers 64] [--secs 10] [--size 32]
//! loadgen hold  --addr ADDR [--conns 10000] [--parallel 256] [--size 32] [--max-secs 300]
//! ```
//!
//! `rate`: each worker loops {connect, send SIZE bytes, read them back, close}
//! until the time is up. `hold`: opens CONNS connections, each echoing one
//! message (so every hop has fully set the tunnel up), prints a `ready` line,
//! and keeps them idle until SIGUSR1, SIGTERM or --max-secs; then it checks
//! each one still echoes, prints a `verify` line and closes them all.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::timeout;

const USAGE: &str = "usage:
  loadgen echo  --listen ADDR [--max-secs 3600]
  loadgen probe --addr ADDR [--timeout-secs 20] [--size 32]
  loadgen rate  --addr ADDR [--workers 64] [--secs 10] [--size 32]
  loadgen hold  --addr ADDR [--conns 10000] [--parallel 256] [--size 32] [--max-secs 300]";

/// Per-operation limit: a tunnel that takes longer than this counts as failed.
const OP_TIMEOUT: Duration = Duration::from_secs(10);

struct Args {
    mode: String,
    opts: HashMap<String, String>,
}

impl Args {
    fn parse() -> Result<Args, String> {
        let mut it = std::env::args().skip(1);
        let mode = it.next().ok_or("missing mode")?;
        let mut opts = HashMap::new();
        while let Some(k) = it.next() {
            let key = k
                .strip_prefix("--")
                .ok_or_else(|| format!("unexpected argument {k:?}"))?;
            let v = it.next().ok_or_else(|| format!("--{key} needs a value"))?;
            opts.insert(key.to_string(), v);
        }
        Ok(Args { mode, opts })
    }

    fn addr(&self, key: &str) -> Result<SocketAddr, String> {
        let v = self
            .opts
            .get(key)
            .ok_or_else(|| format!("--{key} is required"))?;
        let a: SocketAddr = v.parse().map_err(|e| format!("--{key} {v:?}: {e}"))?;
        // The benchmark only ever targets this machine.
        if !a.ip().is_loopback() {
            return Err(format!("--{key} {a}: only loopback addresses are allowed"));
        }
        Ok(a)
    }

    fn num(&self, key: &str, default: u64) -> Result<u64, String> {
        match self.opts.get(key) {
            None => Ok(default),
            Some(v) => v.parse().map_err(|e| format!("--{key} {v:?}: {e}")),
        }
    }

    fn check_known(&self, known: &[&str]) -> Result<(), String> {
        for k in self.opts.keys() {
            if !known.contains(&k.as_str()) {
                return Err(format!("unknown option --{k} for mode {}", self.mode));
            }
        }
        Ok(())
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = match Args::parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("loadgen: {e}\n{USAGE}");
            return ExitCode::from(64);
        }
    };
    let res = match args.mode.as_str() {
        "echo" => echo(&args).await,
        "probe" => probe(&args).await,
        "rate" => rate(&args).await,
        "hold" => hold(&args).await,
        m => Err(format!("unknown mode {m:?}")),
    };
    match res {
        Ok(code) => code,
        Err(e) => {
            eprintln!("loadgen: {e}\n{USAGE}");
            ExitCode::from(64)
        }
    }
}

/// A TCP echo server; it exits by itself after --max-secs.
async fn echo(args: &Args) -> Result<ExitCode, String> {
    args.check_known(&["listen", "max-secs"])?;
    let listen = args.addr("listen")?;
    let max = Duration::from_secs(args.num("max-secs", 3600)?);
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|e| format!("bind {listen}: {e}"))?;
    eprintln!("loadgen echo: listening on tcp {listen}");
    let accept_loop = async {
        loop {
            match listener.accept().await {
                Ok((sock, _)) => {
                    tokio::spawn(echo_conn(sock));
                }
                // Out of file descriptors or similar: back off, keep serving.
                Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
            }
        }
    };
    let _ = timeout(max, accept_loop).await;
    Ok(ExitCode::SUCCESS)
}

async fn echo_conn(mut sock: TcpStream) {
    let _ = sock.set_nodelay(true);
    let mut buf = vec![0u8; 4096];
    loop {
        match sock.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if sock.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        }
    }
    let _ = sock.shutdown().await;
}

/// Connects, sends `msg`, reads it back. The stream is returned open.
async fn tunnel(addr: SocketAddr, msg: &[u8]) -> std::io::Result<TcpStream> {
    let mut s = TcpStream::connect(addr).await?;
    s.set_nodelay(true)?;
    round_trip(&mut s, msg).await?;
    Ok(s)
}

async fn round_trip(s: &mut TcpStream, msg: &[u8]) -> std::io::Result<()> {
    s.write_all(msg).await?;
    let mut back = vec![0u8; msg.len()];
    s.read_exact(&mut back).await?;
    if back != msg {
        return Err(std::io::Error::other("echo returned different bytes"));
    }
    Ok(())
}

fn message(size: u64) -> Vec<u8> {
    (0..size).map(|i| b'a' + (i % 26) as u8).collect()
}

async fn timed_tunnel(addr: SocketAddr, msg: &[u8]) -> Result<TcpStream, String> {
    match timeout(OP_TIMEOUT, tunnel(addr, msg)).await {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no echo within {OP_TIMEOUT:?}")),
    }
}

/// Readiness check: retries one echo round trip until it works.
async fn probe(args: &Args) -> Result<ExitCode, String> {
    args.check_known(&["addr", "timeout-secs", "size"])?;
    let addr = args.addr("addr")?;
    let deadline = Instant::now() + Duration::from_secs(args.num("timeout-secs", 20)?);
    let msg = message(args.num("size", 32)?);
    let mut last = String::new();
    while Instant::now() < deadline {
        match timeout(Duration::from_secs(2), tunnel(addr, &msg)).await {
            Ok(Ok(_)) => return Ok(ExitCode::SUCCESS),
            Ok(Err(e)) => last = e.to_string(),
            Err(_) => last = "no echo within 2s".into(),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!("loadgen probe {addr}: {last}");
    Ok(ExitCode::from(1))
}

#[derive(Default)]
struct WorkerResult {
    ok: u64,
    failed: u64,
    first_error: Option<String>,
    micros: Vec<u32>,
}

/// New connections per second for a fixed time with a fixed number of workers.
async fn rate(args: &Args) -> Result<ExitCode, String> {
    args.check_known(&["addr", "workers", "secs", "size"])?;
    let addr = args.addr("addr")?;
    let workers = args.num("workers", 64)?.max(1);
    let secs = args.num("secs", 10)?.max(1);
    let msg = Arc::new(message(args.num("size", 32)?));
    let start = Instant::now();
    let deadline = start + Duration::from_secs(secs);
    let mut set = JoinSet::new();
    for _ in 0..workers {
        let msg = msg.clone();
        set.spawn(async move {
            let mut r = WorkerResult::default();
            while Instant::now() < deadline {
                let t0 = Instant::now();
                match timed_tunnel(addr, &msg).await {
                    // Dropping the stream closes it (FIN): that is the "then close".
                    Ok(s) => {
                        drop(s);
                        r.ok += 1;
                        r.micros
                            .push(t0.elapsed().as_micros().min(u32::MAX as u128) as u32);
                    }
                    Err(e) => {
                        r.failed += 1;
                        r.first_error.get_or_insert(e);
                        // Fail fast without spinning on e.g. "connection refused".
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                }
            }
            r
        });
    }
    let mut total = WorkerResult::default();
    while let Some(r) = set.join_next().await {
        let r = r.map_err(|e| format!("worker panicked: {e}"))?;
        total.ok += r.ok;
        total.failed += r.failed;
        if total.first_error.is_none() {
            total.first_error = r.first_error;
        }
        total.micros.extend(r.micros);
    }
    let elapsed = start.elapsed().as_secs_f64();
    total.micros.sort_unstable();
    println!(
        "{{\"mode\":\"rate\",\"addr\":\"{addr}\",\"workers\":{workers},\"secs\":{elapsed:.3},\
         \"ok\":{},\"failed\":{},\"per_sec\":{:.1},\"p50_us\":{},\"p99_us\":{},\"first_error\":{}}}",
        total.ok,
        total.failed,
        total.ok as f64 / elapsed,
        pct(&total.micros, 0.50),
        pct(&total.micros, 0.99),
        json_str(total.first_error.as_deref()),
    );
    Ok(ExitCode::SUCCESS)
}

/// Opens many tunnels, holds them idle until told, then checks and closes them.
async fn hold(args: &Args) -> Result<ExitCode, String> {
    args.check_known(&["addr", "conns", "parallel", "size", "max-secs"])?;
    let addr = args.addr("addr")?;
    let conns = args.num("conns", 10_000)?;
    let parallel = args.num("parallel", 256)?.max(1) as usize;
    let msg = Arc::new(message(args.num("size", 32)?));
    let max = Duration::from_secs(args.num("max-secs", 300)?);
    let overall = Instant::now() + max;

    // Listen for the release signals before anything else, so none is missed.
    let mut usr1 = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined1())
        .map_err(|e| format!("SIGUSR1 handler: {e}"))?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| format!("SIGTERM handler: {e}"))?;

    let start = Instant::now();
    let sem = Arc::new(Semaphore::new(parallel));
    let mut set = JoinSet::new();
    for _ in 0..conns {
        let sem = sem.clone();
        let msg = msg.clone();
        set.spawn(async move {
            let _permit = sem.acquire_owned().await.map_err(|e| e.to_string())?;
            timed_tunnel(addr, &msg).await
        });
    }
    let mut open = Vec::with_capacity(conns as usize);
    let mut failed = 0u64;
    let mut first_error = None;
    while let Some(r) = set.join_next().await {
        match r {
            Ok(Ok(s)) => open.push(s),
            Ok(Err(e)) => {
                failed += 1;
                first_error.get_or_insert(e);
            }
            Err(e) => {
                failed += 1;
                first_error.get_or_insert(e.to_string());
            }
        }
    }
    println!(
        "{{\"mode\":\"hold\",\"phase\":\"ready\",\"addr\":\"{addr}\",\"ok\":{},\"failed\":{failed},\
         \"open_secs\":{:.3},\"first_error\":{}}}",
        open.len(),
        start.elapsed().as_secs_f64(),
        json_str(first_error.as_deref()),
    );

    let deadline = tokio::time::Instant::from_std(overall);
    tokio::select! {
        _ = usr1.recv() => {}
        _ = term.recv() => {}
        _ = tokio::time::sleep_until(deadline) => {}
    }

    // Every held tunnel must still work after the idle period.
    let mut set = JoinSet::new();
    let sem = Arc::new(Semaphore::new(parallel));
    for mut s in open {
        let sem = sem.clone();
        let msg = msg.clone();
        set.spawn(async move {
            let _permit = sem.acquire_owned().await.ok();
            matches!(
                timeout(OP_TIMEOUT, round_trip(&mut s, &msg)).await,
                Ok(Ok(()))
            )
        });
    }
    let (mut alive, mut dead) = (0u64, 0u64);
    while let Some(r) = set.join_next().await {
        if matches!(r, Ok(true)) {
            alive += 1;
        } else {
            dead += 1;
        }
    }
    println!("{{\"mode\":\"hold\",\"phase\":\"verify\",\"alive\":{alive},\"dead\":{dead}}}");
    Ok(ExitCode::SUCCESS)
}

fn pct(sorted: &[u32], q: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

fn json_str(s: Option<&str>) -> String {
    match s {
        None => "null".into(),
        Some(s) => {
            let mut out = String::from("\"");
            for c in s.chars() {
                match c {
                    '"' => out.push_str("\\\""),
                    '\\' => out.push_str("\\\\"),
                    c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
                    c => out.push(c),
                }
            }
            out.push('"');
            out
        }
    }
}

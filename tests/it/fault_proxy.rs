//! An HTTP/1.1 proxy between the S3 client and the real S3 server that
//! injects the failures networks and stores produce: 500 and 503 (SlowDown)
//! answers, connections reset before or after the server acted, responses
//! cut off mid-body, stalled responses, and bytes flipped on the way.
//!
//! One request per connection: the request is read whole, forwarded with
//! `Connection: close`, and the server's answer is relayed until it closes.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the proxy does to the requests it sees.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Plan {
    /// Relay everything untouched.
    Pass,
    /// Fail about `percent` of requests at random, with each kind of fault
    /// in turn.
    Random { percent: u64 },
    /// Answer every request with 503 SlowDown.
    Outage,
    /// Hold the next `n` responses forever (the client must time out).
    Stall { n: u64 },
    /// Let the server act on the next `n` PUTs, then reset the connection
    /// before the client hears the answer.
    LoseAnswer { n: u64 },
    /// Flip one byte in the body of the next PUT on its way to the server.
    CorruptUpload,
    /// Flip one byte in the body of every GET response.
    CorruptDownload,
}

/// How many of each fault the proxy injected.
#[derive(Clone, Copy, Debug, Default)]
pub struct Injected {
    pub requests: u64,
    pub status_500: u64,
    pub status_503: u64,
    pub reset_before: u64,
    pub lost_answer: u64,
    pub cut_body: u64,
    pub stalled: u64,
    pub corrupted: u64,
}

impl Injected {
    pub fn faults(&self) -> u64 {
        self.status_500
            + self.status_503
            + self.reset_before
            + self.lost_answer
            + self.cut_body
            + self.stalled
            + self.corrupted
    }
}

struct State {
    upstream: SocketAddr,
    plan: Mutex<Plan>,
    injected: Mutex<Injected>,
    rng: AtomicU64,
    next_fault: AtomicU64,
}

/// A running proxy; it stops when dropped.
pub struct FaultProxy {
    pub addr: SocketAddr,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

enum Action {
    Forward,
    Status(u16),
    ResetBefore,
    LostAnswer,
    CutBody,
    Stall,
    CorruptUpload,
    CorruptDownload,
}

impl FaultProxy {
    /// Starts a proxy to the server at `upstream` (`http://host:port`).
    pub async fn start(upstream: &str, plan: Plan) -> FaultProxy {
        let upstream: SocketAddr = upstream
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .parse()
            .expect("upstream host:port");
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State {
            upstream,
            plan: Mutex::new(plan),
            injected: Mutex::default(),
            rng: AtomicU64::new(0x2545_F491_4F6C_DD1D),
            next_fault: AtomicU64::new(0),
        });
        let accept_state = Arc::clone(&state);
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                let state = Arc::clone(&accept_state);
                tokio::spawn(async move {
                    let _ = serve(&state, client).await;
                });
            }
        });
        FaultProxy { addr, state, task }
    }

    /// The endpoint URL clients use.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn set_plan(&self, plan: Plan) {
        *self.state.plan.lock().unwrap() = plan;
    }

    pub fn injected(&self) -> Injected {
        *self.state.injected.lock().unwrap()
    }
}

impl State {
    fn random(&self) -> u64 {
        // xorshift64*, shared by all connections.
        let mut x = self.rng.load(Ordering::Relaxed);
        loop {
            let mut next = x;
            next ^= next >> 12;
            next ^= next << 25;
            next ^= next >> 27;
            match self
                .rng
                .compare_exchange(x, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return next.wrapping_mul(0x2545_F491_4F6C_DD1D),
                Err(seen) => x = seen,
            }
        }
    }

    fn choose(&self, method: &str) -> Action {
        let mut plan = self.plan.lock().unwrap();
        let mut injected = self.injected.lock().unwrap();
        injected.requests += 1;
        match *plan {
            Plan::Pass => Action::Forward,
            Plan::Outage => {
                injected.status_503 += 1;
                Action::Status(503)
            }
            Plan::Stall { n } => {
                if n > 0 {
                    *plan = Plan::Stall { n: n - 1 };
                    injected.stalled += 1;
                    Action::Stall
                } else {
                    Action::Forward
                }
            }
            Plan::LoseAnswer { n } if method == "PUT" && n > 0 => {
                *plan = Plan::LoseAnswer { n: n - 1 };
                injected.lost_answer += 1;
                Action::LostAnswer
            }
            Plan::LoseAnswer { .. } => Action::Forward,
            Plan::CorruptUpload if method == "PUT" => {
                *plan = Plan::Pass;
                injected.corrupted += 1;
                Action::CorruptUpload
            }
            Plan::CorruptUpload => Action::Forward,
            Plan::CorruptDownload if method == "GET" => {
                injected.corrupted += 1;
                Action::CorruptDownload
            }
            Plan::CorruptDownload => Action::Forward,
            Plan::Random { percent } => {
                let roll = self.random();
                if roll % 100 >= percent {
                    return Action::Forward;
                }
                // Each kind in turn, so a handful of faults covers them all.
                match self.next_fault.fetch_add(1, Ordering::Relaxed) % 5 {
                    0 => {
                        injected.status_500 += 1;
                        Action::Status(500)
                    }
                    1 => {
                        injected.status_503 += 1;
                        Action::Status(503)
                    }
                    2 => {
                        injected.reset_before += 1;
                        Action::ResetBefore
                    }
                    3 => {
                        injected.lost_answer += 1;
                        Action::LostAnswer
                    }
                    _ => {
                        injected.cut_body += 1;
                        Action::CutBody
                    }
                }
            }
        }
    }
}

async fn serve(state: &State, mut client: TcpStream) -> std::io::Result<()> {
    let (head, mut body) = read_request(&mut client).await?;
    let method = head.split(' ').next().unwrap_or("").to_owned();
    match state.choose(&method) {
        Action::Forward => {
            let response = forward(state, &head, &body).await?;
            client.write_all(&response).await?;
        }
        Action::Status(code) => {
            let (reason, error) = if code == 503 {
                ("Service Unavailable", "SlowDown")
            } else {
                ("Internal Server Error", "InternalError")
            };
            let xml = format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{error}</Code><Message>injected</Message></Error>"
            );
            let response = format!(
                "HTTP/1.1 {code} {reason}\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{xml}",
                xml.len()
            );
            client.write_all(response.as_bytes()).await?;
        }
        Action::ResetBefore => {
            reset(client);
            return Ok(());
        }
        Action::LostAnswer => {
            // The server acts; the client never hears of it.
            forward(state, &head, &body).await?;
            reset(client);
            return Ok(());
        }
        Action::CutBody => {
            let response = forward(state, &head, &body).await?;
            let head_end = find(&response, b"\r\n\r\n").map_or(0, |i| i + 4);
            let body_len = response.len() - head_end;
            if body_len >= 2 {
                client
                    .write_all(&response[..head_end + body_len / 2])
                    .await?;
                client.flush().await?;
            }
            reset(client);
            return Ok(());
        }
        Action::Stall => {
            tokio::time::sleep(Duration::from_secs(300)).await;
            return Ok(());
        }
        Action::CorruptUpload => {
            if let Some(last) = body.last_mut() {
                *last ^= 0x01;
            }
            let response = forward(state, &head, &body).await?;
            client.write_all(&response).await?;
        }
        Action::CorruptDownload => {
            let mut response = forward(state, &head, &body).await?;
            let head_end = find(&response, b"\r\n\r\n").map_or(response.len(), |i| i + 4);
            if response.starts_with(b"HTTP/1.1 2") && response.len() > head_end {
                let middle = head_end + (response.len() - head_end) / 2;
                response[middle] ^= 0x01;
            }
            client.write_all(&response).await?;
        }
    }
    client.shutdown().await
}

/// Closes with a reset (RST), not an orderly FIN.
fn reset(client: TcpStream) {
    if let Ok(std) = client.into_std() {
        let _ = socket_linger_zero(&std);
        drop(std);
    }
}

fn socket_linger_zero(socket: &std::net::TcpStream) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid socket descriptor and a correctly sized option value.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Reads one request: its head (up to the blank line, as text) and its
/// body (by Content-Length).
async fn read_request(client: &mut TcpStream) -> std::io::Result<(String, Vec<u8>)> {
    let mut buf = Vec::with_capacity(8192);
    let mut chunk = [0u8; 65536];
    let head_end = loop {
        if let Some(i) = find(&buf, b"\r\n\r\n") {
            break i + 4;
        }
        let n = client.read(&mut chunk).await?;
        if n == 0 || buf.len() > 1 << 20 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let length = head
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    let mut body = buf[head_end..].to_vec();
    while body.len() < length {
        let n = client.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        body.extend_from_slice(&chunk[..n]);
    }
    Ok((head, body))
}

/// Sends the request to the real server with `Connection: close` and
/// returns its whole answer.
async fn forward(state: &State, head: &str, body: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut upstream = TcpStream::connect(state.upstream).await?;
    let mut out = String::with_capacity(head.len() + 20);
    for line in head.trim_end_matches("\r\n").split("\r\n") {
        if line
            .split_once(':')
            .is_some_and(|(k, _)| k.trim().eq_ignore_ascii_case("connection"))
        {
            continue;
        }
        out.push_str(line);
        out.push_str("\r\n");
    }
    out.push_str("Connection: close\r\n\r\n");
    upstream.write_all(out.as_bytes()).await?;
    upstream.write_all(body).await?;
    let mut response = Vec::new();
    upstream.read_to_end(&mut response).await?;
    Ok(response)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

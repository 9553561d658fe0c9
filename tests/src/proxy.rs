//! A TCP proxy on 127.0.0.1 that a test can cut and heal: the network partition.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

/// How a cut link behaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CutMode {
    /// Connections are closed at once (a refused or reset connection).
    Refuse,
    /// Connections are accepted but nothing ever comes back (an unreachable host).
    Blackhole,
}

const OPEN: u8 = 0;
const REFUSE: u8 = 1;
const BLACKHOLE: u8 = 2;

struct State {
    mode: AtomicU8,
    stop: AtomicBool,
    /// Streams of live connections, to tear them down on a cut.
    live: Mutex<Vec<TcpStream>>,
}

pub struct Proxy {
    port: u16,
    state: Arc<State>,
}

impl Proxy {
    /// Listens on a free port and forwards to `127.0.0.1:target`.
    pub fn start(target: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let state =
            Arc::new(State { mode: AtomicU8::new(OPEN), stop: AtomicBool::new(false), live: Mutex::new(vec![]) });
        let st = state.clone();
        thread::spawn(move || accept_loop(listener, target, st));
        Proxy { port, state }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Cuts the link: live connections are torn down (refuse) or go silent (blackhole).
    pub fn cut(&self, mode: CutMode) {
        let m = if mode == CutMode::Refuse { REFUSE } else { BLACKHOLE };
        self.state.mode.store(m, Ordering::SeqCst);
        // Refuse tears live connections down; a black hole keeps them open and silent.
        if mode == CutMode::Refuse {
            let mut live = self.state.live.lock().unwrap();
            for s in live.drain(..) {
                let _ = s.shutdown(Shutdown::Both);
            }
        }
    }

    pub fn heal(&self) {
        self.state.mode.store(OPEN, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::SeqCst);
        self.cut(CutMode::Refuse);
    }
}

fn accept_loop(listener: TcpListener, target: u16, st: Arc<State>) {
    let mut held = Vec::new(); // blackholed client connections, kept open and silent
    while !st.stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((client, _)) => {
                let _ = client.set_nonblocking(false);
                match st.mode.load(Ordering::SeqCst) {
                    OPEN => forward(client, target, &st),
                    BLACKHOLE => held.push(client),
                    _ => drop(client),
                }
            }
            Err(_) => thread::sleep(Duration::from_millis(5)),
        }
        if st.mode.load(Ordering::SeqCst) != BLACKHOLE {
            held.clear();
        }
    }
}

fn forward(client: TcpStream, target: u16, st: &Arc<State>) {
    let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    {
        let mut live = st.live.lock().unwrap();
        live.push(client.try_clone().unwrap());
        live.push(server.try_clone().unwrap());
    }
    let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
    let st1 = st.clone();
    let st2 = st.clone();
    thread::spawn(move || pump(client, server, st1));
    thread::spawn(move || pump(s2, c2, st2));
}

/// Copies bytes one way until either side closes or the link is cut. In blackhole mode
/// bytes are swallowed, so both ends see a silent peer.
fn pump(mut from: TcpStream, mut to: TcpStream, st: Arc<State>) {
    let mut buf = [0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        match st.mode.load(Ordering::SeqCst) {
            OPEN => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            BLACKHOLE => continue,
            _ => break,
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}

//! Egress by name: a context with `isolation.network = { allow = [..] }` reaches allowed
//! names through the broker's proxy and nothing else. Every claim is tried from a real
//! routed process (curl, Python, pip, git, Node) against servers this test starts on an
//! address it adds to the host's `lo`, under names it adds to `/etc/hosts`.

use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use ctx_tests::*;
use nix::sys::signal::Signal;
use serde_json::Value;

// ---------------------------------------------------------------------------------------
// Fixtures: an address on lo, names in /etc/hosts, servers
// ---------------------------------------------------------------------------------------

/// An address of TEST-NET-1 (192.0.2.0/24) on the host's `lo`, only for this test; removed
/// on drop. `ip addr add` fails for an address already there, which makes the claim atomic
/// between tests running at once.
struct HostAddr {
    ip: String,
}

impl HostAddr {
    fn claim() -> HostAddr {
        let start = std::process::id() as usize + unique("").len();
        for n in 0..250 {
            let ip = format!("192.0.2.{}", 2 + (start + n * 7) % 250);
            let added = Command::new("ip")
                .args(["addr", "add", &format!("{ip}/32"), "dev", "lo"])
                .stderr(Stdio::null())
                .status()
                .expect("run ip");
            if added.success() {
                return HostAddr { ip };
            }
        }
        panic!("no free address in 192.0.2.0/24 to add to lo");
    }
}

impl Drop for HostAddr {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["addr", "del", &format!("{}/32", self.ip), "dev", "lo"])
            .status();
    }
}

/// Lines of `/etc/hosts` for this test, each tagged with a marker of its own; removed on
/// drop. Changes happen under `flock` on the file (other tests may edit it too), and the
/// file is never left empty while a resolver reads it.
struct Hosts {
    marker: String,
}

impl Hosts {
    fn add(entries: &[(&str, &str)]) -> Hosts {
        let marker = unique("ctx-egress-test-");
        let mut text = String::new();
        for (ip, name) in entries {
            text.push_str(&format!("{ip} {name} # {marker}\n"));
        }
        with_hosts_locked(true, |file| {
            let mut current = String::new();
            file.read_to_string(&mut current).expect("read /etc/hosts");
            if !current.is_empty() && !current.ends_with('\n') {
                text.insert(0, '\n');
            }
            file.write_all(text.as_bytes())
                .expect("append to /etc/hosts");
        });
        Hosts { marker }
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        // Not in append mode: there, Linux writes at the end whatever the offset.
        with_hosts_locked(false, |file| {
            use std::io::Seek;
            use std::os::unix::fs::FileExt;
            let mut current = String::new();
            let _ = file.read_to_string(&mut current);
            let kept: String = current
                .lines()
                .filter(|l| !l.contains(&self.marker))
                .map(|l| format!("{l}\n"))
                .collect();
            let _ = file.write_all_at(kept.as_bytes(), 0);
            let _ = file.set_len(kept.len() as u64);
            let _ = file.rewind();
        });
    }
}

fn with_hosts_locked(append: bool, f: impl FnOnce(&mut fs::File)) {
    let mut file = fs::OpenOptions::new()
        .read(true)
        .append(append)
        .write(true)
        .open("/etc/hosts")
        .expect("open /etc/hosts");
    // SAFETY: flock on a descriptor we own; released when it closes.
    assert_eq!(unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) }, 0);
    f(&mut file);
}

/// A free TCP port on `ip` right now.
fn free_port(ip: &str) -> u16 {
    TcpListener::bind((ip, 0))
        .expect("bind a free port")
        .local_addr()
        .unwrap()
        .port()
}

/// `python3 -m http.server` on `ip:port` serving `dir`; killed on drop.
struct WebServer {
    child: Child,
    port: u16,
}

impl WebServer {
    fn start(ip: &str, dir: &std::path::Path) -> WebServer {
        let port = free_port(ip);
        let child = Command::new("/usr/bin/python3")
            .args(["-m", "http.server", &port.to_string(), "--bind", ip])
            .arg("--directory")
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start python3 -m http.server");
        let up = poll(Duration::from_secs(10), || {
            TcpStream::connect((ip, port)).ok().map(|_| ())
        });
        assert!(up.is_some(), "http.server on {ip}:{port} did not start");
        WebServer { child, port }
    }
}

impl Drop for WebServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TCP echo server on `ip` (a thread per connection) for the test's lifetime.
fn echo_server(ip: &str) -> u16 {
    let listener = TcpListener::bind((ip, 0)).expect("bind echo server");
    let port = listener.local_addr().unwrap().port();
    thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            thread::spawn(move || {
                let mut s = stream;
                let mut buf = [0u8; 4096];
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 || s.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    port
}

/// A broker whose `eg` context may reach one name, `<unique>.<tag>.test`, answered by a
/// server `serve` starts on a test address of its own (it gives back its port). Fields
/// drop in the order locals would.
struct OneAllowed {
    b: Broker,
    port: u16,
    name: String,
    _hosts: Hosts,
    addr: HostAddr,
}

fn one_allowed(tag: &str, prefix: &str, serve: fn(&str) -> u16) -> OneAllowed {
    let addr = HostAddr::claim();
    let name = format!("{}.{tag}.test", unique(prefix));
    let hosts = Hosts::add(&[(&addr.ip, &name)]);
    let port = serve(&addr.ip);
    let b = Broker::start(&config(
        &host(&addr, &format!(r#"{{ allow = ["{name}"] }}"#)),
        None,
    ));
    OneAllowed {
        b,
        port,
        name,
        _hosts: hosts,
        addr,
    }
}

/// [`one_allowed`] with an echo server.
fn echo_allowed(tag: &str, prefix: &str) -> OneAllowed {
    one_allowed(tag, prefix, echo_server)
}

/// `rule` with the test server's address listed too: it is on the host's `lo`, one of the
/// host's own addresses, which a name reaches only where the address is listed.
fn host(addr: &HostAddr, rule: &str) -> String {
    rule.replacen("allow = [", &format!("allow = [\"{}\", ", addr.ip), 1)
}

/// One egress context `eg` with `rule` (TOML), a plain context `plain`, and `eg2` with
/// `rule2` when given.
fn config(rule: &str, rule2: Option<&str>) -> String {
    let mut text = format!(
        r#"[broker]
socket_mode = "0666"

[contexts.eg]
user = "{ALICE}"
cwd = "/"
allow = {{ uids = [0] }}
isolation = {{ network = {rule} }}

[contexts.plain]
user = "{ALICE}"
cwd = "/"
allow = {{ uids = [0] }}
"#
    );
    if let Some(r) = rule2 {
        text.push_str(&format!(
            "\n[contexts.eg2]\nuser = \"{ALICE}\"\ncwd = \"/\"\nallow = {{ uids = [0] }}\n\
             isolation = {{ network = {r} }}\n"
        ));
    }
    text
}

/// The audit line of the launch whose argv contains `marker`.
fn exec_line(b: &Broker, marker: &str) -> Value {
    b.wait_audit(1, |l| {
        l["event"] == "exec" && json_has_str(&l["argv"], marker)
    })
    .remove(0)
}

fn egress_lines(b: &Broker, launch: u64) -> Vec<Value> {
    b.audit_lines()
        .into_iter()
        .filter(|l| l["event"] == "egress" && l["launch"] == launch)
        .collect()
}

/// Every egress line, once the one for `last` (an allowed name the test tried last) is
/// written: the lines of the attempts before it are there by then.
fn egress_lines_once(b: &Broker, last: &str) -> Vec<Value> {
    b.wait_audit(1, |l| l["event"] == "egress" && l["name"] == last);
    b.audit_lines()
        .into_iter()
        .filter(|l| l["event"] == "egress")
        .collect()
}

/// A site directory holding `hello.txt` (its text returned too).
fn site(dir: &TempDir) -> (std::path::PathBuf, String) {
    let www = dir.subdir("www", 0o755);
    let body = format!("hello through the proxy {}\n", unique(""));
    fs::write(www.join("hello.txt"), &body).unwrap();
    (www, body)
}

// ---------------------------------------------------------------------------------------
// Clients reach allowed names and are refused the others
// ---------------------------------------------------------------------------------------

const NODE_CONNECT: &str = r#"
const http = require('http');
const p = new URL(process.env.HTTPS_PROXY);
const [host, port, path] = process.argv.slice(1);
const auth = 'Basic ' + Buffer.from(decodeURIComponent(p.username) + ':' +
    decodeURIComponent(p.password)).toString('base64');
const req = http.request({ host: p.hostname, port: p.port, method: 'CONNECT',
    path: host + ':' + port, headers: { 'Proxy-Authorization': auth } });
req.on('connect', (res, socket) => {
    if (res.statusCode !== 200) { console.log('proxy status', res.statusCode); process.exit(3); }
    const get = http.request({ createConnection: () => socket, host, port, path,
        headers: { Host: host + ':' + port } }, (r) => {
        let body = ''; r.on('data', (d) => body += d);
        r.on('end', () => { process.stdout.write(body); process.exit(0); });
    });
    get.end();
});
req.on('error', (e) => { console.log('error', e.message); process.exit(4); });
req.end();
"#;

const PY_URLLIB: &str = r#"
import sys, urllib.request, urllib.error
try:
    print(urllib.request.urlopen(sys.argv[1], timeout=10).read().decode(), end='')
except urllib.error.HTTPError as e:
    print('status', e.code); sys.exit(3)
"#;

#[test]
fn curl_python_and_node_reach_allowed_names_and_are_refused_the_others() {
    let addr = HostAddr::claim();
    let base = unique("w");
    let allowed = format!("{base}.allowed.test");
    let wild = format!("files.{base}.wild.test");
    let blocked = format!("blocked.{base}.wild.test");
    let other = format!("{base}.other.test");
    let _hosts = Hosts::add(&[
        (&addr.ip, &allowed),
        (&addr.ip, &wild),
        (&addr.ip, &blocked),
        (&addr.ip, &other),
    ]);
    let dir = TempDir::new();
    let (www, body) = site(&dir);
    let web = WebServer::start(&addr.ip, &www);
    let rule =
        format!(r#"{{ allow = ["{allowed}", "*.{base}.wild.test"], deny = ["{blocked}"] }}"#);
    let b = Broker::start(&config(&host(&addr, &rule), None));
    let url = |host: &str| format!("http://{host}:{}/hello.txt", web.port);

    // curl: absolute-URI request, CONNECT tunnel, SOCKS5 with the name resolved by the proxy.
    for (host, marker) in [(&allowed, "m-abs"), (&wild, "m-wild")] {
        let out = b.exec(
            "eg",
            &["curl", "-sSf", "-H", &format!("X-M: {marker}"), &url(host)],
        );
        assert_eq!(out.ok(), body, "{host}");
    }
    assert_eq!(
        b.exec(
            "eg",
            &["curl", "-sSfp", "-H", "X-M: m-tunnel", &url(&allowed)]
        )
        .ok(),
        body
    );
    let socks = format!(
        "curl -sSf -H 'X-M: m-socks' -x \"$ALL_PROXY\" {}",
        url(&allowed)
    );
    assert_eq!(b.exec("eg", &["sh", "-c", &socks]).ok(), body);
    for host in [&other, &blocked] {
        let out = b.exec(
            "eg",
            &[
                "curl",
                "-sS",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                &url(host),
            ],
        );
        assert_eq!(out.stdout_str(), "403", "{host}: {}", out.show());
    }
    let socks_denied = format!("curl -sSf -x \"$ALL_PROXY\" {}", url(&other));
    let out = b.exec("eg", &["sh", "-c", &socks_denied]);
    assert_ne!(out.code(), 0, "{}", out.show());

    // Python's urllib.
    let py = |u: String| b.exec("eg", &["/usr/bin/python3", "-c", PY_URLLIB, &u]);
    assert_eq!(py(url(&allowed)).ok(), body);
    let out = py(url(&other));
    assert_eq!(
        (out.code(), out.stdout_str()),
        (3, "status 403\n".into()),
        "{}",
        out.show()
    );

    // Node (20 has no proxy support in fetch and no undici ProxyAgent to import): a CONNECT
    // through HTTPS_PROXY with the http module.
    let node = |host: &str| {
        b.exec(
            "eg",
            &[
                "node",
                "-e",
                NODE_CONNECT,
                host,
                &web.port.to_string(),
                "/hello.txt",
            ],
        )
    };
    assert_eq!(node(&allowed).ok(), body);
    let out = node(&other);
    assert_eq!(out.code(), 3, "{}", out.show());
    assert!(out.stdout_str().contains("403"), "{}", out.show());

    // One audit line per attempt, naming the launch it belongs to.
    let launch = exec_line(&b, "m-abs")["id"].as_u64().unwrap();
    let lines = egress_lines(&b, launch);
    assert_eq!(lines.len(), 1, "{lines:?}");
    let l = &lines[0];
    assert_eq!(l["context"], "eg");
    assert_eq!(l["name"], allowed.as_str());
    assert_eq!(l["port"], web.port);
    assert_eq!(l["allowed"], true);
    assert_eq!(l["via"], "http");
    assert_eq!(l["address"], format!("{}:{}", addr.ip, web.port));
    assert!(l["bytes_up"].as_u64().unwrap() > 50, "{l}");
    assert!(l["bytes_down"].as_u64().unwrap() > body.len() as u64, "{l}");
    assert!(l["duration_ms"].is_u64(), "{l}");
    let tunnel = exec_line(&b, "m-tunnel")["id"].as_u64().unwrap();
    assert_eq!(egress_lines(&b, tunnel)[0]["via"], "connect");
    let socks_id = exec_line(&b, "m-socks")["id"].as_u64().unwrap();
    assert_eq!(egress_lines(&b, socks_id)[0]["via"], "socks5");
    let denied: Vec<Value> = b
        .audit_lines()
        .into_iter()
        .filter(|l| l["event"] == "egress" && l["allowed"] == false)
        .collect();
    // curl twice (other, blocked), curl over SOCKS, Python, Node.
    assert_eq!(denied.len(), 5, "{denied:?}");
    for d in &denied {
        assert!(d["launch"].is_u64(), "{d}");
        assert_eq!(
            (d["bytes_up"].as_u64(), d["bytes_down"].as_u64()),
            (Some(0), Some(0))
        );
    }
    assert!(denied
        .iter()
        .any(|d| d["name"] == blocked.as_str() && d["reason"] == "in the deny list"));
    assert!(denied
        .iter()
        .any(|d| d["name"] == other.as_str() && d["reason"] == "not in the allow list"));
    // The proxy credentials are never written (the Node script's argv names the header).
    for l in b.audit_lines().iter().filter(|l| l["event"] == "egress") {
        let text = l.to_string();
        assert!(
            !text.contains("Proxy-Authorization") && !text.contains("bGF1bmNo"),
            "{text}"
        );
    }
    assert!(!b.stderr().contains("bGF1bmNo"));

    // `ctx log` shows them with their launch.
    let out = run(&mut b.ctx(["log", "--launch", &launch.to_string()])).ok();
    assert!(out.contains(&format!("launch {launch}")), "{out}");
    assert!(out.contains("allowed"), "{out}");
    assert!(
        out.contains(&format!("{allowed}:{} via http", web.port)),
        "{out}"
    );
}

#[test]
fn pip_download_and_git_clone_go_through_the_proxy() {
    let addr = HostAddr::claim();
    let base = unique("p");
    let index = format!("{base}.index.test");
    let other = format!("{base}.other.test");
    let _hosts = Hosts::add(&[(&addr.ip, &index), (&addr.ip, &other)]);
    let dir = TempDir::new();
    let www = dir.subdir("www", 0o755);
    // A wheel and a simple index for it.
    let make = format!(
        r#"
import os, zipfile
www = {www:?}
os.makedirs(www + '/simple/ctxprobe', exist_ok=True)
os.makedirs(www + '/packages', exist_ok=True)
whl = 'ctxprobe-1.0-py3-none-any.whl'
with zipfile.ZipFile(www + '/packages/' + whl, 'w') as z:
    z.writestr('ctxprobe/__init__.py', 'VALUE = 1\n')
    z.writestr('ctxprobe-1.0.dist-info/METADATA', 'Metadata-Version: 2.1\nName: ctxprobe\nVersion: 1.0\n')
    z.writestr('ctxprobe-1.0.dist-info/WHEEL', 'Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n')
    z.writestr('ctxprobe-1.0.dist-info/RECORD', '')
open(www + '/simple/ctxprobe/index.html', 'w').write(
    '<html><body><a href="../../packages/%s">%s</a></body></html>' % (whl, whl))
"#,
        www = www.display().to_string()
    );
    run(Command::new("/usr/bin/python3").args(["-c", &make])).ok();
    // A repository served as "dumb" HTTP (static files after update-server-info).
    let work = dir.subdir("work", 0o755);
    let git = |args: &[&str], cwd: &std::path::Path| {
        run(Command::new("git")
            .args(["-c", "user.name=t", "-c", "user.email=t@example.test"])
            .args(args)
            .current_dir(cwd))
        .ok()
    };
    git(&["init", "-q", "."], &work);
    fs::write(work.join("README"), "cloned through the proxy\n").unwrap();
    git(&["add", "README"], &work);
    git(&["commit", "-qm", "first"], &work);
    git(
        &[
            "clone",
            "-q",
            "--bare",
            ".",
            &www.join("repo.git").display().to_string(),
        ],
        &work,
    );
    git(&["update-server-info"], &www.join("repo.git"));
    run(Command::new("chmod").args(["-R", "a+rX"]).arg(&www)).ok();
    let web = WebServer::start(&addr.ip, &www);
    let dest = dir.subdir("dest", 0o777);

    let b = Broker::start(&config(
        &host(&addr, &format!(r#"{{ allow = ["{index}"] }}"#)),
        None,
    ));
    let pip = |host: &str, into: &str| {
        let into = dest.join(into);
        b.exec(
            "eg",
            &[
                "/usr/bin/python3",
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--no-cache-dir",
                "--disable-pip-version-check",
                "--retries",
                "0",
                "--timeout",
                "10",
                "--trusted-host",
                host,
                "--index-url",
                &format!("http://{host}:{}/simple/", web.port),
                "-d",
                &into.display().to_string(),
                "ctxprobe",
            ],
        )
    };
    pip(&index, "ok").ok();
    assert!(dest.join("ok/ctxprobe-1.0-py3-none-any.whl").is_file());
    let out = pip(&other, "no");
    assert_ne!(out.code(), 0, "{}", out.show());
    assert!(!dest.join("no/ctxprobe-1.0-py3-none-any.whl").exists());

    let clone = |host: &str, into: &str| {
        let into = dest.join(into).display().to_string();
        let url = format!("http://{host}:{}/repo.git", web.port);
        b.exec(
            "eg",
            &["env", "HOME=/tmp", "git", "clone", "-q", &url, &into],
        )
    };
    clone(&index, "clone-ok").ok();
    assert_eq!(
        fs::read_to_string(dest.join("clone-ok/README")).unwrap(),
        "cloned through the proxy\n"
    );
    let out = clone(&other, "clone-no");
    assert_ne!(out.code(), 0, "{}", out.show());
    assert!(out.stderr_str().contains("403"), "{}", out.show());

    let lines: Vec<Value> = b
        .audit_lines()
        .into_iter()
        .filter(|l| l["event"] == "egress")
        .collect();
    assert!(lines
        .iter()
        .any(|l| l["name"] == index.as_str() && l["allowed"] == true));
    assert!(lines
        .iter()
        .any(|l| l["name"] == other.as_str() && l["allowed"] == false));
    assert!(lines.iter().all(|l| l["launch"].is_u64()), "{lines:?}");
}

// ---------------------------------------------------------------------------------------
// What the proxy never does
// ---------------------------------------------------------------------------------------

const RAW_CONNECT: &str = r#"
import socket, sys
s = socket.socket(); s.settimeout(3)
try:
    s.connect((sys.argv[1], int(sys.argv[2])))
except OSError as e:
    print('no network', e.errno); sys.exit(3)
print('connected')
"#;

#[test]
fn a_program_that_ignores_the_proxy_has_no_network() {
    let OneAllowed {
        b,
        port,
        name,
        _hosts,
        addr,
    } = echo_allowed("raw", "r");
    let raw = |ctx: &str| {
        b.exec(
            ctx,
            &[
                "/usr/bin/python3",
                "-c",
                RAW_CONNECT,
                &addr.ip,
                &port.to_string(),
            ],
        )
    };
    let out = raw("eg");
    assert_eq!(out.code(), 3, "{}", out.show());
    // Not vacuous: outside the namespace the same connect works.
    assert_eq!(raw("plain").ok(), "connected\n");
    // curl told not to use the proxy fails too, even for the allowed name.
    let out = b.exec(
        "eg",
        &[
            "curl",
            "-sS",
            "--noproxy",
            "*",
            &format!("http://{name}:{port}/"),
        ],
    );
    assert_eq!(out.code(), 7, "{}", out.show());
    // The host's loopback is not the context's.
    let host_port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let _held = TcpListener::bind(("127.0.0.1", host_port));
    let out = b.exec(
        "eg",
        &[
            "/usr/bin/python3",
            "-c",
            RAW_CONNECT,
            "127.0.0.1",
            &host_port.to_string(),
        ],
    );
    assert_eq!(out.code(), 3, "{}", out.show());
}

#[test]
fn a_name_that_resolves_to_loopback_is_refused_unless_the_address_is_listed() {
    let host = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = host.local_addr().unwrap().port();
    thread::spawn(move || {
        for s in host.incoming().flatten() {
            let mut s = s;
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf);
            let _ = s.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 9\r\n\r\nhost-only");
        }
    });
    // Names for the cloud metadata endpoint and an IPv4-mapped loopback address: the proxy
    // refuses them before connecting, so neither needs to exist.
    let base = unique("l");
    let metadata = format!("{base}.metadata.test");
    let mapped = format!("{base}.mapped.test");
    let _hosts = Hosts::add(&[
        ("169.254.169.254", &metadata),
        ("::ffff:127.0.0.1", &mapped),
    ]);
    let b = Broker::start(&config(
        &format!(r#"{{ allow = ["localhost:{port}", "{metadata}", "{mapped}"] }}"#),
        Some(&format!(
            r#"{{ allow = ["localhost:{port}", "127.0.0.1:{port}"] }}"#
        )),
    ));
    // The status code on the last line, the body before it.
    let get = |ctx: &str, host: &str| -> (String, String) {
        let script = format!(
            "curl -sS --noproxy '' -x \"$HTTP_PROXY\" -w '\\n%{{http_code}}' http://{host}:{port}/"
        );
        let out = b.exec(ctx, &["sh", "-c", &script]).stdout_str();
        let (body, code) = out.rsplit_once('\n').unwrap_or(("", &out));
        (code.to_string(), body.to_string())
    };
    // Through a name: refused, with the address it led to in the log.
    assert_eq!(get("eg", "localhost").0, "403");
    let l = b
        .wait_audit(1, |l| l["event"] == "egress" && l["context"] == "eg")
        .remove(0);
    assert_eq!(l["allowed"], false);
    assert_eq!(l["name"], "localhost");
    assert!(l["reason"].as_str().unwrap().contains("127.0.0.1"), "{l}");
    // As a literal address it is not listed either.
    assert_eq!(get("eg", "127.0.0.1").0, "403");
    for (name, address) in [(&metadata, "169.254.169.254"), (&mapped, "127.0.0.1")] {
        assert_eq!(get("eg", name).0, "403", "{name}");
        let l = b
            .wait_audit(1, |l| l["event"] == "egress" && l["name"] == name.as_str())
            .remove(0);
        assert_eq!(l["allowed"], false);
        assert!(l["reason"].as_str().unwrap().contains(address), "{l}");
    }
    // Listed as an address, both work.
    assert_eq!(get("eg2", "localhost"), ("200".into(), "host-only".into()));
    assert_eq!(get("eg2", "127.0.0.1").0, "200");
    assert_eq!(get("eg2", "[::ffff:127.0.0.1]").0, "200");
    // Another port of the same address is not.
    let out = b.exec(
        "eg2",
        &["sh", "-c", "curl -sS --noproxy '' -o /dev/null -w '%{http_code}' -x \"$HTTP_PROXY\" http://127.0.0.1:1/"],
    );
    assert_eq!(out.stdout_str(), "403");
}

// ---------------------------------------------------------------------------------------
// Load and hostile clients
// ---------------------------------------------------------------------------------------

/// Opens N CONNECT tunnels through the proxy, all held open at once, then echoes a
/// distinct line through each.
const MANY_TUNNELS: &str = r#"
import os, socket, sys, urllib.parse
n, host, port = int(sys.argv[1]), sys.argv[2], sys.argv[3]
p = urllib.parse.urlsplit(os.environ['HTTPS_PROXY'])
tunnels = []
for i in range(n):
    s = socket.create_connection((p.hostname, p.port), timeout=20)
    s.sendall(('CONNECT %s:%s HTTP/1.1\r\nHost: %s:%s\r\n\r\n' % (host, port, host, port)).encode())
    tunnels.append(s)
for s in tunnels:
    head = b''
    while not head.endswith(b'\r\n\r\n'):
        c = s.recv(1)
        if not c: sys.exit('closed during CONNECT')
        head += c
    assert head.startswith(b'HTTP/1.1 200'), head
for i, s in enumerate(tunnels):
    s.sendall(b'line %05d\n' % i)
for i, s in enumerate(tunnels):
    want = b'line %05d\n' % i
    got = b''
    while len(got) < len(want):
        got += s.recv(len(want) - len(got))
    assert got == want, (got, want)
for s in tunnels:
    s.close()
print('ok', n)
"#;

#[test]
fn two_hundred_connections_at_once() {
    let OneAllowed {
        b,
        port,
        name,
        _hosts,
        addr: _addr,
    } = echo_allowed("echo", "e");
    let out = run_with(
        &mut b.exec_cmd(
            "eg",
            &[
                "/usr/bin/python3",
                "-c",
                MANY_TUNNELS,
                "200",
                &name,
                &port.to_string(),
            ],
        ),
        None,
        Duration::from_secs(60),
    );
    assert_eq!(out.ok(), "ok 200\n");
    // 200 audit lines, each with the exact bytes that crossed (11 each way, the CONNECT
    // itself is the proxy's).
    let lines = b.wait_audit(200, |l| l["event"] == "egress");
    assert_eq!(lines.len(), 200);
    for l in &lines {
        assert_eq!(
            (l["allowed"].as_bool(), l["via"].as_str()),
            (Some(true), Some("connect"))
        );
        assert_eq!(
            (l["bytes_up"].as_u64(), l["bytes_down"].as_u64()),
            (Some(11), Some(11)),
            "{l}"
        );
    }
}

/// Stalls and dribbles handshakes at the proxy, then checks that the proxy still serves,
/// and that the stalled connections are closed by the broker within its deadline.
const HOSTILE: &str = r#"
import json, os, socket, sys, threading, time, urllib.parse, urllib.request
url = sys.argv[1]
p = urllib.parse.urlsplit(os.environ['HTTP_PROXY'])
def conn():
    return socket.create_connection((p.hostname, p.port), timeout=30)
idle = [conn() for _ in range(40)]
dribblers = [conn() for _ in range(20)]
stop = False
def dribble(s):
    for c in b'CONNECT ' + b'x' * 1000:
        if stop: return
        try: s.send(bytes([c]))
        except OSError: return
        time.sleep(0.2)
for s in dribblers:
    threading.Thread(target=dribble, args=(s,), daemon=True).start()
big = conn()
big.sendall(b'GET http://a.test/ HTTP/1.1\r\n' + b'X-Pad: ' + b'p' * 20000 + b'\r\n\r\n')
too_large = big.recv(100).split(b' ')[1].decode()
start = time.time()
body = urllib.request.urlopen(url, timeout=10).read().decode()
served_in = time.time() - start
closed_at = {}
def wait_closed(s, i):
    try:
        s.settimeout(30)
        while s.recv(100): pass
    except OSError: pass
    closed_at[i] = time.time() - start
ts = [threading.Thread(target=wait_closed, args=(s, i)) for i, s in enumerate(idle + dribblers)]
for t in ts: t.start()
for t in ts: t.join()
stop = True
print(json.dumps({'body': body, 'served_in': served_in, 'too_large': too_large,
                  'closed_max': max(closed_at.values()), 'closed': len(closed_at)}))
"#;

#[test]
fn a_client_that_dribbles_or_stalls_does_not_hold_the_broker() {
    let addr = HostAddr::claim();
    let name = format!("{}.slow.test", unique("s"));
    let _hosts = Hosts::add(&[(&addr.ip, &name)]);
    let dir = TempDir::new();
    let (www, body) = site(&dir);
    let web = WebServer::start(&addr.ip, &www);
    let b = Broker::start(&config(
        &host(&addr, &format!(r#"{{ allow = ["{name}"] }}"#)),
        None,
    ));
    let url = format!("http://{name}:{}/hello.txt", web.port);
    let mut child = b
        .exec_cmd("eg", &["/usr/bin/python3", "-c", HOSTILE, &url])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // While the slow clients hold their connections, the broker answers the control
    // socket at once.
    thread::sleep(Duration::from_secs(2));
    let t = Instant::now();
    run(&mut b.ctx(["status"])).ok();
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    let status = wait_deadline(&mut child, Duration::from_secs(60)).expect("hostile script");
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(status.success(), "{out}\n{err}");
    let r: Value = serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(r["body"], body.as_str());
    assert!(r["served_in"].as_f64().unwrap() < 3.0, "{r}");
    assert_eq!(r["too_large"], "431");
    assert_eq!(r["closed"], 60);
    // The handshake deadline is 10 s from each connection's start.
    assert!(r["closed_max"].as_f64().unwrap() < 13.0, "{r}");
    // The stalled and dribbling clients never asked for anything, so made no attempt: two
    // egress lines, the real request and the head too large, which named a.test.
    let lines: Vec<Value> = b
        .audit_lines()
        .into_iter()
        .filter(|l| l["event"] == "egress")
        .collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(lines
        .iter()
        .any(|l| l["name"] == name.as_str() && l["allowed"] == true));
    assert!(
        lines.iter().any(|l| l["name"] == "a.test"
            && l["allowed"] == false
            && l["reason"]
                .as_str()
                .is_some_and(|r| r.contains("larger than"))),
        "{lines:?}"
    );
}

const OVER_CAP: &str = r#"
import os, socket, sys, time, urllib.parse
p = urllib.parse.urlsplit(os.environ['HTTP_PROXY'])
held = [socket.create_connection((p.hostname, p.port), timeout=5) for _ in range(int(sys.argv[1]))]
time.sleep(0.5)
closed = 0
for s in held:
    s.setblocking(False)
    try:
        if s.recv(1) == b'': closed += 1
    except BlockingIOError: pass
    except OSError: closed += 1
print(closed)
"#;

#[test]
fn connections_over_the_per_context_cap_are_closed_at_once() {
    let b = Broker::start(&config(r#"{ allow = ["example.test"] }"#, None));
    let out = b.exec("eg", &["/usr/bin/python3", "-c", OVER_CAP, "530"]);
    // 512 held open (waiting for their handshakes), the 18 beyond closed.
    assert_eq!(out.ok(), "18\n");
}

// ---------------------------------------------------------------------------------------
// Status and reload
// ---------------------------------------------------------------------------------------

#[test]
fn status_lists_the_rule_and_the_proxy_follows_a_reload() {
    let addr = HostAddr::claim();
    let base = unique("r");
    let first = format!("{base}.first.test");
    let second = format!("{base}.second.test");
    let _hosts = Hosts::add(&[(&addr.ip, &first), (&addr.ip, &second)]);
    let dir = TempDir::new();
    let (www, body) = site(&dir);
    let web = WebServer::start(&addr.ip, &www);
    let b = Broker::start(&config(
        &host(
            &addr,
            &format!(r#"{{ allow = ["{first}", "*.pkg.test:443"], deny = ["bad.pkg.test"] }}"#),
        ),
        None,
    ));
    let status = run(&mut b.ctx(["status"])).ok();
    let line = status
        .lines()
        .find(|l| l.contains("isolation:  eg:"))
        .unwrap_or_else(|| panic!("{status}"));
    assert!(
        line.contains("network egress by name (loopback only, proxy 127.0.0.1:"),
        "{line}"
    );
    assert!(
        line.contains(&format!(
            "egress allow ({}, {first}, *.pkg.test:443)",
            addr.ip
        )),
        "{line}"
    );
    assert!(line.contains("egress deny (bad.pkg.test)"), "{line}");
    let code = |host: &str| {
        let u = format!("http://{host}:{}/hello.txt", web.port);
        b.exec(
            "eg",
            &["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", &u],
        )
        .stdout_str()
    };
    assert_eq!(code(&first), "200");
    assert_eq!(code(&second), "403");

    // The same namespace, the new rule.
    fs::write(
        b.config_path(),
        config(
            &host(&addr, &format!(r#"{{ allow = ["{second}"] }}"#)),
            None,
        ),
    )
    .unwrap();
    run(&mut b.ctx(["reload"])).ok();
    assert_eq!(code(&first), "403");
    assert_eq!(code(&second), "200");
    let status = run(&mut b.ctx(["status"])).ok();
    assert!(
        status.contains(&format!("egress allow ({}, {second})", addr.ip)),
        "{status}"
    );

    // network = "none": no proxy, no variables, no network.
    fs::write(b.config_path(), config(r#""none""#, None)).unwrap();
    run(&mut b.ctx(["reload"])).ok();
    let env = b.exec("eg", &["env"]).ok();
    assert!(!env.to_lowercase().contains("_proxy="), "{env}");
    let status = run(&mut b.ctx(["status"])).ok();
    assert!(
        status.contains("eg: network none (loopback only)"),
        "{status}"
    );
    // And back: a new listener in the same namespace.
    fs::write(
        b.config_path(),
        config(&host(&addr, &format!(r#"{{ allow = ["{first}"] }}"#)), None),
    )
    .unwrap();
    run(&mut b.ctx(["reload"])).ok();
    let got = b
        .exec(
            "eg",
            &[
                "curl",
                "-sSf",
                &format!("http://{first}:{}/hello.txt", web.port),
            ],
        )
        .ok();
    assert_eq!(got, body);
}

/// A name that resolves to one of the host's own addresses (here one added to `lo`, as a
/// machine's own interface address would be) leads to every service the host runs on all
/// interfaces: refused unless the address is listed, as for loopback.
#[test]
fn a_name_that_resolves_to_the_hosts_own_address_is_refused_unless_listed() {
    let addr = HostAddr::claim();
    let name = format!("{}.own.test", unique("o"));
    let _hosts = Hosts::add(&[(&addr.ip, &name)]);
    let dir = TempDir::new();
    let (www, _) = site(&dir);
    let web = WebServer::start(&addr.ip, &www);
    let b = Broker::start(&config(
        &format!(r#"{{ allow = ["{name}"] }}"#),
        Some(&host(&addr, &format!(r#"{{ allow = ["{name}"] }}"#))),
    ));
    let code = |ctx: &str| {
        let script = format!(
            "curl -s -o /dev/null --noproxy '' -x \"$HTTP_PROXY\" -w '%{{http_code}}' http://{name}:{}/hello.txt",
            web.port
        );
        b.exec(ctx, &["sh", "-c", &script]).stdout_str()
    };
    assert_eq!(code("eg"), "403");
    let l = b
        .wait_audit(1, |l| l["event"] == "egress" && l["context"] == "eg")
        .remove(0);
    assert_eq!(l["allowed"], false);
    assert!(l["reason"].as_str().unwrap().contains(&addr.ip), "{l}");
    // Listed, the same name is reached.
    assert_eq!(code("eg2"), "200");
}

/// A destination that never answers nor closes does not hold a connection (and the
/// context's share of them) after its client has gone: once the client's side ends, the
/// destination's silence is limited, and the attempt's audit line comes.
#[test]
fn a_silent_destination_does_not_outlive_its_client() {
    let addr = HostAddr::claim();
    let name = format!("{}.silent.test", unique("s"));
    let _hosts = Hosts::add(&[(&addr.ip, &name)]);
    let listener = TcpListener::bind((addr.ip.as_str(), 0)).unwrap();
    let port = listener.local_addr().unwrap().port();
    // Accepts and holds every connection: never a byte, never a close.
    let held = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let keep = held.clone();
    thread::spawn(move || {
        for s in listener.incoming().flatten() {
            keep.lock().unwrap().push(s);
        }
    });
    let b = Broker::start(&config(
        &host(&addr, &format!(r#"{{ allow = ["{name}"] }}"#)),
        None,
    ));
    // Through a CONNECT tunnel, then gone.
    let script = format!(
        "import os, socket\n\
         p = int(os.environ['HTTP_PROXY'].rsplit(':', 1)[1])\n\
         s = socket.create_connection(('127.0.0.1', p))\n\
         s.sendall(b'CONNECT {name}:{port} HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n')\n\
         print(s.recv(100).split(b'\\r\\n')[0].decode())\n"
    );
    let out = b.exec("eg", &["/usr/bin/python3", "-c", &script]);
    assert_eq!(out.ok(), "HTTP/1.1 200 Connection established\n");
    let started = std::time::Instant::now();
    let l = poll(std::time::Duration::from_secs(45), || {
        b.audit_lines()
            .into_iter()
            .find(|l| l["event"] == "egress" && l["name"] == name.as_str())
    })
    .unwrap_or_else(|| panic!("the relay still runs after {:?}", started.elapsed()));
    assert_eq!(l["allowed"], true);
    assert!(
        l["error"].as_str().unwrap_or("").contains("sent nothing"),
        "{l}"
    );
    assert_eq!(held.lock().unwrap().len(), 1);
}

/// The `getsockopt(TCP_INFO)` calls the broker (all its threads) makes in `secs` seconds,
/// counted by `strace`.
fn tcp_info_reads(broker: u32, dir: &TempDir, secs: u32) -> usize {
    let log = dir.path().join(unique("strace-"));
    let out = run(Command::new("timeout")
        .args(["-s", "INT", &secs.to_string()])
        .args(["strace", "-f", "-qq", "-e", "trace=getsockopt", "-o"])
        .arg(&log)
        .args(["-p", &broker.to_string()]));
    assert!(log.exists(), "strace did not run: {}", out.show());
    fs::read_to_string(&log)
        .unwrap()
        .lines()
        .filter(|l| l.contains("TCP_INFO"))
        .count()
}

/// The relay's watchdog asks the kernel what each socket delivered only while it is armed
/// (the client has ended its side, or waits on a destination that takes nothing): an open
/// tunnel that is merely idle costs no system call a second.
#[test]
fn an_idle_tunnel_is_not_polled_until_its_client_ends() {
    let addr = HostAddr::claim();
    let name = format!("{}.idle.test", unique("i"));
    let _hosts = Hosts::add(&[(&addr.ip, &name)]);
    let listener = TcpListener::bind((addr.ip.as_str(), 0)).unwrap();
    let port = listener.local_addr().unwrap().port();
    let held = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let keep = held.clone();
    thread::spawn(move || {
        for s in listener.incoming().flatten() {
            keep.lock().unwrap().push(s);
        }
    });
    let b = Broker::start(&config(
        &host(&addr, &format!(r#"{{ allow = ["{name}"] }}"#)),
        None,
    ));
    let script = format!(
        "import os, socket, sys\n\
         p = int(os.environ['HTTP_PROXY'].rsplit(':', 1)[1])\n\
         s = socket.create_connection(('127.0.0.1', p))\n\
         s.sendall(b'CONNECT {name}:{port} HTTP/1.1\\r\\n\\r\\n')\n\
         print(s.recv(100).split(b'\\r\\n')[0].decode(), flush=True)\n\
         sys.stdin.readline(); s.shutdown(socket.SHUT_WR); print('ended', flush=True)\n\
         sys.stdin.readline()\n"
    );
    let mut client = b
        .exec_cmd("eg", &["/usr/bin/python3", "-c", &script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(client.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    assert_eq!(line, "HTTP/1.1 200 Connection established\n");
    let dir = TempDir::new();
    assert_eq!(
        tcp_info_reads(b.pid(), &dir, 3),
        0,
        "while the tunnel is idle"
    );
    client.stdin.as_mut().unwrap().write_all(b"\n").unwrap();
    line.clear();
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    assert_eq!(line, "ended\n");
    let armed = tcp_info_reads(b.pid(), &dir, 3);
    assert!(armed >= 2, "{armed} reads after the client's end");
    drop(client.stdin.take());
    assert!(wait_deadline(&mut client, Duration::from_secs(20)).is_some());
    assert_eq!(held.lock().unwrap().len(), 1);
}

/// Opens as many CONNECT tunnels to an echo server as it can (up to argv[1]), prints how
/// many carry a byte there and back, holds them until its standard input ends, and then
/// checks that each still does.
const HOLD_TUNNELS: &str = r#"
import os, socket, sys, urllib.parse
n, name, port = int(sys.argv[1]), sys.argv[2], sys.argv[3]
p = urllib.parse.urlsplit(os.environ['HTTP_PROXY'])
def echoes(s):
    try:
        s.sendall(b'x')
        return s.recv(1) == b'x'
    except OSError:
        return False
held = []
for _ in range(n):
    try:
        s = socket.create_connection((p.hostname, p.port), timeout=5)
        s.sendall(b'CONNECT %s:%s HTTP/1.1\r\n\r\n' % (name.encode(), port.encode()))
        head = b''
        while b'\r\n\r\n' not in head:
            d = s.recv(1)
            if not d: break
            head += d
        if head.startswith(b'HTTP/1.1 200') and echoes(s):
            held.append(s)
        else:
            s.close()
    except OSError:
        pass
print(len(held), flush=True)
sys.stdin.read()
print(sum(echoes(s) for s in held), flush=True)
"#;

/// A context holding every egress connection its proxy lets it open cannot take the
/// descriptors the other contexts' launches need: under a broker limited to 1024 open
/// files, 512 tunnels (two sockets and two pipes each in the broker) would take them all.
#[test]
fn a_context_at_its_egress_maximum_does_not_starve_other_launches() {
    let addr = HostAddr::claim();
    let name = format!("{}.fds.test", unique("f"));
    let _hosts = Hosts::add(&[(&addr.ip, &name)]);
    let port = echo_server(&addr.ip);
    let b = Broker::start_with_files(
        &config(&host(&addr, &format!(r#"{{ allow = ["{name}"] }}"#)), None),
        1024,
    );
    let mut holder = b
        .exec_cmd(
            "eg",
            &[
                "/usr/bin/python3",
                "-c",
                HOLD_TUNNELS,
                "512",
                &name,
                &port.to_string(),
            ],
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(holder.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    let held: usize = line.trim().parse().unwrap_or_else(|_| panic!("{line:?}"));
    for i in 0..20 {
        let out = b.exec("plain", &["/bin/echo", &format!("launch {i}")]);
        assert_eq!(out.ok(), format!("launch {i}\n"));
    }
    drop(holder.stdin.take());
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest).unwrap();
    assert!(wait_deadline(&mut holder, Duration::from_secs(20)).is_some_and(|s| s.success()));
    // Those it held still relay; the others were refused for the context's share of the
    // descriptors, and audited so.
    assert_eq!(rest.trim(), held.to_string());
    assert!((1..512).contains(&held), "{held}");
    let refused = b.wait_audit(1, |l| l["event"] == "egress" && l["via"] == "accept");
    assert_eq!(refused[0]["allowed"], false);
    assert!(
        json_has_str(&refused[0]["reason"], "share of the broker's descriptors"),
        "{}",
        refused[0]
    );
}

/// Two contexts holding every egress connection they can leave a third its own part of the
/// egress descriptors: under a broker limited to 1024 open files, a quarter each (as the
/// broker once allowed) would be all egress may hold together.
#[test]
fn two_contexts_at_their_egress_maximum_leave_a_third_its_part() {
    let addr = HostAddr::claim();
    let name = format!("{}.fair.test", unique("f"));
    let _hosts = Hosts::add(&[(&addr.ip, &name)]);
    let port = echo_server(&addr.ip);
    let rule = host(&addr, &format!(r#"{{ allow = ["{name}"] }}"#));
    let mut text = config(&rule, Some(&rule));
    text.push_str(&format!(
        "\n[contexts.eg3]\nuser = \"{ALICE}\"\ncwd = \"/\"\nallow = {{ uids = [0] }}\n\
         isolation = {{ network = {rule} }}\n"
    ));
    let b = Broker::start_with_files(&text, 1024);
    let hold = |context: &str| {
        let mut child = b
            .exec_cmd(
                context,
                &[
                    "/usr/bin/python3",
                    "-c",
                    HOLD_TUNNELS,
                    "512",
                    &name,
                    &port.to_string(),
                ],
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        std::io::BufRead::read_line(&mut out, &mut line).unwrap();
        let held: usize = line.trim().parse().unwrap_or_else(|_| panic!("{line:?}"));
        (child, out, held)
    };
    let holders: Vec<_> = ["eg", "eg2", "eg3"].into_iter().map(hold).collect();
    let held: Vec<usize> = holders.iter().map(|h| h.2).collect();
    // The first took its part and the common rest; the others their parts, the same.
    assert!(held[2] > 0, "the third context got no connection: {held:?}");
    assert_eq!(held[1], held[2], "{held:?}");
    assert!(held[0] > held[1], "{held:?}");
    assert_eq!(b.exec("plain", &["/bin/echo", "ok"]).ok(), "ok\n");
    for (mut child, mut out, n) in holders {
        drop(child.stdin.take());
        let mut rest = String::new();
        std::io::Read::read_to_string(&mut out, &mut rest).unwrap();
        assert!(wait_deadline(&mut child, Duration::from_secs(20)).is_some_and(|s| s.success()));
        assert_eq!(rest.trim(), n.to_string());
    }
    // Refusals are metered by uid, and all three run as the same one: the first, the
    // greedy context's, are the ones surely written.
    let refused = b.wait_audit(1, |l| l["event"] == "egress" && l["via"] == "accept");
    assert!(
        refused
            .iter()
            .any(|l| json_has_str(&l["reason"], "kept for each of 3 egress context(s)")),
        "{refused:?}"
    );
}

/// Where the broker's descriptors are too few to keep one proxy connection for each egress
/// context, it says so at start and at each reload.
#[test]
fn too_many_egress_contexts_for_the_descriptors_are_warned_about() {
    let mut text = config(r#"{ allow = ["example.test"] }"#, None);
    for n in 0..32 {
        text.push_str(&format!(
            "\n[contexts.more{n}]\nuser = \"{ALICE}\"\ncwd = \"/\"\nallow = {{ uids = [0] }}\n\
             isolation = {{ network = {{ allow = [\"example.test\"] }} }}\n"
        ));
    }
    let warning = "33 contexts with egress rules share 384 of the broker's 1024 open files";
    let b = Broker::start_with_files(&text, 1024);
    assert!(b.stderr().contains(warning), "{}", b.stderr());
    let out = run(&mut b.ctx(["reload"]));
    assert!(out.show().contains(warning), "{}", out.show());
    fs::write(
        b.config_path(),
        config(r#"{ allow = ["example.test"] }"#, None),
    )
    .unwrap();
    let out = run(&mut b.ctx(["reload"]));
    assert!(
        !out.stdout_str().contains("egress rules share"),
        "{}",
        out.show()
    );
}

/// Landlock's `tcp_connect` (ABI 4+) on an egress context: the proxy's port is granted
/// beside the listed ports, so a program still reaches allowed names through it, while a
/// connection to any other port, even on the namespace's own loopback, is refused (7 here;
/// 9, the one listed, is no listener's).
#[test]
fn tcp_connect_rules_leave_the_proxy_reachable() {
    let abi = landlock_abi();
    assert!(
        abi >= 4,
        "this kernel's Landlock ABI is {abi}: tcp_connect needs 4 (Linux 6.7), so this test \
         cannot check the proxy's grant here"
    );
    let addr = HostAddr::claim();
    let name = format!("{}.landlock.test", unique("l"));
    let _hosts = Hosts::add(&[(&addr.ip, &name)]);
    let dir = TempDir::new();
    let (www, body) = site(&dir);
    let server = WebServer::start(&addr.ip, &www);
    let rule = host(
        &addr,
        &format!(r#"{{ allow = ["{name}"] }}, tcp_connect = [9]"#),
    );
    let b = Broker::start(&config(&rule, None));
    let script = format!(
        "import socket, urllib.request\n\
         print(urllib.request.urlopen('http://{name}:{}/hello.txt', timeout=10).read().decode(), end='')\n\
         s = socket.socket(); s.settimeout(3)\n\
         try:\n s.connect(('127.0.0.1', 7)); print('connected')\n\
         except OSError as e:\n print('errno%d' % e.errno)\n",
        server.port
    );
    let out = b.exec("eg", &["/usr/bin/python3", "-c", &script]);
    assert_eq!(
        out.ok(),
        format!("{body}errno{}\n", libc::EACCES),
        "{}",
        out.show()
    );
    let status = run(&mut b.ctx(["status"])).ok();
    assert!(
        status.contains("TCP connect limited to tcp_connect"),
        "{status}"
    );
}

/// The proxy's end of a client connection, which is loopback, does not pace what it sends,
/// whatever the host's default congestion control: a pacing one (BBR) made a relayed
/// download cost the host far more CPU than a direct one. The client sees it with `ss`.
#[test]
fn the_proxys_end_of_a_client_connection_uses_reno() {
    let b = Broker::start(&config(r#"{ allow = ["example.test"] }"#, None));
    let script = "import os, re, socket, subprocess\n\
         port = int(re.search(r':(\\d+)$', os.environ['HTTP_PROXY']).group(1))\n\
         s = socket.create_connection(('127.0.0.1', port))\n\
         out = subprocess.run(['ss', '-tinH', 'state', 'established', 'sport', '=', ':%d' % port],\n\
         \x20   capture_output=True, text=True, check=True).stdout\n\
         print(out.split()[4])\n";
    let out = b.exec("eg", &["/usr/bin/python3", "-c", script]);
    assert_eq!(out.ok(), "reno\n", "{}", out.show());
}

/// The proxy's end of a client connection holds only the floor until its destination
/// answers, yet offers a window scale that lets the share it gets then be used: the
/// kernel takes the window scale it offers at the handshake from the buffer size, so the
/// floor is set on each accepted socket, not on the listening one (which would keep this
/// end's window at 128 KiB for good).
#[test]
fn the_proxys_end_of_a_client_connection_starts_at_the_floor_with_room_to_grow() {
    let b = Broker::start(&config(r#"{ allow = ["example.test"] }"#, None));
    let script = "import os, re, socket, subprocess, time\n\
         port = int(re.search(r':(\\d+)$', os.environ['HTTP_PROXY']).group(1))\n\
         s = socket.create_connection(('127.0.0.1', port))\n\
         time.sleep(0.2)\n\
         out = subprocess.run(['ss', '-tinmH', 'state', 'established', 'sport', '=', ':%d' % port],\n\
         \x20   capture_output=True, text=True, check=True).stdout\n\
         print(re.search(r'wscale:\\d+,(\\d+)', out).group(1), re.search(r'rb(\\d+)', out).group(1))\n";
    let out = b.exec("eg", &["/usr/bin/python3", "-c", script]);
    let text = out.ok();
    let mut fields = text.split_whitespace().map(|f| f.parse::<u64>().unwrap());
    let (scale, rb) = (fields.next().unwrap(), fields.next().unwrap());
    assert_eq!(rb, 2 * 64 * 1024, "{}", out.show());
    // 65535 << 7 is 8 MiB: the most a connection's share makes a receive buffer.
    assert!(
        scale >= 7,
        "the proxy's end offers window scale {scale}: {}",
        out.show()
    );
}

/// A name sent with a trailing dot passes the rule written without it, and is resolved as
/// written: `/etc/hosts` here gives the absolute name another address than the relative
/// one, and the tunnel reaches the absolute name's.
#[test]
fn an_absolute_name_is_allowed_as_its_dotless_form_and_resolved_as_written() {
    let (relative, absolute) = (HostAddr::claim(), HostAddr::claim());
    let name = format!("{}.dot.test", unique("d"));
    let dotted = format!("{name}.");
    let _hosts = Hosts::add(&[(&relative.ip, &name), (&absolute.ip, &dotted)]);
    let port = echo_server(&absolute.ip);
    let rule = format!(
        r#"{{ allow = ["{name}", "{}", "{}"] }}"#,
        relative.ip, absolute.ip
    );
    let b = Broker::start(&config(&rule, None));
    let script = format!(
        "import os, socket\n\
         p = int(os.environ['HTTP_PROXY'].rsplit(':', 1)[1])\n\
         s = socket.create_connection(('127.0.0.1', p))\n\
         s.sendall(b'CONNECT {dotted}:{port} HTTP/1.1\\r\\n\\r\\n')\n\
         head = b''\n\
         while b'\\r\\n\\r\\n' not in head: head += s.recv(1)\n\
         s.sendall(b'ping'); print(head.split(b'\\r\\n')[0].decode(), s.recv(4).decode())\n"
    );
    let out = b.exec("eg", &["/usr/bin/python3", "-c", &script]);
    assert_eq!(out.ok(), "HTTP/1.1 200 Connection established ping\n");
    let l = b.wait_audit(1, |l| l["event"] == "egress").remove(0);
    assert_eq!(l["name"], dotted.as_str());
    assert_eq!(
        l["address"],
        format!("{}:{port}", absolute.ip).as_str(),
        "{l}"
    );
}

// ---------------------------------------------------------------------------------------
// attack2: reproducers
// ---------------------------------------------------------------------------------------

/// A /24 of 198.18.0.0/15 (benchmarking range) on the host's `lo`, removed on drop. On a
/// loopback device the kernel makes the whole prefix a `local` route: every address in it
/// is the host's own (as `127.0.0.0/8` is), although only `.1` is assigned. AnyIP setups
/// (`ip route add local PREFIX dev lo`) do the same.
struct LocalPrefix {
    net: String,
}

impl LocalPrefix {
    fn claim() -> LocalPrefix {
        let start = std::process::id() as usize;
        for n in 0..250 {
            let net = format!("198.18.{}", (start + n * 13) % 250);
            let added = Command::new("ip")
                .args(["addr", "add", &format!("{net}.1/24"), "dev", "lo"])
                .stderr(Stdio::null())
                .status()
                .expect("run ip");
            if added.success() {
                return LocalPrefix { net };
            }
        }
        panic!("no free /24 in 198.18.0.0/16 to add to lo");
    }
}

impl Drop for LocalPrefix {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["addr", "del", &format!("{}.1/24", self.net), "dev", "lo"])
            .status();
    }
}

/// A name that resolves to an address of a `local` route that is not itself assigned to
/// an interface (here `198.18.N.77`, with `198.18.N.1/24` on `lo`) reaches the host's own
/// services listening on all interfaces. The UDP-probe check (`host_local`) compares the
/// source address the kernel picks (`198.18.N.1`) with the destination and misses it.
#[test]
fn a_name_that_resolves_into_a_local_route_prefix_is_refused() {
    let prefix = LocalPrefix::claim();
    let target = format!("{}.77", prefix.net);
    let name = format!("{}.anyip.test", unique("a"));
    let _hosts = Hosts::add(&[(&target, &name)]);
    let dir = TempDir::new();
    let (www, body) = site(&dir);
    // A host service on all interfaces (sshd, a database, the cloud agent...).
    let web = WebServer::start("0.0.0.0", &www);
    let b = Broker::start(&config(&format!(r#"{{ allow = ["{name}"] }}"#), None));
    let script = format!(
        "curl -s --noproxy '' -x \"$HTTP_PROXY\" -w ' %{{http_code}}' http://{name}:{}/hello.txt",
        web.port
    );
    let out = b.exec("eg", &["sh", "-c", &script]).stdout_str();
    assert!(
        out.ends_with(" 403"),
        "a name resolving to {target} (a local route on lo) reached the host's 0.0.0.0 \
         service through the proxy: {out:?} (body {body:?})"
    );
}

/// A client that filled its tunnel towards a destination that never reads, and then
/// left: the upstream direction waits for ever to write what its pipe holds, so it never
/// reads the client's end, the watchdog (armed only by that end) never starts, and the
/// connection (a slot, six descriptors, 256 KiB of pipe) is held for as long as the
/// destination stays up. 512 of these hold the context's egress for good.
#[test]
fn a_client_that_fills_a_tunnel_and_leaves_does_not_hold_it() {
    let addr = HostAddr::claim();
    let name = format!("{}.sink.test", unique("k"));
    let _hosts = Hosts::add(&[(&addr.ip, &name)]);
    let listener = TcpListener::bind((addr.ip.as_str(), 0)).unwrap();
    let port = listener.local_addr().unwrap().port();
    // Accepts and holds every connection: never reads, never writes, never closes.
    let held = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let keep = held.clone();
    thread::spawn(move || {
        for s in listener.incoming().flatten() {
            keep.lock().unwrap().push(s);
        }
    });
    let b = Broker::start(&config(
        &host(&addr, &format!(r#"{{ allow = ["{name}"] }}"#)),
        None,
    ));
    let script = format!(
        "import os, socket\n\
         p = int(os.environ['HTTP_PROXY'].rsplit(':', 1)[1])\n\
         s = socket.create_connection(('127.0.0.1', p))\n\
         s.sendall(b'CONNECT {name}:{port} HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n')\n\
         print(s.recv(100).split(b'\\r\\n')[0].decode())\n\
         s.settimeout(3)\n\
         sent = 0\n\
         try:\n\
         \x20   while True:\n\
         \x20       sent += s.send(b'x' * 65536)\n\
         except OSError:\n\
         \x20   pass\n\
         print(sent > 1 << 20)\n\
         s.close()\n"
    );
    let out = b.exec("eg", &["/usr/bin/python3", "-c", &script]);
    assert_eq!(out.ok(), "HTTP/1.1 200 Connection established\nTrue\n");
    let fds = || {
        fs::read_dir(format!("/proc/{}/fd", b.pid()))
            .unwrap()
            .count()
    };
    let started = Instant::now();
    // The client is gone; the destination is silent (it sends nothing, and reads
    // nothing). Give the relay the 30 s the README promises, and some.
    let l = poll(Duration::from_secs(50), || {
        b.audit_lines()
            .into_iter()
            .find(|l| l["event"] == "egress" && l["name"] == name.as_str())
    });
    assert!(
        l.is_some(),
        "the relay still holds the connection {:?} after its client left ({} descriptors \
         open in the broker)",
        started.elapsed(),
        fds()
    );
    assert_eq!(held.lock().unwrap().len(), 1);
}

/// A client that half-closes after its request and reads the answer slowly (a
/// rate-limited download) is cut after 30 s although bytes keep moving to it: the
/// watchdog counts only reads from the destination, which stop while the 256 KiB pipe
/// waits for the client to take what it holds.
#[test]
fn a_slow_reader_after_half_close_gets_the_whole_answer() {
    let addr = HostAddr::claim();
    let name = format!("{}.slow.test", unique("r"));
    let _hosts = Hosts::add(&[(&addr.ip, &name)]);
    let listener = TcpListener::bind((addr.ip.as_str(), 0)).unwrap();
    let port = listener.local_addr().unwrap().port();
    const SIZE: usize = 6 << 20;
    thread::spawn(move || {
        for s in listener.incoming().flatten() {
            thread::spawn(move || {
                let mut s = s;
                let _ = s.write_all(&vec![b'y'; SIZE]);
            });
        }
    });
    let b = Broker::start(&config(
        &host(&addr, &format!(r#"{{ allow = ["{name}"] }}"#)),
        None,
    ));
    // Reads 8 KiB every 0.25 s (32 KiB/s) for 40 s, then everything as fast as it can.
    let script = format!(
        "import os, socket, time\n\
         p = int(os.environ['HTTP_PROXY'].rsplit(':', 1)[1])\n\
         s = socket.create_connection(('127.0.0.1', p))\n\
         s.sendall(b'CONNECT {name}:{port} HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n')\n\
         head = b''\n\
         while not head.endswith(b'\\r\\n\\r\\n'): head += s.recv(1)\n\
         s.shutdown(socket.SHUT_WR)\n\
         got = 0\n\
         end = time.time() + 40\n\
         while time.time() < end:\n\
         \x20   d = s.recv(8192)\n\
         \x20   if not d: break\n\
         \x20   got += len(d)\n\
         \x20   time.sleep(0.25)\n\
         while True:\n\
         \x20   d = s.recv(1 << 20)\n\
         \x20   if not d: break\n\
         \x20   got += len(d)\n\
         print(got)\n"
    );
    let out = run_with(
        &mut b.exec_cmd("eg", &["/usr/bin/python3", "-c", &script]),
        None,
        Duration::from_secs(120),
    );
    let l = b
        .wait_audit(1, |l| l["event"] == "egress" && l["name"] == name.as_str())
        .remove(0);
    assert_eq!(out.ok(), format!("{SIZE}\n"), "audit: {l}");
}

// ---------------------------------------------------------------------------------------
// A reload ends the tunnels it no longer allows
// ---------------------------------------------------------------------------------------

/// Opens a CONNECT tunnel to each `HOST:PORT` argument (to an echo server), prints `open`
/// or `refused` for each, and at each line on its standard input prints whether each
/// still carries a byte there and back (`open`) or not (`closed`).
const TUNNELS: &str = r#"
import os, socket, sys, urllib.parse
p = urllib.parse.urlsplit(os.environ['HTTP_PROXY'])
def echoes(s):
    try:
        s.sendall(b'x')
        return s.recv(1) == b'x'
    except OSError:
        return False
tunnels = []
for target in sys.argv[1:]:
    s = socket.create_connection((p.hostname, p.port), timeout=10)
    s.sendall(b'CONNECT %s HTTP/1.1\r\n\r\n' % target.encode())
    head = b''
    while b'\r\n\r\n' not in head:
        d = s.recv(1)
        if not d: break
        head += d
    tunnels.append(s if head.startswith(b'HTTP/1.1 200') else None)
print(' '.join('open' if s and echoes(s) else 'refused' for s in tunnels), flush=True)
for _ in sys.stdin:
    print(' '.join('open' if s and echoes(s) else 'closed' for s in tunnels), flush=True)
"#;

/// [`TUNNELS`] in `context`, with the line it printed first.
fn open_tunnels(
    b: &Broker,
    context: &str,
    targets: &[String],
) -> (Child, std::io::BufReader<std::process::ChildStdout>, String) {
    let mut argv = vec!["/usr/bin/python3", "-c", TUNNELS];
    argv.extend(targets.iter().map(String::as_str));
    let mut child = b
        .exec_cmd(context, &argv)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    (child, out, line.trim().to_string())
}

/// Asks [`TUNNELS`] which of its tunnels still carry bytes.
fn tunnels_now(
    child: &mut Child,
    out: &mut std::io::BufReader<std::process::ChildStdout>,
) -> String {
    child.stdin.as_mut().unwrap().write_all(b"\n").unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(out, &mut line).unwrap();
    line.trim().to_string()
}

/// A reload that takes a name out of the rule, or its port, denies it, or removes the
/// context, ends the tunnels already open that it no longer allows (reset, audited with
/// why); the others, to a name or a listed address still allowed, keep relaying.
#[test]
fn a_reload_ends_the_tunnels_it_no_longer_allows() {
    let addr = HostAddr::claim();
    let base = unique("r");
    let [kept, dropped, moved, denied] =
        ["kept", "dropped", "moved", "denied"].map(|n| format!("{n}.{base}.test"));
    let _hosts = Hosts::add(&[
        (&addr.ip, &kept),
        (&addr.ip, &dropped),
        (&addr.ip, &moved),
        (&addr.ip, &denied),
    ]);
    let port = echo_server(&addr.ip);
    let before = host(
        &addr,
        &format!(r#"{{ allow = ["{kept}", "{dropped}", "{moved}:{port}", "{denied}"] }}"#),
    );
    let before2 = host(&addr, &format!(r#"{{ allow = ["{kept}"] }}"#));
    let b = Broker::start(&config(&before, Some(&before2)));
    let targets: Vec<String> = [&kept, &dropped, &moved, &denied, &addr.ip]
        .iter()
        .map(|h| format!("{h}:{port}"))
        .collect();
    let (mut eg, mut eg_out, first) = open_tunnels(&b, "eg", &targets);
    assert_eq!(first, "open open open open open");
    let (mut eg2, mut eg2_out, first) = open_tunnels(&b, "eg2", &targets[..1]);
    assert_eq!(first, "open");

    // The same rule again (every launch sets it) ends nothing.
    assert_eq!(b.exec("eg", &["/bin/true"]).code(), 0);
    run(&mut b.ctx(["reload"])).ok();
    assert_eq!(
        tunnels_now(&mut eg, &mut eg_out),
        "open open open open open"
    );

    let after = host(
        &addr,
        &format!(
            r#"{{ allow = ["{kept}", "{moved}:{}", "{denied}"], deny = ["{denied}"] }}"#,
            port ^ 1
        ),
    );
    fs::write(b.config_path(), config(&after, None)).unwrap();
    run(&mut b.ctx(["reload"])).ok();
    let ended = b.wait_audit(4, |l| {
        l["event"] == "egress" && json_has_str(&l["error"], "a reload ended it")
    });
    let why = |name: &str| {
        ended
            .iter()
            .find(|l| l["name"] == name && l["context"] == "eg")
            .map(|l| l["error"].as_str().unwrap().to_string())
    };
    assert_eq!(
        why(&dropped).as_deref(),
        Some("a reload ended it: not in the allow list")
    );
    assert_eq!(
        why(&moved).as_deref(),
        Some("a reload ended it: not in the allow list")
    );
    assert_eq!(
        why(&denied).as_deref(),
        Some("a reload ended it: in the deny list")
    );
    let gone = ended.iter().find(|l| l["context"] == "eg2").unwrap();
    assert_eq!(
        gone["error"],
        "a reload ended it: its context no longer has egress"
    );
    assert_eq!(gone["allowed"], true);
    assert!(gone["bytes_up"].as_u64() > Some(0), "{gone}");
    assert_eq!(
        tunnels_now(&mut eg, &mut eg_out),
        "open closed closed closed open"
    );
    assert_eq!(tunnels_now(&mut eg2, &mut eg2_out), "closed");
    for mut child in [eg, eg2] {
        drop(child.stdin.take());
        assert!(wait_deadline(&mut child, Duration::from_secs(20)).is_some_and(|s| s.success()));
    }
}

/// The broker's namespace holders (its children named `ctx-ns-init`).
fn namespace_holders(broker: u32) -> Vec<i32> {
    let mut found = Vec::new();
    for e in fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some((head, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let ppid = rest
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse::<u32>().ok());
        if head.ends_with("(ctx-ns-init") && ppid == Some(broker) {
            found.push(pid);
        }
    }
    found
}

/// Tunnels a listener accepted before it was replaced (its namespace ended and a launch
/// made a new one) still follow the context's rule at the next reload.
#[test]
fn a_reload_ends_the_tunnels_of_a_replaced_listener_too() {
    let addr = HostAddr::claim();
    let base = unique("q");
    let [kept, dropped] = ["kept", "dropped"].map(|n| format!("{n}.{base}.test"));
    let _hosts = Hosts::add(&[(&addr.ip, &kept), (&addr.ip, &dropped)]);
    let port = echo_server(&addr.ip);
    let before = host(&addr, &format!(r#"{{ allow = ["{kept}", "{dropped}"] }}"#));
    let b = Broker::start(&config(&before, None));
    let targets = [format!("{kept}:{port}"), format!("{dropped}:{port}")];
    let (mut eg, mut eg_out, first) = open_tunnels(&b, "eg", &targets);
    assert_eq!(first, "open open");
    let port_before = run(&mut b.ctx(["status"])).ok();
    let holders = namespace_holders(b.pid());
    assert_eq!(holders.len(), 1, "{holders:?}");
    signal(holders[0] as u32, Signal::SIGKILL);
    // A launch right after the holder died may still find it not yet reaped, and fail.
    let replaced = poll(Duration::from_secs(5), || {
        b.exec("eg", &["/bin/true"]);
        let now = run(&mut b.ctx(["status"])).ok();
        (now != port_before).then_some(())
    });
    assert!(replaced.is_some(), "the listener was not replaced");
    assert_eq!(tunnels_now(&mut eg, &mut eg_out), "open open");

    let after = host(&addr, &format!(r#"{{ allow = ["{kept}"] }}"#));
    fs::write(b.config_path(), config(&after, None)).unwrap();
    run(&mut b.ctx(["reload"])).ok();
    let ended = b.wait_audit(1, |l| {
        l["event"] == "egress" && json_has_str(&l["error"], "a reload ended it")
    });
    assert_eq!(ended[0]["name"], dropped.as_str());
    assert_eq!(tunnels_now(&mut eg, &mut eg_out), "open closed");
    drop(eg.stdin.take());
    assert!(wait_deadline(&mut eg, Duration::from_secs(20)).is_some_and(|s| s.success()));
}

// ---------------------------------------------------------------------------------------
// Names are never resolved under the host's search domains
// ---------------------------------------------------------------------------------------

/// A DNS server on `argv[1]:53` (UDP) that answers `NAME=ADDRESS` pairs (`argv[3..]`) with
/// an A record, and every other name with NXDOMAIN; each query's name (lower case, no
/// trailing dot) and type go to the file `argv[2]`, one a line, before the answer.
const DNS_SERVER: &str = r#"
import socket, sys
ip, log = sys.argv[1], open(sys.argv[2], 'a')
known = dict(a.split('=') for a in sys.argv[3:])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((ip, 53))
print('ready', flush=True)
while True:
    q, peer = s.recvfrom(4096)
    i, labels = 12, []
    while i < len(q) and q[i]:
        labels.append(q[i + 1:i + 1 + q[i]].decode('latin-1'))
        i += 1 + q[i]
    qtype = int.from_bytes(q[i + 1:i + 3], 'big')
    name = '.'.join(labels).lower()
    log.write('%s %d\n' % (name, qtype)); log.flush()
    address = known.get(name)
    answer = b''
    if address and qtype == 1:
        answer = (b'\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x04' +
                  socket.inet_aton(address))
    flags = b'\x81\x80' if address else b'\x81\x83'
    head = q[:2] + flags + b'\x00\x01' + (b'\x00\x01' if answer else b'\x00\x00') + b'\x00' * 4
    s.sendto(head + q[12:i + 5] + answer, peer)
"#;

/// [`DNS_SERVER`] as a child process; killed on drop.
struct DnsServer {
    child: Child,
    log: std::path::PathBuf,
}

impl DnsServer {
    fn start(ip: &str, dir: &TempDir, known: &[(&str, &str)]) -> DnsServer {
        let log = dir.path().join("dns-queries.log");
        let mut child = Command::new("/usr/bin/python3")
            .args(["-c", DNS_SERVER, ip])
            .arg(&log)
            .args(known.iter().map(|(n, a)| format!("{n}={a}")))
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the DNS server");
        let mut ready = String::new();
        let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
        std::io::BufRead::read_line(&mut out, &mut ready).unwrap();
        assert_eq!(ready, "ready\n", "the DNS server did not start");
        DnsServer { child, log }
    }

    /// The queries it was asked so far, `name type` each.
    fn queries(&self) -> Vec<String> {
        fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTP server on `ip` answering every request with `body`; counts the connections it
/// accepted.
fn counting_server(ip: &str, body: &str) -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let listener = TcpListener::bind((ip, 0)).expect("bind the counting server");
    let port = listener.local_addr().unwrap().port();
    let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (counted, body) = (hits.clone(), body.to_string());
    thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let body = body.clone();
            thread::spawn(move || {
                let mut s = stream;
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && s.read(&mut byte).unwrap_or(0) == 1 {
                    head.push(byte[0]);
                }
                let answer = format!(
                    "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(answer.as_bytes());
            });
        }
    });
    (port, hits)
}

/// Asks the proxy (`HTTP_PROXY`'s port) for `argv[2]:argv[3]` exactly as written, by
/// `argv[1]`: `connect`, `http` (absolute URI) or `socks` (SOCKS5, the name as a domain);
/// prints the answer's first line and its body, or the proxy's refusal.
const PROBE: &str = r#"
import os, socket, sys
mode, name, port = sys.argv[1], sys.argv[2].encode(), int(sys.argv[3])
s = socket.create_connection(('127.0.0.1', int(os.environ['HTTP_PROXY'].rsplit(':', 1)[1])))
s.settimeout(20)
def head():
    h = b''
    while b'\r\n\r\n' not in h:
        d = s.recv(1)
        if not d: break
        h += d
    return h
get = b'GET / HTTP/1.0\r\nHost: probe\r\n\r\n'
if mode == 'connect':
    s.sendall(b'CONNECT %s:%d HTTP/1.1\r\n\r\n' % (name, port))
    h = head()
    if not h.startswith(b'HTTP/1.1 200'):
        print('refused', h.split(b'\r\n')[0].decode()); sys.exit()
    s.sendall(get)
elif mode == 'http':
    s.sendall(b'GET http://%s:%d/ HTTP/1.1\r\nHost: probe\r\n\r\n' % (name, port))
else:
    s.sendall(b'\x05\x01\x00'); s.recv(2)
    s.sendall(b'\x05\x01\x00\x03' + bytes([len(name)]) + name + port.to_bytes(2, 'big'))
    r = s.recv(10)
    if r[1] != 0:
        print('refused socks', r[1]); sys.exit()
    s.sendall(get)
data = b''
while True:
    d = s.recv(65536)
    if not d: break
    data += d
first, _, body = data.partition(b'\r\n')
print(first.decode(), body.partition(b'\r\n\r\n')[2].decode().strip())
"#;

/// A name the client sends without the trailing dot is never tried under the host's search
/// domains, with a real resolver: the broker runs with a `resolv.conf` (its own mount
/// namespace) naming a DNS server of this test and `corp.example` as search domain, and
/// that server answers only the search-domain forms (`x.github.com.corp.example`,
/// `intranet.corp.example`) with the address of a server. Through CONNECT, absolute URI
/// and SOCKS5, under `search` and under `domain` with `ndots:5` (which makes glibc try the
/// search domain first), in any case, those names fail without the server ever seeing a
/// connection nor the DNS server a query for a search-domain form; an absolute name the
/// DNS server does answer reaches the server, so the lookups do go to that DNS server.
#[test]
fn a_name_is_never_resolved_under_a_search_domain() {
    let addr = HostAddr::claim();
    let dir = TempDir::new();
    let body = unique("reached-");
    let (port, hits) = counting_server(&addr.ip, &body);
    let dns = DnsServer::start(
        &addr.ip,
        &dir,
        &[
            ("x.github.com.corp.example", &addr.ip),
            ("intranet.corp.example", &addr.ip),
            ("xn--bcher-kva.github.com.corp.example", &addr.ip),
            ("ok.github.com", &addr.ip),
        ],
    );
    // The hosts file gives a name under the rule as an alias, and a search-domain form.
    let u = unique("h");
    let (alias, hosts_only) = (
        format!("alias-{u}.github.com"),
        format!("only-{u}.github.com"),
    );
    let _hosts = Hosts::add(&[
        (&addr.ip, &format!("canonical-{u}.test {alias}")),
        (&addr.ip, &format!("{hosts_only}.corp.example")),
    ]);
    let resolv = dir.path().join("resolv.conf");
    // The host's NSS as it is, except that names go to the hosts file and then to DNS
    // through resolv.conf (not systemd-resolved, mDNS or a cache that ignore it).
    let nss = fs::read_to_string("/etc/nsswitch.conf").unwrap_or_default();
    let mut nss: String = nss
        .lines()
        .filter(|l| !l.trim_start().starts_with("hosts:"))
        .map(|l| format!("{l}\n"))
        .collect();
    nss.push_str("hosts: files dns\n");
    let nsswitch = dir.file("nsswitch.conf", nss.as_bytes(), 0o644);
    let rule = host(&addr, r#"{ allow = ["*.github.com", "intranet"] }"#);
    let probe = |b: &Broker, mode: &str, name: &str| {
        b.exec(
            "eg",
            &[
                "/usr/bin/python3",
                "-c",
                PROBE,
                mode,
                name,
                &port.to_string(),
            ],
        )
        .ok()
    };
    let modes = ["connect", "http", "socks"];
    let count = || hits.load(std::sync::atomic::Ordering::SeqCst);
    for search in [
        "search corp.example\n",
        "domain corp.example\noptions ndots:5\n",
    ] {
        fs::write(&resolv, format!("nameserver {}\n{search}", addr.ip)).unwrap();
        let reached = count();
        let b = Broker::start_with_binds(
            &config(&rule, None),
            &[
                (&resolv, std::path::Path::new("/etc/resolv.conf")),
                (&nsswitch, std::path::Path::new("/etc/nsswitch.conf")),
            ],
        );
        let upper = alias.to_ascii_uppercase();
        let refused = [
            "x.github.com",
            "X.GitHub.COM",
            "intranet",
            "x.github.com.",
            "xn--bcher-kva.github.com",
            // Never reaches the resolver at all: not a DNS name (IDNA is the client's job).
            "b\u{fc}cher.github.com",
            &hosts_only,
        ];
        for name in refused {
            for mode in modes {
                let out = probe(&b, mode, name);
                assert!(
                    ["refused", "HTTP/1.1 502", "HTTP/1.1 403"]
                        .iter()
                        .any(|r| out.starts_with(r)),
                    "{search:?} {mode} {name}: {out}"
                );
            }
        }
        assert_eq!(count(), reached);
        let asked = dns.queries();
        for absolute in ["x.github.com 1", "intranet 1", "xn--bcher-kva.github.com 1"] {
            assert!(
                asked.iter().any(|q| q == absolute),
                "{absolute:?} was not asked of the DNS server: {asked:?}"
            );
        }
        assert!(
            !asked
                .iter()
                .any(|q| q.contains("corp.example") || q.starts_with('b')),
            "{search:?}: a search-domain form (or a name that is not one) was looked up: \
             {asked:?}"
        );
        // The DNS path works (a name it answers reaches the server, in every protocol),
        // and so does the hosts file for an alias, in any case, without asking DNS.
        let before = count();
        for name in ["ok.github.com", "OK.github.com.", &alias, &upper] {
            for mode in modes {
                let out = probe(&b, mode, name);
                assert!(
                    out.trim_end().ends_with(&body),
                    "{search:?} {mode} {name}: {out}"
                );
            }
        }
        assert_eq!(count(), before + 12);
        assert!(!dns.queries().iter().any(|q| q.starts_with("alias-")));
        let lines = b.wait_audit(12, |l| {
            l["event"] == "egress" && l["allowed"] == true && l["bytes_down"].as_u64() > Some(0)
        });
        assert!(lines
            .iter()
            .all(|l| l["address"] == format!("{}:{port}", addr.ip).as_str()));
    }
}

// ---------------------------------------------------------------------------------------
// Attacks (review of egress3): each test here failed on the code under review
// ---------------------------------------------------------------------------------------

/// At each line on its standard input, opens a new CONNECT tunnel to `argv[1]` and prints
/// `open` (a byte went there and back) or `refused`.
const RETRY_TUNNEL: &str = r#"
import os, socket, sys, urllib.parse
p = urllib.parse.urlsplit(os.environ['HTTP_PROXY'])
def attempt():
    s = socket.create_connection((p.hostname, p.port), timeout=10)
    s.sendall(b'CONNECT %s HTTP/1.1\r\n\r\n' % sys.argv[1].encode())
    head = b''
    while b'\r\n\r\n' not in head:
        d = s.recv(1)
        if not d: break
        head += d
    try:
        if head.startswith(b'HTTP/1.1 200'):
            s.sendall(b'x')
            return 'open' if s.recv(1) == b'x' else 'refused'
    except OSError:
        pass
    return 'refused'
for _ in sys.stdin:
    print(attempt(), flush=True)
"#;

/// A launch that was authorized before a reload and reaches its proxy setup after it (here
/// a `ctx sh` command queued behind the session's previous one, which holds the session's
/// lock) sets the context's proxy rule back to the one it read: `Egress::ensure` calls
/// `State::update` with the launch's own, stale, `Context`. The rule the reload took away
/// is in force again for every process of the context (one running since before the
/// reload here) until a launch authorized after the reload sets it again; `ctx status`
/// meanwhile shows the new one. (The other way round, a stale launch also ends the tunnels
/// a reload newly allowed.) Only a reload should set the rule.
#[test]
fn a_launch_authorized_before_a_reload_does_not_bring_back_the_old_rule() {
    let addr = HostAddr::claim();
    let base = unique("s");
    let [kept, dropped] = ["kept", "dropped"].map(|n| format!("{n}.{base}.test"));
    let _hosts = Hosts::add(&[(&addr.ip, &kept), (&addr.ip, &dropped)]);
    let port = echo_server(&addr.ip);
    let before = host(&addr, &format!(r#"{{ allow = ["{kept}", "{dropped}"] }}"#));
    let b = Broker::start(&config(&before, None));
    let to_dropped = format!("{dropped}:{port}");
    // A process of the context that tries the dropped name on demand.
    let mut resident = b
        .exec_cmd("eg", &["/usr/bin/python3", "-c", RETRY_TUNNEL, &to_dropped])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut resident_out = std::io::BufReader::new(resident.stdout.take().unwrap());
    assert_eq!(tunnels_now(&mut resident, &mut resident_out), "open");

    // The session's first command holds its lock for a few seconds; the second, for the
    // same session, is authorized now (under the config before the reload) and waits.
    let session = unique("sess");
    let mut holder = b
        .ctx(["sh", "--context", "eg", "--session", &session, "sleep 4"])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    thread::sleep(Duration::from_millis(1000));
    let mut queued = b
        .ctx(["sh", "--context", "eg", "--session", &session, "true"])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    thread::sleep(Duration::from_millis(1000));

    let after = host(&addr, &format!(r#"{{ allow = ["{kept}"] }}"#));
    fs::write(b.config_path(), config(&after, None)).unwrap();
    run(&mut b.ctx(["reload"])).ok();
    // The reload is in force.
    assert_eq!(tunnels_now(&mut resident, &mut resident_out), "refused");

    for child in [&mut holder, &mut queued] {
        assert!(wait_deadline(child, Duration::from_secs(30)).is_some_and(|s| s.success()));
    }
    assert!(!run(&mut b.ctx(["status"])).ok().contains(&dropped));
    let now = tunnels_now(&mut resident, &mut resident_out);
    drop(resident.stdin.take());
    let _ = wait_deadline(&mut resident, Duration::from_secs(20));
    assert_eq!(
        now, "refused",
        "a launch authorized before the reload brought back the rule the reload ended"
    );
}

/// Opens `argv[1]` CONNECT tunnels to `argv[2]` one after the other, each closed as soon as
/// the proxy answers 200: allowed attempts that carry nothing. Prints how many were
/// answered 200.
const EMPTY_TUNNELS: &str = r#"
import os, socket, sys, urllib.parse
p = urllib.parse.urlsplit(os.environ['HTTP_PROXY'])
n, target, ok = int(sys.argv[1]), sys.argv[2].encode(), 0
carry = sys.argv[3:] == ['byte']
for _ in range(n):
    s = socket.create_connection((p.hostname, p.port), timeout=10)
    s.sendall(b'CONNECT %s HTTP/1.1\r\n\r\n' % target)
    head = b''
    while b'\r\n\r\n' not in head:
        d = s.recv(64)
        if not d: break
        head += d
    ok += head.startswith(b'HTTP/1.1 200')
    if carry:
        s.sendall(b'x'); s.recv(1)
    s.close()
print(ok)
"#;

/// README: "An allowed attempt that carried nothing (a name that does not resolve, a closed
/// port) is metered in the audit log like a denial, so a loop of them cannot fill it." An
/// attempt that connects and is closed at once also carries nothing, but `State::record`
/// meters only those with an `error`: a loop of them writes an unmetered line each, as fast
/// as the proxy accepts, and with `audit_log_max` rotates earlier events (the context's own
/// denials among them) out of both generations.
#[test]
fn a_loop_of_allowed_attempts_that_carry_nothing_is_metered() {
    let OneAllowed {
        b,
        port,
        name,
        _hosts,
        addr: _addr,
    } = echo_allowed("empty", "m");
    let started = Instant::now();
    let n = 1500;
    let out = run_with(
        &mut b.exec_cmd(
            "eg",
            &[
                "/usr/bin/python3",
                "-c",
                EMPTY_TUNNELS,
                &n.to_string(),
                &format!("{name}:{port}"),
            ],
        ),
        None,
        Duration::from_secs(120),
    );
    assert_eq!(out.ok().trim(), n.to_string());
    thread::sleep(Duration::from_secs(2));
    let secs = started.elapsed().as_secs_f64();
    let text = fs::read_to_string(b.audit_path()).unwrap();
    let empty: Vec<&str> = text
        .lines()
        .filter(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            v["event"] == "egress"
                && v["allowed"] == true
                && v["bytes_up"] == 0
                && v["bytes_down"] == 0
        })
        .collect();
    let bytes: usize = empty.iter().map(|l| l.len() + 1).sum();
    // What the refusal meter lets one uid write: 64 KiB at once, then 4 KiB a second.
    let metered = 64.0 * 1024.0 + 4.0 * 1024.0 * secs;
    assert!(
        (bytes as f64) <= metered + 4096.0,
        "{} allowed attempts that carried nothing wrote {bytes} bytes of audit log in \
         {secs:.1}s, unmetered (the meter allows {metered:.0})",
        empty.len()
    );
}

/// Finds every listening TCP socket on 127.0.0.1 in its network namespace and asks each
/// for a CONNECT tunnel to `argv[1]`; prints `open` if one carried a byte there and back,
/// else `none`.
const FIND_A_PROXY: &str = r#"
import socket, sys
ports = []
for line in open('/proc/net/tcp').read().splitlines()[1:]:
    f = line.split()
    ip, port = f[1].split(':')
    if f[3] == '0A' and ip == '0100007F':
        ports.append(int(port, 16))
found = 'none'
for port in ports:
    try:
        s = socket.create_connection(('127.0.0.1', port), timeout=10)
        s.sendall(b'CONNECT %s HTTP/1.1\r\n\r\n' % sys.argv[1].encode())
        head = b''
        while b'\r\n\r\n' not in head:
            d = s.recv(1)
            if not d: break
            head += d
        if head.startswith(b'HTTP/1.1 200'):
            s.sendall(b'x')
            if s.recv(1) == b'x':
                found = 'open'
    except OSError:
        pass
print(found)
"#;

/// The same stale launch as in
/// `a_launch_authorized_before_a_reload_does_not_bring_back_the_old_rule`, after a reload
/// that turned the context's egress into `network = "none"` (same network namespace, kept):
/// `Egress::ensure` makes a new listener with the old rule inside the namespace, and every
/// launch of the context, none of which is meant to have any network, can use it until the
/// next reload (no later launch touches it: they have no egress rule).
#[test]
fn a_launch_authorized_before_a_reload_does_not_reopen_egress_the_reload_removed() {
    let addr = HostAddr::claim();
    let name = format!("{}.gone.test", unique("g"));
    let _hosts = Hosts::add(&[(&addr.ip, &name)]);
    let port = echo_server(&addr.ip);
    let before = host(&addr, &format!(r#"{{ allow = ["{name}"] }}"#));
    let b = Broker::start(&config(&before, None));
    let target = format!("{name}:{port}");
    let find = |b: &Broker| {
        b.exec("eg", &["/usr/bin/python3", "-c", FIND_A_PROXY, &target])
            .stdout_str()
            .trim()
            .to_string()
    };
    assert_eq!(find(&b), "open");

    let session = unique("sess");
    let mut holder = b
        .ctx(["sh", "--context", "eg", "--session", &session, "sleep 4"])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    thread::sleep(Duration::from_millis(1000));
    let mut queued = b
        .ctx(["sh", "--context", "eg", "--session", &session, "true"])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    thread::sleep(Duration::from_millis(1000));

    fs::write(b.config_path(), config(r#""none""#, None)).unwrap();
    run(&mut b.ctx(["reload"])).ok();
    assert_eq!(find(&b), "none", "the reload left a proxy serving");

    for child in [&mut holder, &mut queued] {
        assert!(wait_deadline(child, Duration::from_secs(30)).is_some_and(|s| s.success()));
    }
    assert_eq!(
        find(&b),
        "none",
        "a launch authorized before the reload made a proxy, with the old rule, for a \
         context that has no egress any more"
    );
}

/// Asks the proxy for each `MODE HOSTHEX PORT` line of its standard input (the host's bytes
/// in hex, as sent): `connect`, `http` (absolute URI), `socks` (a domain), `socks4a`
/// (ATYP 1, the host an IPv4 address) or `socks6a` (ATYP 4). Prints one line per request:
/// `ok` when the proxy answered 200 / succeeded, else `no`.
const SWEEP: &str = r#"
import ipaddress, os, socket, sys
pp = int(os.environ['HTTP_PROXY'].rsplit(':', 1)[1])
def ask(mode, host, port):
    s = socket.create_connection(('127.0.0.1', pp), timeout=15)
    try:
        if mode == 'connect':
            s.sendall(b'CONNECT ' + host + b':%d HTTP/1.1\r\n\r\n' % port)
        elif mode == 'http':
            s.sendall(b'GET http://' + host + b':%d/ HTTP/1.1\r\nHost: x\r\n\r\n' % port)
        else:
            s.sendall(b'\x05\x01\x00'); s.recv(2)
            if mode == 'socks':
                a = b'\x03' + bytes([len(host)]) + host
            elif mode == 'socks4a':
                a = b'\x01' + ipaddress.IPv4Address(host.decode()).packed
            else:
                a = b'\x04' + ipaddress.IPv6Address(host.decode()).packed
            s.sendall(b'\x05\x01\x00' + a + port.to_bytes(2, 'big'))
            r = s.recv(10)
            return 'ok' if len(r) > 1 and r[1] == 0 else 'no'
        h = s.recv(4096)
        return 'ok' if h.startswith(b'HTTP/1.1 200') or h.startswith(b'HTTP/1.0 200') else 'no'
    except OSError:
        return 'no'
    finally:
        s.close()
for line in sys.stdin:
    mode, hexhost, port = line.split()
    print(ask(mode, bytes.fromhex(hexhost), int(port)), flush=True)
"#;

/// Spellings and routes to the host's loopback (and its own addresses) that a rule with
/// `*.` entries and a listed public-looking address must refuse, through every protocol:
/// none reaches a server listening on all of the host's addresses. (This held on egress3;
/// kept as a regression test of what was tried.)
#[test]
fn hostile_spellings_of_local_destinations_are_refused() {
    let addr = HostAddr::claim();
    let (port, hits) = counting_server("::", "local");
    let u = unique("w");
    let wild = format!("{u}.w.test");
    let names: Vec<(String, &str)> = [
        ("lo2", "127.0.0.2"),
        ("zero", "0.0.0.0"),
        ("mapped", "::ffff:127.0.0.1"),
        ("v6lo", "::1"),
        ("compat", "::127.0.0.1"),
        ("own", addr.ip.as_str()),
        ("unspec", "::"),
    ]
    .into_iter()
    .map(|(n, ip)| (format!("{n}.{wild}"), ip))
    .collect();
    let entries: Vec<(&str, &str)> = names.iter().map(|(n, ip)| (*ip, n.as_str())).collect();
    let _hosts = Hosts::add(&entries);
    // A listed address that is not local, so that address entries are in play.
    let rule = format!(r#"{{ allow = ["*.{wild}", "198.51.100.7", "localhost.{wild}"] }}"#);
    // The control: where the host's address is listed, the same name reaches the server.
    let control = host(&addr, &format!(r#"{{ allow = ["*.{wild}"] }}"#));
    let b = Broker::start(&config(&rule, Some(&control)));
    let mut hosts: Vec<String> = names.iter().map(|(n, _)| n.clone()).collect();
    hosts.extend(
        [
            "127.0.0.1",
            "127.1",
            "0x7f000001",
            "0x7f.1",
            "2130706433",
            "017700000001",
            "0177.0.0.1",
            "127.0.0.1.",
            "0",
            "0.0.0.0",
            "[::1]",
            "::1",
            "[::ffff:127.0.0.1]",
            "[::ffff:7f00:1]",
            "[::127.0.0.1]",
            "[::]",
            "[0:0:0:0:0:ffff:127.0.0.1]",
            "[fe80::1%25lo]",
            "[::1%lo]",
            "localhost",
            "LOCALHOST.",
            "198.51.100.7.",
            "[::ffff:198.51.100.7]x",
        ]
        .map(String::from),
    );
    for (n, _) in &names {
        hosts.push(n.to_ascii_uppercase());
        hosts.push(format!("{n}."));
        hosts.push(format!("{n}.."));
        hosts.push(format!("x@{n}"));
        hosts.push(format!("{n}\0.evil"));
        hosts.push(format!("{n} "));
    }
    let mut input = String::new();
    let mut asked = Vec::new();
    for h in &hosts {
        for mode in ["connect", "http", "socks"] {
            let hex: String = h.bytes().map(|b| format!("{b:02x}")).collect();
            input.push_str(&format!("{mode} {hex} {port}\n"));
            asked.push(format!("{mode} {h:?}"));
        }
    }
    for ip in ["127.0.0.1", "0.0.0.0", &addr.ip] {
        let hex: String = ip.bytes().map(|b| format!("{b:02x}")).collect();
        input.push_str(&format!("socks4a {hex} {port}\n"));
        asked.push(format!("socks4a {ip}"));
    }
    for ip in [
        "::1",
        "::ffff:127.0.0.1",
        "::127.0.0.1",
        "::",
        "64:ff9b::7f00:1",
    ] {
        let hex: String = ip.bytes().map(|b| format!("{b:02x}")).collect();
        input.push_str(&format!("socks6a {hex} {port}\n"));
        asked.push(format!("socks6a {ip}"));
    }
    let out = run_with(
        &mut b.exec_cmd("eg", &["/usr/bin/python3", "-c", SWEEP]),
        Some(input.as_bytes()),
        Duration::from_secs(300),
    );
    let answers: Vec<&str> = out.stdout_str().leak().lines().collect();
    assert_eq!(answers.len(), asked.len(), "{}", out.show());
    let through: Vec<&String> = asked
        .iter()
        .zip(&answers)
        .filter(|(_, a)| **a != "no")
        .map(|(q, _)| q)
        .collect();
    assert!(through.is_empty(), "reached through the proxy: {through:?}");
    assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 0);
    let own = &names.iter().find(|(n, _)| n.starts_with("own.")).unwrap().0;
    let hex: String = own.bytes().map(|b| format!("{b:02x}")).collect();
    let out = run_with(
        &mut b.exec_cmd("eg2", &["/usr/bin/python3", "-c", SWEEP]),
        Some(format!("connect {hex} {port}\n").as_bytes()),
        Duration::from_secs(60),
    );
    assert_eq!(out.stdout_str(), "ok\n", "{}", out.show());
    assert!(poll(Duration::from_secs(5), || {
        (hits.load(std::sync::atomic::Ordering::SeqCst) == 1).then_some(())
    })
    .is_some());
}

/// A TCP server on `ip` that reads whatever it is sent and never closes a connection.
fn holding_server(ip: &str) -> u16 {
    let listener = TcpListener::bind((ip, 0)).expect("bind the holding server");
    let port = listener.local_addr().unwrap().port();
    thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming().flatten() {
            let mut s = stream.try_clone().unwrap();
            thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while s.read(&mut buf).unwrap_or(0) > 0 {}
            });
            held.push(stream);
        }
    });
    port
}

/// A tunnel is audited only when it ends. One still open when the broker stops (a restart,
/// an upgrade) is never written: the routed client is killed, the destination does not
/// close, and the broker exits without a line for the tunnel, so what it carried (here
/// 100 KB out) is in no record at all. The tunnels open at shutdown should each get their
/// line (ended by the shutdown), as a reload's do.
#[test]
fn a_tunnel_open_when_the_broker_stops_is_still_audited() {
    let addr = HostAddr::claim();
    let name = format!("{}.held.test", unique("t"));
    let _hosts = Hosts::add(&[(&addr.ip, &name)]);
    let port = holding_server(&addr.ip);
    let mut b = Broker::start(&config(
        &host(&addr, &format!(r#"{{ allow = ["{name}"] }}"#)),
        None,
    ));
    let script = r#"
import os, socket, sys, time, urllib.parse
p = urllib.parse.urlsplit(os.environ['HTTP_PROXY'])
s = socket.create_connection((p.hostname, p.port), timeout=10)
s.sendall(b'CONNECT %s HTTP/1.1\r\n\r\n' % sys.argv[1].encode())
head = b''
while b'\r\n\r\n' not in head:
    head += s.recv(1)
s.sendall(b'x' * 100000)
print('sent', flush=True)
time.sleep(600)
"#;
    let mut child = b
        .exec_cmd(
            "eg",
            &["/usr/bin/python3", "-c", script, &format!("{name}:{port}")],
        )
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    assert_eq!(line, "sent\n");
    thread::sleep(Duration::from_millis(500));
    assert!(b.terminate(Duration::from_secs(60)).is_some());
    let _ = wait_deadline(&mut child, Duration::from_secs(10));
    let lines: Vec<Value> = b
        .audit_lines()
        .into_iter()
        .filter(|l| l["event"] == "egress")
        .collect();
    assert_eq!(
        lines.len(),
        1,
        "the tunnel that carried 100000 bytes out has no audit line: {lines:?}"
    );
    assert_eq!(lines[0]["bytes_up"], 100000);
}

/// SPEC section 6: "Whatever an unauthenticated or unprivileged peer can make the broker
/// hold (connections, buffered bytes, descriptors, audit lines) is bounded per uid". Allowed
/// egress attempts are written whatever their number: a context's process that opens and
/// closes tunnels carrying one byte each (here to an echo server) writes a line per tunnel
/// at the rate the proxy accepts them, and with `audit_log_max` rotates every earlier event
/// (its own launches, its denials) out of both generations within seconds to minutes.
/// Metering (or aggregating) what one uid's egress writes past a burst would bound it.
#[test]
fn a_loop_of_tiny_allowed_tunnels_writes_audit_lines_bounded_per_uid() {
    let OneAllowed {
        b,
        port,
        name,
        _hosts,
        addr: _addr,
    } = echo_allowed("tiny", "m");
    let started = Instant::now();
    let n = 1500;
    let out = run_with(
        &mut b.exec_cmd(
            "eg",
            &[
                "/usr/bin/python3",
                "-c",
                EMPTY_TUNNELS,
                &n.to_string(),
                &format!("{name}:{port}"),
                "byte",
            ],
        ),
        None,
        Duration::from_secs(120),
    );
    assert_eq!(out.ok().trim(), n.to_string());
    thread::sleep(Duration::from_secs(2));
    let secs = started.elapsed().as_secs_f64();
    let text = fs::read_to_string(b.audit_path()).unwrap();
    let bytes: usize = text
        .lines()
        .filter(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            v["event"] == "egress"
        })
        .map(|l| l.len() + 1)
        .sum();
    // The refusal meter's figures, as a yardstick: 64 KiB at once, then 4 KiB a second.
    let bound = 64.0 * 1024.0 + 4.0 * 1024.0 * secs;
    assert!(
        (bytes as f64) <= bound + 4096.0,
        "{n} one-byte tunnels wrote {bytes} bytes of audit log in {secs:.1}s (a per-uid \
         bound like the refusal meter's allows {bound:.0})"
    );
}

/// A server on `ip` that sends zeros to every connection as fast as it takes them, until
/// the connection fails.
fn firehose_server(ip: &str) -> u16 {
    let listener = TcpListener::bind((ip, 0)).expect("bind firehose server");
    let port = listener.local_addr().unwrap().port();
    thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            thread::spawn(move || {
                let mut s = stream;
                let zeros = [0u8; 65536];
                while s.write_all(&zeros).is_ok() {}
            });
        }
    });
    port
}

/// Opens argv[2] CONNECT tunnels to argv[1], reads argv[3] MiB on each as fast as it can
/// (the kernel's buffer autotuning grows every socket on the way to match), then stops
/// reading, says so, and holds the tunnels open.
const STALLED_READERS: &str = r#"
target, n, mib = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
tunnels = []
for _ in range(n):
    s = tunnel(target)
    got = 0
    while got < mib << 20:
        got += len(s.recv(1 << 20))
    tunnels.append(s)
print('stalled', flush=True)
time.sleep(120)
"#;

/// What a context may make the broker hold in socket buffers at its connection cap: the
/// kernel counts twice what is set, the floor for each of 512 connections' four buffers
/// and the 64 MiB pool.
const CONTEXT_SOCKET_BOUND: u64 = 2 * (64 * (1 << 20) + 512 * 4 * 64 * 1024);

/// `ss -tmnH FILTER...` in the host's network namespace, or in `pid`'s: for each socket,
/// its `skmem` fields `keys`, in bytes.
fn skmem(pid: Option<i32>, filter: &[&str], keys: &[&str]) -> Vec<Vec<u64>> {
    let mut cmd = match pid {
        Some(pid) => {
            let mut c = Command::new("nsenter");
            c.args(["-t", &pid.to_string(), "-n", "ss"]);
            c
        }
        None => Command::new("ss"),
    };
    let out = run(cmd.arg("-tmnH").args(filter));
    out.ok()
        .split("skmem:(")
        .skip(1)
        .map(|m| {
            keys.iter()
                .map(|key| {
                    m.split([',', ')'])
                        .find_map(|f| f.strip_prefix(key)?.parse().ok())
                        .unwrap_or_else(|| panic!("no {key} in {m}"))
                })
                .collect()
        })
        .collect()
}

/// The kernel's accounting of each of the broker's sockets to `dst` (`ss -m`): what it
/// holds (`r`, `t`) and may hold (`rb`, `tb`), in bytes.
fn socket_memory(dst: &str) -> Vec<[u64; 4]> {
    skmem(None, &["dst", dst], &["r", "rb", "t", "tb"])
        .into_iter()
        .map(|f| [f[0], f[1], f[2], f[3]])
        .collect()
}

/// Python defining `tunnel(target, mss=None)`: a CONNECT tunnel through the context's
/// proxy to `target` (`name:port`), its segment size set first when given. The scripts
/// [`first_line`] runs start with it.
const TUNNEL: &str = r#"
import os, socket, sys, time, urllib.parse
p = urllib.parse.urlsplit(os.environ['HTTP_PROXY'])
def tunnel(target, mss=None):
    s = socket.socket()
    if mss:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, mss)
    s.settimeout(20)
    s.connect((p.hostname, p.port))
    s.sendall(('CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n' % (target, target)).encode())
    head = b''
    while b'\r\n\r\n' not in head:
        head += s.recv(1)
    assert head.startswith(b'HTTP/1.1 200'), head
    return s
"#;

/// Runs [`TUNNEL`] and then the Python `script` with `args` in `eg`, and gives back the
/// process and the first line it printed.
fn first_line(b: &Broker, script: &str, args: &[&str]) -> (Child, String) {
    let script = format!("{TUNNEL}{script}");
    let mut argv = vec!["/usr/bin/python3", "-c", &script];
    argv.extend_from_slice(args);
    let mut child = b
        .exec_cmd("eg", &argv)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.as_mut().unwrap()),
        &mut line,
    )
    .unwrap();
    (child, line)
}

/// The proxy's port from a script's first line `WORD PORT`.
fn proxy_port(line: &str, word: &str) -> u16 {
    line.strip_prefix(word)
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or_else(|| panic!("{line:?}"))
}

/// SPEC section 6: what a context makes the broker hold is bounded. A context's client
/// that reads a download fast, then stops, leaves the destination's bytes in the
/// broker's sockets: with the kernel's autotuning each may grow to `tcp_rmem`'s maximum
/// (32 MiB here), for every one of a context's 512 connections, and only the host's
/// `tcp_mem` (which every TCP socket of the host shares) bounds them all. Each socket
/// buffer of a connection is set: 12 MiB at most at the destination's end, 4 MiB at the
/// client's (the kernel counts twice that), out of 64 MiB a context's connections share
/// beyond 64 KiB each.
#[test]
fn a_client_that_stops_reading_leaves_the_broker_bounded_buffers() {
    let OneAllowed {
        b,
        port,
        name,
        _hosts,
        addr,
    } = one_allowed("firehose", "f", firehose_server);
    let n = 6;
    let (mut child, line) = first_line(
        &b,
        STALLED_READERS,
        &[&format!("{name}:{port}"), &n.to_string(), "48"],
    );
    assert_eq!(line, "stalled\n");
    // Until the destination has filled whatever the broker's side lets it.
    let mut last = Vec::new();
    let _ = poll(Duration::from_secs(10), || {
        let now = socket_memory(&format!("{}:{port}", addr.ip));
        let settled = now.len() == n && now == last;
        last = now;
        thread::sleep(Duration::from_millis(500));
        settled.then_some(())
    });
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(last.len(), n, "{last:?}");
    let mib = 1u64 << 20;
    let held: u64 = last.iter().map(|m| m[0]).sum();
    assert!(
        held > mib,
        "the stalled tunnels hold {held} bytes in the broker: the test stalled nothing"
    );
    for m in &last {
        assert!(
            m[1] <= 24 * mib && m[3] <= 24 * mib,
            "a destination socket of the broker may hold {} bytes received and {} to send \
             (at most 12 MiB each as set, 24 MiB as the kernel counts): {last:?}",
            m[1],
            m[3]
        );
    }
    let may_hold: u64 = last.iter().map(|m| m[1]).sum();
    assert!(
        may_hold <= 2 * (64 * mib + n as u64 * 4 * 64 * 1024),
        "the context's {n} stalled tunnels may make the broker hold {may_hold} bytes: {last:?}"
    );
}

/// A server on `ip` that sends `size` bytes to every connection, then closes it.
fn burst_server(ip: &str, size: usize) -> u16 {
    let listener = TcpListener::bind((ip, 0)).expect("bind burst server");
    let port = listener.local_addr().unwrap().port();
    thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            thread::spawn(move || {
                let mut s = stream;
                let _ = s.write_all(&vec![b'z'; size]);
            });
        }
    });
    port
}

/// Opens argv[2] CONNECT tunnels to argv[1], one after the other, each half-closed at
/// once and never read but for 8 KiB every 0.1 s: enough, with a small segment size, that
/// no window stays shut long enough for the kernel to give up on a closed socket still
/// sending to it. Prints `sipping PORT` (the proxy's) once all are open, then sips on.
const SIPPING_READERS: &str = r#"
target, n = sys.argv[1], int(sys.argv[2])
tunnels = []
def sip():
    for s in tunnels:
        try:
            s.recv(8192)
        except BlockingIOError:
            pass
for _ in range(n):
    s = tunnel(target, mss=1024)
    s.shutdown(socket.SHUT_WR)
    s.setblocking(False)
    tunnels.append(s)
    sip()
    time.sleep(0.05)
print('sipping', p.port, flush=True)
while True:
    sip()
    time.sleep(0.1)
"#;

/// The broker's sockets that `ss -tmn` lists with `filter` (run inside the network
/// namespace of `pid` when given), and the bytes they hold: received (`r`), queued to
/// send (`w`, which `t` counts only while in flight), and reserved for more (`f`).
fn sockets_holding(pid: Option<i32>, filter: &[&str]) -> (usize, u64) {
    let held: Vec<u64> = skmem(pid, filter, &["r", "w", "f"])
        .into_iter()
        .map(|f| f.iter().sum())
        .collect();
    (held.len(), held.iter().sum())
}

/// SPEC section 6: the bound on socket buffers holds for what the broker's sockets still
/// hold after it closed them. A download whose destination ends while its client reads
/// slowly leaves the rest of the answer queued in the proxy's socket: closed then, that
/// socket keeps sending it (an orphan) for as long as the client takes it, but its
/// connection no longer counts, so its share of the pool and its slot go to the next.
#[test]
fn closed_tunnels_with_answers_still_queued_leave_the_broker_bounded_buffers() {
    let OneAllowed {
        b,
        port,
        name,
        _hosts,
        addr,
    } = one_allowed("burst", "o", |ip| burst_server(ip, 5 << 20));
    let n = 120;
    let (mut child, line) = first_line(
        &b,
        SIPPING_READERS,
        &[&format!("{name}:{port}"), &n.to_string()],
    );
    let proxy = proxy_port(&line, "sipping ");
    let holders = namespace_holders(b.pid());
    assert_eq!(holders.len(), 1, "{holders:?}");
    thread::sleep(Duration::from_secs(1));
    let (inside, held_inside) =
        sockets_holding(Some(holders[0]), &["sport", "=", &format!(":{proxy}")]);
    let (outside, held_outside) = sockets_holding(None, &["dst", &format!("{}:{port}", addr.ip)]);
    let _ = child.kill();
    let _ = child.wait();
    let held = held_inside + held_outside;
    let bound = CONTEXT_SOCKET_BOUND;
    assert!(
        held <= bound,
        "the broker's {} sockets of the context hold {held} bytes, over the {bound} a \
         context may make it hold ({} audit lines of ended tunnels)",
        inside + outside,
        b.audit_lines()
            .iter()
            .filter(|l| l["event"] == "egress")
            .count()
    );
}

/// Opens argv[2] CONNECT tunnels to argv[1] (a destination that sends and never reads),
/// sends on each until nothing more goes in, never reads, and prints `stuffed PORT` (the
/// proxy's), then holds them.
const STUFFED_TUNNELS: &str = r#"
import resource
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
target, n = sys.argv[1], int(sys.argv[2])
tunnels = []
for _ in range(n):
    s = tunnel(target)
    s.setblocking(False)
    tunnels.append(s)
chunk = b'u' * 65536
for _ in range(20):
    for s in tunnels:
        try:
            while True:
                s.send(chunk)
        except BlockingIOError:
            pass
    time.sleep(0.2)
print('stuffed', p.port, flush=True)
time.sleep(120)
"#;

/// SPEC section 6: a context at its connection cap, every one of its tunnels stuck both
/// ways (the client reads nothing of a destination that sends without end, and sends to
/// it while it reads nothing), fills every buffer the broker holds for it, and those
/// hold no more than the bound.
#[test]
fn a_context_at_its_cap_stuck_both_ways_leaves_the_broker_bounded_buffers() {
    let OneAllowed {
        b,
        port,
        name,
        _hosts,
        addr,
    } = one_allowed("firehose", "s", firehose_server);
    let n = 512;
    let (mut child, line) = first_line(
        &b,
        STUFFED_TUNNELS,
        &[&format!("{name}:{port}"), &n.to_string()],
    );
    let proxy = proxy_port(&line, "stuffed ");
    let holders = namespace_holders(b.pid());
    assert_eq!(holders.len(), 1, "{holders:?}");
    let (inside, held_inside) =
        sockets_holding(Some(holders[0]), &["sport", "=", &format!(":{proxy}")]);
    let (outside, held_outside) = sockets_holding(None, &["dst", &format!("{}:{port}", addr.ip)]);
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!((inside, outside), (n, n));
    let held = held_inside + held_outside;
    let bound = CONTEXT_SOCKET_BOUND;
    assert!(
        held > bound / 2,
        "the {n} stuck tunnels hold {held} bytes in the broker: the test stuck nothing"
    );
    assert!(
        held <= bound,
        "the context's {n} stuck tunnels make the broker hold {held} bytes in socket \
         buffers ({held_inside} inside its namespace), over the {bound} it may"
    );
}

/// A server on `ip` that answers every connection `ok` and ends its side at once, then
/// reads 8 KiB every 0.1 s until the connection ends, with a small segment size: slow,
/// but never so slow that a closed socket sending to it gives up.
fn sipping_server(ip: &str) -> u16 {
    let listener = TcpListener::bind((ip, 0)).expect("bind sipping server");
    let mss: libc::c_int = 1024;
    // SAFETY: setsockopt reads `mss` for as long as the call lasts.
    let r = unsafe {
        libc::setsockopt(
            listener.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_MAXSEG,
            (&mss as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(r, 0);
    let port = listener.local_addr().unwrap().port();
    thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            thread::spawn(move || {
                let mut s = stream;
                let _ = s.write_all(b"ok");
                let _ = s.shutdown(std::net::Shutdown::Write);
                let mut buf = [0u8; 8192];
                while s.read(&mut buf).is_ok_and(|n| n > 0) {
                    thread::sleep(Duration::from_millis(100));
                }
            });
        }
    });
    port
}

/// Opens argv[2] CONNECT tunnels to argv[1], one after the other, sends argv[3] MiB on
/// each and ends its side (unless they take more than 0.2 s to go in), then prints
/// `uploaded` and holds them.
const UPLOADS: &str = r#"
target, n, mib = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
tunnels = []
for _ in range(n):
    s = tunnel(target)
    s.settimeout(0.2)
    try:
        s.sendall(b'u' * (mib << 20))
        s.shutdown(socket.SHUT_WR)
    except socket.timeout:
        pass
    tunnels.append(s)
    time.sleep(0.05)
print('uploaded', flush=True)
time.sleep(120)
"#;

/// The same as [`closed_tunnels_with_answers_still_queued_leave_the_broker_bounded_buffers`]
/// the other way: an upload queued for a destination that reads it slowly, after both
/// sides ended, stays in the broker's socket in the host's namespace.
#[test]
fn closed_tunnels_with_uploads_still_queued_leave_the_broker_bounded_buffers() {
    let OneAllowed {
        b,
        port,
        name,
        _hosts,
        addr,
    } = one_allowed("sip", "u", sipping_server);
    let n = 120;
    let (mut child, line) = first_line(
        &b,
        UPLOADS,
        &[&format!("{name}:{port}"), &n.to_string(), "5"],
    );
    assert_eq!(line, "uploaded\n");
    thread::sleep(Duration::from_secs(1));
    let (outside, held) = sockets_holding(None, &["dst", &format!("{}:{port}", addr.ip)]);
    let _ = child.kill();
    let _ = child.wait();
    let bound = CONTEXT_SOCKET_BOUND;
    assert!(
        held <= bound,
        "the broker's {outside} sockets to the destination hold {held} bytes, over the \
         {bound} a context may make it hold ({} audit lines of ended tunnels)",
        b.audit_lines()
            .iter()
            .filter(|l| l["event"] == "egress")
            .count()
    );
}

// ---------------------------------------------------------------------------------------
// Review of egress-final (attacks from inside the context)
// ---------------------------------------------------------------------------------------

/// Sends each of `heads` (hex) on a connection of its own to the context's proxy, takes
/// what comes back until the proxy or the destination closes (3 s at most), and prints it
/// hex-encoded, one line per head.
const RAW_HEADS: &str = r#"
import base64, os, socket, sys, time
proxy = os.environ['HTTP_PROXY']
port = int(proxy.rsplit(':', 1)[1])
auth = base64.b64encode(proxy.split('//', 1)[1].rsplit('@', 1)[0].encode())
for h in sys.argv[1:]:
    s = socket.create_connection(('127.0.0.1', port), timeout=3)
    s.sendall(bytes.fromhex(h).replace(b'@AUTH@', auth))
    out, end = b'', time.time() + 3
    try:
        while time.time() < end:
            d = s.recv(65536)
            if not d: break
            out += d
    except OSError: pass
    s.close()
    print(out.hex())
"#;

fn raw_heads(b: &Broker, context: &str, heads: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let hex: Vec<String> = heads
        .iter()
        .map(|h| h.iter().map(|b| format!("{b:02x}")).collect())
        .collect();
    let mut argv = vec!["/usr/bin/python3", "-c", RAW_HEADS];
    argv.extend(hex.iter().map(String::as_str));
    let out = run_with(
        &mut b.exec_cmd(context, &argv),
        None,
        Duration::from_secs(60),
    );
    let text = out.ok();
    let lines: Vec<Vec<u8>> = text
        .lines()
        .map(|l| {
            (0..l.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&l[i..i + 2], 16).unwrap())
                .collect()
        })
        .collect();
    assert_eq!(lines.len(), heads.len(), "{}", out.show());
    lines
}

/// A request head whose lines end in a bare `\n` (which the proxy accepts) ends at its
/// first blank line, even when the bytes after it (a body, or a tunnel's early bytes)
/// hold a `\r\n\r\n` that came in the same read: the proxy looked for `\r\n\r\n` first and
/// took the later one for the head's end, read the body's lines as headers, and answered
/// 400 (or, where they had a colon, sent them to the origin as headers).
#[test]
fn a_head_ended_by_bare_newlines_ends_at_its_first_blank_line() {
    let OneAllowed {
        b,
        port,
        name,
        _hosts,
        addr: _addr,
    } = echo_allowed("lf", "lf");
    let post = format!(
        "POST http://{name}:{port}/lf HTTP/1.1\nContent-Length: 17\n\nab\r\n\r\nX-Body: 1\r\n"
    );
    let connect = format!("CONNECT {name}:{port} HTTP/1.1\n\nGET /early HTTP/1.0\r\n\r\n");
    let got = raw_heads(&b, "eg", &[post.into_bytes(), connect.into_bytes()]);
    let post_echo = String::from_utf8_lossy(&got[0]);
    assert_eq!(
        post_echo,
        format!(
            "POST /lf HTTP/1.1\r\nHost: {name}:{port}\r\nContent-Length: 17\r\n\
             Connection: close\r\n\r\nab\r\n\r\nX-Body: 1\r\n"
        ),
        "the absolute-URI request as the origin got it"
    );
    assert_eq!(
        String::from_utf8_lossy(&got[1]),
        "HTTP/1.1 200 Connection established\r\n\r\nGET /early HTTP/1.0\r\n\r\n",
        "the tunnel's early bytes"
    );
}

/// An absolute-URI request reaches only the origin its URL names, whatever else the
/// connection carries: a `Host` header naming a denied site is replaced, userinfo
/// (`allowed@denied`) does not make the name after it the allowed one, and a second
/// request pipelined on the same connection to a denied name goes, as raw bytes, to the
/// first origin (the README's "relayed as it is"), never to the denied one; one audit line.
/// Held on egress-final.
#[test]
fn an_absolute_uri_connection_reaches_only_the_origin_its_url_names() {
    let OneAllowed {
        b,
        port,
        name,
        _hosts,
        addr: _addr,
    } = echo_allowed("abs", "abs");
    let denied_addr = HostAddr::claim();
    let denied = format!("{}.denied.test", unique("d"));
    let _denied_hosts = Hosts::add(&[(&denied_addr.ip, &denied)]);
    let (dport, hits) = counting_server(&denied_addr.ip, "denied");
    let pipelined = format!(
        "GET http://{name}:{port}/one HTTP/1.1\r\nHost: {denied}:{dport}\r\n\r\n\
         GET http://{denied}:{dport}/two HTTP/1.1\r\nHost: {denied}:{dport}\r\n\r\n"
    );
    let heads = [
        pipelined,
        format!("GET http://{name}:{port}@{denied}:{dport}/ HTTP/1.1\r\n\r\n"),
        format!("GET http://{denied}:{dport}\\@{name}:{port}/ HTTP/1.1\r\n\r\n"),
        format!("GET http://{name}:{port}#@{denied}:{dport}/ HTTP/1.1\r\n\r\n"),
    ];
    let heads: Vec<Vec<u8>> = heads.into_iter().map(String::into_bytes).collect();
    let got = raw_heads(&b, "eg", &heads);
    let text: Vec<String> = got
        .iter()
        .map(|g| String::from_utf8_lossy(g).into_owned())
        .collect();
    assert_eq!(
        text[0],
        format!(
            "GET /one HTTP/1.1\r\nHost: {name}:{port}\r\nConnection: close\r\n\r\n\
             GET http://{denied}:{dport}/two HTTP/1.1\r\nHost: {denied}:{dport}\r\n\r\n"
        )
    );
    assert!(text[1].starts_with("HTTP/1.1 403 "), "{}", text[1]);
    // Both name the allowed origin as the host (a backslash is no separator here): that
    // is where they go, with that Host.
    for t in &text[2..] {
        assert!(t.starts_with("GET / HTTP/1.1\r\n"), "{t}");
        assert!(t.contains(&format!("\r\nHost: {name}:{port}\r\n")), "{t}");
    }
    assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 0);
    let lines: Vec<Value> = b
        .audit_lines()
        .into_iter()
        .filter(|l| l["event"] == "egress")
        .collect();
    assert_eq!(lines.len(), 4, "{lines:?}");
    let allowed: Vec<&Value> = lines.iter().filter(|l| l["allowed"] == true).collect();
    assert_eq!(allowed.len(), 3, "{lines:?}");
    assert!(
        allowed.iter().all(|l| l["name"] == name.as_str()),
        "{lines:?}"
    );
    assert!(lines
        .iter()
        .any(|l| l["allowed"] == false && l["name"] == denied.as_str()));
}

/// The launch id in a client's proxy credentials attributes an attempt only to a launch
/// of the same context: another context's launch id (read from its environment, say) is
/// logged as `"launch": null`, over HTTP and SOCKS5; a sibling launch's id of the same
/// context is taken (the README's stated limit). Held on egress-final.
#[test]
fn another_contexts_launch_id_attributes_nothing() {
    let OneAllowed {
        b,
        port,
        name,
        _hosts,
        addr,
    } = echo_allowed("attr", "attr");
    drop(b);
    let rule = host(&addr, &format!(r#"{{ allow = ["{name}"] }}"#));
    let b = Broker::start(&config(&rule, Some(&rule)));
    let id_of = |ctx: &str| -> u64 {
        let out = b.exec(ctx, &["sh", "-c", "echo $HTTP_PROXY"]).ok();
        out.trim()
            .split("launch:")
            .nth(1)
            .and_then(|r| r.split('@').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{out}"))
    };
    let other = id_of("eg2");
    let sibling = id_of("eg");
    let script = format!(
        "import base64, os, socket, struct\n\
         p = int(os.environ['HTTP_PROXY'].rsplit(':', 1)[1])\n\
         for i in [{other}, {sibling}]:\n\
         \x20   a = base64.b64encode(f'launch:{{i}}'.encode()).decode()\n\
         \x20   s = socket.create_connection(('127.0.0.1', p))\n\
         \x20   s.sendall(f'CONNECT {name}:{port} HTTP/1.1\\r\\nProxy-Authorization: Basic {{a}}\\r\\n\\r\\nx'.encode())\n\
         \x20   print(s.recv(100).split(b'\\r\\n')[0].decode()); s.close()\n\
         \x20   s = socket.create_connection(('127.0.0.1', p))\n\
         \x20   u, w = b'launch', str(i).encode()\n\
         \x20   s.sendall(b'\\x05\\x01\\x02'); s.recv(2)\n\
         \x20   s.sendall(bytes([1, len(u)]) + u + bytes([len(w)]) + w); s.recv(2)\n\
         \x20   n = b'{name}'\n\
         \x20   s.sendall(b'\\x05\\x01\\x00\\x03' + bytes([len(n)]) + n + struct.pack('>H', {port}))\n\
         \x20   print(s.recv(10)[1]); s.sendall(b'y'); s.recv(1); s.close()\n"
    );
    let out = b.exec("eg", &["/usr/bin/python3", "-c", &script]);
    assert_eq!(
        out.ok(),
        "HTTP/1.1 200 Connection established\n0\nHTTP/1.1 200 Connection established\n0\n"
    );
    let lines = b.wait_audit(4, |l| l["event"] == "egress");
    let launches: Vec<(String, Value)> = lines
        .iter()
        .map(|l| (l["via"].as_str().unwrap().to_string(), l["launch"].clone()))
        .collect();
    let want = |via: &str, id: Value| launches.iter().filter(|l| l.0 == via && l.1 == id).count();
    assert_eq!(want("connect", Value::Null), 1, "{launches:?}");
    assert_eq!(want("socks5", Value::Null), 1, "{launches:?}");
    assert_eq!(want("connect", sibling.into()), 1, "{launches:?}");
    assert_eq!(want("socks5", sibling.into()), 1, "{launches:?}");
    assert!(launches.iter().all(|l| l.1 != other));
}

/// Node's own `fetch` (undici) with a proxy agent: the issue asks for `fetch`, which Node
/// 20 runs without reading the proxy variables and without an importable `ProxyAgent`.
/// Node's bundled undici is reachable all the same: its global dispatcher is an undici
/// `Agent`, whose class takes a `connect` that opens a `CONNECT` tunnel through
/// `HTTPS_PROXY`, which is what a proxy agent does.
const NODE_FETCH: &str = r#"
const http = require('http');
const p = new URL(process.env.HTTPS_PROXY);
const auth = 'Basic ' + Buffer.from(decodeURIComponent(p.username) + ':' +
    decodeURIComponent(p.password)).toString('base64');
fetch('data:,x').then(async () => {
  const Agent = globalThis[Symbol.for('undici.globalDispatcher.1')].constructor;
  const agent = new Agent({ connect: (opts, cb) => {
    const req = http.request({ host: p.hostname, port: p.port, method: 'CONNECT',
      path: opts.hostname + ':' + opts.port, headers: { 'Proxy-Authorization': auth } });
    req.on('connect', (res, socket) => res.statusCode === 200 ? cb(null, socket)
      : cb(new Error('proxy status ' + res.statusCode)));
    req.on('error', (e) => cb(e));
    req.end();
  }});
  try {
    const r = await fetch(process.argv[1], { dispatcher: agent });
    process.stdout.write(await r.text());
  } catch (e) { console.log(e.cause ? e.cause.message : e.message); process.exit(3); }
});
"#;

#[test]
fn node_fetch_with_a_proxy_agent_reaches_allowed_names_and_is_refused_the_others() {
    let addr = HostAddr::claim();
    let allowed = format!("{}.fetch.test", unique("f"));
    let other = format!("{}.other.test", unique("f"));
    let _hosts = Hosts::add(&[(&addr.ip, &allowed), (&addr.ip, &other)]);
    let dir = TempDir::new();
    let (www, body) = site(&dir);
    let web = WebServer::start(&addr.ip, &www);
    let b = Broker::start(&config(
        &host(&addr, &format!(r#"{{ allow = ["{allowed}"] }}"#)),
        None,
    ));
    let url = |h: &str| format!("http://{h}:{}/hello.txt", web.port);
    let out = b.exec("eg", &["node", "-e", NODE_FETCH, &url(&allowed)]);
    assert_eq!(out.ok(), body);
    let out = b.exec("eg", &["node", "-e", NODE_FETCH, &url(&other)]);
    assert_eq!(
        (out.code(), out.stdout_str()),
        (3, "proxy status 403\n".to_string()),
        "{}",
        out.show()
    );
    let lines = b.wait_audit(2, |l| l["event"] == "egress");
    assert!(lines.iter().any(|l| l["name"] == allowed.as_str()
        && l["allowed"] == true
        && l["via"] == "connect"
        && l["launch"].is_u64()));
    assert!(lines
        .iter()
        .any(|l| l["name"] == other.as_str() && l["allowed"] == false && l["launch"].is_u64()));
}

/// A header value with bytes that are not UTF-8 (obs-text, which RFC 9110 lets a field
/// value hold: Python's http.client sends a `str` value as Latin-1) is forwarded as it is.
/// The proxy read the whole head as UTF-8 and answered 400 to such a request, for an
/// allowed name.
#[test]
fn a_header_value_that_is_not_utf8_is_forwarded_as_it_is() {
    let OneAllowed {
        b,
        port,
        name,
        _hosts,
        addr: _addr,
    } = echo_allowed("latin", "l");
    let mut head = format!("GET http://{name}:{port}/ HTTP/1.1\r\nX-Name: caf").into_bytes();
    head.extend_from_slice(b"\xe9\r\n\r\n");
    let got = raw_heads(&b, "eg", &[head]);
    let mut want = format!("GET / HTTP/1.1\r\nHost: {name}:{port}\r\nX-Name: caf").into_bytes();
    want.extend_from_slice(b"\xe9\r\nConnection: close\r\n\r\n");
    assert_eq!(
        String::from_utf8_lossy(&got[0]),
        String::from_utf8_lossy(&want)
    );
    assert_eq!(got[0], want);
}

/// A request whose request line names a destination but whose head is then refused (a
/// malformed header line: 400) is an attempt that named a destination, yet it leaves no
/// audit line: a probe of a denied name could be made unlogged by adding a bad header.
#[test]
fn a_malformed_request_naming_a_destination_is_audited() {
    let OneAllowed {
        b,
        port,
        name,
        _hosts,
        addr: _addr,
    } = echo_allowed("malformed", "m");
    let heads = [
        b"CONNECT evil.example:443 HTTP/1.1\r\nno colon here\r\n\r\n".to_vec(),
        b"CONNECT evil2.example:443 HTTP/1.1\r\nProxy-Authorization: Basic @AUTH@\r\nno colon\r\n\r\n"
            .to_vec(),
        format!("CONNECT {name}:{port} HTTP/1.1\r\n\r\nx").into_bytes(),
    ];
    let got = raw_heads(&b, "eg", &heads);
    assert!(got[0].starts_with(b"HTTP/1.1 400 "));
    // The second, well-formed attempt's line is there: the first one's would be before it.
    let lines = egress_lines_once(&b, &name);
    assert!(
        lines
            .iter()
            .any(|l| l["name"] == "evil.example" && l["allowed"] == false),
        "{lines:?}"
    );
    // With the launch's own credentials on a line of its head, the line names the launch.
    assert!(
        lines
            .iter()
            .any(|l| l["name"] == "evil2.example" && l["allowed"] == false && l["launch"].is_u64()),
        "{lines:?}"
    );
}

// ---------------------------------------------------------------------------------------
// Review of egress-review (helper): refused heads, buffer shares
// ---------------------------------------------------------------------------------------

/// Connects to the context's proxy, waits argv[1] seconds, sends the head argv[2] (hex),
/// prints the first line of the answer, holds the connection open argv[3] seconds more,
/// then makes one well-formed CONNECT to argv[4] (a marker for the audit) and prints its
/// status line.
const LATE_HEAD: &str = r#"
import os, socket, sys, time
port = int(os.environ['HTTP_PROXY'].rsplit(':', 1)[1])
wait, head, hold, marker = float(sys.argv[1]), bytes.fromhex(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
s = socket.create_connection(('127.0.0.1', port), timeout=20)
time.sleep(wait)
s.sendall(head)
print(s.recv(200).split(b'\r\n')[0].decode(), flush=True)
time.sleep(hold)
s.close()
m = socket.create_connection(('127.0.0.1', port), timeout=20)
m.sendall(('CONNECT %s HTTP/1.1\r\n\r\nx' % marker).encode())
print(m.recv(200).split(b'\r\n')[0].decode(), flush=True)
m.close()
"#;

/// A head refused for a malformed header after its request line named a (denied)
/// destination is audited however late it comes. The 400 was written, and the client's
/// leftover bytes drained for up to 2 s, inside the 10 s handshake deadline: a client that
/// sent its head 8.5 s after connecting and kept the connection open had the deadline cut
/// the drain short, the handshake counted as timed out, and the probe left no line.
#[test]
fn a_malformed_head_sent_late_in_the_handshake_is_still_audited() {
    let OneAllowed {
        b,
        port,
        name,
        _hosts,
        addr: _addr,
    } = echo_allowed("late", "late");
    let denied = format!("{}.denied.test", unique("late"));
    let head = format!("CONNECT {denied}:443 HTTP/1.1\r\nno colon here\r\n\r\n");
    let hex: String = head.bytes().map(|b| format!("{b:02x}")).collect();
    let marker = format!("{name}:{port}");
    let out = run_with(
        &mut b.exec_cmd(
            "eg",
            &[
                "/usr/bin/python3",
                "-c",
                LATE_HEAD,
                "8.5",
                &hex,
                "4",
                &marker,
            ],
        ),
        None,
        Duration::from_secs(60),
    );
    assert_eq!(
        out.ok(),
        "HTTP/1.1 400 Bad Request\nHTTP/1.1 200 Connection established\n"
    );
    let lines = egress_lines_once(&b, &name);
    assert!(
        lines
            .iter()
            .any(|l| l["name"] == denied.as_str() && l["allowed"] == false),
        "the malformed CONNECT to {denied} sent 8.5 s into the handshake left no audit \
         line: {lines:?}"
    );
}

/// The request line goes to the origin as the client wrote its target and version: a
/// bare CR (or a NUL, or another control byte) there was forwarded, although a header
/// value holding one is refused, for the same reason: an origin that ends a line at a
/// bare CR reads what follows it as a header of the proxy's making (here a second `Host`
/// ahead of the one the proxy sets from the URL). RFC 9112 (2.2): a sender MUST NOT
/// generate a bare CR outside content.
#[test]
fn a_bare_cr_or_nul_in_the_request_line_is_refused_not_forwarded() {
    let OneAllowed {
        b,
        port,
        name,
        _hosts,
        addr: _addr,
    } = echo_allowed("crline", "crl");
    let heads = [
        format!("GET http://{name}:{port}/ HTTP/1.1\rHost:denied.example\r\n\r\n"),
        format!("GET http://{name}:{port}/a\rHost:denied.example HTTP/1.1\r\n\r\n"),
        format!("GET http://{name}:{port}/a\0b HTTP/1.1\r\n\r\n"),
    ];
    let heads: Vec<Vec<u8>> = heads.into_iter().map(String::into_bytes).collect();
    let got = raw_heads(&b, "eg", &heads);
    for (head, answer) in heads.iter().zip(&got) {
        assert!(
            answer.starts_with(b"HTTP/1.1 400 "),
            "{:?} reached the origin as {:?}",
            String::from_utf8_lossy(head),
            String::from_utf8_lossy(answer)
        );
    }
}

/// A head over 16 KiB whose request line is itself the long part (an absolute URI with a
/// long path: the host is whole, the line is not) is answered 431; it left no audit line
/// while the name was read only from a request line that ended within the 16 KiB.
#[test]
fn a_request_line_over_the_head_limit_naming_a_destination_is_audited() {
    let OneAllowed {
        b,
        port,
        name,
        _hosts,
        addr: _addr,
    } = echo_allowed("longline", "ll");
    let denied = format!("{}.denied.test", unique("ll"));
    let mut long = format!("GET http://{denied}/").into_bytes();
    long.resize(20 * 1024, b'a');
    let heads = [
        long,
        format!("CONNECT {name}:{port} HTTP/1.1\r\n\r\nx").into_bytes(),
    ];
    let got = raw_heads(&b, "eg", &heads);
    assert!(
        got[0].starts_with(b"HTTP/1.1 431 "),
        "{}",
        String::from_utf8_lossy(&got[0])
    );
    let lines = egress_lines_once(&b, &name);
    assert!(
        lines
            .iter()
            .any(|l| l["name"] == denied.as_str() && l["allowed"] == false),
        "GET http://{denied}/aaa... (20 KiB, refused 431) left no audit line: {lines:?}"
    );
}

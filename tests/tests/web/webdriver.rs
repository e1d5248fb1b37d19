//! A small W3C WebDriver client over hyper, and the chromedriver process
//! it talks to: just what the browser test needs (navigate, find, click,
//! read the URL and the page, take a screenshot).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use base64::Engine;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::process::{Child, Command};

/// The key of an element reference in WebDriver's JSON.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// Where the browser test looks for the programs (Debian's packages
/// `chromium` and `chromium-driver`), after `PATH`.
fn find(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([
            PathBuf::from("/usr/bin"),
            PathBuf::from("/usr/lib/chromium"),
        ])
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// A chromedriver process of this test, in its own process group; dropping
/// it ends that group (chromedriver and the browsers it started).
pub(crate) struct Driver {
    child: Child,
    port: u16,
    profile: PathBuf,
}

impl Driver {
    /// Starts chromedriver on a free port of 127.0.0.1 and waits until it is
    /// ready. Panics, saying what to install, when chromedriver or chromium
    /// is missing: the dashboard's browser test never skips.
    pub(crate) async fn start() -> Driver {
        let driver = find("chromedriver").unwrap_or_else(|| {
            panic!(
                "chromedriver was not found on PATH or in /usr/bin: the dashboard's browser test needs \
                 Debian's `chromium` and `chromium-driver` (scripts/test installs them with apt-get when \
                 run as root; or: apt-get install -y chromium chromium-driver)"
            )
        });
        assert!(
            find("chromium").is_some(),
            "chromium was not found on PATH or in /usr/bin: install Debian's `chromium` \
             (scripts/test does it with apt-get when run as root)"
        );
        let port = free_port();
        let profile = std::env::temp_dir().join(format!(
            "queue-web-chromium-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&profile).expect("a fresh chromium profile directory");
        let log = profile.join("chromedriver.log");
        let child = Command::new(&driver)
            .arg(format!("--port={port}"))
            .arg(format!("--log-path={}", log.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", driver.display()));
        let d = Driver {
            child,
            port,
            profile,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok((200, body)) = request(port, "GET", "/status", None).await
                && body["value"]["ready"] == json!(true)
            {
                return d;
            }
            assert!(
                Instant::now() < deadline,
                "chromedriver did not answer on port {port} within 20 s (log: {})",
                log.display()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A new headless Chromium session, with the flags that work on this
    /// machine as root and keep it off the (closed) network.
    pub(crate) async fn session(&self) -> Session {
        let data_dir = self.profile.join("profile");
        let caps = json!({
            "capabilities": { "alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": {
                    "binary": find("chromium").map(|p| p.display().to_string()),
                    "args": [
                        "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                        "--no-first-run", "--disable-background-networking",
                        "--disable-component-update", "--disable-sync",
                        "--disable-dev-shm-usage", "--window-size=1280,1000",
                        format!("--user-data-dir={}", data_dir.display()),
                    ]
                }
            }}
        });
        let (status, body) = request(self.port, "POST", "/session", Some(caps))
            .await
            .expect("chromedriver answers");
        let id = body["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("chromedriver could not start chromium ({status}): {body}"));
        Session {
            port: self.port,
            id: id.to_owned(),
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // The whole group: chromedriver and the chromium processes it started.
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", "--", &format!("-{pid}")])
                .status();
        }
        let _ = self.child.start_kill();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

/// A port that was free a moment ago.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port on 127.0.0.1")
}

/// One HTTP/1.1 request to chromedriver; (status, JSON body).
async fn request(
    port: u16,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> Result<(u16, Value), String> {
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| e.to_string())?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let bytes = body.map(|b| b.to_string()).unwrap_or_default();
    let req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", format!("127.0.0.1:{port}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(bytes)))
        .map_err(|e| e.to_string())?;
    let res = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let status = res.status().as_u16();
    let body = res
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    let json = serde_json::from_slice(&body).unwrap_or(Value::Null);
    Ok((status, json))
}

/// A browser session.
pub(crate) struct Session {
    port: u16,
    id: String,
}

impl Session {
    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let full = format!("/session/{}{path}", self.id);
        let (status, json) = request(self.port, method, &full, body)
            .await
            .unwrap_or_else(|e| panic!("WebDriver {method} {path}: {e}"));
        assert!(
            status == 200,
            "WebDriver {method} {path} failed ({status}): {json}"
        );
        json["value"].clone()
    }

    /// Opens `url` and waits for it to load.
    pub(crate) async fn goto(&self, url: &str) {
        self.call("POST", "/url", Some(json!({ "url": url }))).await;
    }

    /// The URL shown now.
    pub(crate) async fn url(&self) -> String {
        self.call("GET", "/url", None)
            .await
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// The page's HTML now.
    pub(crate) async fn source(&self) -> String {
        self.call("GET", "/source", None)
            .await
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// The element matching the CSS `selector`; panics with the page's
    /// source if there is none.
    pub(crate) async fn find(&self, selector: &str) -> String {
        let full = format!("/session/{}/element", self.id);
        let (status, json) = request(
            self.port,
            "POST",
            &full,
            Some(json!({ "using": "css selector", "value": selector })),
        )
        .await
        .expect("chromedriver answers");
        match json["value"][ELEMENT].as_str() {
            Some(id) if status == 200 => id.to_owned(),
            _ => panic!(
                "no element matches `{selector}` on {} ({status}: {json}); the page:\n{}",
                self.url().await,
                self.source().await
            ),
        }
    }

    /// Clicks the element matching `selector`.
    pub(crate) async fn click(&self, selector: &str) {
        let id = self.find(selector).await;
        self.call("POST", &format!("/element/{id}/click"), Some(json!({})))
            .await;
    }

    /// Saves a PNG of the window to `path`.
    pub(crate) async fn screenshot(&self, path: &Path) {
        let b64 = self.call("GET", "/screenshot", None).await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(b64.as_str().unwrap_or_default())
            .expect("a base64 screenshot");
        assert!(png.starts_with(b"\x89PNG"), "the screenshot is a PNG");
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).expect("the screenshot directory");
        }
        std::fs::write(path, png)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    }

    /// Ends the session (closes the browser).
    pub(crate) async fn close(self) {
        let _ = request(self.port, "DELETE", &format!("/session/{}", self.id), None).await;
    }
}

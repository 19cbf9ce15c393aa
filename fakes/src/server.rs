//! What every fake shares: the wiremock server, the fault queue, the request
//! log, the health endpoint, and the [`Provider`] trait each fake implements.

use std::collections::{BTreeMap, VecDeque};
use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate, matchers::any};

/// `GET` this path on any fake for `{"ok":true,"provider":NAME}`; it bypasses
/// faults, auth and the request log.
pub const HEALTH_PATH: &str = "/__fakes/health";

/// A misbehaviour to inject. Each injected fault answers exactly one request
/// (the next one), in the order injected; see [`FakeServer::inject_times`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// HTTP 500 with the provider's error body. The request is not processed.
    Status500,
    /// HTTP 429 with `Retry-After: <s>` and the provider's error body. The
    /// request is not processed.
    RateLimited { retry_after_s: u64 },
    /// The request IS processed (state changes, idempotency keys are stored),
    /// but the answer comes this late: a client timing out sees an ambiguous
    /// failure, exactly as with a slow real provider.
    Delay(Duration),
    /// HTTP 200 with a body that is not JSON. Not processed.
    Malformed,
    /// HTTP 200 with an HTML page (a proxy's or a login page). Not processed.
    Html,
    /// HTTP 200 with JSON cut off half way. Not processed.
    Truncated,
    /// HTTP 200 whose JSON body carries the provider's error shape. Not
    /// processed.
    ErrorIn200,
}

/// One request a fake received (health checks excluded).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedRequest {
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    /// Header names lower-cased.
    pub headers: BTreeMap<String, String>,
    pub body: String,
    /// The injected fault this request was answered with, if any (so the
    /// golden benchmark's floor can send the same request and get the same
    /// answer).
    pub fault: Option<Fault>,
}

impl RecordedRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(&name.to_ascii_lowercase()).map(String::as_str)
    }
}

/// An answer a fake's state produced.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    /// `None`: an empty body.
    pub body: Option<Value>,
    pub headers: Vec<(String, String)>,
}

impl Reply {
    pub fn json(status: u16, body: Value) -> Reply {
        Reply { status, body: Some(body), headers: Vec::new() }
    }

    pub fn empty(status: u16) -> Reply {
        Reply { status, body: None, headers: Vec::new() }
    }

    pub fn header(mut self, name: &str, value: impl Into<String>) -> Reply {
        self.headers.push((name.to_owned(), value.into()));
        self
    }
}

/// What the shared machinery tells a provider about the request it handles.
pub struct Exchange<'a> {
    pub request: &'a Request,
    pub now: Instant,
    /// The fake's clock (the system's, or the one a soak injected with
    /// [`FakeServer::set_clock`]): what provider-side expiry is measured on.
    pub at: SystemTime,
    /// The delay the answer will have (a [`Fault::Delay`]); Stripe uses it to
    /// hold an idempotency key "in progress" that long.
    pub delay: Duration,
}

impl Exchange<'_> {
    pub fn method(&self) -> &str {
        self.request.method.as_str()
    }

    pub fn path(&self) -> &str {
        self.request.url.path()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.request.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn bearer(&self) -> Option<&str> {
        self.header("authorization").and_then(|v| v.strip_prefix("Bearer "))
    }

    pub fn query_param(&self, name: &str) -> Option<String> {
        self.request.url.query_pairs().find(|(k, _)| k == name).map(|(_, v)| v.into_owned())
    }

    pub fn json_body(&self) -> Option<Value> {
        serde_json::from_slice(&self.request.body).ok()
    }
}

/// (Sealed: the trait sits in a private module.) One provider's behaviour: its auth check, its routes and state, and its
/// error shapes (so that injected faults look like that provider's).
pub trait Provider: Send + 'static {
    const NAME: &'static str;
    /// Header carrying the request id on every answer, if the provider has one.
    const REQUEST_ID_HEADER: Option<&'static str>;
    fn request_id(&mut self) -> String;
    fn authorized(&self, ex: &Exchange<'_>) -> bool;
    fn unauthorized(&self) -> Reply;
    fn handle(&mut self, ex: &Exchange<'_>) -> Reply;
    /// The provider's error body for `status` (500, 429) with `message`.
    fn error_body(&self, status: u16, message: &str) -> Value;
    /// A 200 whose body is an error in the provider's shape.
    fn error_in_200(&self) -> Value;
    /// The fake's clock reads `at` (before each request and each
    /// [`FakeServer::with_state`]): what expires at the provider (Stripe's
    /// idempotency keys after 24 hours) expires here.
    fn tick(&mut self, _at: SystemTime) {}
    /// Drop the objects made before `cutoff` (see [`FakeServer::forget_before`]).
    fn forget_before(&mut self, _cutoff: SystemTime) {}
}

/// When each object of a fake's state was made, on the fake's clock, oldest
/// first (the clock a soak injects never goes back), so that expiry and
/// [`FakeServer::forget_before`] cost what they drop, not what is kept.
pub(crate) struct Ages<K> {
    now: SystemTime,
    made: VecDeque<(SystemTime, K)>,
}

impl<K> Default for Ages<K> {
    fn default() -> Self {
        Ages { now: UNIX_EPOCH, made: VecDeque::new() }
    }
}

impl Ages<()> {
    /// Drop from the front of `list` (made in the same order) every item
    /// made before `cutoff`.
    pub(crate) fn expire_front<T>(&mut self, cutoff: SystemTime, list: &mut VecDeque<T>) {
        self.expire(cutoff, |_, ()| {
            list.pop_front();
        });
    }
}

impl<K> Ages<K> {
    pub(crate) fn tick(&mut self, at: SystemTime) {
        self.now = at;
    }

    /// `key` was made now.
    pub(crate) fn made(&mut self, key: K) {
        self.made.push_back((self.now, key));
    }

    /// Remove from `map` every key made before `cutoff`.
    pub(crate) fn expire_keys<V>(&mut self, cutoff: SystemTime, map: &mut std::collections::BTreeMap<K, V>)
    where
        K: Ord,
    {
        self.expire(cutoff, |_, k| {
            map.remove(&k);
        });
    }

    /// Hand every key made before `cutoff` to `drop`, oldest first, and
    /// forget it.
    pub(crate) fn expire(&mut self, cutoff: SystemTime, mut drop: impl FnMut(SystemTime, K)) {
        while self.made.front().is_some_and(|(at, _)| *at < cutoff) {
            if let Some((at, key)) = self.made.pop_front() {
                drop(at, key);
            }
        }
    }
}

/// The clock a fake reads.
type ClockFn = Arc<dyn Fn() -> SystemTime + Send + Sync>;

struct Inner<P> {
    state: Mutex<P>,
    faults: Mutex<VecDeque<Fault>>,
    log: Mutex<Vec<RecordedRequest>>,
    clock: Mutex<ClockFn>,
}

impl<P: Provider> Inner<P> {
    fn now(&self) -> SystemTime {
        let clock = lock(&self.clock).clone();
        clock()
    }

    /// The state, its clock moved to now.
    fn state(&self) -> MutexGuard<'_, P> {
        let at = self.now();
        let mut state = lock(&self.state);
        state.tick(at);
        state
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic in a test holding the lock must not turn every later request
    // into a second panic: the state is still usable.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

struct Handler<P>(Arc<Inner<P>>);

impl<P: Provider> Respond for Handler<P> {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        if request.url.path() == HEALTH_PATH {
            return ResponseTemplate::new(200).set_body_json(json!({ "ok": true, "provider": P::NAME }));
        }
        let fault = lock(&self.0.faults).pop_front();
        lock(&self.0.log).push(record(request, fault.clone()));
        let at = self.0.now();
        let mut state = self.0.state();
        let request_id = state.request_id();
        let with_id = |t: ResponseTemplate| match P::REQUEST_ID_HEADER {
            Some(h) => t.insert_header(h, request_id.as_str()),
            None => t,
        };
        let delay = match fault {
            Some(Fault::Status500) => {
                return with_id(json_template(500, &state.error_body(500, "An unexpected error occurred.")));
            }
            Some(Fault::RateLimited { retry_after_s }) => {
                return with_id(
                    json_template(429, &state.error_body(429, "Too many requests. Please retry later."))
                        .insert_header("Retry-After", retry_after_s.to_string()),
                );
            }
            Some(Fault::Malformed) => {
                return with_id(ResponseTemplate::new(200).set_body_raw("ok<<not json", "application/json"));
            }
            Some(Fault::Html) => {
                return with_id(ResponseTemplate::new(200).set_body_raw(
                    "<!DOCTYPE html><html><head><title>Sign in</title></head><body>Please sign in</body></html>",
                    "text/html; charset=utf-8",
                ));
            }
            Some(Fault::Truncated) => {
                return with_id(
                    ResponseTemplate::new(200).set_body_raw("{\"id\":\"obj_1\",\"status\":\"suc", "application/json"),
                );
            }
            Some(Fault::ErrorIn200) => return with_id(json_template(200, &state.error_in_200())),
            Some(Fault::Delay(d)) => d,
            None => Duration::ZERO,
        };
        let ex = Exchange { request, now: Instant::now(), at, delay };
        let reply = if state.authorized(&ex) { state.handle(&ex) } else { state.unauthorized() };
        drop(state);
        let mut template = match &reply.body {
            Some(body) => json_template(reply.status, body),
            None => ResponseTemplate::new(reply.status),
        };
        for (name, value) in &reply.headers {
            template = template.insert_header(name.as_str(), value.as_str());
        }
        if !delay.is_zero() {
            template = template.set_delay(delay);
        }
        with_id(template)
    }
}

fn json_template(status: u16, body: &Value) -> ResponseTemplate {
    ResponseTemplate::new(status).set_body_raw(body.to_string(), "application/json")
}

fn record(request: &Request, fault: Option<Fault>) -> RecordedRequest {
    RecordedRequest {
        fault,
        method: request.method.as_str().to_owned(),
        path: request.url.path().to_owned(),
        query: request.url.query().map(str::to_owned),
        headers: request
            .headers
            .iter()
            .map(|(k, v)| (k.as_str().to_ascii_lowercase(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
            .collect(),
        body: String::from_utf8_lossy(&request.body).into_owned(),
    }
}

/// One running fake: a wiremock server answering every request from the
/// provider's state `P`.
pub struct FakeServer<P> {
    server: MockServer,
    inner: Arc<Inner<P>>,
}

impl<P: Provider> FakeServer<P> {
    pub(crate) async fn start(bind: SocketAddr, state: P) -> std::io::Result<FakeServer<P>> {
        let listener = TcpListener::bind(bind)?;
        // The fake keeps its own log (`requests`); wiremock's copy would grow
        // without bound in a long soak.
        let server = MockServer::builder().listener(listener).disable_request_recording().start().await;
        let inner = Arc::new(Inner {
            state: Mutex::new(state),
            faults: Mutex::default(),
            log: Mutex::default(),
            clock: Mutex::new(Arc::new(SystemTime::now)),
        });
        let fake = FakeServer { server, inner };
        fake.mount().await;
        Ok(fake)
    }

    async fn mount(&self) {
        Mock::given(any()).respond_with(Handler(self.inner.clone())).mount(&self.server).await;
    }

    /// Read the provider's time from `clock` instead of the system's (a
    /// soak's virtual clock): Stripe's idempotency keys expire 24 hours
    /// after their first use on it.
    pub fn set_clock(&self, clock: impl Fn() -> SystemTime + Send + Sync + 'static) {
        *lock(&self.inner.clock) = Arc::new(clock);
    }

    /// The fake's clock.
    pub fn now(&self) -> SystemTime {
        self.inner.now()
    }

    /// Drop the provider objects made before `cutoff` on the fake's clock
    /// (PaymentIntents, captures, refunds, orders, mails, completions), as
    /// if archived: a long soak keeps the fakes' state bounded by time, not
    /// by run length. Not something a real provider does; the soak calls it
    /// for objects older than any run that could still touch them.
    pub fn forget_before(&self, cutoff: SystemTime) {
        self.inner.state().forget_before(cutoff);
    }

    /// Base URL, e.g. `http://127.0.0.1:41234`.
    pub fn uri(&self) -> String {
        self.server.uri()
    }

    pub fn address(&self) -> SocketAddr {
        *self.server.address()
    }

    /// Answer the next request with `fault`.
    pub fn inject(&self, fault: Fault) {
        self.inject_times(fault, 1);
    }

    /// Answer the next `times` requests with `fault`.
    pub fn inject_times(&self, fault: Fault, times: u32) {
        let mut faults = lock(&self.inner.faults);
        for _ in 0..times {
            faults.push_back(fault.clone());
        }
    }

    /// Drop faults not yet used.
    pub fn clear_faults(&self) {
        lock(&self.inner.faults).clear();
    }

    /// Faults injected but not yet used.
    pub fn pending_faults(&self) -> usize {
        lock(&self.inner.faults).len()
    }

    /// Every request received, in order (health checks excluded).
    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.inner.log).clone()
    }

    /// Forget the requests logged so far (a long soak keeps memory flat;
    /// the provider's state is kept). wiremock's mounted mock keeps a copy
    /// of every request it matched (headers, body and the connection's read
    /// buffer they point into) even with request recording disabled, so
    /// the mock is mounted afresh: a request that arrives during the swap
    /// is answered 404, so call this between requests (the soak does,
    /// between deliveries).
    pub async fn forget_requests(&self) {
        lock(&self.inner.log).clear();
        self.server.reset().await;
        self.mount().await;
    }

    /// Requests whose path is `path`.
    pub fn requests_for(&self, path: &str) -> Vec<RecordedRequest> {
        lock(&self.inner.log).iter().filter(|r| r.path == path).cloned().collect()
    }

    /// Read or change the provider's state (seeding, oracles).
    pub fn with_state<R>(&self, f: impl FnOnce(&mut P) -> R) -> R {
        f(&mut self.inner.state())
    }
}

/// Parse `application/x-www-form-urlencoded` into sorted pairs (Stripe).
pub(crate) fn form(body: &[u8]) -> BTreeMap<String, String> {
    url::form_urlencoded::parse(body).into_owned().collect()
}

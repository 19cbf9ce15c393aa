//! Faithful fakes of the four providers the example business talks to:
//! Stripe, Shopify, Printful and SendGrid (and an OpenAI-compatible LLM,
//! [`LlmFake`]), each a [`wiremock::MockServer`]
//! on a loopback port with its own state.
//!
//! They speak each provider's documented request and response shapes and
//! auth headers, keep state where the real provider does (Stripe's
//! idempotency keys and PaymentIntents, Shopify's orders, Printful's order
//! status and shipments, SendGrid's accepted mail), and can be told to
//! misbehave ([`Fault`]) so that tests prove what the clients do when a
//! provider fails. Everything is deterministic: ids come from counters, never
//! from randomness, so golden scenarios replay byte for byte.
//!
//! ```no_run
//! # async fn demo() {
//! let fakes = autobiz_fakes::Fakes::start().await;
//! fakes.stripe.inject(autobiz_fakes::Fault::Status500);
//! println!("{}", fakes.stripe.uri());
//! # }
//! ```
//!
//! `fakes/README.md` lists which provider behaviours are reproduced and
//! which are not.

mod llm;
mod printful;
mod sendgrid;
mod server;
mod shopify;
mod stripe;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

pub use llm::{LLM_FAKE_FINGERPRINT, LlmState};
pub use printful::PrintfulState;
pub use sendgrid::{SendgridState, SentMail};
pub use server::{FakeServer, Fault, HEALTH_PATH, RecordedRequest};
pub use shopify::ShopifyState;
pub use stripe::StripeState;

/// The Stripe fake.
pub type StripeFake = FakeServer<StripeState>;
/// The Shopify fake.
pub type ShopifyFake = FakeServer<ShopifyState>;
/// The Printful fake.
pub type PrintfulFake = FakeServer<PrintfulState>;
/// The SendGrid fake.
pub type SendgridFake = FakeServer<SendgridState>;

/// The Shopify Admin API version the fake serves (and the client speaks).
pub const SHOPIFY_API_VERSION: &str = "2024-10";

/// The id of the order every Shopify fake starts with (see
/// [`ShopifyState::seed_order`]), so that a person exploring by hand has
/// something to fetch.
pub const SEEDED_SHOPIFY_ORDER: u64 = 1001;

/// The OpenAI-compatible LLM fake (started on its own, [`LlmFake::start`]:
/// the four provider fakes do not need it).
pub type LlmFake = FakeServer<LlmState>;

/// The four fakes, each on its own port.
pub struct Fakes {
    pub stripe: StripeFake,
    pub shopify: ShopifyFake,
    pub printful: PrintfulFake,
    pub sendgrid: SendgridFake,
}

impl Fakes {
    /// Start all four on `127.0.0.1`, each on a free port.
    pub async fn start() -> Fakes {
        // Binding port 0 on loopback cannot fail short of the machine having
        // no loopback interface, in which case nothing here can work.
        Fakes::start_on(IpAddr::V4(Ipv4Addr::LOCALHOST)).await.expect("binding a free loopback port")
    }

    /// Start all four on `ip`, each on a free port. Fails when the address
    /// cannot be bound.
    pub async fn start_on(ip: IpAddr) -> std::io::Result<Fakes> {
        let bind = SocketAddr::new(ip, 0);
        Ok(Fakes {
            stripe: FakeServer::start(bind, StripeState::default()).await?,
            shopify: FakeServer::start(bind, ShopifyState::seeded()).await?,
            printful: FakeServer::start(bind, PrintfulState::default()).await?,
            sendgrid: FakeServer::start(bind, SendgridState::default()).await?,
        })
    }

    /// Put all four on one clock (see [`FakeServer::set_clock`]): the
    /// providers' time is the caller's, a soak's virtual days or a golden
    /// scenario's manual clock, so that what they stamp (a PaymentIntent's
    /// `created`) and what expires (Stripe's idempotency keys) agree with
    /// the kernel's store.
    pub fn set_clock(&self, clock: impl Fn() -> std::time::SystemTime + Clone + Send + Sync + 'static) {
        self.stripe.set_clock(clock.clone());
        self.shopify.set_clock(clock.clone());
        self.printful.set_clock(clock.clone());
        self.sendgrid.set_clock(clock);
    }

    /// Provider name and base URL of each fake, in a fixed order.
    pub fn uris(&self) -> Vec<(&'static str, String)> {
        vec![
            ("stripe", self.stripe.uri()),
            ("shopify", self.shopify.uri()),
            ("printful", self.printful.uri()),
            ("sendgrid", self.sendgrid.uri()),
        ]
    }
}

impl StripeFake {
    /// PaymentIntents after each successful capture.
    pub fn captures(&self) -> Vec<serde_json::Value> {
        self.with_state(|s| s.captures())
    }

    /// Refunds created.
    pub fn refunds(&self) -> Vec<serde_json::Value> {
        self.with_state(|s| s.refunds())
    }

    pub fn payment_intents(&self) -> Vec<serde_json::Value> {
        self.with_state(|s| s.payment_intents())
    }

    /// The id of the PaymentIntent with the greatest id (the newest: ids
    /// count up), without copying the others.
    pub fn last_payment_intent_id(&self) -> Option<serde_json::Value> {
        self.with_state(|s| s.payment_intents_iter().next_back().map(|p| p["id"].clone()))
    }
}

impl ShopifyFake {
    pub fn orders(&self) -> Vec<serde_json::Value> {
        self.with_state(|s| s.orders())
    }

    /// See [`ShopifyState::seed_order`].
    pub fn seed_order(&self, order: serde_json::Value) -> Option<u64> {
        self.with_state(|s| s.seed_order(order))
    }
}

impl PrintfulFake {
    pub fn orders(&self) -> Vec<serde_json::Value> {
        self.with_state(|s| s.orders())
    }

    /// The id of the order with the greatest id (the newest), without
    /// copying the others.
    pub fn last_order_id(&self) -> Option<serde_json::Value> {
        self.with_state(|s| s.orders_iter().next_back().map(|o| o["id"].clone()))
    }

    /// See [`PrintfulState::ship`].
    pub fn ship(&self, id: u64, carrier: &str, tracking_number: &str) -> bool {
        self.with_state(|s| s.ship(id, carrier, tracking_number))
    }
}

impl SendgridFake {
    pub fn sent(&self) -> Vec<SentMail> {
        self.with_state(|s| s.sent())
    }
}

impl LlmFake {
    /// Start the LLM fake on `127.0.0.1`, on a free port.
    pub async fn start_loopback() -> LlmFake {
        let bind = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0);
        FakeServer::start(bind, LlmState::default()).await.expect("binding a free loopback port")
    }

    /// The API base a client is given (`http://127.0.0.1:PORT/v1`).
    pub fn base_url(&self) -> String {
        format!("{}/v1", self.uri())
    }

    /// See [`LlmState::script`].
    pub fn script(&self, content: impl Into<String>) {
        self.with_state(|s| s.script(content));
    }

    /// See [`LlmState::clear_script`].
    pub fn clear_script(&self) {
        self.with_state(|s| s.clear_script());
    }

    /// See [`LlmState::pending`].
    pub fn pending(&self) -> usize {
        self.with_state(|s| s.pending())
    }

    /// Completions served, in order.
    pub fn served(&self) -> Vec<serde_json::Value> {
        self.with_state(|s| s.served())
    }
}

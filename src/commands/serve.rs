//! `autobiz serve`: open the store and the tenant secrets, start the event
//! worker and the reconciliation detector, listen, and stop gracefully on
//! Ctrl-C or SIGTERM (the listener stops accepting, requests in flight
//! finish, then the worker finishes the event in hand and the detector its
//! pass; an acknowledged event is already committed).

use std::collections::BTreeSet;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use autobiz_kernel::assembly::Assembly;
use autobiz_kernel::breaker::{BreakerPolicy, Breakers};
use autobiz_kernel::clock::SystemClock;
use autobiz_kernel::config::BusinessConfig;
use autobiz_kernel::executor::Durability;
use autobiz_kernel::hitl::HitlRules;
use autobiz_kernel::hitl::gate::StoreApprovals;
use autobiz_kernel::idempotency::DEFAULT_WINDOW;
use autobiz_kernel::ingress::{Ingress, SecretKeys};
use autobiz_kernel::providers;
use autobiz_kernel::reconcile::Reconciler;
use autobiz_kernel::redaction::RedactionPolicy;
use autobiz_kernel::secrets::{FileSecrets, MasterKey, SecretsProvider};
use autobiz_kernel::store::Store;
use autobiz_kernel::tenant::{CorrelationId, TenantId};
use tokio::sync::{Notify, watch};

use crate::cli::{GlobalArgs, ServeArgs};
use crate::report::{CliError, Reporter};
use crate::serve::detector::Detector;
use crate::serve::worker::Worker;
use crate::serve::{App, HttpCounters, router};

pub async fn run(global: &GlobalArgs, args: ServeArgs, reporter: &Reporter) -> Result<ExitCode, CliError> {
    let mut tenants = BTreeSet::new();
    for t in args.tenants.iter().map(String::as_str).chain(global.tenant.as_deref()).filter(|t| !t.is_empty()) {
        tenants.insert(t.parse::<TenantId>()?);
    }
    if tenants.is_empty() {
        return Err(CliError::input(
            "TENANT_REQUIRED",
            "serve accepts webhooks for the tenants it is told: pass --tenants A,B (or --tenant ID)",
        ));
    }
    if !args.secrets_file.exists() {
        return Err(CliError::input(
            "SECRETS_FILE_MISSING",
            format!(
                "{} does not exist: webhook secrets are tenant secrets (`autobiz secrets set stripe_webhook_secret` ...)",
                args.secrets_file.display()
            ),
        ));
    }
    let config = BusinessConfig::load(&global.config)?;
    let store = Store::open(&super::database_url(global)?).await?;
    let clock = Arc::new(SystemClock);
    let key = MasterKey::from_env(&args.secrets_file)?;
    let secrets: Arc<dyn SecretsProvider> =
        Arc::new(FileSecrets::open(&args.secrets_file, key, Arc::new(store.clone()))?);
    let keys = SecretKeys::new(secrets.clone(), clock.clone(), chrono::Duration::seconds(30));
    let ingress = Ingress::new(store.clone(), Arc::new(keys), clock.clone()).with_hold(args.hold);
    let breakers = Breakers::new(store.clone(), BreakerPolicy::default(), clock.clone())?;
    let app = Arc::new(App {
        ingress,
        store: store.clone(),
        tenants,
        secrets,
        stored: Arc::new(Notify::new()),
        http: HttpCounters::default(),
        breaker_metrics: Some(breakers.metrics_handle()),
        outcomes: Default::default(),
    });
    // The provider clients of the worker's tools and of the detector (none
    // in a webhook-only process).
    let providers = if args.no_worker { None } else { super::run::providers(&store)?.map(Arc::new) };
    let (stop_tx, stop_rx) = watch::channel(false);
    let worker = if args.no_worker {
        None
    } else {
        let assembly = Assembly::from_config(&config)?;
        let rules = HitlRules::from_model(&config.model()?)?;
        let config_hash = assembly.config_hash.clone();
        let (mut exec, workflows) =
            assembly.into_executor(RedactionPolicy::default(), Arc::new(store.clone()), clock.clone());
        if let Some(p) = &providers {
            providers::bind_all(&mut exec, p.clone())?;
        }
        let exec =
            exec.with_durability(Durability { store: store.clone(), window: DEFAULT_WINDOW }).with_breakers(breakers);
        let mut llm = std::collections::BTreeMap::new();
        for (id, wf) in &workflows {
            if let Some(client) = super::run::llm_client(&args.llm, &wf.workflow, &store)? {
                llm.insert(id.clone(), client);
            }
        }
        let worker = Worker {
            id: format!("serve-{}-{}", std::process::id(), &CorrelationId::random().as_str()[..8]),
            exec,
            workflows,
            config_hash,
            approvals: StoreApprovals::new(store.clone(), rules, clock.clone()),
            transcripts: args.transcripts.clone(),
            poll: Duration::from_millis(250),
            lease: Duration::from_secs(60),
            llm,
        };
        Some(tokio::spawn(worker.run(app.clone(), stop_rx.clone())))
    };
    let detector = if args.no_worker || args.reconcile_every.is_zero() {
        None
    } else {
        let detector = Detector { reconciler: Reconciler::new(store.clone(), providers), every: args.reconcile_every };
        Some(tokio::spawn(detector.run(app.clone(), stop_rx)))
    };
    let listener = tokio::net::TcpListener::bind(args.bind)
        .await
        .map_err(|e| CliError::infrastructure("BIND_FAILED", format!("cannot listen on {}: {e}", args.bind)))?;
    let addr = listener
        .local_addr()
        .map_err(|e| CliError::infrastructure("BIND_FAILED", format!("cannot read the bound address: {e}")))?;
    reporter.result(
        || format!("listening on http://{addr}"),
        &serde_json::json!({ "listening": format!("http://{addr}") }),
    );
    let served = axum::serve(listener, router(app.clone(), args.max_body))
        .with_graceful_shutdown(shutdown_signal())
        .await
        .map_err(|e| CliError::infrastructure("SERVE_FAILED", format!("the server stopped: {e}")));
    let _ = stop_tx.send(true);
    for task in [worker, detector].into_iter().flatten() {
        let _ = task.await;
    }
    store.close().await;
    served?;
    Ok(ExitCode::SUCCESS)
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}

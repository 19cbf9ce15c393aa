//! `autobiz trace show RUN_ID`: a run's persisted trace.

use std::process::ExitCode;

use autobiz_kernel::store::Store;
use autobiz_kernel::trace::{Cost, TraceRecord};

use crate::cli::{GlobalArgs, TraceCommand};
use crate::report::{CliError, Reporter, table};

pub async fn run(global: &GlobalArgs, cmd: TraceCommand, reporter: &Reporter) -> Result<ExitCode, CliError> {
    let TraceCommand::Show { run_id } = cmd;
    let ctx = super::tenant_context(global)?;
    let store = Store::open(&super::database_url(global)?).await?;
    let records = store.trace(&ctx, &run_id).await;
    store.close().await;
    let records = records?;
    if records.is_empty() {
        return Err(CliError::input(
            "RUN_NOT_FOUND",
            format!("tenant {} has no trace for run {run_id:?}", ctx.tenant()),
        ));
    }
    reporter.result(|| render(&run_id, &records), &records);
    Ok(ExitCode::SUCCESS)
}

fn render(run_id: &str, records: &[TraceRecord]) -> String {
    let mut t = table(&["seq", "kind", "tool", "decision", "error", "ms", "tokens", "cost (USD)"]);
    let mut total = Cost::default();
    for r in records {
        if r.kind != autobiz_kernel::trace::RecordKind::RunEnd {
            total.add(r.cost);
        }
        t.add_row(vec![
            r.seq.to_string(),
            serde_json::to_value(r.kind).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default(),
            r.tool.clone().unwrap_or_else(|| "-".into()),
            r.decision.as_ref().map_or("-", |d| if d.allowed { "allowed" } else { "denied" }).to_owned(),
            r.error.as_ref().map_or_else(|| "-".to_owned(), |e| e.code.clone()),
            format!("{:.1}", r.duration_us as f64 / 1000.0),
            r.cost.tokens.to_string(),
            usd(r.cost.micro_usd),
        ]);
    }
    let end = records.iter().rev().find_map(|r| r.termination);
    let status = end.map_or_else(|| "still running (no run end recorded)".to_owned(), |t| format!("ended: {t}"));
    format!(
        "run {run_id} (correlation {}): {status}; {} tokens, {} provider calls, {} USD\n{t}",
        records[0].correlation_id,
        total.tokens,
        total.provider_calls,
        usd(total.micro_usd)
    )
}

fn usd(micro: u64) -> String {
    format!("{}.{:06}", micro / 1_000_000, micro % 1_000_000)
}

//! Bounds (INV-03) and loop detection (P1-R04).
//!
//! A run may take at most `max_steps` steps, `max_tool_calls` tool calls,
//! `max_tokens` model tokens and `max_wall_time` of time. The first bound hit
//! ends the run with a [`Termination`] naming exactly that bound. The
//! [`LoopDetector`] ends a run that repeats itself: the same tool with the
//! same canonical arguments too often, or the same sequence of calls over and
//! over. Tools on the retry allowlist may repeat (deliberate retries).

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::time::Duration;

use tokio::time::Instant;

/// Limits of one run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Bounds {
    pub max_steps: u32,
    pub max_wall_time: Duration,
    pub max_tokens: u64,
    pub max_tool_calls: u32,
}

/// Why a run ended. Serialized as snake case (`max_tool_calls`), the
/// `termination_reason` of traces and transcripts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Termination {
    Completed,
    MaxSteps,
    MaxWallTime,
    MaxTokens,
    MaxToolCalls,
    LoopDetected,
    ToolTimeout,
    ToolFailed,
    ToolUnknown,
    SchemaInvalid,
    OutputSchemaInvalid,
    PermissionDenied,
    ApprovalRequired,
    TraceWriteFailed,
    /// A human denied the step's approval request.
    HitlDenied,
    /// Nobody decided the step's approval request in time.
    HitlTimeout,
    /// The model's reply was not a proposal at all (not JSON, no tool): the
    /// pinned model or prompt does not follow the agent protocol.
    AgentReplyInvalid,
    /// Neither LLM endpoint answered (`LLM_UNAVAILABLE`).
    LlmUnavailable,
    /// The LLM refused the request or answered garbage (`LLM_REJECTED`,
    /// `LLM_BAD_RESPONSE`, `LLM_CASSETTE_MISS`).
    LlmFailed,
}

impl Termination {
    pub fn as_str(self) -> &'static str {
        match self {
            Termination::Completed => "completed",
            Termination::MaxSteps => "max_steps",
            Termination::MaxWallTime => "max_wall_time",
            Termination::MaxTokens => "max_tokens",
            Termination::MaxToolCalls => "max_tool_calls",
            Termination::LoopDetected => "loop_detected",
            Termination::ToolTimeout => "tool_timeout",
            Termination::ToolFailed => "tool_failed",
            Termination::ToolUnknown => "tool_unknown",
            Termination::SchemaInvalid => "schema_invalid",
            Termination::OutputSchemaInvalid => "output_schema_invalid",
            Termination::PermissionDenied => "permission_denied",
            Termination::ApprovalRequired => "approval_required",
            Termination::TraceWriteFailed => "trace_write_failed",
            Termination::HitlDenied => "hitl_denied",
            Termination::HitlTimeout => "hitl_timeout",
            Termination::AgentReplyInvalid => "agent_reply_invalid",
            Termination::LlmUnavailable => "llm_unavailable",
            Termination::LlmFailed => "llm_failed",
        }
    }
}

impl fmt::Display for Termination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Counts one run's use of its bounds.
#[derive(Debug, Clone)]
pub struct BoundsEnforcer {
    bounds: Bounds,
    started: Instant,
    steps: u32,
    tool_calls: u32,
    tokens: u64,
}

/// What a run has used so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Usage {
    pub steps: u32,
    pub tool_calls: u32,
    pub tokens: u64,
    pub elapsed_ms: u64,
}

impl BoundsEnforcer {
    pub fn new(bounds: Bounds) -> Self {
        BoundsEnforcer { bounds, started: Instant::now(), steps: 0, tool_calls: 0, tokens: 0 }
    }

    /// The enforcer of a run resumed after `steps` steps and `tool_calls`
    /// calls. Wall time counts again from now: a run that waited for a
    /// human or for a restart did not spend that time working.
    pub fn resumed(bounds: Bounds, steps: u32, tool_calls: u32) -> Self {
        BoundsEnforcer { bounds, started: Instant::now(), steps, tool_calls, tokens: 0 }
    }

    pub fn bounds(&self) -> &Bounds {
        &self.bounds
    }

    fn wall_time(&self) -> Result<(), Termination> {
        if self.started.elapsed() >= self.bounds.max_wall_time { Err(Termination::MaxWallTime) } else { Ok(()) }
    }

    /// Count a step; refuse it past `max_steps` or the wall time.
    pub fn begin_step(&mut self) -> Result<(), Termination> {
        self.wall_time()?;
        if self.steps >= self.bounds.max_steps {
            return Err(Termination::MaxSteps);
        }
        self.steps += 1;
        Ok(())
    }

    /// Count a tool call; refuse it past `max_tool_calls` or the wall time.
    pub fn begin_tool_call(&mut self) -> Result<(), Termination> {
        self.wall_time()?;
        if self.tool_calls >= self.bounds.max_tool_calls {
            return Err(Termination::MaxToolCalls);
        }
        self.tool_calls += 1;
        Ok(())
    }

    /// Add the tokens a call used; past `max_tokens` the run ends.
    pub fn add_tokens(&mut self, tokens: u64) -> Result<(), Termination> {
        self.tokens = self.tokens.saturating_add(tokens);
        if self.tokens > self.bounds.max_tokens { Err(Termination::MaxTokens) } else { Ok(()) }
    }

    /// Time left before `max_wall_time`; a call may not outlive its run.
    pub fn remaining(&self) -> Duration {
        self.bounds.max_wall_time.saturating_sub(self.started.elapsed())
    }

    pub fn usage(&self) -> Usage {
        Usage {
            steps: self.steps,
            tool_calls: self.tool_calls,
            tokens: self.tokens,
            elapsed_ms: u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX),
        }
    }
}

/// Loop-detection thresholds.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LoopPolicy {
    /// More calls than this of one tool with the same canonical arguments is a loop.
    pub max_identical_calls: u32,
    /// A block of 2..=`max_period` calls repeated this many times in a row is a loop.
    pub max_sequence_repeats: u32,
    pub max_period: usize,
    /// Tools that may repeat (deliberate retries, polling).
    pub retry_allowlist: BTreeSet<String>,
}

impl Default for LoopPolicy {
    fn default() -> Self {
        LoopPolicy { max_identical_calls: 3, max_sequence_repeats: 3, max_period: 4, retry_allowlist: BTreeSet::new() }
    }
}

/// What the detector saw.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum LoopKind {
    /// The same call `count` times.
    IdenticalCall { tool: String, count: u32 },
    /// The last `period` calls repeated `repeats` times.
    RepeatedSequence { tools: Vec<String>, repeats: u32 },
}

/// Watches one run's calls for repetition.
#[derive(Debug, Clone, Default)]
pub struct LoopDetector {
    policy: LoopPolicy,
    /// (tool, argument hash) of every call, in order.
    history: Vec<(String, [u8; 32])>,
    counts: HashMap<(String, [u8; 32]), u32>,
}

impl LoopDetector {
    pub fn new(policy: LoopPolicy) -> Self {
        LoopDetector { policy, history: Vec::new(), counts: HashMap::new() }
    }

    /// Record a call (tool and the SHA-256 of its canonical arguments);
    /// `Some` when it makes the run a loop.
    pub fn observe(&mut self, tool: &str, args_hash: [u8; 32]) -> Option<LoopKind> {
        let key = (tool.to_owned(), args_hash);
        self.history.push(key.clone());
        let count = self.counts.entry(key).or_insert(0);
        *count += 1;
        let allowed = |t: &str| self.policy.retry_allowlist.contains(t);
        if *count > self.policy.max_identical_calls && !allowed(tool) {
            return Some(LoopKind::IdenticalCall { tool: tool.to_owned(), count: *count });
        }
        let repeats = self.policy.max_sequence_repeats as usize;
        for period in 2..=self.policy.max_period {
            let span = period * repeats;
            if repeats < 2 || self.history.len() < span {
                continue;
            }
            let tail = &self.history[self.history.len() - span..];
            let block = &tail[..period];
            // A block of one call repeated is the identical-call case.
            if block.iter().all(|c| c == &block[0]) {
                continue;
            }
            if tail.chunks(period).all(|chunk| chunk == block) && !block.iter().all(|(t, _)| allowed(t)) {
                return Some(LoopKind::RepeatedSequence {
                    tools: block.iter().map(|(t, _)| t.clone()).collect(),
                    repeats: self.policy.max_sequence_repeats,
                });
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bounds() -> Bounds {
        Bounds { max_steps: 2, max_wall_time: Duration::from_secs(10), max_tokens: 100, max_tool_calls: 3 }
    }

    #[tokio::test]
    async fn p1_t05_max_steps_ends_the_run_with_that_reason() {
        let mut b = BoundsEnforcer::new(bounds());
        b.begin_step().unwrap();
        b.begin_step().unwrap();
        assert_eq!(b.begin_step(), Err(Termination::MaxSteps));
    }

    #[tokio::test]
    async fn p1_t06_max_tool_calls_and_max_tokens_each_name_their_bound() {
        let mut b = BoundsEnforcer::new(bounds());
        for _ in 0..3 {
            b.begin_tool_call().unwrap();
        }
        assert_eq!(b.begin_tool_call(), Err(Termination::MaxToolCalls));
        let mut b = BoundsEnforcer::new(bounds());
        b.add_tokens(60).unwrap();
        b.add_tokens(40).unwrap();
        assert_eq!(b.add_tokens(1), Err(Termination::MaxTokens));
    }

    #[tokio::test(start_paused = true)]
    async fn p1_t07_max_wall_time_ends_the_run() {
        let mut b = BoundsEnforcer::new(bounds());
        b.begin_step().unwrap();
        tokio::time::advance(Duration::from_secs(4)).await;
        assert_eq!(b.remaining(), Duration::from_secs(6));
        tokio::time::advance(Duration::from_secs(6)).await;
        assert_eq!(b.begin_tool_call(), Err(Termination::MaxWallTime));
        assert_eq!(b.begin_step(), Err(Termination::MaxWallTime));
    }

    fn h(n: u8) -> [u8; 32] {
        [n; 32]
    }

    #[test]
    fn p1_t08_identical_calls_past_the_threshold_are_a_loop() {
        let mut d = LoopDetector::new(LoopPolicy::default());
        for _ in 0..3 {
            assert_eq!(d.observe("shopify.order.get", h(1)), None);
        }
        assert_eq!(
            d.observe("shopify.order.get", h(1)),
            Some(LoopKind::IdenticalCall { tool: "shopify.order.get".into(), count: 4 })
        );
    }

    #[test]
    fn p1_t08_same_tool_with_other_arguments_is_not_a_loop() {
        let mut d = LoopDetector::new(LoopPolicy::default());
        for n in 0..10 {
            assert_eq!(d.observe("shopify.order.get", h(n)), None);
        }
    }

    #[test]
    fn p1_t08_repeated_sequence_is_a_loop() {
        let mut d = LoopDetector::new(LoopPolicy { max_identical_calls: 10, ..LoopPolicy::default() });
        let seq = [("printful.order.get", h(1)), ("shopify.order.update", h(2))];
        let mut found = None;
        for i in 0..6 {
            let (t, a) = seq[i % 2];
            found = d.observe(t, a);
            if i < 5 {
                assert_eq!(found, None, "call {i}");
            }
        }
        assert_eq!(
            found,
            Some(LoopKind::RepeatedSequence {
                tools: vec!["printful.order.get".into(), "shopify.order.update".into()],
                repeats: 3
            })
        );
    }

    #[test]
    fn p1_t08_allowlisted_retries_may_repeat() {
        let mut policy = LoopPolicy::default();
        policy.retry_allowlist.insert("printful.order.get".into());
        let mut d = LoopDetector::new(policy);
        for _ in 0..20 {
            assert_eq!(d.observe("printful.order.get", h(1)), None);
        }
        // Not-allowlisted tools are still watched.
        for _ in 0..3 {
            assert_eq!(d.observe("stripe.refund.create", h(2)), None);
        }
        assert!(d.observe("stripe.refund.create", h(2)).is_some());
    }

    #[test]
    fn termination_reasons_serialize_as_their_names() {
        for t in [Termination::MaxSteps, Termination::LoopDetected, Termination::TraceWriteFailed] {
            assert_eq!(serde_json::to_value(t).unwrap(), serde_json::Value::String(t.as_str().into()));
        }
    }
}

//! One request's hold: settled, released, or closed for a stream that did not
//! finish.

use super::PipelineError;
use crate::actors::ActorError;
use crate::actors::TenantOp;
use crate::auth::PresentedKey;
use crate::hub::Hub;
use crate::providers::{Provider, UpstreamError};
use domain::tenant::{Attempt, TenantCommand};
use domain::{ChangedBy, Credits, RequestId, Usage};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Everything needed to settle or release one request's hold.
#[derive(Clone)]
pub(crate) struct Billing {
    pub(crate) hub: Arc<Hub>,
    pub(crate) key: PresentedKey,
    pub(crate) request_id: RequestId,
    pub(crate) prompt_bytes: u64,
    pub(crate) started: Instant,
    /// The most this request may cost: its hold plus what the tenant had left
    /// after placing it (as of admission). `None`: no mid-stream cutoff.
    pub(crate) spend_limit: Option<Credits>,
    /// The smallest output cap (per choice) the client named; `None`: none. Each
    /// attempt sends the upstream this, lowered to its model's cap (the hold
    /// covers the largest of those).
    pub(crate) requested_output_cap: Option<u32>,
}

impl Billing {
    async fn execute(&self, command: TenantCommand) -> Result<(), ActorError> {
        let op = TenantOp::Execute {
            auth: None,
            command,
            request_id: Some(self.request_id),
            actor: ChangedBy::Key {
                key_id: self.key.key_id,
            },
        };
        self.hub
            .call_tenant(self.key.tenant_id, op)
            .await
            .map(|_| ())
    }

    /// Charges `usage` at the rates of the attempt that produced it.
    pub(crate) async fn settle(
        &self,
        attempt: &Attempt,
        usage: Usage,
    ) -> Result<(), PipelineError> {
        self.execute(TenantCommand::SettleUsage {
            request_id: self.request_id,
            attempt: attempt.clone(),
            usage,
            upstream_latency_ms: self.started.elapsed().as_millis() as u64,
            at: self.hub.now(),
        })
        .await
        .map_err(|e| match e {
            // The only conflict a settlement meets: its hold is gone, released by
            // the sweeper after its time to live, or lost with a database crash
            // (see `store::Durability`). Not the client's doing; it may retry.
            e if e.is_conflict() => PipelineError::HoldLost(e),
            other => other.into(),
        })
    }

    pub(crate) async fn record_failure(
        &self,
        attempt: &Attempt,
        error: &UpstreamError,
        latency: Duration,
    ) {
        let status = match error {
            UpstreamError::Status { status, .. } => Some(*status),
            _ => None,
        };
        let command = TenantCommand::RecordFailedAttempt {
            request_id: self.request_id,
            attempt: attempt.clone(),
            status,
            reason: error.to_string(),
            latency_ms: latency.as_millis() as u64,
            at: self.hub.now(),
        };
        if let Err(e) = self.execute(command).await {
            tracing::warn!(request_id = %self.request_id, error = %e, "recording a failed attempt failed");
        }
    }

    /// Closes the books on a stream that did not finish. Whatever reached the
    /// client is charged (the provider's figures, but at least the text sent); a
    /// stream that failed before any text costs nothing.
    async fn close_unfinished(
        &self,
        attempt: &Attempt,
        usage: Option<Usage>,
        output_bytes: u64,
        failure: Option<&UpstreamError>,
    ) {
        match failure {
            Some(e) if usage.is_none() && output_bytes == 0 => {
                self.release(format!("upstream failed mid-stream: {e}"))
                    .await
            }
            _ => {
                if let Err(e) = self
                    .settle(
                        attempt,
                        partial_usage(usage, self.prompt_bytes, output_bytes),
                    )
                    .await
                {
                    tracing::warn!(request_id = %self.request_id, error = %e, "settling an unfinished stream failed");
                }
            }
        }
    }

    /// Ends a stream that did not finish, the same way for every wire protocol: a
    /// client that left (`failure` `None`) or an upstream that failed. Returns the
    /// failure as the client may see it (its secrets redacted), to send as the
    /// protocol's error frame.
    pub(crate) async fn end_unfinished(
        &self,
        attempt: &Attempt,
        provider: &Provider,
        usage: Option<Usage>,
        output_bytes: u64,
        failure: Option<UpstreamError>,
    ) -> Option<PipelineError> {
        match failure {
            None => {
                tracing::info!(request_id = %self.request_id, "client left mid-stream; settling what was generated");
                self.close_unfinished(attempt, usage, output_bytes, None)
                    .await;
                None
            }
            Some(e) => {
                let e = e.redacted(provider);
                self.close_unfinished(attempt, usage, output_bytes, Some(&e))
                    .await;
                Some(PipelineError::from(e))
            }
        }
    }

    /// Whether a stream that has generated `output_bytes` would cost more than the
    /// request may spend: the provider's figures so far where it gave them, at
    /// least the generated text's estimate.
    pub(crate) fn would_overspend(
        &self,
        attempt: &Attempt,
        reported: Option<&Usage>,
        output_bytes: u64,
    ) -> bool {
        let Some(limit) = self.spend_limit else {
            return false;
        };
        let running = partial_usage(reported.cloned(), self.prompt_bytes, output_bytes);
        attempt.rates.cost_of(&running) > limit
    }

    pub(crate) async fn release(&self, reason: String) {
        let command = TenantCommand::ReleaseHold {
            request_id: self.request_id,
            reason,
            at: self.hub.now(),
        };
        if let Err(e) = self.execute(command).await {
            // The hold stays until the sweeper releases it at its time to live.
            tracing::warn!(request_id = %self.request_id, error = %e, "releasing a hold failed");
        }
    }
}

/// What a stream that did not finish is charged: the provider's own figures where
/// it reported them (some report input at the start, output only at the end), but
/// never fewer output tokens than the text that already reached the client.
pub(crate) fn partial_usage(
    reported: Option<Usage>,
    prompt_bytes: u64,
    output_bytes: u64,
) -> Usage {
    let estimate = Usage::estimate(prompt_bytes, output_bytes);
    match reported {
        None => estimate,
        Some(mut usage) => {
            if estimate.output_tokens > usage.output_tokens {
                usage.output_tokens = estimate.output_tokens;
                usage.estimated = true;
            }
            usage
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unfinished_stream_is_charged_at_least_the_text_sent() {
        let reported = Usage {
            input_tokens: 20,
            output_tokens: 1,
            ..Usage::default()
        };
        let charged = partial_usage(Some(reported), 100, 400);
        assert_eq!(
            (
                charged.input_tokens,
                charged.output_tokens,
                charged.estimated
            ),
            (20, 100, true)
        );
        let reported = Usage {
            input_tokens: 20,
            output_tokens: 500,
            ..Usage::default()
        };
        assert_eq!(partial_usage(Some(reported), 100, 400), reported);
        assert_eq!(partial_usage(None, 8, 4), Usage::estimate(8, 4));
    }
}

//! The MetricsCollector actor: samples host metrics on a period, off the actor threads.
//!
//! sysinfo calls block, and a blocked arbiter delays heartbeats, so the sampling runs in a
//! one-thread `SyncArbiter` actor ([`HostSamplerActor`]) that owns a long-lived
//! [`HostSampler`]. The collector itself lives on the worker's arbiter: every `interval` it
//! requests a sample without waiting on it, keeps the latest one and pushes it to its
//! subscriber (the Worker) as [`HostSampled`]. It stops once nothing holds its address.

use std::path::PathBuf;
use std::time::Duration;

use actix::WeakRecipient;
use actix::prelude::*;
use cube_core::{HostMetrics, SharedClock};

use crate::host_metrics::HostSampler;

/// A new host sample, pushed to the collector's subscriber.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct HostSampled(pub HostMetrics);

/// Takes a sample now and returns it once the sampler thread is done.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "Result<HostMetrics, SampleError>")]
pub struct SampleNow;

/// Returns the latest sample, if any was taken yet.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "Option<HostMetrics>")]
pub struct GetLatestMetrics;

/// Failure to take a host sample.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("failed to sample host metrics: {reason}")]
pub struct SampleError {
    /// The sampler's error, or why it was unreachable.
    pub reason: String,
}

/// Settings of a [`MetricsCollector`].
#[derive(Debug, Clone)]
pub struct CollectorConfig {
    /// Time between two samples.
    pub interval: Duration,
    /// A path on the disk to report, such as `/` or the Docker data root.
    pub disk_path: PathBuf,
    /// Clock that stamps samples.
    pub clock: SharedClock,
}

/// Samples host metrics every `interval` and pushes them to its subscriber.
#[derive(Debug)]
pub struct MetricsCollector {
    config: CollectorConfig,
    subscriber: Option<WeakRecipient<HostSampled>>,
    sampler: Option<Addr<HostSamplerActor>>,
    latest: Option<HostMetrics>,
    sample_in_flight: bool,
}

impl MetricsCollector {
    /// Creates a collector that pushes each sample to `subscriber`.
    pub fn new(config: CollectorConfig, subscriber: Option<WeakRecipient<HostSampled>>) -> Self {
        Self {
            config,
            subscriber,
            sampler: None,
            latest: None,
            sample_in_flight: false,
        }
    }

    fn sampler(&self) -> Result<Addr<HostSamplerActor>, SampleError> {
        self.sampler.clone().ok_or_else(|| SampleError {
            reason: "the collector has not started".into(),
        })
    }

    /// Requests a sample unless one is already under way; the result updates `latest`.
    fn request_sample(&mut self, ctx: &mut Context<Self>) {
        if !ctx.connected() {
            log::debug!("metrics collector has no users left; stopping");
            ctx.stop();
            return;
        }
        if self.sample_in_flight {
            log::debug!("previous host sample still under way; skipping this period");
            return;
        }
        let Ok(sampler) = self.sampler() else {
            return;
        };
        self.sample_in_flight = true;
        ctx.spawn(
            sampler
                .send(TakeSample)
                .into_actor(self)
                .map(|result, act, _| {
                    act.sample_in_flight = false;
                    match flatten(result) {
                        Ok(metrics) => act.record(metrics),
                        Err(error) => log::warn!("{error}"),
                    }
                }),
        );
    }

    fn record(&mut self, metrics: HostMetrics) {
        if let Some(subscriber) = self.subscriber.as_ref().and_then(WeakRecipient::upgrade) {
            subscriber.do_send(HostSampled(metrics.clone()));
        }
        self.latest = Some(metrics);
    }
}

impl Actor for MetricsCollector {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let disk_path = self.config.disk_path.clone();
        let clock = self.config.clock.clone();
        self.sampler = Some(SyncArbiter::start(1, move || {
            HostSamplerActor::new(disk_path.clone(), clock.clone())
        }));
        self.request_sample(ctx);
        ctx.run_interval(self.config.interval, Self::request_sample);
    }
}

impl Handler<SampleNow> for MetricsCollector {
    type Result = ResponseActFuture<Self, Result<HostMetrics, SampleError>>;

    fn handle(&mut self, _: SampleNow, _: &mut Context<Self>) -> Self::Result {
        let sampler = match self.sampler() {
            Ok(sampler) => sampler,
            Err(error) => return Box::pin(fut::ready(Err(error))),
        };
        Box::pin(
            sampler
                .send(TakeSample)
                .into_actor(self)
                .map(|result, act, _| {
                    let metrics = flatten(result)?;
                    act.record(metrics.clone());
                    Ok(metrics)
                }),
        )
    }
}

impl Handler<GetLatestMetrics> for MetricsCollector {
    type Result = Option<HostMetrics>;

    fn handle(&mut self, _: GetLatestMetrics, _: &mut Context<Self>) -> Self::Result {
        self.latest.clone()
    }
}

fn flatten(
    result: Result<Result<HostMetrics, SampleError>, MailboxError>,
) -> Result<HostMetrics, SampleError> {
    result.map_err(|error| SampleError {
        reason: format!("sampler thread unreachable: {error}"),
    })?
}

// === impl HostSamplerActor ===

/// Takes one sample on the sampler thread.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "Result<HostMetrics, SampleError>")]
struct TakeSample;

/// Owns the [`HostSampler`] on a thread of its own, where blocking is harmless.
#[derive(Debug)]
pub struct HostSamplerActor {
    sampler: Result<HostSampler, String>,
}

impl HostSamplerActor {
    fn new(disk_path: PathBuf, clock: SharedClock) -> Self {
        let sampler = HostSampler::new(disk_path, clock).map_err(|error| {
            log::error!("host metrics unavailable: {error}");
            error.to_string()
        });
        Self { sampler }
    }
}

impl Actor for HostSamplerActor {
    type Context = SyncContext<Self>;
}

impl Handler<TakeSample> for HostSamplerActor {
    type Result = Result<HostMetrics, SampleError>;

    fn handle(&mut self, _: TakeSample, _: &mut SyncContext<Self>) -> Self::Result {
        match &mut self.sampler {
            Ok(sampler) => Ok(sampler.sample()),
            Err(reason) => Err(SampleError {
                reason: reason.clone(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use cube_core::clock::system_clock;

    use super::*;

    #[derive(Default)]
    struct Sink {
        samples: Vec<HostMetrics>,
    }

    impl Actor for Sink {
        type Context = Context<Self>;
    }

    impl Handler<HostSampled> for Sink {
        type Result = ();

        fn handle(&mut self, msg: HostSampled, _: &mut Context<Self>) {
            self.samples.push(msg.0);
        }
    }

    #[derive(Message)]
    #[rtype(result = "usize")]
    struct CountSamples;

    impl Handler<CountSamples> for Sink {
        type Result = usize;

        fn handle(&mut self, _: CountSamples, _: &mut Context<Self>) -> usize {
            self.samples.len()
        }
    }

    fn config(interval: Duration) -> CollectorConfig {
        CollectorConfig {
            interval,
            disk_path: "/".into(),
            clock: system_clock(),
        }
    }

    #[actix::test]
    async fn sample_now_returns_host_metrics() {
        let collector = MetricsCollector::new(config(Duration::from_secs(60)), None).start();
        let metrics = collector.send(SampleNow).await.unwrap().unwrap();
        assert!(metrics.cpu_count >= 1);
        assert!(metrics.memory_total.bytes() > 0);
        let latest = collector.send(GetLatestMetrics).await.unwrap();
        assert!(latest.is_some());
    }

    #[actix::test]
    async fn samples_reach_subscriber_on_period() {
        let sink = Sink::default().start();
        let subscriber = sink.downgrade().recipient();
        let _collector =
            MetricsCollector::new(config(Duration::from_millis(50)), Some(subscriber)).start();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            if sink.send(CountSamples).await.unwrap() >= 2 {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "fewer than 2 samples in 10 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

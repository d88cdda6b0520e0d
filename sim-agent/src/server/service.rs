//! The generated ttrpc service traits, implemented by handing every call to the
//! [`SimAgent`]'s [`AgentRpc`] methods (the same path in-process callers take).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use protobuf::well_known_types::empty::Empty;
use ttrpc::r#async::TtrpcContext;

use crate::protocols::{agent, agent_ttrpc, csi, health, health_ttrpc, types};
use crate::rpc::{AgentRpc, CallOpts, Method};
use crate::sim::SimAgent;

tokio::task_local! {
    /// The id of the server connection the current handler serves.
    pub(crate) static CONN_ID: u64;
}

/// Adapts a [`SimAgent`] to the generated service traits.
#[derive(Debug, Clone)]
pub(crate) struct Dispatch {
    pub agent: SimAgent,
}

fn opts(ctx: &TtrpcContext) -> CallOpts {
    let metadata: BTreeMap<String, Vec<String>> = ctx
        .metadata
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    CallOpts {
        timeout: (ctx.timeout_nano > 0).then(|| Duration::from_nanos(ctx.timeout_nano as u64)),
        metadata,
        conn: CONN_ID.try_with(|c| *c).ok(),
    }
}

macro_rules! impl_agent_service {
    ($(($snake:ident, $variant:ident, $svc:ident, $req:ty, $resp:ty)),* $(,)?) => {
        #[async_trait::async_trait]
        impl agent_ttrpc::AgentService for Dispatch {
            $(
                async fn $snake(&self, ctx: &TtrpcContext, req: $req) -> ttrpc::Result<$resp> {
                    AgentRpc::$snake(&self.agent, req, opts(ctx)).await.map_err(Into::into)
                }
            )*
        }
    };
}
crate::for_each_agent_service_rpc!(impl_agent_service);

#[async_trait::async_trait]
impl health_ttrpc::Health for Dispatch {
    async fn check(
        &self,
        ctx: &TtrpcContext,
        req: health::CheckRequest,
    ) -> ttrpc::Result<health::HealthCheckResponse> {
        AgentRpc::check(&self.agent, req, opts(ctx))
            .await
            .map_err(Into::into)
    }

    async fn version(
        &self,
        ctx: &TtrpcContext,
        req: health::CheckRequest,
    ) -> ttrpc::Result<health::VersionCheckResponse> {
        AgentRpc::version(&self.agent, req, opts(ctx))
            .await
            .map_err(Into::into)
    }
}

/// One unary method handler of a generated service, shareable with the task that runs it.
pub(crate) type Handler = Arc<dyn ttrpc::r#async::MethodHandler + Send + Sync>;

/// Every served method by service name, then method name.
pub(crate) type ServiceMap = BTreeMap<String, BTreeMap<String, Handler>>;

/// The registered services, as the generated `create_*` helpers build them, minus the
/// methods the agent's version does not have (an older agent answers them as unknown).
pub(crate) fn services(agent: &SimAgent) -> ServiceMap {
    let d = Arc::new(Dispatch {
        agent: agent.clone(),
    });
    let mut generated = agent_ttrpc::create_agent_service(d.clone());
    generated.extend(health_ttrpc::create_health(d));
    let version = agent.version();
    generated
        .into_iter()
        .map(|(name, svc)| {
            let methods = svc
                .methods
                .into_iter()
                .filter(|(m, _)| Method::from_wire_name(m).is_none_or(|m| version.serves(m)))
                .map(|(m, h)| (m, Handler::from(h)))
                .collect();
            (name, methods)
        })
        .collect()
}

#[allow(dead_code)]
fn _types(_: Empty, _: types::Interface, _: csi::VolumeStatsResponse, _: agent::OOMEvent) {}

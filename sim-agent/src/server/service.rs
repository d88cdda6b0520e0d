//! The generated ttrpc service traits, implemented by handing every call to the
//! [`SimAgent`]'s [`AgentRpc`] methods (the same path in-process callers take).
//!
//! The method table is built once per process and shared by every server: the agent a call is
//! for travels with the call (a task-local [`Call`]), not inside the handlers.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use protobuf::well_known_types::empty::Empty;
use ttrpc::r#async::TtrpcContext;

use crate::protocols::{agent, agent_ttrpc, csi, health, health_ttrpc, types};
use crate::rpc::{AgentRpc, CallOpts, Method};
use crate::sim::SimAgent;

/// What the current call is for: its agent and the server connection it arrived on.
#[derive(Debug, Clone)]
pub(crate) struct Call {
    pub agent: SimAgent,
    pub conn: u64,
}

tokio::task_local! {
    /// The call the current handler serves.
    pub(crate) static CALL: Call;
}

/// The agent of the current call. Every handler runs inside [`CALL`]'s scope (the server
/// puts it there); a handler reached another way answers INTERNAL rather than panicking.
fn agent() -> ttrpc::Result<SimAgent> {
    CALL.try_with(|c| c.agent.clone()).map_err(|_| {
        ttrpc::Error::RpcStatus(ttrpc::get_status(
            ttrpc::Code::INTERNAL,
            "a handler ran outside a server call",
        ))
    })
}

/// Adapts the generated service traits to the current call's [`SimAgent`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Dispatch;

fn opts(ctx: &TtrpcContext) -> CallOpts {
    let metadata: BTreeMap<String, Vec<String>> = ctx
        .metadata
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    CallOpts {
        timeout: (ctx.timeout_nano > 0).then(|| Duration::from_nanos(ctx.timeout_nano as u64)),
        metadata,
        conn: CALL.try_with(|c| c.conn).ok(),
    }
}

macro_rules! impl_agent_service {
    ($(($snake:ident, $variant:ident, $svc:ident, $req:ty, $resp:ty)),* $(,)?) => {
        #[async_trait::async_trait]
        impl agent_ttrpc::AgentService for Dispatch {
            $(
                async fn $snake(&self, ctx: &TtrpcContext, req: $req) -> ttrpc::Result<$resp> {
                    AgentRpc::$snake(&agent()?, req, opts(ctx)).await.map_err(Into::into)
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
        AgentRpc::check(&agent()?, req, opts(ctx))
            .await
            .map_err(Into::into)
    }

    async fn version(
        &self,
        ctx: &TtrpcContext,
        req: health::CheckRequest,
    ) -> ttrpc::Result<health::VersionCheckResponse> {
        AgentRpc::version(&agent()?, req, opts(ctx))
            .await
            .map_err(Into::into)
    }
}

/// One unary method handler of a generated service, shareable with the task that runs it.
pub(crate) type Handler = Arc<dyn ttrpc::r#async::MethodHandler + Send + Sync>;

/// Every method of every service by service name, then method name, with the agent RPC it
/// is (`None` for none that versions tell apart).
pub(crate) type ServiceMap = BTreeMap<String, BTreeMap<String, (Option<Method>, Handler)>>;

/// The registered services, as the generated `create_*` helpers build them. An agent whose
/// version lacks a method answers it as unknown; the server checks that per call.
pub(crate) fn services() -> &'static ServiceMap {
    static SERVICES: std::sync::LazyLock<ServiceMap> = std::sync::LazyLock::new(|| {
        let d = Arc::new(Dispatch);
        let mut generated = agent_ttrpc::create_agent_service(d.clone());
        generated.extend(health_ttrpc::create_health(d));
        generated
            .into_iter()
            .map(|(name, svc)| {
                let methods = svc
                    .methods
                    .into_iter()
                    .map(|(m, h)| {
                        let rpc = Method::from_wire_name(&m);
                        (m, (rpc, Handler::from(h)))
                    })
                    .collect();
                (name, methods)
            })
            .collect()
    });
    &SERVICES
}

#[allow(dead_code)]
fn _types(_: Empty, _: types::Interface, _: csi::VolumeStatsResponse, _: agent::OOMEvent) {}

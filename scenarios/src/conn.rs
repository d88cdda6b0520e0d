//! The host's connection to the guest's agent, with the runtimes' client semantics: one
//! connection for the sandbox's life, never re-dialled (neither the Go shim nor runtime-rs
//! reconnects; `fault-truth/rs-d-drop`, `go-h-drop-echo`).
//!
//! [`Connection`] wraps whatever carries the calls (the in-process [`SimAgent`] or a
//! [`sim_agent::RemoteAgent`] on the VM's socket) and closes for good when
//!
//! - a call fails because the connection went (a `drop` fault, a guest that died or whose
//!   agent restarted: [`AgentError::ConnectionClosed`]; a transport failure), or
//! - the guest died, its agent restarted or ended its service (DestroySandbox), seen before a
//!   call is sent (a closed socket).
//!
//! Once closed, every call in flight fails at once and every later call fails locally: it
//! never reaches the agent, so the guest's record does not show it, in-process as on the wire.
//! The errors are the runtime's own words ([`ClosedWords`]).

use std::sync::Arc;

use protobuf::well_known_types::empty::Empty;
use sim_agent::protocols::{agent, csi, health, types};
use sim_agent::{AgentError, AgentRpc, CallOpts, HostState, SimAgent};

/// What a runtime's agent client answers once its connection is gone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClosedWords {
    /// A call that was in flight when the connection closed.
    pub in_flight: AgentError,
    /// A call made after it closed (failed before it was sent).
    pub later: AgentError,
}

impl ClosedWords {
    /// The Go shim's ttrpc client: `ttrpc: closed` (`ErrClosed`) for both
    /// (`fault-truth/go-h-drop-echo`: "Wait for process failed ... ttrpc: closed").
    pub fn go() -> Self {
        ClosedWords {
            in_flight: AgentError::ConnectionClosed,
            later: AgentError::ConnectionClosed,
        }
    }

    /// runtime-rs's ttrpc-rust client: a call in flight reads the end of the socket
    /// (`socket err: early eof`), a later one finds the stream closed
    /// (`ttrpc err: local stream closed`) (`fault-truth/rs-d-drop`, the shim's warnings).
    pub fn rs() -> Self {
        ClosedWords {
            in_flight: AgentError::Closed("socket err: early eof".into()),
            later: AgentError::Closed("ttrpc err: local stream closed".into()),
        }
    }
}

#[derive(Debug)]
struct State {
    closed: tokio::sync::watch::Sender<bool>,
    /// The agent's restart count when the connection was made.
    epoch: u64,
    words: ClosedWords,
}

/// One agent connection of a host runtime; see the [module docs](self).
#[derive(Debug, Clone)]
pub struct Connection<A> {
    inner: A,
    guest: SimAgent,
    state: Arc<State>,
}

impl<A: AgentRpc> Connection<A> {
    /// A connection over `inner` to `guest`'s agent, failing in `words` once closed.
    pub fn new(inner: A, guest: SimAgent, words: ClosedWords) -> Self {
        let epoch = guest.epoch();
        Connection {
            inner,
            guest,
            state: Arc::new(State {
                closed: tokio::sync::watch::Sender::new(false),
                epoch,
                words,
            }),
        }
    }

    /// Whether the connection is closed.
    pub fn is_closed(&self) -> bool {
        *self.state.closed.borrow()
    }

    /// Closes the connection: calls in flight fail, later calls fail locally.
    pub fn close(&self) {
        self.state.closed.send_replace(true);
    }

    /// Whether the other end is gone: closed, or an agent that died, restarted since, or
    /// ended its service after DestroySandbox (its socket is gone).
    fn lost(&self) -> bool {
        self.is_closed()
            || self.guest.is_dead()
            || self.guest.is_terminated()
            || self.guest.epoch() != self.state.epoch
    }

    async fn call<R>(
        &self,
        call: impl std::future::Future<Output = sim_agent::Result<R>>,
    ) -> sim_agent::Result<R> {
        if self.lost() {
            self.close();
            return Err(self.state.words.later.clone());
        }
        let mut closed = self.state.closed.subscribe();
        tokio::select! {
            biased;
            r = call => match r {
                // A ttrpc client whose socket failed is as closed (the wire's "reserve
                // channel capacity failed: channel closed").
                Err(AgentError::ConnectionClosed | AgentError::Closed(_) | AgentError::Transport(_)) => {
                    self.close();
                    Err(self.state.words.in_flight.clone())
                }
                r => r,
            },
            _ = closed.wait_for(|c| *c) => Err(self.state.words.in_flight.clone()),
        }
    }
}

macro_rules! impl_connection_rpc {
    ($(($snake:ident, $variant:ident, $svc:ident, $req:ty, $resp:ty)),* $(,)?) => {
        #[async_trait::async_trait]
        impl<A: AgentRpc> AgentRpc for Connection<A> {
            fn host(&self) -> &HostState {
                self.inner.host()
            }
            $(
                async fn $snake(&self, req: $req, opts: CallOpts) -> sim_agent::Result<$resp> {
                    self.call(self.inner.$snake(req, opts)).await
                }
            )*
        }
    };
}
sim_agent::for_each_rpc!(impl_connection_rpc);

#[allow(dead_code)]
fn _types(_: Empty, _: types::Interface, _: csi::VolumeStatsResponse, _: health::CheckRequest) {}

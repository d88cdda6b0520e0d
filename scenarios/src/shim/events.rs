//! The events service a shim publishes to (`containerd.services.events.ttrpc.v1.Events`,
//! `Forward`), served where containerd serves it: the socket in the shim's `TTRPC_ADDRESS`.
//!
//! A shim dials it on its first event (containerd 1.6's and the Kata Go shim's publisher) or
//! at start-up (runtime-rs, which dies without it), so it is bound before the shim starts.
//! Event type URLs carry no `type.googleapis.com/` prefix (`containerd.events.TaskExit`), so
//! payloads are matched by name here rather than through `Any::unpack`.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use containerd_shim_protos::api;
use containerd_shim_protos::events::task::{TaskExit, TaskOOM};
use containerd_shim_protos::protobuf::Message;
use containerd_shim_protos::shim::events::ForwardRequest;
use containerd_shim_protos::shim_async::{Events, create_events};
use containerd_shim_protos::ttrpc::r#async::TtrpcContext;
use tokio::sync::watch;

/// One event a shim published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Its topic (`/tasks/exit`).
    pub topic: String,
    /// The namespace it was published in.
    pub namespace: String,
    /// Its payload's type (`containerd.events.TaskExit`).
    pub type_name: String,
    /// What the payload says, for the events the driver reads.
    pub detail: EventDetail,
}

/// The payload of an event, where the driver reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventDetail {
    /// `TaskExit`: a process of a container exited.
    Exit {
        /// The container.
        container_id: String,
        /// The process (the container's id for its init process).
        id: String,
        /// Its exit status.
        exit_status: u32,
    },
    /// `TaskOOM`: the container hit its memory limit.
    Oom {
        /// The container.
        container_id: String,
    },
    /// Any other event.
    Other,
}

fn detail(type_name: &str, value: &[u8]) -> EventDetail {
    let name = type_name.rsplit('/').next().unwrap_or(type_name);
    match name {
        "containerd.events.TaskExit" => TaskExit::parse_from_bytes(value)
            .map(|e| EventDetail::Exit {
                container_id: e.container_id,
                id: e.id,
                exit_status: e.exit_status,
            })
            .unwrap_or(EventDetail::Other),
        "containerd.events.TaskOOM" => TaskOOM::parse_from_bytes(value)
            .map(|e| EventDetail::Oom {
                container_id: e.container_id,
            })
            .unwrap_or(EventDetail::Other),
        _ => EventDetail::Other,
    }
}

/// What the service received, and a watch that moves with every event.
#[derive(Debug, Clone)]
pub struct EventLog {
    events: Arc<Mutex<Vec<Event>>>,
    count: watch::Sender<usize>,
}

impl EventLog {
    fn new() -> Self {
        EventLog {
            events: Arc::default(),
            count: watch::channel(0).0,
        }
    }

    /// Every event so far, in order.
    pub fn events(&self) -> Vec<Event> {
        self.events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// A receiver whose value is the number of events received.
    pub fn subscribe(&self) -> watch::Receiver<usize> {
        self.count.subscribe()
    }

    fn push(&self, e: Event) {
        let n = {
            let mut events = self.events.lock().unwrap_or_else(|p| p.into_inner());
            events.push(e);
            events.len()
        };
        self.count.send_replace(n);
    }
}

struct Sink(EventLog);

#[async_trait::async_trait]
impl Events for Sink {
    async fn forward(&self, _ctx: &TtrpcContext, req: ForwardRequest) -> ttrpc::Result<api::Empty> {
        let envelope = req.envelope();
        let any = envelope.event();
        self.0.push(Event {
            topic: envelope.topic.clone(),
            namespace: envelope.namespace.clone(),
            type_name: any.type_url.clone(),
            detail: detail(&any.type_url, &any.value),
        });
        Ok(api::Empty::new())
    }
}

/// The events service on its socket; dropping it (or [`EventServer::shutdown`]) stops it.
pub struct EventServer {
    server: ttrpc::r#async::Server,
    path: PathBuf,
    log: EventLog,
}

impl std::fmt::Debug for EventServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventServer")
            .field("path", &self.path)
            .finish()
    }
}

impl EventServer {
    /// Serves the events service on a new socket at `path` (which must not exist).
    pub async fn bind(path: &Path) -> std::io::Result<Self> {
        let address = format!("unix://{}", path.display());
        let log = EventLog::new();
        let mut server = ttrpc::r#async::Server::new()
            .bind(&address)
            .map_err(|e| std::io::Error::other(format!("binding {address}: {e}")))?
            .register_service(create_events(Arc::new(Sink(log.clone()))));
        server
            .start()
            .await
            .map_err(|e| std::io::Error::other(format!("serving {address}: {e}")))?;
        Ok(EventServer {
            server,
            path: path.to_path_buf(),
            log,
        })
    }

    /// The socket's path: the shim's `TTRPC_ADDRESS` (a plain path: runtime-rs takes no
    /// `unix://`).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What it received.
    pub fn log(&self) -> &EventLog {
        &self.log
    }

    /// Stops serving and removes the socket.
    pub async fn shutdown(mut self) {
        let _ = self.server.shutdown().await;
        let _ = std::fs::remove_file(&self.path);
    }
}

//! The service table: what exists, what kind it is, and where its backend lives. Shared by the
//! stream handlers (to dial) and the control channels (to push the relay-facing part).

use std::collections::HashMap;
use std::sync::Arc;

use sat_proto::control::{ConfigPush, ServiceInfo};
use sat_proto::stream::StreamKind;

use crate::config::ServiceConfig;

#[derive(Debug, Clone)]
pub struct Service {
    pub name: String,
    pub kind: StreamKind,
    pub backend: String,
    pub hostnames: Vec<String>,
}

#[derive(Debug, Default)]
pub struct ServiceTable {
    pub generation: u64,
    by_name: HashMap<String, Arc<Service>>,
}

impl ServiceTable {
    pub fn new(generation: u64, services: &[ServiceConfig]) -> Self {
        let by_name = services
            .iter()
            .map(|s| {
                let svc = Service {
                    name: s.name.clone(),
                    kind: s.kind,
                    backend: s.backend.clone(),
                    hostnames: s.hostnames.clone(),
                };
                (s.name.clone(), Arc::new(svc))
            })
            .collect();
        Self {
            generation,
            by_name,
        }
    }

    pub fn get(&self, name: &str) -> Option<Arc<Service>> {
        self.by_name.get(name).cloned()
    }

    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    /// What relays get: names, kinds and host names; never backend addresses.
    pub fn push(&self) -> ConfigPush {
        let mut services: Vec<ServiceInfo> = self
            .by_name
            .values()
            .map(|s| ServiceInfo {
                name: s.name.clone(),
                kind: s.kind,
                hostnames: s.hostnames.clone(),
            })
            .collect();
        services.sort_by(|a, b| a.name.cmp(&b.name));
        ConfigPush {
            generation: self.generation,
            services,
        }
    }
}

//! The service table: what exists, what kind it is, who may use it and where its backend
//! lives. Stream handlers read it to dial; pushes carry its relay-facing part.

use std::collections::HashMap;
use std::sync::Arc;

use sat_proto::control::{Access, ServiceInfo};
use sat_proto::stream::StreamKind;

use crate::store::ServiceRecord;

#[derive(Debug, Clone)]
pub struct Service {
    pub name: String,
    pub kind: StreamKind,
    pub backend: String,
    pub hostnames: Vec<String>,
    pub access: Access,
}

#[derive(Debug, Default)]
pub struct ServiceTable {
    by_name: HashMap<String, Arc<Service>>,
}

impl ServiceTable {
    pub fn from_records(records: &[ServiceRecord]) -> Self {
        let by_name = records
            .iter()
            .map(|s| {
                let svc = Service {
                    name: s.name.clone(),
                    kind: s.kind,
                    backend: s.backend.clone(),
                    hostnames: s.hostnames.clone(),
                    access: s.access,
                };
                (s.name.clone(), Arc::new(svc))
            })
            .collect();
        Self { by_name }
    }

    pub fn get(&self, name: &str) -> Option<Arc<Service>> {
        self.by_name.get(name).cloned()
    }

    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    /// What relays get: names, kinds, host names and access rules; never backend addresses.
    pub fn infos(&self) -> Vec<ServiceInfo> {
        let mut services: Vec<ServiceInfo> = self
            .by_name
            .values()
            .map(|s| ServiceInfo {
                name: s.name.clone(),
                kind: s.kind,
                hostnames: s.hostnames.clone(),
                access: s.access,
            })
            .collect();
        services.sort_by(|a, b| a.name.cmp(&b.name));
        services
    }
}

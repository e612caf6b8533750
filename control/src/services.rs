//! The service table: what exists, what kind it is, who may use it and where its backend
//! lives. Stream handlers read it to dial; pushes carry its relay-facing part.

use std::collections::HashMap;
use std::sync::Arc;

use sat_proto::control::{Access, ServiceInfo};
use sat_proto::stream::StreamKind;

use tracing::info;

use crate::store::{ServiceRecord, Store};
use crate::{ControlConfig, ControlError};

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

/// On the very first start, `[[service]]` entries of the config become the store's services.
/// Later starts leave the store alone: from then on services are managed with `sat admin`.
pub(crate) async fn seed(store: &Store, config: &ControlConfig) -> Result<(), ControlError> {
    if store.meta("seeded").await?.is_some() {
        if !config.services.is_empty() {
            info!("[[service]] entries in the config were seeded on first start; the store is authoritative now (use `sat admin services`)");
        }
        return Ok(());
    }
    let now = sat_proto::clock::unix_millis();
    for s in &config.services {
        let record = ServiceRecord {
            name: s.name.clone(),
            kind: s.kind,
            backend: s.backend.clone(),
            hostnames: s.hostnames.clone(),
            access: s.access,
            created_at: now,
        };
        store.insert_service(&record).await?;
    }
    store.set_meta("seeded", &now.to_string()).await?;
    info!(
        services = config.services.len(),
        "seeded services from the config"
    );
    Ok(())
}

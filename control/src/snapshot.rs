//! The config every relay runs, as published: built from the store (services, relays,
//! signing keys, revocations) and the registry (which relays are up). The publisher
//! (`publish`) decides when; this is what.

use sat_proto::access::VerifyKey;
use sat_proto::clock;
use sat_proto::control::{ConfigPush, RelayInfo, RelayState, RoutingTable};
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::registry::{Health, Registry};
use crate::services::ServiceTable;
use crate::store::{RelayAdminState, RelayRecord, ServiceRecord, Store, StoreError};

/// What the control channels push and the stream handlers dial by.
#[derive(Debug)]
pub struct Snapshot {
    pub services: ServiceTable,
    pub push: ConfigPush,
}

/// The store's part of a snapshot, reloaded only when something in the store changed.
pub(crate) struct Sources {
    pub(crate) services: Vec<ServiceRecord>,
    relays: Vec<RelayRecord>,
    keys: Vec<VerifyKey>,
    revoked: Vec<String>,
}

impl Sources {
    pub(crate) async fn load(store: &Store, keys: Vec<VerifyKey>) -> Result<Self, StoreError> {
        Ok(Self {
            services: store.services().await?,
            relays: store.relays().await?,
            keys,
            revoked: store.revoked_access_tokens(clock::unix_millis()).await?,
        })
    }

    pub(crate) fn snapshot(
        &self,
        generation: u64,
        relays: Vec<RelayInfo>,
        routing: RoutingTable,
    ) -> Snapshot {
        let services = ServiceTable::from_records(&self.services);
        let push = ConfigPush {
            generation,
            services: services.infos(),
            relays,
            access_keys: self.keys.clone(),
            revoked_tokens: self.revoked.clone(),
            routing,
        };
        Snapshot { services, push }
    }

    /// Every relay that is not revoked, with its state as of now.
    pub(crate) fn relays(&self, registry: &Registry) -> Vec<RelayInfo> {
        let now = Instant::now();
        self.relays
            .iter()
            .filter(|r| r.state != RelayAdminState::Revoked)
            .map(|r| {
                let live = registry.view(&r.name, now);
                let health = live.as_ref().map_or(Health::Down, |l| l.health);
                let state = match (r.state, health) {
                    (RelayAdminState::Drained, _) | (_, Health::Draining) => RelayState::Draining,
                    (_, Health::Up) => RelayState::Up,
                    (_, Health::Down) => RelayState::Down,
                };
                RelayInfo {
                    name: r.name.clone(),
                    region: r.region.clone(),
                    state,
                    addresses: live
                        .as_ref()
                        .map_or_else(|| r.addresses.clone(), |l| l.addresses.clone()),
                    location: live.as_ref().and_then(|l| l.location).or(r
                        .location
                        .map(|(lat, lon)| sat_proto::control::Location { lat, lon })),
                    rtt_us: live.as_ref().and_then(|l| l.rtt_us).unwrap_or(0),
                    load: live.as_ref().and_then(|l| l.load).unwrap_or(0.0),
                    latency_url: live.and_then(|l| l.latency_url),
                }
            })
            .collect()
    }
}

/// A request to publish what the store holds now; answered with the generation that
/// includes it.
pub(crate) type PublishRequest = oneshot::Sender<u64>;

//! The latency model: how long a round trip between two places should take, for ranking
//! relays before anything has been measured. It is deliberately crude, a straight line on
//! the globe turned into milliseconds; a measured round trip always replaces it.
//!
//! ```text
//! estimated RTT = FIXED_RTT + 2 × great-circle distance × PATH_STRETCH / FIBRE_KM_PER_MS
//! ```
//!
//! Where the constants come from:
//!
//! - [`FIBRE_KM_PER_MS`]: light in single-mode fibre travels at c divided by the glass's group
//!   index, about 1.468 at 1550 nm (Corning's SMF-28 data sheet gives 1.4682), which is
//!   204 km per millisecond. Rounded down to 200.
//! - [`PATH_STRETCH`]: cables follow coasts, roads and sea floors, and routes go through the
//!   exchange points that peering dictates, not along the great circle. Studies of real paths
//!   (Singla et al., "The Internet at the Speed of Light", HotNets 2014; Bozkurt et al., "Why
//!   Is the Internet so Slow?!", PAM 2017) find round trips of two to three times the
//!   speed-of-light-in-vacuum bound; the fibre itself accounts for 1.47 of that, so the rest is
//!   a stretch of about 1.5 to 2. We take 1.5, the low end, because relays sit in well-connected
//!   data centres, and the client's own last mile is in [`FIXED_RTT`].
//! - [`FIXED_RTT`]: what distance does not explain: the access network (a few ms on fibre and
//!   cable, more on DSL, Wi-Fi and mobile), routers' queues and the hosts' stacks.
//!
//! The model errs long on oceanic routes, whose cables run nearly straight (London to New York
//! comes out at 89 ms; about 70-75 ms is what is usually seen), and short on regions with poor
//! peering. That is good enough to put the right continent first until probes arrive.

use std::time::Duration;

use crate::Location;

/// Mean radius of the Earth (IUGG), in km. The haversine formula treats the Earth as a sphere,
/// which is within 0.5% of the ellipsoid's distances: far below the model's other errors.
pub const EARTH_RADIUS_KM: f64 = 6371.0088;

/// One-way distance light covers in fibre per millisecond.
pub const FIBRE_KM_PER_MS: f64 = 200.0;

/// How much longer the path data takes is than the great circle.
pub const PATH_STRETCH: f64 = 1.5;

/// The part of a round trip that does not grow with distance.
pub const FIXED_RTT: Duration = Duration::from_millis(5);

/// Great-circle distance between two points, in km (the haversine formula, which stays
/// accurate for the short distances where the spherical law of cosines loses precision).
pub fn distance_km(a: Location, b: Location) -> f64 {
    let (lat1, lat2) = (a.lat.to_radians(), b.lat.to_radians());
    let d_lat = (b.lat - a.lat).to_radians();
    let d_lon = (b.lon - a.lon).to_radians();
    let h = (d_lat / 2.0).sin().powi(2) + lat1.cos() * lat2.cos() * (d_lon / 2.0).sin().powi(2);
    // Rounding can push h a hair above 1 for antipodal points, where asin would give NaN.
    // (`clamp`, unlike `min`, keeps a NaN from NaN coordinates a NaN rather than the far side
    // of the world.)
    2.0 * EARTH_RADIUS_KM * h.sqrt().clamp(0.0, 1.0).asin()
}

/// The estimated round trip for a path of `km` along the great circle.
pub fn rtt_for_distance(km: f64) -> Duration {
    // `from_secs_f64` panics on NaN and on huge values. A NaN (from NaN coordinates) counts
    // as zero, and nothing on Earth is further than half the circumference.
    let km = if km.is_nan() {
        0.0
    } else {
        km.clamp(0.0, MAX_DISTANCE_KM)
    };
    let ms = 2.0 * km * PATH_STRETCH / FIBRE_KM_PER_MS;
    FIXED_RTT + Duration::from_secs_f64(ms / 1000.0)
}

/// Half the Earth's circumference: the furthest apart two places can be.
const MAX_DISTANCE_KM: f64 = std::f64::consts::PI * EARTH_RADIUS_KM;

/// The estimated round trip between two places.
pub fn estimated_rtt(a: Location, b: Location) -> Duration {
    rtt_for_distance(distance_km(a, b))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LONDON: Location = Location {
        lat: 51.5074,
        lon: -0.1278,
    };
    const NEW_YORK: Location = Location {
        lat: 40.7128,
        lon: -74.0060,
    };
    const SYDNEY: Location = Location {
        lat: -33.8688,
        lon: 151.2093,
    };

    fn close(got: f64, want: f64, tolerance: f64) -> bool {
        (got - want).abs() <= tolerance
    }

    #[test]
    fn known_distances() {
        // Published great-circle distances, to within a few km (the sphere vs the ellipsoid).
        let london_new_york = distance_km(LONDON, NEW_YORK);
        assert!(close(london_new_york, 5570.0, 15.0), "{london_new_york}");
        let london_sydney = distance_km(LONDON, SYDNEY);
        assert!(close(london_sydney, 16_990.0, 50.0), "{london_sydney}");
        assert_eq!(distance_km(LONDON, LONDON), 0.0);
    }

    #[test]
    fn distance_is_symmetric_and_bounded() {
        assert!(close(
            distance_km(LONDON, SYDNEY),
            distance_km(SYDNEY, LONDON),
            1e-9
        ));
        // Antipodes: half the circumference, and no NaN from rounding.
        let antipodes = distance_km(
            Location { lat: 0.0, lon: 0.0 },
            Location {
                lat: 0.0,
                lon: 180.0,
            },
        );
        assert!(close(antipodes, MAX_DISTANCE_KM, 1e-6));
        // Across the antimeridian is the short way round.
        let across = distance_km(
            Location {
                lat: 0.0,
                lon: 179.5,
            },
            Location {
                lat: 0.0,
                lon: -179.5,
            },
        );
        assert!(close(across, 111.2, 0.5), "{across}");
    }

    #[test]
    fn estimate_is_fixed_part_plus_stretched_fibre_time() {
        assert_eq!(rtt_for_distance(0.0), FIXED_RTT);
        // 1000 km: 2 × 1000 × 1.5 / 200 = 15 ms, plus 5.
        assert_eq!(rtt_for_distance(1000.0), Duration::from_millis(20));
        let transatlantic = estimated_rtt(LONDON, NEW_YORK);
        assert!(
            (Duration::from_millis(85)..Duration::from_millis(92)).contains(&transatlantic),
            "{transatlantic:?}"
        );
        assert!(estimated_rtt(LONDON, SYDNEY) > transatlantic);
    }

    #[test]
    fn bad_input_estimates_the_fixed_part() {
        assert_eq!(rtt_for_distance(f64::NAN), FIXED_RTT);
        assert_eq!(rtt_for_distance(-5.0), FIXED_RTT);
        assert_eq!(rtt_for_distance(f64::INFINITY), rtt_for_distance(1e9));
        let nowhere = Location {
            lat: f64::NAN,
            lon: 0.0,
        };
        assert!(distance_km(nowhere, LONDON).is_nan());
        assert_eq!(estimated_rtt(nowhere, LONDON), FIXED_RTT);
    }
}

/// A point on Earth, in degrees (WGS 84): latitude north positive, longitude east positive.
///
/// It is geo's own, not the wire protocol's: callers convert whatever their source says (a
/// relay's configured place, a pushed relay map) into this, so that a change to the wire
/// format never reaches the routing rules.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Location {
    pub lat: f64,
    pub lon: f64,
}

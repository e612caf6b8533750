//! The control-channel decoder fed arbitrary bytes in arbitrary pieces: no panic, and after an
//! error nothing more is read (the channel is closed in real life).
#![no_main]

use libfuzzer_sys::fuzz_target;
use sat_proto::control::FrameDecoder;

fuzz_target!(|data: &[u8]| {
    let mut decoder = FrameDecoder::new();
    // The first byte picks the piece size, so reads split at every possible place.
    let (step, rest) = match data.split_first() {
        Some((s, rest)) => ((*s as usize % 64) + 1, rest),
        None => return,
    };
    for piece in rest.chunks(step) {
        decoder.push(piece);
        loop {
            match decoder.next_frame() {
                Ok(Some(_)) => continue,
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
});

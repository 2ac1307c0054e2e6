//! Any byte string, read as a captured frame (with and without a VNI for frames outside
//! VXLAN) and as a VXLAN datagram's payload: the parser answers a frame or an error, never a
//! panic. When the frame is VXLAN, rewriting its VNI must leave a frame that reads back as the
//! same packet with the new VNI.

#![no_main]

use flowgate_wire::{parse_frame, parse_vxlan, set_vni};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for default_vni in [None, Some(7)] {
        let Ok(frame) = parse_frame(data, default_vni) else {
            continue;
        };
        if let Some(vxlan) = frame.vxlan {
            let mut copy = data.to_vec();
            set_vni(&mut copy, &vxlan, 0x00ab_cdef);
            let again = parse_frame(&copy, default_vni).expect("a rewritten frame still parses");
            assert_eq!(again.packet.src_vni, 0x00ab_cdef);
            assert_eq!(
                (again.packet.src, again.packet.dst, again.packet.proto, again.packet.ports),
                (frame.packet.src, frame.packet.dst, frame.packet.proto, frame.packet.ports)
            );
        }
    }
    let _ = parse_vxlan(data);
});

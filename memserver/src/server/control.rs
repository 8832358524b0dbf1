//! The operator's control port: `FromControl` requests on the
//! description's `control_req` ring, one `ToControl` answer each on
//! `control_resp`. Who writes the requests is the operator's console: on
//! the host platform the launcher (`tools demo --set-tunable`, `tools
//! tunable`), on seL4 and the bare platform the console PD, which owns the
//! UART (`console/`). It is trusted with the tunables, not with the ring:
//! a malformed request is answered `Refused` and changes nothing, a ring
//! peer that breaks the protocol is counted and left alone.

use super::Server;
use memserver_api::{self as api, FromControl, RefuseReason, SLOT_SIZE, ToControl};
use pd_ring::{Consumer, Misbehaviour, Producer, RingError};

/// The memory server's ends of the control rings.
#[derive(Debug)]
pub struct ControlPort<'a> {
    /// Operator -> server.
    pub req: Consumer<'a>,
    /// Server -> operator.
    pub resp: Producer<'a>,
    /// Illegal ring index moves or slot lengths seen from the operator's
    /// side.
    pub misbehaviour: u64,
}

impl<'a> ControlPort<'a> {
    /// The port over its two rings.
    pub fn new(req: Consumer<'a>, resp: Producer<'a>) -> Self {
        ControlPort {
            req,
            resp,
            misbehaviour: 0,
        }
    }
}

impl Server<'_, '_> {
    /// Answer every control request that has room for its answer, in
    /// order; `seen` is shown each answer (the PD logs them). A request
    /// whose answer finds the response ring full stays in its ring until
    /// the next call. Telling the operator is the PD's part: it acks the
    /// launcher's `<irq>` (host platform) or notifies the console PD.
    pub fn serve_control(&mut self, port: &mut ControlPort<'_>, seen: &mut dyn FnMut(&ToControl)) {
        let mut buf = [0u8; SLOT_SIZE];
        loop {
            match port.resp.free_slots() {
                Ok(0) => break,
                Ok(_) => {}
                Err(_) => {
                    port.misbehaviour += 1;
                    break;
                }
            }
            let msg = match port.req.pop(&mut buf) {
                Ok(Some(n)) => api::decode::<FromControl>(&buf[..n]),
                Ok(None) => {
                    port.req.request_signal();
                    match port.req.is_empty() {
                        Ok(false) => continue,
                        Ok(true) => break,
                        Err(_) => {
                            port.misbehaviour += 1;
                            break;
                        }
                    }
                }
                Err(RingError::PeerMisbehaviour(Misbehaviour::BadLength { .. })) => {
                    port.misbehaviour += 1;
                    Err(api::DecodeError::Empty)
                }
                Err(_) => {
                    port.misbehaviour += 1;
                    break;
                }
            };
            let answer = match msg {
                Ok(FromControl::SetTunable { key, value }) => ToControl::TunableSet {
                    key,
                    value,
                    refused: self.set_tunable(key, value).err(),
                },
                Err(e) => ToControl::Refused {
                    reason: RefuseReason::from(e),
                },
            };
            let mut out = [0u8; SLOT_SIZE];
            // Every ToControl fits a slot (memserver-api tests it), and
            // room was checked above.
            if let Ok(bytes) = api::encode(&answer, &mut out)
                && port.resp.push(bytes).is_ok()
            {
                seen(&answer);
            }
        }
    }
}

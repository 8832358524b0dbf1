//! The operator's console to the memserver's control port, on the host
//! platform: the launcher writes `FromControl` requests into the
//! description's `control_req` ring, raises the memserver's `<irq>`, and
//! reads the `ToControl` answers from `control_resp` (the memserver acks
//! the IRQ once it has answered). A description without the port has no
//! console ([`ControlConsole::open`] says so).

use super::{IrqLine, LaunchError, Launcher, SharedMapping};
use memserver_api::{self as api, FromControl, SLOT_SIZE, ToControl, TunableKey};
use pd_ring::{Consumer, Producer};

/// The id of the memserver's control `<irq>` when `sys` gives it a
/// control port through one, not through the console PD
/// (`sdf::System::control_port`, the memserver build's rule).
pub fn port_irq(sys: &sdf::System) -> Option<u64> {
    match sys.control_port() {
        Ok(Some(sdf::model::ControlPort::Irq(irq))) => Some(irq.id),
        _ => None,
    }
}

/// The console's ends of the control rings and the memserver's IRQ.
#[derive(Debug)]
pub struct ControlConsole {
    // The rings borrow the mappings below: declared first, dropped first.
    req: Producer<'static>,
    resp: Consumer<'static>,
    irq: IrqLine,
    _req_map: SharedMapping,
    _resp_map: SharedMapping,
}

/// Why the console could not be opened or used.
#[derive(Debug)]
pub enum ControlError {
    /// The description gives the memserver no control port.
    NoPort,
    /// The launcher could not map a ring or find the IRQ.
    Launch(LaunchError),
    /// A ring is unusable (its geometry or the peer's indices).
    Ring(String),
}

impl std::fmt::Display for ControlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ControlError::NoPort => write!(
                f,
                "the description gives the memserver no control port (maps control_req and control_resp, and one <irq>; see tools/systems/host-2x1g.xml)"
            ),
            ControlError::Launch(e) => write!(f, "control port: {e}"),
            ControlError::Ring(e) => write!(f, "control port: {e}"),
        }
    }
}

impl std::error::Error for ControlError {}

impl ControlConsole {
    /// The console of `launcher`'s system (before or after it starts).
    pub fn open(launcher: &Launcher) -> Result<ControlConsole, ControlError> {
        let irq = port_irq(launcher.system()).ok_or(ControlError::NoPort)?;
        let irq = launcher
            .irq_line("memserver", irq)
            .map_err(ControlError::Launch)?;
        let req_map = launcher
            .map_region("control_req")
            .map_err(ControlError::Launch)?;
        let resp_map = launcher
            .map_region("control_resp")
            .map_err(ControlError::Launch)?;
        // SAFETY: each mapping is shared memory of its `len` bytes, alive
        // as long as this value (the rings are dropped before it); the
        // memserver accesses it only through the ring protocol's atomics,
        // and this console is the rings' only other user.
        let req = unsafe { Producer::from_raw(req_map.as_ptr(), req_map.len(), SLOT_SIZE) }
            .map_err(|e| ControlError::Ring(format!("control_req: {e}")))?;
        // SAFETY: as above.
        let resp = unsafe { Consumer::from_raw(resp_map.as_ptr(), resp_map.len(), SLOT_SIZE) }
            .map_err(|e| ControlError::Ring(format!("control_resp: {e}")))?;
        Ok(ControlConsole {
            req,
            resp,
            irq,
            _req_map: req_map,
            _resp_map: resp_map,
        })
    }

    /// Ask the memserver to set `key` to `value`; its answer comes later
    /// ([`Self::answers`]).
    pub fn set(&mut self, key: TunableKey, value: u64) -> Result<(), ControlError> {
        let mut buf = [0u8; SLOT_SIZE];
        let bytes = api::encode(&FromControl::SetTunable { key, value }, &mut buf)
            .map_err(|e| ControlError::Ring(e.to_string()))?;
        self.req
            .push(bytes)
            .map_err(|e| ControlError::Ring(format!("control_req: {e}")))?;
        self.irq
            .raise()
            .map_err(|e| ControlError::Ring(format!("raising the memserver's irq: {e}")))
    }

    /// The answers that arrived since the last call, in order.
    pub fn answers(&mut self) -> Result<Vec<ToControl>, ControlError> {
        let mut out = Vec::new();
        let mut buf = [0u8; SLOT_SIZE];
        while let Some(n) = self
            .resp
            .pop(&mut buf)
            .map_err(|e| ControlError::Ring(format!("control_resp: {e}")))?
        {
            out.push(
                api::decode_to_control(&buf[..n])
                    .map_err(|e| ControlError::Ring(format!("control_resp: {e}")))?,
            );
        }
        Ok(out)
    }
}

//! The VMM PD: runs the VM of its `<virtual_machine>` (seL4 aarch64,
//! Microkit 2.3.0). Init loads the guest into the VM's RAM and starts the
//! vCPU; `fault` hands every trap to one dispatcher (libvmm's shape); the
//! decisions are the host-tested core's (`vmm::trap`, `vmm::psci`,
//! `vmm::gic`, `vmm::mmio`).
//!
//! Emulated: the GICv2 distributor (trapped), PSCI over SMC, the virtual
//! timer's PPI (VPPIEvent -> inject -> ack on EOI), WFI (the vCPU is
//! suspended until the timer PD signals its timer's deadline or the VMM
//! injects an interrupt: `vmm::idle`), and a virtio-balloon (virtio-mmio
//! v2, `vmm_virtio`) whose free page reports go to the memserver and
//! whose chains go back to Linux when the memserver answers (nested
//! reporting, `vmm::nested`). Passed through: RAM,
//! the PL011 console (its IRQ 33 re-injected), the GIC's virtual CPU
//! interface. Anything else the guest touches stops that VM with one line;
//! the other PDs keep running.
#![cfg_attr(target_os = "none", no_std, no_main)]

mod config {
    pd::config!("vmm");
}
#[allow(dead_code)]
mod vm_layout {
    include!(concat!(env!("OUT_DIR"), "/vm_layout.rs"));
}
#[allow(dead_code)]
mod guest {
    include!(concat!(env!("OUT_DIR"), "/guest_image.rs"));
}

const LOG: pd::Log = pd::Log::new("VMM");

#[cfg(all(target_os = "none", target_arch = "aarch64"))]
mod run {
    use super::{LOG, config, guest, vm_layout};
    use memserver_api::{self as api, FromVmm, SLOT_SIZE, ToVmm};
    use pd::vm::{Child, Fault, FaultReply, UserContext};
    use pd::{ChannelSet, Handler};
    use pd_ring::{Consumer, Producer};
    use timer::clock::generic_timer;
    use vmm::gic::{self, Distributor, Inject};
    use vmm::idle::{self, VirtualTimer, Wfi};
    use vmm::mmio::{Table, Unemulated};
    use vmm::nested::Outstanding;
    use vmm::psci;
    use vmm::trap::{self, Access};
    use vmm::vm_balloon::{self, Deflates, MAX_PARTS};
    use vmm_virtio::GuestMemory;
    use vmm_virtio::balloon::{Balloon, Event, QUEUES};
    use vmm_virtio::mmio::{MmioTransport, WINDOW};

    /// What the table's windows are.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Dev {
        Gic,
        Balloon,
    }

    /// The GICv2 distributor's guest-physical address (QEMU virt; the
    /// device tree says the same, `tools::dtb`).
    const GICD: u64 = 0x0800_0000;
    /// The console's IRQ, passed through.
    const UART_IRQ: u16 = 33;
    /// The virtual timer's PPI.
    const VTIMER_IRQ: u16 = 27;
    /// Balloon messages waiting for room on the ring to the memserver:
    /// two chains' worth.
    const OUTBOX: usize = 2 * MAX_PARTS;

    pub struct Vmm {
        gic: Distributor,
        table: Table<Dev, 4>,
        stopped: bool,
        traps: u64,
        /// Set while the vCPU sleeps in a WFI: where it resumes.
        asleep: Option<u64>,
        /// WFIs that suspended the vCPU.
        sleeps: u64,
        /// The counter's rate (`CNTFRQ_EL0`).
        freq: u64,
        /// The VM's virtio-balloon.
        balloon: MmioTransport<Balloon, QUEUES>,
        /// Its report chains the memserver holds.
        outstanding: Outstanding,
        /// Its deflate chains held until the outer host let go.
        deflates: Deflates,
        /// Inflate, deflate and stats messages not on the ring yet (a
        /// deflate must not be lost: the memserver could pass its frames
        /// on while the guest uses them).
        outbox: heapless::Deque<FromVmm, OUTBOX>,
        /// The rings to and from the memserver.
        to_memserver: Producer<'static>,
        from_memserver: Consumer<'static>,
        /// Chains given back unsent (bad ranges, or the ring was full).
        unsent: u64,
        /// Device resets seen (each forgets the outstanding chains).
        balloon_resets: u64,
        /// Queue errors seen (each said once).
        balloon_errors: u64,
    }

    /// The VM's RAM as the balloon device reads and writes it: through the
    /// VMM's mapping, with volatile copies (the guest may change any byte
    /// between two reads; nothing is read twice and trusted).
    struct GuestRam;

    impl GuestRam {
        fn offset(gpa: u64, len: u64) -> Result<usize, vmm_virtio::OutOfRange> {
            gpa.checked_sub(vm_layout::RAM_GPA)
                .filter(|o| o.checked_add(len).is_some_and(|e| e <= vm_layout::RAM_SIZE))
                .map(|o| o as usize)
                .ok_or(vmm_virtio::OutOfRange { gpa, len })
        }
    }

    impl GuestMemory for GuestRam {
        fn contains(&self, gpa: u64, len: u64) -> bool {
            GuestRam::offset(gpa, len).is_ok()
        }
        fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), vmm_virtio::OutOfRange> {
            let off = GuestRam::offset(gpa, buf.len() as u64)?;
            let base = vm_layout::ram().get().as_ptr();
            for (i, b) in buf.iter_mut().enumerate() {
                let at = base.wrapping_add(off + i);
                // SAFETY: the VM's RAM is mapped rw into this PD for its
                // whole life; off + i lies inside it (checked above).
                *b = unsafe { at.read_volatile() };
            }
            Ok(())
        }
        fn write(&mut self, gpa: u64, buf: &[u8]) -> Result<(), vmm_virtio::OutOfRange> {
            let off = GuestRam::offset(gpa, buf.len() as u64)?;
            let base = vm_layout::ram().get().as_ptr();
            for (i, b) in buf.iter().enumerate() {
                let at = base.wrapping_add(off + i);
                // SAFETY: as in `read`.
                unsafe { at.write_volatile(*b) };
            }
            Ok(())
        }
    }

    #[derive(Debug)]
    pub enum Error {
        Load(&'static str),
        Kernel(vmm_boot::BootError),
        Sel4(&'static str, pd::vm::Sel4Error),
    }

    impl core::fmt::Display for Error {
        fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
            match self {
                Error::Load(m) => write!(f, "loading the guest: {m}"),
                Error::Kernel(e) => write!(f, "the kernel: {e}"),
                Error::Sel4(what, e) => write!(f, "{what}: {e}"),
            }
        }
    }

    fn vcpu() -> Child {
        vm_layout::VCPU
    }

    fn registers() -> Result<UserContext, Error> {
        pd::vm::read_registers(vcpu()).map_err(|e| Error::Sel4("reading registers", e))
    }

    /// Resume the vCPU after the instruction that trapped, with `ctx`
    /// (seL4 restarts it at the faulting PC otherwise).
    fn step_over(mut ctx: UserContext) -> Result<FaultReply, Error> {
        ctx.regs[UserContext::PC] += 4;
        pd::vm::write_registers(vcpu(), &ctx, false)
            .map_err(|e| Error::Sel4("writing registers", e))?;
        Ok(FaultReply::Resume)
    }

    /// Copy `bytes` to guest-physical `gpa`, inside the VM's RAM.
    fn copy_in(gpa: u64, bytes: &[u8]) -> Result<(), Error> {
        let ram = vm_layout::ram().get();
        let off = gpa
            .checked_sub(vm_layout::RAM_GPA)
            .filter(|o| {
                o.checked_add(bytes.len() as u64)
                    .is_some_and(|e| e <= ram.size)
            })
            .ok_or(Error::Load("a piece lies outside the VM's RAM"))?;
        let to = ram.as_ptr().wrapping_add(off as usize);
        // SAFETY: the VMM maps the VM's RAM read-write at `ram.vaddr` for
        // its whole life (`<map setvar_vaddr="guest_ram">`); `to .. to +
        // bytes.len()` was checked to lie inside it, and the vCPU is not
        // running yet.
        unsafe { core::ptr::copy_nonoverlapping(bytes.as_ptr(), to, bytes.len()) };
        Ok(())
    }

    /// Load the guest and start the vCPU: Linux as booting.rst says, or the
    /// smoke guest at the start of RAM.
    fn boot() -> Result<(), Error> {
        let (pc, x0, end) = if guest::RAW {
            copy_in(vm_layout::RAM_GPA, guest::KERNEL)?;
            LOG.info(format_args!(
                "VM '{}': raw guest of {} bytes at {:#x}",
                vm_layout::VM_NAME,
                guest::KERNEL.len(),
                vm_layout::RAM_GPA
            ));
            (
                vm_layout::RAM_GPA,
                0,
                vm_layout::RAM_GPA + guest::KERNEL.len() as u64,
            )
        } else {
            let h = vmm_boot::ImageHeader::parse(guest::KERNEL).map_err(Error::Kernel)?;
            let l = vmm_boot::Layout::new(
                &h,
                guest::DTB.len() as u64,
                guest::INITRD.len() as u64,
                vm_layout::RAM_GPA,
                vm_layout::RAM_SIZE,
            )
            .map_err(Error::Kernel)?;
            copy_in(l.kernel, guest::KERNEL)?;
            copy_in(l.dtb, guest::DTB)?;
            copy_in(l.initrd, guest::INITRD)?;
            LOG.info(format_args!(
                "VM '{}': Linux Image of {} bytes at {:#x}, device tree at {:#x}, initramfs of {} bytes at {:#x}, RAM {} MiB",
                vm_layout::VM_NAME,
                guest::KERNEL.len(),
                l.kernel,
                l.dtb,
                guest::INITRD.len(),
                l.initrd,
                vm_layout::RAM_SIZE >> 20
            ));
            (l.kernel, l.dtb, l.initrd_end)
        };
        // The guest starts with its MMU and caches off: what was copied
        // must be in memory, and instruction fetches must see it.
        // seL4 flushes within one page at a time.
        let ram = vm_layout::ram().get();
        let (mut start, stop) = (ram.vaddr, ram.vaddr + (end - vm_layout::RAM_GPA));
        while start < stop {
            let to = ((start / vm_layout::RAM_PAGE + 1) * vm_layout::RAM_PAGE).min(stop);
            pd::vm::clean_invalidate_data(start, to)
                .map_err(|e| Error::Sel4("cleaning the cache", e))?;
            pd::vm::unify_instruction(start, to)
                .map_err(|e| Error::Sel4("unifying the I-cache", e))?;
            start = to;
        }
        let mut ctx = UserContext::default();
        ctx.regs[UserContext::PC] = pc;
        ctx.regs[UserContext::SPSR] = vmm_boot::ENTRY_SPSR;
        ctx.regs[UserContext::x_index(0).expect("x0")] = x0;
        pd::vm::write_registers(vcpu(), &ctx, true)
            .map_err(|e| Error::Sel4("starting the vCPU", e))?;
        LOG.info(format_args!(
            "VM '{}': vCPU started at {pc:#x}",
            vm_layout::VM_NAME
        ));
        Ok(())
    }

    pub fn init() -> Vmm {
        let mut table = Table::new();
        // Cannot fail: one window in an empty table.
        let _ = table.add(GICD, gic::SIZE, Dev::Gic);
        // Cannot fail: the balloon's window does not overlap the GIC's.
        let _ = table.add(vm_layout::BALLOON_MMIO, WINDOW, Dev::Balloon);
        // SAFETY: the rings are mapped rw for the PD's lifetime (the
        // description), and only this PD's producer/consumer ends use them.
        let to_memserver = unsafe {
            Producer::from_raw(
                config::region::VMM_REQ.get().as_ptr(),
                config::region::VMM_REQ.get().size as usize,
                SLOT_SIZE,
            )
        }
        .unwrap_or_else(|e| panic!("ring to the memserver: {e}"));
        // SAFETY: as above.
        let from_memserver = unsafe {
            Consumer::from_raw(
                config::region::VMM_RESP.get().as_ptr(),
                config::region::VMM_RESP.get().size as usize,
                SLOT_SIZE,
            )
        }
        .unwrap_or_else(|e| panic!("ring from the memserver: {e}"));
        let mut vmm = Vmm {
            gic: Distributor::new(),
            table,
            stopped: false,
            traps: 0,
            asleep: None,
            sleeps: 0,
            freq: generic_timer::counter_frequency(),
            balloon: MmioTransport::new(Balloon::new(true)),
            outstanding: Outstanding::default(),
            deflates: Deflates::default(),
            outbox: heapless::Deque::new(),
            to_memserver,
            from_memserver,
            unsent: 0,
            balloon_resets: 0,
            balloon_errors: 0,
        };
        vmm.from_memserver.request_signal();
        if let Err(e) = boot() {
            LOG.error(format_args!("VM '{}' not started: {e}", vm_layout::VM_NAME));
            vmm.stopped = true;
        }
        vmm
    }

    impl Vmm {
        fn inject(&mut self, inj: Inject) {
            let prio = self.gic.priority(inj.irq) >> 3;
            if let Err(e) =
                pd::vm::inject_irq(vcpu(), inj.irq, prio, self.gic.group(inj.irq), inj.lr)
            {
                LOG.error(format_args!(
                    "injecting IRQ {} into LR {}: {e}",
                    inj.irq, inj.lr
                ));
            }
        }

        fn stop(&mut self, why: core::fmt::Arguments<'_>) -> FaultReply {
            LOG.error(why);
            self.suspend()
        }

        /// The VM is done: mark it and suspend its vCPU.
        fn suspend(&mut self) -> FaultReply {
            self.stopped = true;
            // Suspend it: a fault left without a reply would leave the
            // reply object pending, which seL4 warns about on our next
            // receive ("Reply object already has unexecuted reply!").
            if let Err(e) = pd::vm::stop(vcpu()) {
                LOG.error(format_args!("suspending the vCPU: {e}"));
            }
            FaultReply::Stop
        }

        /// Emulate a load or store at `addr`; `None` when nothing is there.
        fn mmio(&mut self, addr: u64, esr: u64, ip: u64) -> Result<FaultReply, Error> {
            let access = match Access::decode(esr) {
                Ok(a) => a,
                Err(e) => {
                    return Ok(self.stop(format_args!(
                        "VM '{}' stopped: access at {addr:#x}, pc {ip:#x}, ESR {esr:#x}: {e}",
                        vm_layout::VM_NAME
                    )));
                }
            };
            let Some((dev, off)) = self.table.lookup(addr) else {
                let line = Unemulated {
                    vm: vm_layout::VM_NAME,
                    addr,
                    pc: ip,
                    esr,
                    write: Some(access.write),
                };
                return Ok(self.stop(format_args!("{line}")));
            };
            let mut ctx = registers()?;
            let reg = access.reg.and_then(UserContext::x_index);
            if dev == Dev::Balloon {
                if access.write {
                    let v = reg.map_or(0, |r| ctx.regs[r]);
                    self.balloon.write(
                        off,
                        access.size,
                        access.store_value(v) as u32,
                        &mut GuestRam,
                    );
                    if self.balloon.counters.resets != self.balloon_resets {
                        self.balloon_resets = self.balloon.counters.resets;
                        self.outstanding.forget_all();
                        self.deflates.forget_all();
                    }
                    if self.balloon.counters.queue_errors != self.balloon_errors {
                        self.balloon_errors = self.balloon.counters.queue_errors;
                        if let Some(e) = self.balloon.last_error {
                            LOG.warn(format_args!(
                                "VM '{}': balloon: {e}: the device needs a reset",
                                vm_layout::VM_NAME
                            ));
                        }
                    }
                    self.balloon_events();
                } else {
                    let raw = self.balloon.read(off, access.size);
                    if let Some(r) = reg {
                        ctx.regs[r] = access.load_value(u64::from(raw));
                    }
                }
                self.balloon_irq();
                return step_over(ctx);
            }
            if access.write {
                let v = reg.map_or(0, |r| ctx.regs[r]);
                let injections = self
                    .gic
                    .write(off, access.size, access.store_value(v) as u32);
                for inj in injections {
                    self.inject(inj);
                }
            } else {
                let raw = self.gic.read(off, access.size);
                if let Some(r) = reg {
                    ctx.regs[r] = access.load_value(u64::from(raw));
                }
            }
            step_over(ctx)
        }

        fn smc(&mut self) -> Result<FaultReply, Error> {
            let mut ctx = registers()?;
            let x0 = UserContext::x_index(0).expect("x0");
            let function = ctx.regs[x0];
            match psci::call(function) {
                psci::Answer::Return(v) => {
                    LOG.info(format_args!("PSCI {function:#x} -> {v:#x}"));
                    ctx.regs[x0] = v;
                    step_over(ctx)
                }
                psci::Answer::Off => {
                    LOG.info(format_args!(
                        "VM '{}' switched itself off (PSCI) after {} traps, {} of them WFIs it slept in",
                        vm_layout::VM_NAME,
                        self.traps,
                        self.sleeps
                    ));
                    Ok(self.suspend())
                }
                psci::Answer::Reset => Ok(self.stop(format_args!(
                    "VM '{}' asked for a reset (PSCI), which this VMM does not do: stopped",
                    vm_layout::VM_NAME
                ))),
            }
        }

        /// A WFI: continue at once when the guest's timer is due, else
        /// suspend the vCPU and have the timer PD signal the deadline
        /// (`vmm::idle`); an injected interrupt wakes it earlier.
        fn wfi(&mut self) -> Result<FaultReply, Error> {
            let ctx = registers()?;
            let reg = |r| {
                pd::vm::read_vcpu_reg(vcpu(), r)
                    .map_err(|e| Error::Sel4("reading the vCPU's timer", e))
            };
            let timer = VirtualTimer {
                ctl: reg(pd::vm::vcpu_reg::CNTV_CTL)?,
                cval: reg(pd::vm::vcpu_reg::CNTV_CVAL)?,
                cntvoff: reg(pd::vm::vcpu_reg::CNTVOFF)?,
            };
            match idle::wfi(timer, generic_timer::counter(), self.freq) {
                Wfi::Continue => step_over(ctx),
                Wfi::Sleep { ns } => {
                    if let Err(e) = timer::client::set_timeout(config::channel::TIMER, ns) {
                        // Without a wake-up the vCPU must not sleep: spin.
                        LOG.warn(format_args!(
                            "no timeout for the WFI ({e}): stepping over it"
                        ));
                        return step_over(ctx);
                    }
                    pd::vm::stop(vcpu()).map_err(|e| Error::Sel4("suspending the vCPU", e))?;
                    self.asleep = Some(ctx.regs[UserContext::PC] + 4);
                    self.sleeps += 1;
                    if self.sleeps == 1 {
                        LOG.info(format_args!(
                            "VM '{}': its vCPU sleeps in WFI until its timer's deadline or an interrupt",
                            vm_layout::VM_NAME
                        ));
                    } else if self.sleeps.is_power_of_two() && self.sleeps >= 1024 {
                        LOG.info(format_args!(
                            "VM '{}': {} WFI sleeps in {} traps",
                            vm_layout::VM_NAME,
                            self.sleeps,
                            self.traps
                        ));
                    }
                    Ok(FaultReply::Stop)
                }
            }
        }

        /// Resume a vCPU asleep in a WFI, after it.
        fn wake(&mut self) {
            if let Some(pc) = self.asleep.take()
                && let Err(e) = pd::vm::restart(vcpu(), pc)
            {
                let _ = self.stop(format_args!(
                    "VM '{}' stopped: resuming the vCPU after a WFI: {e}",
                    vm_layout::VM_NAME
                ));
            }
        }

        /// Raise the balloon's interrupt while its line is up.
        fn balloon_irq(&mut self) {
            if self.balloon.interrupt_pending() {
                if let Some(inj) = self.gic.raise(vm_layout::BALLOON_IRQ) {
                    self.inject(inj);
                }
                self.wake();
            }
        }

        /// Give chain `head` of the reporting queue back to the guest.
        fn give_back(&mut self, head: u16) {
            let done = self.balloon.with_queues(&mut GuestRam, |dev, queues, mem| {
                dev.complete_report(head, queues, mem)
            });
            if let Err(e) = done {
                // The device needs a reset now (the guest broke its ring,
                // or reset the device meanwhile): nothing to give back.
                LOG.warn(format_args!("balloon: report {head} not given back: {e}"));
            }
        }

        /// Give deflate chain `head` back to the guest: it may use its
        /// frames now.
        fn give_back_deflate(&mut self, head: u16) {
            let done = self.balloon.with_queues(&mut GuestRam, |dev, queues, mem| {
                dev.complete_deflate(head, queues, mem)
            });
            if let Err(e) = done {
                LOG.warn(format_args!("balloon: deflate {head} not given back: {e}"));
            }
        }

        /// Pass on what the guest put on the balloon's queues: reports,
        /// inflates, deflates and statistics, to the memserver.
        fn balloon_events(&mut self) {
            let mut sent = false;
            // Room for a whole chain's messages before taking an event.
            while OUTBOX - self.outbox.len() >= MAX_PARTS {
                let Some(ev) = self.balloon.device.take_event() else {
                    break;
                };
                match ev {
                    Event::Report { head, ranges } => sent |= self.send_report(head, &ranges),
                    Event::Inflate { pfns } => {
                        match vm_balloon::ranges(&pfns, vm_layout::RAM_GPA, vm_layout::RAM_SIZE) {
                            Ok(parts) => {
                                for ranges in parts {
                                    let _ = self.outbox.push_back(FromVmm::Inflated { ranges });
                                }
                            }
                            Err(e) => LOG.warn(format_args!(
                                "VM '{}': inflate not passed on: {e}",
                                vm_layout::VM_NAME
                            )),
                        }
                    }
                    Event::Deflate { head, pfns } => {
                        match self.deflates.send(
                            head,
                            &pfns,
                            vm_layout::RAM_GPA,
                            vm_layout::RAM_SIZE,
                        ) {
                            Ok(parts) => {
                                for m in parts {
                                    let _ = self.outbox.push_back(m);
                                }
                            }
                            Err(why) => {
                                if let Some(e) = why {
                                    LOG.warn(format_args!(
                                        "VM '{}': deflate {head} given back unsent: {e}",
                                        vm_layout::VM_NAME
                                    ));
                                }
                                self.give_back_deflate(head);
                            }
                        }
                    }
                    Event::Stats(pairs) => {
                        let _ = self.outbox.push_back(vm_balloon::stats(&pairs));
                    }
                }
            }
            sent |= self.flush_outbox();
            // Room for more events: what the guest left on the rings.
            let _ = self
                .balloon
                .with_queues(&mut GuestRam, |dev, queues, mem| dev.resume(queues, mem));
            if sent && self.to_memserver.needs_notify() {
                config::channel::MEMSERVER.notify();
            }
        }

        /// Report chain `head` to the memserver; whether it was sent.
        fn send_report(&mut self, head: u16, ranges: &[vmm_virtio::balloon::Range]) -> bool {
            let msg =
                match self
                    .outstanding
                    .send(head, ranges, vm_layout::RAM_GPA, vm_layout::RAM_SIZE)
                {
                    Ok(m) => m,
                    Err(e) => {
                        self.unsent += 1;
                        LOG.warn(format_args!(
                            "VM '{}': report {head} given back unsent: {e}",
                            vm_layout::VM_NAME
                        ));
                        self.give_back(head);
                        return false;
                    }
                };
            let mut buf = [0u8; SLOT_SIZE];
            let pushed = api::encode(&msg, &mut buf)
                .ok()
                .is_some_and(|b| self.to_memserver.push(b).is_ok());
            if !pushed {
                // The memserver is not keeping up: Linux reports these
                // pages again later.
                self.outstanding.unsend(head);
                self.unsent += 1;
                self.give_back(head);
            }
            pushed
        }

        /// Move the outbox onto the ring while it has room; whether
        /// anything moved.
        fn flush_outbox(&mut self) -> bool {
            let mut buf = [0u8; SLOT_SIZE];
            let mut moved = false;
            while let Some(m) = self.outbox.front() {
                let Ok(bytes) = api::encode(m, &mut buf) else {
                    // Cannot happen (every message fits a slot, tested in
                    // memserver-api); dropping it is all that is left.
                    LOG.error(format_args!("balloon message dropped: {m:?}"));
                    self.outbox.pop_front();
                    continue;
                };
                if self.to_memserver.push(bytes).is_err() {
                    self.to_memserver.request_signal();
                    break;
                }
                self.outbox.pop_front();
                moved = true;
            }
            moved
        }

        /// The memserver answered: give the chains back to the guest.
        fn memserver_answers(&mut self) {
            let mut buf = [0u8; SLOT_SIZE];
            loop {
                match self.from_memserver.pop(&mut buf) {
                    Ok(Some(n)) => {
                        let msg = match api::decode_to_vmm(&buf[..n]) {
                            Ok(m) => m,
                            Err(e) => {
                                LOG.warn(format_args!("memserver: a bad answer ({e})"));
                                continue;
                            }
                        };
                        self.memserver_says(&msg);
                    }
                    Ok(None) => {
                        self.from_memserver.request_signal();
                        if !matches!(self.from_memserver.is_empty(), Ok(false)) {
                            break;
                        }
                    }
                    Err(e) => {
                        LOG.warn(format_args!("ring from the memserver: {e}"));
                        break;
                    }
                }
            }
            // The guest may have offered more while the events were full.
            self.balloon_events();
            self.balloon_irq();
        }

        /// One message from the memserver.
        fn memserver_says(&mut self, msg: &ToVmm) {
            match msg {
                ToVmm::ReportDone { .. } | ToVmm::Refused { .. } => {
                    if let ToVmm::Refused { id, reason } = msg {
                        LOG.warn(format_args!(
                            "VM '{}': the memserver refused report {id:?}: {reason}",
                            vm_layout::VM_NAME
                        ));
                    }
                    if let Some(head) = self.outstanding.answer(msg) {
                        self.give_back(head);
                    }
                }
                ToVmm::BalloonTarget { pages } => {
                    LOG.info(format_args!(
                        "VM '{}': balloon target {pages} pages ({} MiB)",
                        vm_layout::VM_NAME,
                        pages / 256
                    ));
                    self.balloon.device.set_target(*pages);
                    self.balloon.config_changed();
                }
                ToVmm::StatsRequest => {
                    let _ = self.balloon.with_queues(&mut GuestRam, |dev, queues, mem| {
                        dev.request_stats(queues, mem)
                    });
                }
                ToVmm::DeflateDone { .. } | ToVmm::BalloonRefused { .. } => {
                    if let ToVmm::BalloonRefused { reason, .. } = msg {
                        LOG.warn(format_args!(
                            "VM '{}': the memserver refused a balloon message: {reason}",
                            vm_layout::VM_NAME
                        ));
                    }
                    if let Some(head) = self.deflates.answer(msg) {
                        self.give_back_deflate(head);
                    }
                }
            }
        }

        fn dispatch(&mut self, fault: Fault) -> Result<FaultReply, Error> {
            self.traps += 1;
            match fault {
                Fault::VmFault {
                    ip,
                    addr,
                    prefetch: false,
                    fsr,
                } => self.mmio(addr, fsr, ip),
                Fault::VcpuFault { hsr } if trap::class(hsr) == trap::ec::SMC64 => self.smc(),
                Fault::VcpuFault { hsr } if trap::class(hsr) == trap::ec::WFX => {
                    if idle::is_wfe(hsr) {
                        step_over(registers()?)
                    } else {
                        self.wfi()
                    }
                }
                Fault::VppiEvent { irq } => {
                    if let Some(inj) = self.gic.raise(irq as u16) {
                        self.inject(inj);
                    }
                    Ok(FaultReply::Resume)
                }
                Fault::VgicMaintenance { index } => {
                    let (gone, next) = self.gic.maintenance(index.unwrap_or(u64::MAX));
                    match gone {
                        Some(VTIMER_IRQ) => {
                            if let Err(e) = pd::vm::ack_vppi(vcpu(), u64::from(VTIMER_IRQ)) {
                                LOG.error(format_args!("acking the virtual timer: {e}"));
                            }
                        }
                        Some(UART_IRQ) => config::irq::IRQ.irq_ack(),
                        // Level-triggered: still up after the EOI, again.
                        Some(vm_layout::BALLOON_IRQ) => self.balloon_irq(),
                        _ => {}
                    }
                    if let Some(inj) = next {
                        self.inject(inj);
                    }
                    Ok(FaultReply::Resume)
                }
                other => {
                    Ok(self.stop(format_args!("VM '{}' stopped: {other}", vm_layout::VM_NAME)))
                }
            }
        }
    }

    impl Handler for Vmm {
        type Error = Error;

        fn notified(&mut self, channels: ChannelSet) -> Result<(), Error> {
            if channels.contains(config::irq::IRQ) && !self.stopped {
                // The console's IRQ: into the VM; acked when the guest EOIs.
                if let Some(inj) = self.gic.raise(UART_IRQ) {
                    self.inject(inj);
                }
                self.wake();
            }
            if channels.contains(config::channel::MEMSERVER) && !self.stopped {
                self.memserver_answers();
            }
            if channels.contains(config::channel::TIMER) && !self.stopped {
                // The guest's timer deadline (or a stale timeout: a WFI
                // may end early).
                self.wake();
            }
            Ok(())
        }

        fn fault(&mut self, child: Child, fault: Fault) -> Result<FaultReply, Error> {
            if child != vcpu() || self.stopped {
                LOG.warn(format_args!(
                    "fault of child {} ignored: {fault}",
                    child.id()
                ));
                return Ok(FaultReply::Stop);
            }
            match self.dispatch(fault) {
                Ok(r) => Ok(r),
                // A kernel refusing an invocation is the VMM's own bug or a
                // broken configuration: stop this VM, keep the PD alive.
                Err(e) => Ok(self.stop(format_args!("VM '{}' stopped: {e}", vm_layout::VM_NAME))),
            }
        }
    }
}

#[cfg(all(target_os = "none", target_arch = "aarch64"))]
pd::main!(run::init);

/// Elsewhere there is no hypervisor to run a VM on: the PD says so and
/// stays idle (x86_64 Microkit VMs need VT-x; the host platform has none).
#[cfg(not(all(target_os = "none", target_arch = "aarch64")))]
mod run {
    pub struct NoVm;
    impl pd::Handler for NoVm {
        type Error = core::convert::Infallible;
    }
    pub fn init() -> NoVm {
        super::LOG.error(format_args!(
            "VM '{}' needs seL4 on aarch64 with hypervisor support; this platform has none",
            super::vm_layout::VM_NAME
        ));
        let _ = (super::guest::KERNEL, super::config::PD_NAME);
        NoVm
    }
}

#[cfg(not(all(target_os = "none", target_arch = "aarch64")))]
pd::main!(run::init);

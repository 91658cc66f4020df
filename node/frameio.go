package node

import (
	"encoding/binary"
	"net/netip"
	"sync/atomic"
	"time"

	"github.com/trireme-go/trireme/dataplane"
	"github.com/trireme-go/trireme/netsetup/tap"
	"github.com/trireme-go/trireme/netsetup/vnet"
)

// ioErrors counts frames the daemon could not read or send; they are
// reported in stats rather than logged per packet.
var ioErrors, kernelErrors, kernelAuthorized, kernelRevoked atomic.Uint64

// foreignFrames counts frames toward a PU that were addressed to another
// host (see notForPU).
var foreignFrames atomic.Uint64

// frameIO is one TAP reader's buffers: a frame is read, decided and written
// without allocation.
type frameIO struct {
	d    *Daemon
	p    *livePU
	buf  []byte // virtio-net header + frame, as read
	wbuf []byte // virtio-net header + frame, for frames not in buf
	out  dataplane.Output
	ips  []netip.Addr // the PU's addresses
}

func newFrameIO(d *Daemon, p *livePU) *frameIO {
	return &frameIO{d: d, p: p, buf: make([]byte, tap.MaxFrame), wbuf: make([]byte, tap.MaxFrame),
		ips: append([]netip.Addr(nil), p.info.IPs...)}
}

// notForPU reports a unicast frame toward the PU that is addressed to
// another host. A bridge floods a unicast frame whose destination MAC it
// has not learned (yet) to every port, e.g. right after a container
// restarted with the same address and MAC behind a new veth; the steering
// of every other PU then hands the enforcer a copy, which it must not
// decide as its PU's (a denial would reset the real destination's
// connection). The PU would drop such a frame: so do we. Frames to group
// MACs (broadcast, multicast) and to link-local addresses are left alone.
func (f *frameIO) notForPU(frame []byte) bool {
	if len(frame) < 14 || frame[0]&1 != 0 || len(f.ips) == 0 {
		return false
	}
	var dst netip.Addr
	switch binary.BigEndian.Uint16(frame[12:14]) {
	case 0x0800:
		if len(frame) < 34 {
			return false
		}
		dst = netip.AddrFrom4([4]byte(frame[30:34]))
	case 0x86dd:
		if len(frame) < 54 {
			return false
		}
		dst = netip.AddrFrom16([16]byte(frame[38:54]))
	default:
		return false
	}
	if dst.IsLinkLocalUnicast() || dst.IsMulticast() {
		return false
	}
	for _, ip := range f.ips {
		if ip.Unmap() == dst {
			return false
		}
	}
	return true
}

// process runs the frame in buf[:n] through the enforcer and sends what it
// decided.
func (f *frameIO) process(dir dataplane.Direction, n int, now time.Time) {
	hdr, err := vnet.Decode(f.buf[:n])
	if err != nil {
		ioErrors.Add(1)
		return
	}
	frame := f.buf[vnet.HdrLen:n]
	if dir == dataplane.FromNet && f.notForPU(frame) {
		foreignFrames.Add(1)
		return
	}
	// A partial checksum (the sender's offload) is completed here, so that
	// the core sees and rewrites whole packets. Super-packets keep theirs:
	// the core never rewrites them.
	if hdr.Flags&vnet.FlagNeedsCsum != 0 && !hdr.IsGSO() {
		if vnet.CompleteChecksum(&hdr, frame) != nil {
			ioErrors.Add(1)
			return
		}
	}
	f.d.enf.Process(f.p.dp, dir, frame, now, &f.out)
	f.send(&f.out, dir, hdr, frame)
	// Notes after the frames: a flow is released to the kernel only once
	// its handshake ACK is on its way, or data could overtake it.
	f.d.queueNotes(f.out.Notes)
}

// send writes the injected frames (in order: a token-ACK precedes the data
// it belongs to), then the forwarded frame, then the frames to inject after
// it (a RST probe follows the RST).
func (f *frameIO) send(out *dataplane.Output, dir dataplane.Direction, hdr vnet.Hdr, in []byte) {
	after := false
	for i := range out.Inject {
		if out.Inject[i].AfterFrame {
			after = true
			continue
		}
		f.write(out.Inject[i].To, vnet.Hdr{}, out.Inject[i].Frame)
	}
	if out.Verdict == dataplane.Forward && out.Frame != nil {
		to := dataplane.ToNet
		if dir == dataplane.FromNet {
			to = dataplane.ToPU
		}
		fr := out.Frame
		if len(fr) != len(in) || &fr[0] != &in[0] {
			// Rewritten (a token added or stripped): the checksums are
			// whole and it is no super-packet.
			hdr = vnet.Hdr{}
		}
		f.write(to, hdr, fr)
	}
	if !after {
		return
	}
	for i := range out.Inject {
		if out.Inject[i].AfterFrame {
			f.write(out.Inject[i].To, vnet.Hdr{}, out.Inject[i].Frame)
		}
	}
}

func (f *frameIO) write(to dataplane.Target, hdr vnet.Hdr, frame []byte) {
	var b []byte
	if len(frame) > 0 && &frame[0] == &f.buf[vnet.HdrLen] {
		b = f.buf[:vnet.HdrLen+len(frame)] // in place: only the header is written
	} else {
		b = f.wbuf[:vnet.HdrLen+len(frame)]
		copy(b[vnet.HdrLen:], frame)
	}
	if hdr.Encode(b) != nil {
		ioErrors.Add(1)
		return
	}
	inj := f.p.toNet
	if to == dataplane.ToPU {
		inj = f.p.toPU
	}
	if inj.Write(b) != nil {
		ioErrors.Add(1)
	}
}

// sendInjected writes frames the enforcer produced outside a TAP read (policy
// re-evaluation, PU removal): toward the network, or toward their PU.
func (d *Daemon) sendInjected(out *dataplane.Output) {
	for i := range out.Inject {
		in := &out.Inject[i]
		buf := make([]byte, vnet.HdrLen+len(in.Frame))
		copy(buf[vnet.HdrLen:], in.Frame)
		_ = vnet.Hdr{}.Encode(buf)
		p := d.puForFrame(in.PU)
		if p == nil {
			continue
		}
		inj := p.toPU
		if in.To == dataplane.ToNet {
			inj = p.toNet
		}
		if inj.Write(buf) != nil {
			ioErrors.Add(1)
		}
	}
}

func (d *Daemon) puForFrame(pu *dataplane.PU) *livePU {
	if pu == nil {
		return nil
	}
	p, _ := d.pus.get(pu.ID)
	return p
}

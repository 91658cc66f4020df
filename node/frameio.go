package node

import (
	"log/slog"
	"net/netip"
	"sync/atomic"
	"time"

	"github.com/trireme-go/trireme/dataplane"
	"github.com/trireme-go/trireme/dataplane/packet"
	"github.com/trireme-go/trireme/netsetup/frameport"
	"github.com/trireme-go/trireme/netsetup/tap"
	"github.com/trireme-go/trireme/netsetup/vnet"
	"github.com/trireme-go/trireme/reason"
)

// framePath is the daemon's frame path: each PU's TAP readers run their
// frames through the enforcer and write what it decided to the PU's ports;
// the notes go to the kernel loop.
type framePath struct {
	enf   *dataplane.Enforcer
	log   *slog.Logger
	notes func([]dataplane.Note) // queues notes for the kernel loop
	stats frameStats
}

// frameStats are the frame path's counters, reported in stats rather than
// logged per packet.
type frameStats struct {
	// ioErrors: frames that could not be read, decoded or sent.
	ioErrors atomic.Uint64
	// foreignFrames: frames toward a PU addressed to another host
	// (see notForPU).
	foreignFrames atomic.Uint64
	// The kernel loop's batches of authorized-set changes: failed, and
	// the authorizations and revocations applied.
	kernelErrors, kernelAuthorized, kernelRevoked atomic.Uint64
}

// puPorts is a PU's side of the frame path: the owner of its dataplane
// handle (dataplane.PU.Owner), so that a note or an injected frame leads
// to its steering name and ports without a lookup.
type puPorts struct {
	steer   string       // name in the steering table
	ips     []netip.Addr // the PU's addresses (notForPU)
	fromApp frameport.Reader
	fromNet frameport.Reader
	toPU    frameport.Writer
	toNet   frameport.Writer // the injection port of the PU's bridge (shared)
}

// portsOf returns the ports of a PU handle (nil for a handle of no PU of
// the frame path).
func portsOf(pu *dataplane.PU) *puPorts {
	if pu == nil {
		return nil
	}
	pp, _ := pu.Owner().(*puPorts)
	return pp
}

// frameIO is one TAP reader's buffers: a frame is read, decided and written
// without allocation.
type frameIO struct {
	fp   *framePath
	pu   *dataplane.PU
	pp   *puPorts
	buf  []byte // virtio-net header + frame, as read
	wbuf []byte // virtio-net header + frame, for frames not in buf
	out  dataplane.Output
	pkt  packet.Packet
}

func (fp *framePath) newFrameIO(pu *dataplane.PU) *frameIO {
	return &frameIO{fp: fp, pu: pu, pp: portsOf(pu), buf: make([]byte, tap.MaxFrame), wbuf: make([]byte, tap.MaxFrame)}
}

// readLoop reads frames of direction dir from the PU's port until it is
// closed, and runs each through the enforcer.
func (fp *framePath) readLoop(pu *dataplane.PU, dir dataplane.Direction) {
	io := fp.newFrameIO(pu)
	r := io.pp.fromApp
	if dir == dataplane.FromNet {
		r = io.pp.fromNet
	}
	for {
		n, err := r.Read(io.buf)
		if err != nil {
			if frameport.IsClosed(err) {
				return
			}
			if err == frameport.ErrTruncated {
				continue // counted by the TAP; a frame we cannot hold whole is dropped
			}
			fp.log.Error("frame port read", "pu", pu.ID(), "dir", dir.String(), "err", err)
			return
		}
		io.process(dir, n, time.Now())
	}
}

// notForPU reports a unicast frame toward the PU that is addressed to
// another host. A bridge floods a unicast frame whose destination MAC it
// has not learned (yet) to every port, e.g. right after a container
// restarted with the same address and MAC behind a new veth; the steering
// of every other PU then hands the enforcer a copy, which it must not
// decide as its PU's (a denial would reset the real destination's
// connection). The PU would drop such a frame: so do we. Frames to group
// MACs (broadcast, multicast), to link-local addresses and frames that are
// not IP are left alone. p is the frame decoded (any code).
func (f *frameIO) notForPU(p *packet.Packet, code reason.Code) bool {
	if code != reason.None || p.ARP || len(p.Frame) < 14 || p.Frame[0]&1 != 0 || len(f.pp.ips) == 0 {
		return false
	}
	dst := p.Dst
	if dst.IsLinkLocalUnicast() || dst.IsMulticast() {
		return false
	}
	for _, ip := range f.pp.ips {
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
		f.fp.stats.ioErrors.Add(1)
		return
	}
	frame := f.buf[vnet.HdrLen:n]
	// One decode serves the foreign-frame check and the enforcer (the
	// checksum completion below changes no field of it).
	code := f.pkt.Decode(frame)
	if dir == dataplane.FromNet && f.notForPU(&f.pkt, code) {
		f.fp.stats.foreignFrames.Add(1)
		return
	}
	// A partial checksum (the sender's offload) is completed here, so that
	// the core sees and rewrites whole packets. Super-packets keep theirs:
	// the core never rewrites them.
	if hdr.Flags&vnet.FlagNeedsCsum != 0 && !hdr.IsGSO() {
		if vnet.CompleteChecksum(&hdr, frame) != nil {
			f.fp.stats.ioErrors.Add(1)
			return
		}
	}
	f.fp.enf.ProcessDecoded(f.pu, dir, &f.pkt, code, now, &f.out)
	f.send(&f.out, dir, hdr)
	// Notes after the frames: a flow is released to the kernel only once
	// its handshake ACK is on its way, or data could overtake it.
	f.fp.notes(f.out.Notes)
}

// send writes the injected frames (in order: a token-ACK precedes the data
// it belongs to), then the forwarded frame, then the frames to inject after
// it (a RST probe follows the RST).
func (f *frameIO) send(out *dataplane.Output, dir dataplane.Direction, hdr vnet.Hdr) {
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
		if out.Rewritten {
			// A token added or stripped: the checksums are whole and it is
			// no super-packet.
			hdr = vnet.Hdr{}
		}
		f.write(to, hdr, out.Frame)
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
		f.fp.stats.ioErrors.Add(1)
		return
	}
	w := f.pp.toNet
	if to == dataplane.ToPU {
		w = f.pp.toPU
	}
	if w.Write(b) != nil {
		f.fp.stats.ioErrors.Add(1)
	}
}

// sendInjected writes frames the enforcer produced outside a TAP read (policy
// re-evaluation, PU removal): toward the network, or toward their PU.
func (fp *framePath) sendInjected(out *dataplane.Output) {
	for i := range out.Inject {
		in := &out.Inject[i]
		pp := portsOf(in.PU)
		if pp == nil {
			continue
		}
		buf := make([]byte, vnet.HdrLen+len(in.Frame))
		copy(buf[vnet.HdrLen:], in.Frame)
		_ = vnet.Hdr{}.Encode(buf)
		w := pp.toPU
		if in.To == dataplane.ToNet {
			w = pp.toNet
		}
		if w.Write(buf) != nil {
			fp.stats.ioErrors.Add(1)
		}
	}
}

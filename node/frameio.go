package node

import (
	"log/slog"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/trireme-go/trireme/dataplane"
	"github.com/trireme-go/trireme/dataplane/packet"
	"github.com/trireme-go/trireme/ipproto"
	"github.com/trireme-go/trireme/netsetup/frameport"
	"github.com/trireme-go/trireme/netsetup/tap"
	"github.com/trireme-go/trireme/netsetup/vnet"
	"github.com/trireme-go/trireme/reason"
)

// framePath is the daemon's frame path: each PU's TAP readers run their
// frames through the enforcer and write what it decided to the PU's ports;
// the notes go to the kernel loop.
//
// A frame leaving a PU for another PU of the node bridge takes one pass
// (onePass): both enforcers decide it in the same visit and it is written
// straight to the receiving PU's port, instead of being injected into the
// bridge and read again from the receiver's TAP.
type framePath struct {
	enf   *dataplane.Enforcer
	log   *slog.Logger
	notes func([]dataplane.Note) // queues notes for the kernel loop
	// authorizeNow puts the flows of handshake notes (Note.Handshake) in
	// the kernel at once, on the calling goroutine, in one transaction:
	// the frame that completed the handshake is delivered after it, so
	// that what the PU sends next stays in the kernel. nil: such notes
	// are queued like the others.
	authorizeNow func([]dataplane.Note) error
	// peers finds the receiving PU of a one-pass frame.
	peers peerTable
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
	// onePass: frames leaving a PU handed to another PU's enforcer in
	// the same visit. authorizedNow: flows put in the kernel before their
	// handshake's last frame was delivered (also counted in
	// kernelAuthorized); authorizeNowErrors: such transactions that
	// failed (their flows were queued for the kernel loop instead).
	onePass, authorizedNow, authorizeNowErrors atomic.Uint64
}

// puPorts is a PU's side of the frame path: the owner of its dataplane
// handle (dataplane.PU.Owner), so that a note or an injected frame leads
// to its steering name and ports without a lookup.
type puPorts struct {
	steer string       // name in the steering table
	ips   []netip.Addr // the PU's addresses (notForPU)
	mac   [6]byte      // its MAC (one-pass frames are addressed to it)
	// onePass: the PU is on the node bridge, which trireme owns; frames
	// between two such PUs may take one pass (frameIO.peerOf).
	onePass bool
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
	// A one-pass frame's receiving side: its decoded frame and what its
	// enforcer decided.
	ppkt packet.Packet
	pout dataplane.Output
	// Notes of the visit: handshake notes not yet in the kernel, and the
	// notes for the kernel loop.
	pending, later []dataplane.Note
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
	var peer *dataplane.PU
	if dir == dataplane.FromApp && code == reason.None {
		peer = f.peerOf(&f.pkt)
	}
	f.fp.enf.ProcessDecoded(f.pu, dir, &f.pkt, code, now, &f.out)
	f.pending, f.later = f.pending[:0], f.later[:0]
	if peer != nil {
		f.onePass(peer, hdr, now)
		return
	}
	if dir == dataplane.FromNet {
		// Toward the PU: a handshake this frame completes is put in the
		// kernel first, so that the PU's answer stays there. (Leaving
		// the PU, the handshake's last frame must be on its way before
		// the PU's flow is released, or its data could overtake it and
		// reach the peer's enforcer first.)
		f.split(f.out.Notes)
		f.authorizePending()
		f.send(&f.out, f.pp, dir, hdr)
		f.fp.notes(f.later)
		return
	}
	f.send(&f.out, f.pp, dir, hdr)
	// Notes after the frames: a flow is released to the kernel only once
	// its handshake ACK is on its way, or data could overtake it.
	f.fp.notes(f.out.Notes)
}

// split sorts notes into the handshake notes to put in the kernel before
// the frame is delivered (pending, when authorizeNow is set) and the
// others (later, for the kernel loop).
func (f *frameIO) split(notes []dataplane.Note) {
	for i := range notes {
		if notes[i].Handshake && notes[i].Kind == dataplane.Authorize && f.fp.authorizeNow != nil {
			f.pending = append(f.pending, notes[i])
		} else {
			f.later = append(f.later, notes[i])
		}
	}
}

// authorizePending puts the pending handshake notes in the kernel. If
// that fails they are queued for the kernel loop: until they are in, the
// flow's packets pass through the dataplane (fail closed).
func (f *frameIO) authorizePending() {
	if len(f.pending) == 0 {
		return
	}
	if err := f.fp.authorizeNow(f.pending); err != nil {
		f.fp.stats.authorizeNowErrors.Add(1)
		f.later = append(f.later, f.pending...)
	} else {
		f.fp.stats.authorizedNow.Add(uint64(len(f.pending)))
	}
	f.pending = f.pending[:0]
}

// send writes the injected frames (in order: a token-ACK precedes the data
// it belongs to), then the forwarded frame, then the frames to inject after
// it (a RST probe follows the RST). pp is the PU whose enforcer decided.
func (f *frameIO) send(out *dataplane.Output, pp *puPorts, dir dataplane.Direction, hdr vnet.Hdr) {
	after := false
	for i := range out.Inject {
		if out.Inject[i].AfterFrame {
			after = true
			continue
		}
		f.write(pp.port(out.Inject[i].To), vnet.Hdr{}, out.Inject[i].Frame)
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
		f.write(pp.port(to), hdr, out.Frame)
	}
	if !after {
		return
	}
	for i := range out.Inject {
		if out.Inject[i].AfterFrame {
			f.write(pp.port(out.Inject[i].To), vnet.Hdr{}, out.Inject[i].Frame)
		}
	}
}

// port is the PU's port toward to.
func (pp *puPorts) port(to dataplane.Target) frameport.Writer {
	if to == dataplane.ToPU {
		return pp.toPU
	}
	return pp.toNet
}

// ---- one pass ----

// peerOf returns the PU of this daemon a frame leaving the reader's PU
// may be handed to in the same visit, or nil for the normal path (the
// bridge, the receiver's steering, its TAP). Only what the normal path
// would deliver to that PU's enforcer and nothing else qualifies: a TCP
// segment (not fragmented, no VLAN tag) of IPv4 or IPv6 whose destination
// MAC is the PU's (no group MAC: broadcast and multicast go through the
// bridge; a routed frame carries the gateway's MAC) and whose destination
// address is one of the PU's, both PUs on the node bridge (trireme's own:
// a Docker bridge's traffic is subject to Docker's rules in the bridge
// path, which the shortcut would skip), the receiver not being removed.
// The receiver's steering would send such a segment to its enforcer
// (SYN/FIN/RST always; other segments unless its kernel set holds the
// flow, in which case its enforcer, which holds it too, forwards it);
// exclusions, which its steering accepts unseen, its enforcer passes as
// well. p is the frame decoded (code none).
func (f *frameIO) peerOf(p *packet.Packet) *dataplane.PU {
	fr := p.Frame
	if !f.pp.onePass || len(fr) < 14 || fr[0]&1 != 0 {
		return nil
	}
	peer := f.fp.peers.lookup([6]byte(fr[:6]))
	if peer == nil || peer == f.pu {
		return nil
	}
	pp := portsOf(peer)
	if pp == nil || !pp.onePass || pp.toNet != f.pp.toNet || !forPeer(pp, p) || peer.Removed() {
		return nil
	}
	return peer
}

// forPeer reports whether a decoded frame is one of the shape a one-pass
// frame must have, addressed to the PU of pp (peerOf).
func forPeer(pp *puPorts, p *packet.Packet) bool {
	fr := p.Frame
	if len(fr) < 14 || [6]byte(fr[:6]) != pp.mac || p.ARP || p.Proto != ipproto.TCP ||
		p.Frag != packet.NotFragment || p.VLAN != [2]uint16{} {
		return false
	}
	// The EtherType itself: a tagged frame (whatever tag) takes the bridge.
	if et := uint16(fr[12])<<8 | uint16(fr[13]); et != 0x0800 && et != 0x86dd {
		return false
	}
	dst := p.Dst.Unmap()
	for _, ip := range pp.ips {
		if ip.Unmap() == dst {
			return true
		}
	}
	return false
}

// onePass sends what the reader's enforcer decided for a frame leaving
// its PU toward peer: frames toward the network that are addressed to the
// peer go to the peer's enforcer (toPeer), in the order they would have
// been injected; the rest as usual. The handshake notes of both sides
// are put in the kernel in one transaction before the frame that
// completed the peer's handshake reaches it (the reader's side has no
// frame of its own to wait for: its handshake's last frame goes nowhere
// but to the peer).
func (f *frameIO) onePass(peer *dataplane.PU, hdr vnet.Hdr, now time.Time) {
	out := &f.out
	f.split(out.Notes)
	after := false
	for i := range out.Inject {
		if out.Inject[i].AfterFrame {
			after = true
			continue
		}
		f.emit(peer, out.Inject[i].To, vnet.Hdr{}, out.Inject[i].Frame, now)
	}
	if out.Verdict == dataplane.Forward && out.Frame != nil {
		if out.Rewritten {
			hdr = vnet.Hdr{}
		}
		f.emit(peer, dataplane.ToNet, hdr, out.Frame, now)
	}
	if after {
		for i := range out.Inject {
			if out.Inject[i].AfterFrame {
				f.emit(peer, out.Inject[i].To, vnet.Hdr{}, out.Inject[i].Frame, now)
			}
		}
	}
	// The reader's handshake notes that no frame of the peer's carried
	// into the kernel (the peer did not complete its side): queued after
	// the frames, as on the normal path.
	f.later = append(f.later, f.pending...)
	f.pending = f.pending[:0]
	f.fp.notes(f.later)
}

// emit sends one frame the reader's enforcer produced in a one-pass visit.
func (f *frameIO) emit(peer *dataplane.PU, to dataplane.Target, hdr vnet.Hdr, frame []byte, now time.Time) {
	if to == dataplane.ToPU {
		f.write(f.pp.toPU, hdr, frame)
		return
	}
	pp := portsOf(peer)
	// Each frame is checked again: one the enforcer crafted (a RST, a
	// token-ACK) has the addresses of the frame it answers, but the
	// shortcut takes nothing on trust.
	if f.ppkt.Decode(frame) != reason.None || !forPeer(pp, &f.ppkt) || peer.Removed() {
		f.write(f.pp.toNet, hdr, frame)
		return
	}
	f.fp.stats.onePass.Add(1)
	f.fp.enf.ProcessDecoded(peer, dataplane.FromNet, &f.ppkt, reason.None, now, &f.pout)
	f.split(f.pout.Notes)
	for i := range f.pout.Notes {
		if f.pout.Notes[i].Handshake {
			// The peer completed its side: both sides' flows go in the
			// kernel before the frame reaches it.
			f.authorizePending()
			break
		}
	}
	f.send(&f.pout, pp, dataplane.FromNet, hdr)
}

func (f *frameIO) write(w frameport.Writer, hdr vnet.Hdr, frame []byte) {
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

// peerTable indexes the PUs of the node bridge by MAC, for one-pass
// frames. A MAC two PUs claim finds neither: their frames take the
// bridge, which decides.
type peerTable struct {
	mu    sync.RWMutex
	byMAC map[[6]byte][]*dataplane.PU
}

func (t *peerTable) add(mac [6]byte, pu *dataplane.PU) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.byMAC == nil {
		t.byMAC = make(map[[6]byte][]*dataplane.PU)
	}
	t.byMAC[mac] = append(t.byMAC[mac], pu)
}

func (t *peerTable) remove(mac [6]byte, pu *dataplane.PU) {
	t.mu.Lock()
	defer t.mu.Unlock()
	l := t.byMAC[mac]
	for i, p := range l {
		if p == pu {
			l = append(l[:i:i], l[i+1:]...)
			break
		}
	}
	if len(l) == 0 {
		delete(t.byMAC, mac)
		return
	}
	t.byMAC[mac] = l
}

func (t *peerTable) lookup(mac [6]byte) *dataplane.PU {
	t.mu.RLock()
	defer t.mu.RUnlock()
	if l := t.byMAC[mac]; len(l) == 1 {
		return l[0]
	}
	return nil
}

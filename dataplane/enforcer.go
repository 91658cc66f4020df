// Package dataplane is trireme's I/O-free enforcement core. Frames go in
// with their direction relative to a local PU; a verdict, the frame to
// forward (possibly rewritten), frames to inject and notifications for the
// kernel fast path come out. The same code runs live (behind the TAPs) and
// offline (trireme replay). See docs/dataplane.md for the packet walk.
package dataplane

import (
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/trireme-go/trireme/dataplane/packet"
	"github.com/trireme-go/trireme/flow"
	"github.com/trireme-go/trireme/identity"
	"github.com/trireme-go/trireme/ipproto"
	"github.com/trireme-go/trireme/policy"
	"github.com/trireme-go/trireme/reason"
	"github.com/trireme-go/trireme/tokens"
)

// Direction is a frame's direction relative to the PU it is processed for.
type Direction uint8

const (
	// FromApp: leaving the PU (application path).
	FromApp Direction = iota
	// FromNet: arriving for the PU (network path).
	FromNet
)

func (d Direction) String() string {
	if d == FromApp {
		return "app"
	}
	return "net"
}

// Verdict is what to do with the processed frame.
type Verdict uint8

const (
	// Forward Output.Frame on its way.
	Forward Verdict = iota
	// Drop the frame. Output.Reason says why; reason.None means the enforcer
	// consumed it on purpose (e.g. a retransmitted SYN-ACK answered by
	// re-injecting the token-ACK).
	Drop
	// Reset: drop the frame; Output.Inject holds a TCP RST toward the local
	// PU (its connection attempt was refused).
	Reset
)

func (v Verdict) String() string {
	switch v {
	case Forward:
		return "forward"
	case Drop:
		return "drop"
	}
	return "reset"
}

// Target says where an injected frame goes.
type Target uint8

const (
	// ToPU: deliver to the local PU (as if arriving from the network).
	ToPU Target = iota
	// ToNet: send toward the network (as if leaving the PU).
	ToNet
)

// Injected is an extra frame the enforcer wants sent.
type Injected struct {
	To    Target
	Frame []byte
	// PU is the local PU the frame concerns (the one it is delivered to
	// when To is ToPU).
	PU *PU
	// AfterFrame: send it after Output.Frame (injected frames go before
	// it otherwise), e.g. a probe that must reach the PU after the RST it
	// follows.
	AfterFrame bool
	// Released: a datagram of the PU, held while its flow's handshake
	// ran (Output.Held), sent now, unchanged.
	Released bool
}

// Discard is a held datagram dropped before it could be released: its
// flow was denied, or ended before its handshake completed.
type Discard struct {
	PU     *PU
	Frame  []byte
	Reason reason.Code
}

// NoteKind says what a Note asks of the live daemon.
type NoteKind uint8

const (
	// Authorize: the flow is decided and its handshake complete; its packets
	// may bypass the dataplane (add it to the kernel's authorized set).
	Authorize NoteKind = iota + 1
	// Revoke: the flow closed, expired, was evicted or denied; remove it.
	Revoke
)

// reauthorizeEvery bounds how often a flow's packets reaching the dataplane
// renew its kernel authorization.
const reauthorizeEvery = time.Second

// Note is a notification for the kernel fast path.
type Note struct {
	Kind  NoteKind
	PU    *PU
	Proto ipproto.Proto
	// Local is the PU's end, Remote the peer's.
	Local, Remote netip.AddrPort
	VLAN          [2]uint16
	// Handshake marks the Authorize note of a TCP flow the enforcer just
	// established (handshake completed, or picked up mid-stream), not a
	// refresh of a known flow: the daemon may put it in the kernel before
	// the frame that completed it is delivered (node/frameio.go).
	Handshake bool
	// Count (Revoke, Config.KernelCounts): read what the kernel counted on
	// the flow's entries before removing them, and give it back with
	// AddKernelCounts (the flow's final record is still to be written).
	// Since is when the flow's entry was made, so that counts reach the
	// flow they belong to.
	Count bool
	Since int64
	// Record (Revoke, Config.KernelCounts) is the flow's final record: the
	// caller adds to it what the kernel counted on the entries it removes
	// (Record.KernelCounted) and hands it to the Sink itself.
	Record *Record
}

// Output is the result of Process. Reuse one per goroutine: it owns the
// buffers that rewritten and injected frames live in (valid until the next
// Process or Expire call with the same Output) and the decoded packet.
type Output struct {
	Verdict Verdict
	Reason  reason.Code
	// Frame is the frame to forward (Verdict Forward): the input frame,
	// possibly shortened in place (token stripped), or a buffer of Output.
	Frame []byte
	// Rewritten says that Frame is not the input frame as it came: a token
	// was added or stripped (and SYN data with it). A rewritten frame has
	// whole checksums and is no segmentation-offload super-packet;
	// otherwise Frame is the input frame, unchanged.
	Rewritten bool
	// Inject lists extra frames, in order. A token-ACK injected before the
	// data it precedes comes first.
	Inject []Injected
	// Notes for the live daemon (authorize / revoke a flow in the kernel).
	Notes []Note
	// Held says that the frame (Verdict Drop, Reason none) is held while
	// its flow's datagram handshake runs: it comes out later, unchanged,
	// as an Injected marked Released, or in Discarded.
	Held bool
	// Discarded lists held datagrams dropped (and counted) now.
	Discarded []Discard

	pkt packet.Packet
	// loans are held datagrams released into Inject: back to their pool
	// at the next reset.
	loans []*[]byte
	main  []byte
	tok   []byte
	bufs  [4][]byte
	nbuf  int
}

func (o *Output) reset() {
	o.Verdict, o.Reason, o.Frame, o.Rewritten, o.Held = Forward, reason.None, nil, false, false
	o.Inject, o.Notes, o.nbuf, o.Discarded = o.Inject[:0], o.Notes[:0], 0, o.Discarded[:0]
	for i, b := range o.loans {
		putBuf(b)
		o.loans[i] = nil
	}
	o.loans = o.loans[:0]
	if o.main == nil {
		o.main = make([]byte, 0, 2048)
		o.tok = make([]byte, 0, 1280)
		for i := range o.bufs {
			o.bufs[i] = make([]byte, 0, 2048)
		}
	}
}

// injectBuf returns an empty buffer for a crafted frame.
func (o *Output) injectBuf() []byte {
	if o.nbuf == len(o.bufs) {
		return nil // more injections than slots: allocate (never expected)
	}
	b := o.bufs[o.nbuf][:0]
	o.nbuf++
	return b
}

func (o *Output) inject(pu *PU, to Target, f []byte) {
	o.Inject = append(o.Inject, Injected{To: to, Frame: f, PU: pu})
}

// MidStream is the rule for TCP packets of flows the table does not know
// (e.g. after a restart): not a SYN, and no state.
type MidStream uint8

const (
	// MidStreamDrop drops them (reason.UnknownFlow). The default: fail closed.
	MidStreamDrop MidStream = iota
	// MidStreamReset drops them and answers with a RST to the sender, so
	// that both ends notice quickly and reconnect through a handshake.
	MidStreamReset
	// MidStreamAllowACL picks the flow up when the PU's CIDR rules (peer
	// identity unknown: peer nil) allow it, either as a client (egress to
	// the remote port) or as a server (ingress to the local port).
	MidStreamAllowACL
)

var midStreamNames = [...]string{MidStreamDrop: "drop", MidStreamReset: "reset", MidStreamAllowACL: "acl"}

// String returns the rule's name: drop, reset or acl.
func (m MidStream) String() string {
	if int(m) < len(midStreamNames) {
		return midStreamNames[m]
	}
	return "mid-stream-" + strconv.Itoa(int(m))
}

// MarshalText writes the rule's name (the daemon config's midStream).
func (m MidStream) MarshalText() ([]byte, error) { return []byte(m.String()), nil }

// UnmarshalText reads a rule's name; "allow-acl" is the name trireme replay's
// --mid-stream first gave acl.
func (m *MidStream) UnmarshalText(b []byte) error {
	s := string(b)
	if s == "allow-acl" {
		s = "acl"
	}
	for i, name := range midStreamNames {
		if s == name {
			*m = MidStream(i)
			return nil
		}
	}
	return fmt.Errorf("mid-stream rule %q: want drop, reset or acl", b)
}

// Config configures an Enforcer.
type Config struct {
	// Tokens is the node's token engine.
	Tokens *tokens.Engine
	// Policy is the compiled policy (SetPolicy replaces it).
	Policy *policy.Engine
	// Flows sizes the flow table and sets its timeouts.
	Flows flow.Config
	// MidStream is the rule for packets of unknown TCP flows.
	MidStream MidStream
	// MTU bounds the IP packet a token insertion may produce (default 1500;
	// negative: no bound).
	MTU int
	// Sink receives flow records (nil: none).
	Sink Sink
	// RecordEstablished writes an interim record ("end": "established")
	// when a flow is established, besides its final record. The live
	// daemon sets it: its flows close in the kernel, so their final
	// records come late.
	RecordEstablished bool
	// Fragments bounds the table of fragmented datagrams whose first
	// fragment was allowed (default 1024).
	Fragments int
	// KernelBypass says that the packets of authorized flows stay in the
	// kernel (the live daemon's steering): the enforcer then does not see
	// an established TCP flow's sequence numbers move, so it leaves the
	// judgment of RSTs from the network to the PU's own TCP and probes the
	// PU for the outcome (see docs/dataplane.md). Replay sees every packet
	// and leaves it false.
	KernelBypass bool
	// KernelCounts says that the caller reads what the kernel counted on a
	// flow's authorized entries when it revokes them (the live daemon),
	// so that final records carry the packets that never reached the
	// enforcer: the final record of a flow still authorized in the kernel
	// rides on its Revoke note (Note.Record) instead of going to the Sink,
	// and a flow revoked before its record is written (at its FINs) asks
	// for the counts (Note.Count) and gets them with AddKernelCounts.
	KernelCounts bool
}

// PU is the handle of a local processing unit registered with the
// enforcer (AddPU). Frames, notes and injected frames name their PU by it;
// the caller's own state for the PU rides along (Owner), so that nothing
// has to be looked up per frame.
type PU struct {
	id    string
	owner any
	index uint32
	// ident is the PU's identity: its tags and its token signer. It
	// changes in place when an orchestrator relabels the PU (SetTags).
	ident atomic.Pointer[puIdent]
	view  atomic.Pointer[puView]
	// refused counts the PU's new flows refused for lack of room
	// (flow-quota, table-full).
	refused atomic.Uint64
	// held is the bytes of the PU's datagrams held while their flows'
	// handshakes run (at most HoldPerPU).
	held atomic.Int64
}

// ID is the PU's ID as registered.
func (pu *PU) ID() string { return pu.id }

// Tags are the PU's identity tags as registered.
func (pu *PU) Tags() identity.Tags { return pu.ident.Load().tags }

// puIdent is a PU's identity: its tags and the signer of its tokens.
type puIdent struct {
	tags  identity.Tags
	local *tokens.Local
	// strs is tags.Strings(), made once for the PU's flow records (which
	// share it) rather than per record.
	strs []string
}

func newPUIdent(tags identity.Tags, local *tokens.Local) *puIdent {
	return &puIdent{tags: tags, local: local, strs: tags.Strings()}
}

// tagStrings returns the PU's tags as "key=value" strings; the slice is
// shared.
func (pu *PU) tagStrings() []string {
	id := pu.ident.Load()
	if id.strs == nil && len(id.tags) > 0 {
		return id.tags.Strings()
	}
	return id.strs
}

func (pu *PU) local() *tokens.Local { return pu.ident.Load().local }

// Owner is the value the caller registered the PU with.
func (pu *PU) Owner() any { return pu.owner }

// Removed reports whether the PU was removed (RemovePU): notes that name
// it are moot, its kernel state goes with it.
func (pu *PU) Removed() bool { return pu.view.Load() == nil }

type puView struct {
	eng *policy.Engine
	pol *policy.PUPolicy
}

// Enforcer is one node's enforcement core. Safe for concurrent use with one
// Output per goroutine.
type Enforcer struct {
	tok        *tokens.Engine
	node       string
	policy     atomic.Pointer[policy.Engine]
	table      *flow.Table[conn]
	midStream  MidStream
	mtu        int
	sink       Sink
	recordOpen bool
	frags      *fragTable
	// kernelBypass: Config.KernelBypass.
	kernelBypass bool
	// kernelCounts: Config.KernelCounts.
	kernelCounts bool

	// viewMu serialises the computation of PU views (SetPolicy, SetTags),
	// so that a view is never stored for a policy or tags already replaced.
	viewMu sync.Mutex

	mu   sync.Mutex
	pus  []*PU // by index; nil when removed
	free []uint32

	stats counters
	// pending: client datagram flows waiting for an answer (Retry).
	pending pendingHellos
}

// New returns an Enforcer.
func New(cfg Config) (*Enforcer, error) {
	if cfg.Tokens == nil || cfg.Policy == nil {
		return nil, errors.New("dataplane: Tokens and Policy are required")
	}
	mtu := cfg.MTU
	if mtu == 0 {
		mtu = 1500
	} else if mtu < 0 {
		mtu = 0
	}
	e := &Enforcer{
		tok:        cfg.Tokens,
		node:       cfg.Tokens.Node(),
		table:      flow.New[conn](cfg.Flows),
		midStream:  cfg.MidStream,
		mtu:        mtu,
		sink:       cfg.Sink,
		recordOpen: cfg.RecordEstablished,
		frags:      newFragTable(cfg.Fragments),

		kernelBypass: cfg.KernelBypass,
		kernelCounts: cfg.KernelCounts,
	}
	e.policy.Store(cfg.Policy)
	return e, nil
}

// AddPU registers a local PU and returns its handle; its policy view is
// computed now (once per PU per policy engine). owner is the caller's value
// for the PU (PU.Owner; the daemon: its frame ports and steering name).
func (e *Enforcer) AddPU(id string, tags identity.Tags, owner any) *PU {
	pu := &PU{id: id, owner: owner}
	pu.ident.Store(newPUIdent(tags, e.tok.NewLocal(tags)))
	e.viewMu.Lock()
	eng := e.policy.Load()
	pu.view.Store(&puView{eng: eng, pol: eng.ForPU(tags)})
	e.viewMu.Unlock()
	e.mu.Lock()
	if n := len(e.free); n > 0 {
		pu.index = e.free[n-1]
		e.free = e.free[:n-1]
		e.pus[pu.index] = pu
	} else {
		pu.index = uint32(len(e.pus))
		e.pus = append(e.pus, pu)
	}
	e.mu.Unlock()
	return pu
}

// RemovePU forgets a PU: its flows are closed (records written, revoke
// notes appended to out) and later packets for it are dropped (UnknownPU).
func (e *Enforcer) RemovePU(pu *PU, now time.Time, out *Output) {
	out.reset()
	e.viewMu.Lock()
	pu.view.Store(nil)
	e.viewMu.Unlock()
	ns := now.UnixNano()
	e.table.RangePU(pu.index, func(ent *flow.Entry[conn]) bool {
		e.finish(pu, ent, EndPURemoved, ns, out)
		return true
	})
	e.mu.Lock()
	if int(pu.index) < len(e.pus) && e.pus[pu.index] == pu {
		e.pus[pu.index] = nil
		e.free = append(e.free, pu.index)
	}
	e.mu.Unlock()
}

// SetPolicy replaces the policy engine and every PU's view of it. Flows
// already decided keep their decision; new connections use the new policy.
func (e *Enforcer) SetPolicy(eng *policy.Engine) {
	e.viewMu.Lock()
	defer e.viewMu.Unlock()
	e.policy.Store(eng)
	e.mu.Lock()
	pus := append([]*PU(nil), e.pus...)
	e.mu.Unlock()
	for _, pu := range pus {
		if pu != nil && pu.view.Load() != nil {
			pu.view.Store(&puView{eng: eng, pol: eng.ForPU(pu.Tags())})
		}
	}
}

// Flows returns the number of tracked flows and evictions so far.
func (e *Enforcer) Flows() (n int, evictions uint64) {
	return e.table.Len(), e.table.Evictions()
}

// PUStats is one PU's use of the flow table.
type PUStats struct {
	// Flows is the number of flows the PU holds (at most Stats.PerPU).
	Flows int
	// Refused counts the PU's new flows refused for lack of room: its
	// share full of established flows (flow-quota) or the table full of
	// them (table-full).
	Refused uint64
}

// PUStats returns pu's use of the flow table.
func (e *Enforcer) PUStats(pu *PU) PUStats {
	return PUStats{Flows: e.table.PULen(pu.index), Refused: pu.refused.Load()}
}

func (e *Enforcer) puByIndex(i uint32) *PU {
	e.mu.Lock()
	defer e.mu.Unlock()
	if int(i) < len(e.pus) {
		return e.pus[i]
	}
	return nil
}

// Expire removes flows whose timers ran out at now: records are written
// and revoke notes appended to out. Call it periodically (the daemon: every
// second; replay: as capture time advances).
func (e *Enforcer) Expire(now time.Time, out *Output) int {
	out.reset()
	ns := now.UnixNano()
	e.frags.expire(ns)
	e.retry(ns, out)
	return e.table.Sweep(ns, func(ent *flow.Entry[conn]) {
		e.finish(e.puByIndex(ent.Key.PU), ent, EndExpired, ns, out)
	})
}

// Flush closes every flow (end of a replay): records with end "open" for
// flows still alive.
func (e *Enforcer) Flush(now time.Time, out *Output) {
	out.reset()
	ns := now.UnixNano()
	e.table.Range(func(ent *flow.Entry[conn]) bool {
		end := EndOpen
		if ns > ent.Deadline() {
			end = EndExpired
		}
		e.finish(e.puByIndex(ent.Key.PU), ent, end, ns, out)
		return true
	})
}

// Process runs one frame of PU pu in direction dir through the enforcer.
// The frame may be modified in place (token stripping shortens it). now is
// the packet's time (the flow timers' clock).
func (e *Enforcer) Process(pu *PU, dir Direction, frame []byte, now time.Time, out *Output) {
	code := out.pkt.Decode(frame)
	e.ProcessDecoded(pu, dir, &out.pkt, code, now, out)
}

// ProcessDecoded is Process for a frame its caller decoded already, so
// that a frame is decoded once: p and code are what p.Decode(frame)
// returned, p.Frame is the frame. p is updated as the frame is rewritten.
func (e *Enforcer) ProcessDecoded(pu *PU, dir Direction, p *packet.Packet, code reason.Code, now time.Time, out *Output) {
	if out.main == nil || out.nbuf != 0 || len(out.Inject) != 0 || len(out.Notes) != 0 || len(out.Discarded) != 0 || len(out.loans) != 0 {
		out.reset()
	} else {
		out.Verdict, out.Reason, out.Frame, out.Rewritten, out.Held = Forward, reason.None, nil, false, false
	}
	if pu == nil {
		e.drop(out, reason.UnknownPU)
		return
	}
	ns := now.UnixNano()
	frame := p.Frame
	// Fast path: an established, authorized flow is one lookup. It takes
	// the common shapes only (TCP without SYN, FIN or RST, and UDP; no IP
	// options or extension headers, no fragments); anything else is for
	// the slow path's checks.
	if code == reason.None && fastShape(p) {
		var k flow.Key
		makeKey(&k, pu, dir, p)
		sh := e.table.Shard(&k)
		sh.Lock()
		if ent := sh.Get(&k); ent != nil && ent.State == flow.Established && ent.Value.authorized && !sh.Expired(ent, ns) {
			sh.Touch(ent, flow.Dir(dir), len(frame), ns)
			if v := &ent.Value; p.Proto == ipproto.TCP && !v.bypass {
				v.seq.observe(int(dir&1), p.Flags, p.Seq, p.Ack, p.Window, p.End-p.Payload)
			}
			// Live, an authorized flow's packets stay in the kernel until
			// its entry there times out: a packet here means the entry is
			// gone while the flow lives on, so authorize it again (at most
			// once a second per flow).
			if ns-ent.Value.authNoteAt >= int64(reauthorizeEvery) {
				ent.Value.authNoteAt = ns
				out.Notes = append(out.Notes, note(Authorize, pu, &ent.Key))
			}
			sh.Unlock()
			e.stats.forwarded.Add(1)
			out.Frame = frame
			return
		}
		sh.Unlock()
	}
	if code != reason.None {
		e.drop(out, code)
		return
	}
	e.slowPath(pu, dir, p, ns, now, out)
}

// fastShape reports whether a decoded packet may take the fast path: the
// shapes the established-flow lookup is for.
func fastShape(p *packet.Packet) bool {
	switch p.Proto {
	case ipproto.TCP:
		if p.Flags&(packet.SYN|packet.FIN|packet.RST) != 0 {
			return false
		}
		// A segment that carries data and the marker option may be a
		// handshake ACK sent again: its token frame is for the slow path
		// to take out (established).
		if p.Payload < p.End {
			if _, ok := packet.FindOption(p, tokens.Option); ok {
				return false
			}
		}
	case ipproto.UDP:
		// A datagram handshake message (or a datagram that looks like
		// one) is for the slow path to judge.
		if p.Payload+tokens.MarkerSize <= p.End && [tokens.MarkerSize]byte(p.Frame[p.Payload:p.Payload+tokens.MarkerSize]) == tokens.DatagramMarker {
			return false
		}
	default:
		return false
	}
	if p.Frag != packet.NotFragment {
		return false
	}
	if p.IPv6 {
		return p.L4 == p.L3+40
	}
	return p.L4 == p.L3+20
}

// slowPath decides a decoded frame that no established flow took.
func (e *Enforcer) slowPath(pu *PU, dir Direction, p *packet.Packet, ns int64, now time.Time, out *Output) {
	frame := p.Frame
	if p.ARP {
		e.forward(out, frame)
		return
	}
	view := pu.view.Load()
	if view == nil {
		e.drop(out, reason.UnknownPU)
		return
	}
	remote := p.Dst
	if dir == FromNet {
		remote = p.Src
	}
	// A PU is no router and no DHCP server (live, the kernel drops these
	// first: netsetup/steer's anti-spoofing rules).
	if dir == FromApp && p.FromRouter() {
		e.drop(out, reason.RogueRouter)
		return
	}
	// Excluded networks are the peer's side only: a PU that takes an
	// excluded address as its source is not excluded.
	if view.eng.IsExcluded(remote) {
		e.forward(out, frame)
		return
	}
	if p.IsNDP() {
		// IPv6 neighbour discovery and MLD are link plumbing, not
		// connections: they pass when they stay on the link (live, the
		// kernel passes those itself; what reaches the dataplane failed
		// its checks), anything else of these types is dropped.
		if !p.OnLink() {
			e.drop(out, reason.InvalidNDP)
			return
		}
		e.forward(out, frame)
		return
	}
	switch p.Frag {
	case packet.LaterFragment:
		ok, held, key := e.frags.allowed(pu.index, dir, p, ns)
		switch {
		case !ok:
			e.drop(out, reason.Fragment)
		case held && e.holdFragment(pu, view, dir, p, &key, ns, now, out):
		default:
			e.forward(out, frame)
		}
		return
	case packet.FirstFragment:
		if p.Proto == ipproto.TCP && p.Flags&packet.SYN != 0 {
			// The token and the options may be split across fragments: a
			// fragmented SYN cannot be authorized.
			e.drop(out, reason.Fragment)
			return
		}
	}
	c := slowPacket{e: e, pu: pu, view: view, dir: dir, p: p, frame: frame, ns: ns, now: now, out: out}
	makeKey(&c.key, pu, dir, p)
	c.remote = remote
	if p.Proto == ipproto.TCP {
		c.tcp()
	} else {
		c.datagram()
	}
	if p.Frag == packet.FirstFragment && out.Verdict == Forward {
		e.frags.add(pu.index, dir, p, ns)
	}
}

func makeKey(k *flow.Key, pu *PU, dir Direction, p *packet.Packet) {
	if dir == FromApp {
		k.Local, k.Remote = p.Src.As16(), p.Dst.As16()
		k.LocalPort, k.RemotePort = p.SrcPort, p.DstPort
	} else {
		k.Local, k.Remote = p.Dst.As16(), p.Src.As16()
		k.LocalPort, k.RemotePort = p.DstPort, p.SrcPort
	}
	k.VLAN = p.VLAN
	k.PU = pu.index
	k.Proto = p.Proto
}

func (e *Enforcer) forward(out *Output, f []byte) {
	out.Verdict, out.Reason, out.Frame = Forward, reason.None, f
	e.stats.forwarded.Add(1)
}

func (e *Enforcer) drop(out *Output, code reason.Code) {
	out.Verdict, out.Reason, out.Frame = Drop, code, nil
	e.stats.count(code)
}

// counters are the enforcer's packet counters.
type counters struct {
	forwarded, consumed, injected, resets, probes atomic.Uint64
	// logged: FINs and RSTs the kernel passed and logged, judged
	// (ProcessLogged); loggedIgnored: logged packets that were no FIN or
	// RST of a flow held as authorized (nothing changed).
	logged, loggedIgnored atomic.Uint64
	// lateTokens: token frames taken out of segments of established
	// flows (a handshake ACK sent again, established).
	lateTokens atomic.Uint64
	drops      [reason.Count]atomic.Uint64
}

func (s *counters) count(code reason.Code) {
	if code == reason.None {
		s.consumed.Add(1)
		return
	}
	if int(code) < len(s.drops) {
		s.drops[code].Add(1)
	}
}

// Stats is a snapshot of the enforcer's counters.
type Stats struct {
	// Packets is every processed frame: Forwarded + Consumed + all Drops
	// (Reset verdicts count as drops of their reason).
	Packets, Forwarded, Consumed, Injected, Resets uint64
	// Probes counts RST probes sent to PUs (Config.KernelBypass): RSTs
	// from the network on flows the kernel carries, handed to the PU's TCP
	// to judge.
	Probes uint64
	// Logged counts FINs and RSTs the kernel passed on flows it carries
	// and logged to the daemon, judged here (ProcessLogged); not in
	// Packets (they did not cross the dataplane). LoggedIgnored: logged
	// packets that changed nothing (no such authorized flow, malformed).
	Logged, LoggedIgnored uint64
	// LateTokens counts token frames taken out of segments of established
	// flows before they reached the PU (handshake ACKs sent again).
	LateTokens uint64
	// Drops counts dropped packets by reason (index: reason.Code).
	Drops [reason.Count]uint64
	// Flows is the number of flows tracked; Capacity the most the table
	// holds, PerPU the most one PU may hold (flow.Config).
	Flows, Capacity, PerPU int
	Evictions              uint64
}

// Stats returns the counters.
func (e *Enforcer) Stats() Stats {
	s := Stats{
		Forwarded: e.stats.forwarded.Load(),
		Consumed:  e.stats.consumed.Load(), Injected: e.stats.injected.Load(), Resets: e.stats.resets.Load(),
		Probes: e.stats.probes.Load(), Logged: e.stats.logged.Load(), LoggedIgnored: e.stats.loggedIgnored.Load(),
		LateTokens: e.stats.lateTokens.Load(),
		Flows:      e.table.Len(), Capacity: e.table.Capacity(), PerPU: e.table.PerPU(), Evictions: e.table.Evictions(),
	}
	s.Packets = s.Forwarded + s.Consumed
	for i := range s.Drops {
		s.Drops[i] = e.stats.drops[i].Load()
		s.Packets += s.Drops[i]
	}
	return s
}

// fragTable remembers fragmented datagrams whose first fragment was
// forwarded, so that their later fragments pass; bounded, entries expire.
// A later fragment must not overlap the first one (RFC 1858 §4, RFC 5722):
// it could rewrite the transport header the decision was made on.
type fragTable struct {
	mu  sync.Mutex
	m   map[fragKey]fragEntry
	max int
}

type fragKey struct {
	src, dst [16]byte
	id       uint32
	pu       uint32
	dir      Direction
	proto    ipproto.Proto
}

type fragEntry struct {
	deadline int64
	first    int // bytes of the datagram's payload in its first fragment
	// held: the first fragment is held while its flow's datagram
	// handshake runs (udp_handshake.go); key is that flow's.
	held bool
	key  flow.Key
}

const fragTTL = int64(30 * time.Second)

func newFragTable(max int) *fragTable {
	if max <= 0 {
		max = 1024
	}
	return &fragTable{m: make(map[fragKey]fragEntry), max: max}
}

func fk(pu uint32, dir Direction, p *packet.Packet) fragKey {
	return fragKey{src: p.Src.As16(), dst: p.Dst.As16(), id: p.FragID, pu: pu, dir: dir, proto: p.Proto}
}

func (f *fragTable) add(pu uint32, dir Direction, p *packet.Packet, now int64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.m) >= f.max {
		f.expireLocked(now)
		if len(f.m) >= f.max {
			return // full: later fragments will be dropped (fail closed)
		}
	}
	f.m[fk(pu, dir, p)] = fragEntry{deadline: now + fragTTL, first: p.End - p.L4}
}

// allowed reports whether a later fragment belongs to a datagram whose
// first fragment was forwarded or held (same PU, direction, addresses,
// protocol and ID, within fragTTL) and starts after that first fragment's
// data; held and key say whether the first fragment is held and by which
// flow.
func (f *fragTable) allowed(pu uint32, dir Direction, p *packet.Packet, now int64) (ok, held bool, key flow.Key) {
	f.mu.Lock()
	defer f.mu.Unlock()
	d, ok := f.m[fk(pu, dir, p)]
	return ok && now <= d.deadline && p.FragOff >= d.first, d.held, d.key
}

// hold remembers a first fragment held by flow key.
func (f *fragTable) hold(pu uint32, dir Direction, p *packet.Packet, now int64, key *flow.Key) {
	f.add(pu, dir, p, now)
	f.mu.Lock()
	if d, ok := f.m[fk(pu, dir, p)]; ok {
		d.held, d.key = true, *key
		f.m[fk(pu, dir, p)] = d
	}
	f.mu.Unlock()
}

func (f *fragTable) expire(now int64) {
	f.mu.Lock()
	f.expireLocked(now)
	f.mu.Unlock()
}

func (f *fragTable) expireLocked(now int64) {
	for k, d := range f.m {
		if now > d.deadline {
			delete(f.m, k)
		}
	}
}

// Restore re-creates an established, authorized flow that the kernel still
// holds after a dataplane restart (the daemon lists its authorized set), so
// that its packets, should they come back to the dataplane, are not treated
// as mid-stream. local is the PU's end. It returns false when the flow is
// already known, the PU unknown, or the table full. The flow has no
// recorded decision: its record says "restored".
func (e *Enforcer) Restore(pu *PU, proto ipproto.Proto, local, remote netip.AddrPort, now time.Time) bool {
	if pu == nil || pu.view.Load() == nil {
		return false
	}
	ns := now.UnixNano()
	k := flow.Key{Local: local.Addr().As16(), Remote: remote.Addr().As16(),
		LocalPort: local.Port(), RemotePort: remote.Port(), PU: pu.index, Proto: proto}
	sh := e.table.Shard(&k)
	sh.Lock()
	defer sh.Unlock()
	if sh.Get(&k) != nil {
		return false
	}
	ent, _ := sh.Insert(&k, ns, nil)
	if ent == nil {
		return false
	}
	v := &ent.Value
	v.role, v.restored, v.authorized, v.decided, v.decidedAt, v.authNoteAt = roleClient, true, true, true, ns, ns
	v.bypass = e.kernelBypass
	v.dec.Action = policy.Allow
	v.target = pu.view.Load().eng.IsTarget(remote.Addr())
	if proto != ipproto.TCP {
		v.role = roleDatagram
	}
	sh.SetState(ent, flow.Established, ns)
	return true
}

// EstablishedFlow is an established TCP flow as a restarted daemon needs
// it (EstablishedTCP; back with Restore and RestorePeer).
type EstablishedFlow struct {
	Local, Remote netip.AddrPort // Local is the PU's end
	LastSeen      time.Time      // the last packet of it the dataplane saw
	Server        bool           // the PU accepted the connection
	// Peer is the peer's verified identity and its node ("" and nil when
	// the flow has none: a peer outside the target networks, a flow
	// restored without it or picked up mid-stream).
	PeerNode string
	Peer     identity.Tags
}

// EstablishedTCP calls fn for each established, authorized TCP flow of pu:
// what a restarted daemon needs to Restore the flows the kernel no longer
// holds (their entries expired while they were idle) and to judge the
// flows it restores by the peer's identity, as before the restart
// (RestorePeer). fn runs under the flow table's lock: it must not call the
// enforcer; f is reused.
func (e *Enforcer) EstablishedTCP(pu *PU, fn func(f *EstablishedFlow)) {
	if pu == nil {
		return
	}
	var f EstablishedFlow
	e.table.RangePU(pu.index, func(ent *flow.Entry[conn]) bool {
		if ent.Key.PU == pu.index && ent.Key.Proto == ipproto.TCP && ent.State == flow.Established && ent.Value.authorized {
			k, v := &ent.Key, &ent.Value
			f = EstablishedFlow{
				Local:    netip.AddrPortFrom(netip.AddrFrom16(k.Local).Unmap(), k.LocalPort),
				Remote:   netip.AddrPortFrom(netip.AddrFrom16(k.Remote).Unmap(), k.RemotePort),
				LastSeen: time.Unix(0, ent.LastSeen),
				Server:   v.role == roleServer,
			}
			if v.peer != nil {
				f.PeerNode, f.Peer = v.peer.Node, v.peer.Tags
			}
			fn(&f)
		}
		return false
	})
}

// RestoredPeer is a peer identity a previous run saved (EstablishedTCP),
// made once and shared by every flow that restores it, as the flows of one
// verified peer share its token's verification.
type RestoredPeer struct{ p *tokens.Peer }

// NewRestoredPeer makes the restored identity of a peer of node with tags
// (nil without tags).
func NewRestoredPeer(node string, tags identity.Tags) *RestoredPeer {
	if len(tags) == 0 {
		return nil
	}
	return &RestoredPeer{&tokens.Peer{Tags: tags, Identity: identity.New(tags), Node: node}}
}

// RestorePeer gives the restored TCP flow of pu between local (the PU's
// end) and remote (Restore) back its side and its peer's identity, as a
// previous run saved them (EstablishedTCP), so that a policy change judges
// it as it would have before the restart (by the peer's identity, in the
// direction of its SYN) rather than by addresses alone. A flow that has
// them, or that is not restored, is left alone; so is a nil peer.
func (e *Enforcer) RestorePeer(pu *PU, local, remote netip.AddrPort, server bool, peer *RestoredPeer) bool {
	if pu == nil || peer == nil || !local.IsValid() || !remote.IsValid() {
		return false
	}
	k := flow.Key{Local: local.Addr().As16(), Remote: remote.Addr().As16(),
		LocalPort: local.Port(), RemotePort: remote.Port(), PU: pu.index, Proto: ipproto.TCP}
	sh := e.table.Shard(&k)
	sh.Lock()
	defer sh.Unlock()
	ent := sh.Get(&k)
	if ent == nil || !ent.Value.restored || ent.Value.peer != nil || ent.State != flow.Established {
		return false
	}
	v := &ent.Value
	v.peer = peer.p
	v.role = roleClient
	if server {
		v.role = roleServer
	}
	return true
}

// Reevaluate applies the current policy to every established flow. Flows
// the policy no longer allows are revoked (a Revoke note each, for the
// daemon to take them out of the kernel's authorized set), recorded as
// denied, and kept as revoked for a while (flow.Config.Revoked): their next packet,
// steered back to the dataplane, is dropped and both ends get a RST. Flows
// whose peer identity is unknown (restored without it, picked up
// mid-stream) are judged by CIDR rules. It returns the number of flows revoked.
func (e *Enforcer) Reevaluate(now time.Time, out *Output) int {
	out.reset()
	ns := now.UnixNano()
	n := 0
	e.table.Range(func(ent *flow.Entry[conn]) bool {
		v := &ent.Value
		if ent.State != flow.Established || !v.authorized {
			return false
		}
		pu := e.puByIndex(ent.Key.PU)
		if pu == nil {
			return false
		}
		view := pu.view.Load()
		if view == nil {
			return false
		}
		var id *identity.Identity
		if v.peer != nil {
			id = v.peer.Identity
		}
		k := &ent.Key
		remote := k.RemoteAddr()
		proto := k.Proto
		var d policy.Decision
		switch {
		case v.restored && v.peer == nil || v.pickedUp:
			rport, lport := k.RemotePort, k.LocalPort
			if !k.Proto.HasPorts() {
				rport, lport = 0, 0 // ICMP echo identifiers are no ports to the rules
			}
			d = view.pol.Egress(nil, remote, proto, rport)
			if !d.Allowed() {
				d = view.pol.Ingress(nil, remote, proto, lport)
			}
		case v.role == roleServer || v.role == roleDatagram && v.firstDir == FromNet:
			port := k.LocalPort
			if !k.Proto.HasPorts() {
				port = 0
			}
			d = view.pol.Ingress(id, remote, proto, port)
		default:
			port := k.RemotePort
			if !k.Proto.HasPorts() {
				port = 0
			}
			d = view.pol.Egress(id, remote, proto, port)
		}
		if d.Allowed() {
			return false
		}
		n++
		v.authorized = false
		v.dec, v.revoked = d, true
		v.reason = d.Reason
		if v.reason == reason.None {
			v.reason = reason.PolicyDenied
		}
		v.decidedAt = ns
		sh := e.table.Shard(k)
		sh.SetState(ent, flow.Revoked, ns)
		rv := note(Revoke, pu, k)
		if e.kernelCounts {
			// The record waits for the kernel's counts.
			rv.Record = e.buildRecord(pu, ent, EndRevoked, ns)
			v.recorded = true
		} else {
			e.record(pu, ent, EndRevoked, ns)
		}
		out.Notes = append(out.Notes, rv)
		return false
	})
	return n
}

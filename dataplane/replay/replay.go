// Package replay runs packet captures through per-node enforcers: each
// captured frame goes through its sender's enforcer (application path) when
// the sender is a PU, onto the wire, then through its receiver's enforcer
// (network path) when the receiver is a PU. It is the engine behind
// `trireme replay` and the dataplane's capture tests.
package replay

import (
	"bytes"
	"crypto/rand"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"sort"
	"time"

	"github.com/trireme-go/trireme/dataplane"
	"github.com/trireme-go/trireme/dataplane/packet"
	"github.com/trireme-go/trireme/flow"
	"github.com/trireme-go/trireme/ipproto"
	"github.com/trireme-go/trireme/policy"
	"github.com/trireme-go/trireme/reason"
	"github.com/trireme-go/trireme/tokens"
)

// Output receives what the replay produces. Frames are only valid during
// the call.
type Output interface {
	// Wire is a frame as it crossed the network between enforcers.
	Wire(t time.Time, frame []byte)
	// Delivered is a frame handed to a PU. origin is the index (0-based) of
	// the captured packet it comes from, or -1 for frames an enforcer made
	// (RSTs, injected token-ACKs).
	Delivered(pu string, t time.Time, frame []byte, origin int)
	// Record is a flow record (from any node).
	Record(r *dataplane.Record)
}

// Options configure a Replayer.
type Options struct {
	Topology *Topology
	Policy   *policy.Set
	// PKI: nodes get certificates from a throwaway CA (default: one PSK).
	PKI       bool
	MidStream dataplane.MidStream
	Flows     flow.Config
	// MTU for token insertion (0: 1500; negative: none).
	MTU int
	Out Output
}

type node struct {
	name string
	enf  *dataplane.Enforcer
	out  dataplane.Output
	// active: the node's enforcer has had a frame. The timers and the end
	// of the replay run over active nodes only (the others have nothing
	// to sweep), so that nodes the capture never reaches cost nothing
	// after their setup.
	active bool
}

type pu struct {
	name string
	node *node
	pu   *dataplane.PU
}

// Replayer runs packets through the enforcers of a topology.
type Replayer struct {
	nodes []*node
	byIP  map[addrKey]*pu
	first *pu
	out   Output
	pkt   packet.Packet
	sum   Summary
	recs  *recordSink
	last  time.Time
	// sweep and retry are when the nodes' flow tables were last swept
	// and their datagram handshakes retried (Unix ns; once clock): every
	// node at once, as capture time advances.
	sweep, retry int64
	clock        bool               // sweep and retry are set
	wire         []net.HardwareAddr // Topology.WireMACs
	// copies holds the frames of one captured packet's passage (the
	// captured frame, what enforcers forward or inject), reused from
	// packet to packet: replaying allocates nothing per packet.
	copies frameCopies
	// heldKey is the captured datagram as it went in, for held.
	heldKey []byte
	// held: the captured packets an enforcer holds while a datagram
	// handshake runs, by frame bytes: released (sent on with their
	// origin) or discarded (counted dropped) later.
	held map[string][]int
	// lose: handshake messages the wire still has to lose, by kind
	// (Topology.Lose).
	lose map[tokens.DatagramKind]int
}

// Summary counts what happened.
type Summary struct {
	PacketsIn int `json:"packetsIn"`
	// Forwarded: captured packets that reached their destination (a PU, or
	// the wire toward an external host).
	Forwarded int `json:"forwarded"`
	// Consumed: captured packets an enforcer absorbed on purpose.
	Consumed int `json:"consumed"`
	// Dropped counts captured packets dropped, by reason name.
	Dropped map[string]int `json:"dropped"`
	// Injected counts frames enforcers made (RSTs, token-ACKs).
	Injected int `json:"injected"`
	// Unreadable counts capture records of unsupported link types.
	Unreadable int `json:"unreadable"`
	// Connections counts TCP connections by outcome; Flows every flow
	// record (one per enforcer side).
	ConnectionsAllowed int `json:"connectionsAllowed"`
	ConnectionsDenied  int `json:"connectionsDenied"`
	// ConnectionsIncomplete: no side decided (the handshake never finished).
	ConnectionsIncomplete int    `json:"connectionsIncomplete"`
	Flows                 int    `json:"flows"`
	Evictions             uint64 `json:"evictions"`
	// Handshake counts the datagram handshake messages enforcers sent on
	// the wire, by kind (hello, reply, confirm): more hellos than flows are
	// retries. Lost counts those the wire lost (Topology.Lose).
	Handshake map[string]int `json:"handshake,omitempty"`
	Lost      int            `json:"lost,omitempty"`
}

// New builds the nodes, enforcers and PUs of the topology.
func New(o Options) (*Replayer, error) {
	if o.Topology == nil || o.Policy == nil {
		return nil, errors.New("replay: topology and policy are required")
	}
	set := *o.Policy
	if len(o.Topology.TargetNetworks) > 0 {
		set.TargetNetworks = o.Topology.TargetNetworks
	}
	if len(o.Topology.ExcludedNetworks) > 0 {
		set.ExcludedNetworks = o.Topology.ExcludedNetworks
	}
	eng, err := policy.Compile(&set)
	if err != nil {
		return nil, err
	}
	r := &Replayer{byIP: map[addrKey]*pu{}, out: o.Out, held: map[string][]int{},
		sum: Summary{Dropped: map[string]int{}, Handshake: map[string]int{}}, wire: o.Topology.WireMACs,
		lose: maps.Clone(o.Topology.Lose)}
	r.recs = &recordSink{r: r, conns: map[connKey]connState{}}
	secrets, err := newSecrets(o.PKI, o.Topology)
	if err != nil {
		return nil, err
	}
	nodes := map[string]*node{}
	for _, spec := range o.Topology.PUs {
		n := nodes[spec.Node]
		if n == nil {
			te, err := tokens.New(tokens.Config{Node: spec.Node, Secrets: secrets[spec.Node]})
			if err != nil {
				return nil, err
			}
			enf, err := dataplane.New(dataplane.Config{Tokens: te, Policy: eng, Flows: o.Flows,
				MidStream: o.MidStream, MTU: o.MTU, Sink: r.recs})
			if err != nil {
				return nil, err
			}
			n = &node{name: spec.Node, enf: enf}
			nodes[spec.Node] = n
			r.nodes = append(r.nodes, n)
		}
		p := &pu{name: spec.Name, node: n, pu: n.enf.AddPU(spec.Name, spec.Tags, nil)}
		if r.first == nil {
			r.first = p
		}
		for _, a := range spec.IPs {
			r.byIP[keyOf(a)] = p
		}
	}
	if r.first == nil {
		return nil, errors.New("replay: the topology has no PU")
	}
	return r, nil
}

func newSecrets(pki bool, t *Topology) (map[string]tokens.Secrets, error) {
	out := map[string]tokens.Secrets{}
	if !pki {
		key := make([]byte, 32)
		rand.Read(key)
		s, err := tokens.NewPSK(key)
		if err != nil {
			return nil, err
		}
		for _, p := range t.PUs {
			out[p.Node] = s
		}
		return out, nil
	}
	// A throwaway CA valid across any capture's timestamps.
	from := time.Date(1990, 1, 1, 0, 0, 0, 0, time.UTC)
	validity := 100 * 365 * 24 * time.Hour
	ca, caKey, err := tokens.NewCA("trireme-replay", from, validity)
	if err != nil {
		return nil, err
	}
	for _, p := range t.PUs {
		if out[p.Node] != nil {
			continue
		}
		cert, key, err := tokens.IssueNode(ca, caKey, p.Node, from, validity)
		if err != nil {
			return nil, err
		}
		s, err := tokens.NewPKI(ca, cert, key)
		if err != nil {
			return nil, err
		}
		out[p.Node] = s
	}
	return out, nil
}

// addrKey is an address as a map key without a pointer (netip.Addr holds
// its zone's): hashed as plain bytes, twice as fast per packet. v4 keeps
// an IPv4 address apart from its IPv4-mapped IPv6 form.
type addrKey struct {
	a  [16]byte
	v4 bool
}

func keyOf(a netip.Addr) addrKey { return addrKey{a.As16(), a.Is4()} }

// frameCopies hands out buffers for frame copies; reset makes them all
// free again (the copies of the last packet are no longer used).
type frameCopies struct {
	bufs [][]byte
	n    int
}

func (c *frameCopies) reset() { c.n = 0 }

// clone returns a copy of f, valid until reset.
func (c *frameCopies) clone(f []byte) []byte {
	if c.n == len(c.bufs) {
		c.bufs = append(c.bufs, make([]byte, 0, 2048))
	}
	b := append(c.bufs[c.n][:0], f...)
	c.bufs[c.n] = b[:0] // keep a grown buffer
	c.n++
	return b
}

// endpoints reads the source and destination addresses (IP, or the
// protocol addresses of an ARP packet) of the frame r.pkt holds; code is
// what decoding it returned.
func (r *Replayer) endpoints(code reason.Code) (src, dst netip.Addr, ok bool) {
	p := &r.pkt
	frame := p.Frame
	if code != reason.None {
		return src, dst, false
	}
	if p.ARP {
		b := frame[p.L3:]
		if len(b) >= 28 && b[4] == 6 && b[5] == 4 {
			return netip.AddrFrom4([4]byte(b[14:18])), netip.AddrFrom4([4]byte(b[24:28])), true
		}
		return src, dst, false
	}
	return p.Src, p.Dst, true
}

// fromWire reports whether a frame's source MAC is one of the topology's
// wire hosts.
func (r *Replayer) fromWire(frame []byte) bool {
	if len(frame) < 12 {
		return false
	}
	for _, m := range r.wire {
		if bytes.Equal(frame[6:12], m) {
			return true
		}
	}
	return false
}

// Packet runs captured packet number idx (0-based) with timestamp t. frame
// is not kept nor changed: the caller may reuse it.
func (r *Replayer) Packet(idx int, t time.Time, frame []byte) {
	r.sum.PacketsIn++
	r.copies.reset()
	r.expire(t)
	frame = r.copies.clone(frame)
	code := r.pkt.Decode(frame)
	src, dst, ok := r.endpoints(code)
	var from, to *pu
	if ok {
		from, to = r.byIP[keyOf(src)], r.byIP[keyOf(dst)]
		if r.fromWire(frame) {
			from = nil // put on the wire by a host without an enforcer
		}
	} else {
		// Frames whose addresses cannot be read are given to one enforcer
		// as network input: it drops them with the reason.
		to = r.first
	}
	wire := []wireFrame{{frame, idx}}
	if from != nil {
		n := r.activate(from.node)
		// A datagram may be held (Output.Held): remember it as it went in.
		datagram := code == reason.None && !r.pkt.ARP && r.pkt.Proto != ipproto.TCP
		if datagram {
			r.heldKey = append(r.heldKey[:0], frame...)
		}
		n.enf.ProcessDecoded(from.pu, dataplane.FromApp, &r.pkt, code, t, &n.out)
		wire = r.injected(from, n, t, wire[:0])
		switch {
		case n.out.Verdict == dataplane.Forward:
			// The captured frame's copy (perhaps shortened in place), or a
			// buffer of n.out, which the node's next frame reuses.
			f := n.out.Frame
			if len(f) == 0 || &f[0] != &frame[0] {
				f = r.copies.clone(f)
			}
			wire = append(wire, wireFrame{f, idx})
		case n.out.Held:
			key := r.heldKey
			if !datagram {
				key = frame
			}
			r.held[string(key)] = append(r.held[string(key)], idx)
			fallthrough
		default:
			if !n.out.Held {
				r.count(n.out.Verdict, n.out.Reason)
			}
			for _, w := range wire {
				r.send(w.frame, t, w.origin, 0)
			}
			return
		}
	}
	last := len(wire) - 1
	for i, w := range wire {
		if !ok && i == last {
			r.receive(to, w.frame, t, w.origin, 0)
			continue
		}
		r.send(w.frame, t, w.origin, 0)
	}
}

// wireFrame is a frame an enforcer sends toward the network, with the index
// of the captured packet it carries (-1: one an enforcer made).
type wireFrame struct {
	frame  []byte
	origin int
}

// injected handles the frames n's enforcer injected and the held
// datagrams it discarded (its Output): frames toward p are delivered (not
// those marked AfterFrame), frames toward the network appended to wire,
// released datagrams with the origin they were held with.
func (r *Replayer) injected(p *pu, n *node, t time.Time, wire []wireFrame) []wireFrame {
	for _, in := range n.out.Inject {
		switch {
		case in.Released:
			wire = append(wire, wireFrame{r.copies.clone(in.Frame), r.unhold(in.Frame)})
		case in.To == dataplane.ToNet:
			r.sum.Injected++
			wire = append(wire, wireFrame{r.copies.clone(in.Frame), -1})
		case !in.AfterFrame && p != nil:
			r.sum.Injected++
			r.deliver(p, t, in.Frame, -1)
		default:
			r.sum.Injected++
		}
	}
	for _, d := range n.out.Discarded {
		if r.unhold(d.Frame) >= 0 {
			r.sum.Dropped[d.Reason.String()]++
		}
	}
	return wire
}

// unhold returns the origin of a held frame (-1 if unknown).
func (r *Replayer) unhold(f []byte) int {
	q := r.held[string(f)]
	if len(q) == 0 {
		return -1
	}
	o := q[0]
	if len(q) == 1 {
		delete(r.held, string(f))
	} else {
		r.held[string(f)] = q[1:]
	}
	return o
}

func (r *Replayer) count(v dataplane.Verdict, code reason.Code) {
	if v != dataplane.Forward && code == reason.None {
		r.sum.Consumed++
		return
	}
	r.sum.Dropped[code.String()]++
}

// send puts a frame on the wire and hands it to its receiver's enforcer.
func (r *Replayer) send(w []byte, t time.Time, origin, depth int) {
	if r.out != nil {
		r.out.Wire(t, w)
	}
	code := r.pkt.Decode(w)
	if origin < 0 && r.handshake(code) {
		return // lost on the wire
	}
	_, dst, ok := r.endpoints(code)
	to := r.byIP[keyOf(dst)]
	if !ok || to == nil {
		if origin >= 0 {
			r.sum.Forwarded++
		}
		return
	}
	r.receiveDecoded(to, code, t, origin, depth)
}

// handshake counts the frame r.pkt holds (decoded with code) if it is a
// datagram handshake message an enforcer made, and reports whether the
// wire loses it (Topology.Lose).
func (r *Replayer) handshake(code reason.Code) (lost bool) {
	if code != reason.None || r.pkt.Proto != ipproto.UDP {
		return false
	}
	k := tokens.KindOf(r.pkt.UDPPayload())
	if k == tokens.NotHandshake {
		return false
	}
	r.sum.Handshake[kindName(k)]++
	if r.lose[k] > 0 {
		r.lose[k]--
		r.sum.Lost++
		return true
	}
	return false
}

// kindName names a handshake message kind in the summary.
func kindName(k tokens.DatagramKind) string {
	switch k {
	case tokens.Hello:
		return "hello"
	case tokens.Reply:
		return "reply"
	case tokens.Confirm:
		return "confirm"
	case tokens.Reject:
		return "reject"
	}
	return "other"
}

// activate notes that n's enforcer is given a frame.
func (r *Replayer) activate(n *node) *node {
	n.active = true
	return n
}

// receive runs frame w through its receiver's enforcer.
func (r *Replayer) receive(to *pu, w []byte, t time.Time, origin, depth int) {
	r.receiveDecoded(to, r.pkt.Decode(w), t, origin, depth)
}

// receiveDecoded is receive for the frame r.pkt holds, decoded with code.
func (r *Replayer) receiveDecoded(to *pu, code reason.Code, t time.Time, origin, depth int) {
	n := r.activate(to.node)
	n.enf.ProcessDecoded(to.pu, dataplane.FromNet, &r.pkt, code, t, &n.out)
	back := r.injected(to, n, t, nil)
	if n.out.Verdict == dataplane.Forward {
		r.deliver(to, t, n.out.Frame, origin)
		if origin >= 0 {
			r.sum.Forwarded++
		}
	} else if origin >= 0 {
		r.count(n.out.Verdict, n.out.Reason)
	}
	for _, in := range n.out.Inject {
		if in.To == dataplane.ToPU && in.AfterFrame {
			r.deliver(to, t, in.Frame, -1)
		}
	}
	if depth < 4 {
		for _, b := range back {
			r.send(b.frame, t, b.origin, depth+1)
		}
	}
}

func (r *Replayer) deliver(p *pu, t time.Time, f []byte, origin int) {
	if r.out != nil {
		r.out.Delivered(p.name, t, f, origin)
	}
}

// expire sweeps the flow tables as capture time advances (every second)
// and runs the datagram handshake retries (the daemon: every 100 ms). It
// looks at the clock once per packet, at the nodes only when one is due.
func (r *Replayer) expire(t time.Time) {
	if t.After(r.last) {
		r.last = t
	}
	ns := t.UnixNano()
	switch {
	case !r.clock:
		r.clock, r.sweep = true, ns // the first packet starts the clock
		return
	case ns-r.sweep >= int64(time.Second):
		r.sweep, r.retry = ns, ns
		for _, n := range r.nodes {
			if !n.active {
				continue
			}
			n.enf.Expire(t, &n.out)
			r.sendAll(n, t)
		}
	case ns-r.retry >= int64(100*time.Millisecond):
		r.retry = ns
		for _, n := range r.nodes {
			if !n.active {
				continue
			}
			n.enf.Retry(t, &n.out)
			r.sendAll(n, t)
		}
	}
}

// sendAll sends what n's enforcer injected outside a packet (retries) and
// counts the held datagrams it discarded.
func (r *Replayer) sendAll(n *node, t time.Time) {
	for _, w := range r.injected(nil, n, t, nil) {
		r.send(w.frame, t, w.origin, 0)
	}
}

// Finish flushes every flow (records for flows still open) and returns the
// summary.
func (r *Replayer) Finish() Summary {
	// Datagram handshakes still waiting for an answer get their retries
	// (at most HelloTries, under 4 s), so that a flow toward a peer without
	// an enforcer ends missing-token as it would live.
	// The other flows end at the capture's last time.
	for i, t := 0, r.last; i < 50; i++ {
		t = t.Add(100 * time.Millisecond)
		r.copies.reset()
		for _, n := range r.nodes {
			if !n.active {
				continue
			}
			n.enf.Retry(t, &n.out)
			r.sendAll(n, t)
		}
	}
	r.copies.reset()
	for _, n := range r.nodes {
		if !n.active {
			continue
		}
		n.enf.Flush(r.last, &n.out)
		r.injected(nil, n, r.last, nil)
		_, ev := n.enf.Flows()
		r.sum.Evictions += ev
	}
	for _, st := range r.recs.conns {
		switch {
		case st.denied:
			r.sum.ConnectionsDenied++
		case st.allowed:
			r.sum.ConnectionsAllowed++
		default:
			r.sum.ConnectionsIncomplete++
		}
	}
	return r.sum
}

// NodeStats returns each node's enforcer counters, by node name.
func (r *Replayer) NodeStats() map[string]dataplane.Stats {
	m := map[string]dataplane.Stats{}
	for _, n := range r.nodes {
		m[n.name] = n.enf.Stats()
	}
	return m
}

// connKey identifies a TCP connection in the summary: its ends and its
// VLANs (the same 4-tuple in two VLANs is two connections, as in the flow
// table).
type connKey struct {
	client, server netip.AddrPort
	vlan           [2]uint16
}

// recordSink forwards records and tallies TCP connections: a connection
// is denied when any side denied it.
type recordSink struct {
	r     *Replayer
	conns map[connKey]connState
}

type connState struct{ allowed, denied bool }

func (s *recordSink) Record(rec *dataplane.Record) {
	s.r.sum.Flows++
	switch {
	case rec.Proto != ipproto.TCP:
	case rec.End == dataplane.EndRefused:
		// A SYN refused on the 4-tuple of a live connection: an attempt
		// of its own, not that connection's outcome.
		s.r.sum.ConnectionsDenied++
	default:
		k := connKey{client: rec.Client, server: rec.Server}
		copy(k.vlan[:], rec.VLAN)
		st := s.conns[k]
		st.allowed = st.allowed || rec.Action == "allow"
		st.denied = st.denied || rec.Action == "deny" || rec.Action == "reject"
		s.conns[k] = st
	}
	if s.r.out != nil {
		s.r.out.Record(rec)
	}
}

// DroppedString renders the drop counts sorted by name.
func (s Summary) DroppedString() string {
	names := make([]string, 0, len(s.Dropped))
	for k := range s.Dropped {
		names = append(names, k)
	}
	sort.Strings(names)
	var b bytes.Buffer
	for _, k := range names {
		fmt.Fprintf(&b, "  %-22s %d\n", k, s.Dropped[k])
	}
	return b.String()
}

// A flow's state (conn) and the slow-path packet (slowPacket) that the
// TCP and datagram handlers of this package carry a frame through.

package dataplane

import (
	"net/netip"
	"time"

	"github.com/trireme-go/trireme/dataplane/packet"
	"github.com/trireme-go/trireme/flow"
	"github.com/trireme-go/trireme/policy"
	"github.com/trireme-go/trireme/reason"
	"github.com/trireme-go/trireme/tokens"
)

// role is the local PU's part in a flow.
type role uint8

const (
	roleNone   role = iota
	roleClient      // the PU sent the SYN
	roleServer      // the PU received the SYN
	roleDatagram
)

// conn is the enforcer's per-flow state, stored inline in the flow table.
type conn struct {
	tok        tokens.Conn
	peer       *tokens.Peer
	dec        policy.Decision
	decided    bool
	authorized bool
	target     bool // the peer is inside the target networks (tokens)
	pickedUp   bool // mid-stream pickup (MidStreamAllowACL)
	role       role
	reason     reason.Code // why the flow was denied
	clientISN  uint32
	serverISN  uint32
	synLen     uint32 // sequence space of the SYN (1 + TFO data)
	ackWindow  uint16 // window of the client's handshake ACK (token-ACK re-injection)
	decidedAt  int64
	// authNoteAt is when the last Authorize note was emitted (ns).
	authNoteAt int64
	// released: the kernel no longer holds the flow (revoked when it
	// started closing), though the enforcer still forwards its last packets.
	released bool
	// kernelCounted: the kernel's counts of its entries were added to the
	// flow's counters (AddKernelCounts).
	kernelCounted bool
	recorded      bool // the flow record was written (at the denial or the RST)
	revoked       bool // denied by a policy change after it was established
	restored      bool // re-created from the kernel's authorized set (restart)
	firstDir      Direction
	reset         bool // a RST ended the flow; it lingers for the closing timeout
	// seq is what the enforcer saw of the flow's sequence numbers (RST
	// acceptance). bypass: the flow's packets may pass in the kernel
	// without the enforcer (Config.KernelBypass, once authorized), so seq
	// is out of date: the PU's own TCP judges RSTs from the network, and a
	// probe tells the enforcer what it decided (probeAt: the last probe).
	seq     seqs
	bypass  bool
	probeAt int64
	// fins is what the enforcer saw of the flow's FINs (flow.Entry.FIN
	// holds the ones it believes).
	fins fins
	// A new connection's SYN for this 4-tuple, passed to the PU while the
	// established connection lives (its TCP answers a live connection
	// with a challenge ACK; a SYN-ACK means the old one is gone): its ISN,
	// the end of its sequence space and its window scale offer.
	succ      bool
	succISN   uint32
	succEnd   uint32
	succScale uint8
	// dg: the datagram handshake (udp_handshake.go).
	dg dgState
}

// slowPacket is one frame on the slow path (no established flow took it)
// with what its handlers need: the PU and its policy view, the parsed
// packet, its flow key and the shard that holds it (locked while the
// handlers run), and the Output they fill.
type slowPacket struct {
	e      *Enforcer
	pu     *PU
	view   *puView
	dir    Direction
	p      *packet.Packet
	frame  []byte
	ns     int64
	now    time.Time
	out    *Output
	key    flow.Key
	remote netip.Addr
	sh     *flow.Shard[conn]
	// logged: a FIN or RST the kernel passed and logged (ProcessLogged):
	// it is judged like a steered one, but neither counted (the kernel's
	// set entry counted it) nor forwarded (it is on its way already).
	logged bool
}

func (c *slowPacket) localPort() uint16 {
	if c.dir == FromApp {
		return c.p.SrcPort
	}
	return c.p.DstPort
}

func (c *slowPacket) remotePort() uint16 {
	if c.dir == FromApp {
		return c.p.DstPort
	}
	return c.p.SrcPort
}

// insert adds a flow. When the PU holds its whole share of the table (or
// the table is full) a denied, ended or half-open flow is evicted (its
// record written, its kernel entry revoked); when none can be, the new flow
// is refused: rc says why (flow-quota, table-full), counted for the PU.
func (c *slowPacket) insert() (ent *flow.Entry[conn], rc reason.Code) {
	ent, rc = c.sh.Insert(&c.key, c.ns, c.evicted)
	if ent == nil {
		c.pu.refused.Add(1)
	}
	return ent, rc
}

// evicted ends a flow the table evicts to make room (possibly another
// PU's, whose shard the table holds locked).
func (c *slowPacket) evicted(v *flow.Entry[conn]) {
	c.e.finish(c.e.puByIndex(v.Key.PU), v, EndEvicted, c.ns, c.out)
}

func (c *slowPacket) touch(ent *flow.Entry[conn], n int) {
	if c.logged {
		c.sh.Refresh(ent, c.ns)
		return
	}
	c.sh.Touch(ent, flow.Dir(c.dir), n, c.ns)
}

// pass lets the packet being decided go on: forwarded, or, logged, already
// gone (the kernel passed it).
func (c *slowPacket) pass() {
	if c.logged {
		c.out.Verdict, c.out.Reason, c.out.Frame = Drop, reason.None, nil
		return
	}
	c.e.forward(c.out, c.frame)
}

func (c *slowPacket) side() int { return int(c.dir & 1) }

func note(kind NoteKind, pu *PU, k *flow.Key) Note {
	return Note{Kind: kind, PU: pu, Proto: k.Proto,
		Local:  netip.AddrPortFrom(k.LocalAddr(), k.LocalPort),
		Remote: netip.AddrPortFrom(k.RemoteAddr(), k.RemotePort), VLAN: k.VLAN}
}

// stripToken takes the token (marker option at off, n bytes of token
// frame) out of the packet, in place; Output.Rewritten says so.
func (c *slowPacket) stripToken(off, n int) ([]byte, reason.Code) {
	f, rc := packet.StripToken(c.p, off, n)
	if rc == reason.None {
		c.out.Rewritten = true
	}
	return f, rc
}

// insertToken writes the packet with tok added into the Output's buffer;
// Output.Rewritten says so.
func (c *slowPacket) insertToken(tok []byte) ([]byte, reason.Code) {
	f, rc := packet.InsertToken(c.out.main[:0], c.p, tokens.Option, tok, c.e.mtu)
	if rc == reason.None {
		c.out.Rewritten = true
	}
	return f, rc
}

// Mid-stream pickup: TCP segments of flows the table does not know (e.g.
// after a restart), under Config.MidStream.

package dataplane

import (
	"github.com/trireme-go/trireme/dataplane/packet"
	"github.com/trireme-go/trireme/ipproto"
	"github.com/trireme-go/trireme/reason"
)

// midStream applies the configured rule to a TCP packet without state.
func (c *slowPacket) midStream() {
	p := c.p
	rst := p.Flags&packet.RST != 0
	switch c.e.midStream {
	case MidStreamReset:
		if rst {
			break
		}
		seg := packet.Segment{Reverse: true, Flags: packet.RST, Seq: p.Ack}
		if p.Flags&packet.ACK == 0 {
			seg = packet.Segment{Reverse: true, Flags: packet.RST | packet.ACK,
				Ack: p.Seq + uint32(p.PayloadLen())}
		}
		f := packet.BuildTCP(c.out.injectBuf(), p, &seg)
		c.e.stats.resets.Add(1)
		c.e.stats.injected.Add(1)
		if c.dir == FromApp {
			c.out.inject(c.pu, ToPU, f)
			c.out.Verdict, c.out.Reason = Reset, reason.UnknownFlow
			c.e.stats.count(reason.UnknownFlow)
			return
		}
		c.out.inject(c.pu, ToNet, f)
	case MidStreamAllowACL:
		if rst {
			break
		}
		d := c.view.pol.Egress(nil, c.remote, ipproto.TCP, c.remotePort())
		if !d.Allowed() {
			d = c.view.pol.Ingress(nil, c.remote, ipproto.TCP, c.localPort())
		}
		if !d.Allowed() {
			break
		}
		ent, rc := c.insert()
		if ent == nil {
			c.e.drop(c.out, rc)
			return
		}
		ent.Value.role, ent.Value.pickedUp = roleClient, true
		ent.Value.target = c.view.eng.IsTarget(c.remote)
		c.decide(ent, d)
		c.establish(ent)
		c.touch(ent, len(c.frame))
		f := c.frame
		if off, n, rc := c.findToken(); rc == reason.None {
			// A peer's enforcer still had state (e.g. our restart in the
			// middle of its handshake): its token must not reach the PU.
			if g, rc := c.stripToken(off, n); rc == reason.None {
				f = g
			}
		}
		c.observe(ent)
		c.e.forward(c.out, f)
		return
	}
	c.e.drop(c.out, reason.UnknownFlow)
}

package steer

import (
	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// Rule building blocks. Registers: 1 is a 128-bit scratch register; the
// concatenated set keys are loaded into the 32-bit registers from 8
// (NFT_REG32_00) on, one per 4 bytes, as nft does.
const (
	regScratch = 1
	regKey     = 8

	ethIPv4 = unix.ETH_P_IP
	ethIPv6 = unix.ETH_P_IPV6
	ethARP  = unix.ETH_P_ARP

	protoICMPv6 = 58
	tcpFlagFIN  = 0x01
	tcpFlagSYN  = 0x02
	tcpFlagRST  = 0x04
)

func ethProto(p uint16) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyPROTOCOL, Register: regScratch},
		&expr.Cmp{Op: expr.CmpOpEq, Register: regScratch, Data: binaryutil.BigEndian.PutUint16(p)},
	}
}

func l4Proto(op expr.CmpOp, p uint8) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: regScratch},
		&expr.Cmp{Op: op, Register: regScratch, Data: []byte{p}},
	}
}

func cat(parts ...[]expr.Any) []expr.Any {
	var out []expr.Any
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

var (
	accept = []expr.Any{&expr.Verdict{Kind: expr.VerdictAccept}}
)

func counted(name string, v []expr.Any) []expr.Any {
	return cat([]expr.Any{&expr.Objref{Type: int(nftables.ObjTypeCounter), Name: name}}, v)
}

// steerTo duplicates the packet into the TAP and drops the original: the
// equivalent of `fwd to TAP`, which google/nftables v0.3.0 cannot express.
func steerTo(tapIndex int, counter string) []expr.Any {
	return counted(counter, []expr.Any{
		&expr.Immediate{Register: regScratch, Data: binaryutil.NativeEndian.PutUint32(uint32(tapIndex))},
		&expr.Dup{RegDev: regScratch, IsRegDevSet: true},
		&expr.Verdict{Kind: expr.VerdictDrop},
	})
}

// addrFields returns the payload offset and length of the source and
// destination addresses of a family.
func addrFields(v6 bool) (srcOff, dstOff, l uint32) {
	if v6 {
		return 8, 24, 16
	}
	return 12, 16, 4
}

func loadNet(off, l, reg uint32) *expr.Payload {
	return &expr.Payload{OperationType: expr.PayloadLoad, DestRegister: reg, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: l}
}

func loadTransport(off, l, reg uint32) *expr.Payload {
	return &expr.Payload{OperationType: expr.PayloadLoad, DestRegister: reg, Base: expr.PayloadBaseTransportHeader, Offset: off, Len: l}
}

// chainRules returns the rule bodies of one PU chain, in order.
func (s *Steerer) chainRules(pu PU, egress bool, sets puSets) [][]expr.Any {
	dir, tap := "in", pu.TapIn
	if egress {
		dir, tap = "out", pu.TapOut
	}
	steerCounter := counterName(pu.Name, dir, "steer")
	authCounter := counterName(pu.Name, dir, "auth")
	var rules [][]expr.Any

	// 1. Packets the dataplane injected toward the PU carry its mark. Only
	//    the egress chain can see them: injection away from the PU goes
	//    through the injection port, not this veth, and a mark set inside
	//    the PU's namespace is cleared when the packet crosses the veth.
	if egress {
		rules = append(rules, cat([]expr.Any{
			&expr.Meta{Key: expr.MetaKeyMARK, Register: regScratch},
			&expr.Cmp{Op: expr.CmpOpEq, Register: regScratch, Data: binaryutil.NativeEndian.PutUint32(s.cfg.Mark)},
		}, accept))
	}
	// 2. ARP and IPv6 neighbour discovery (ICMPv6 133-137) pass.
	rules = append(rules, cat(ethProto(ethARP), accept))
	rules = append(rules, cat(ethProto(ethIPv6), l4Proto(expr.CmpOpEq, protoICMPv6), []expr.Any{
		loadTransport(0, 1, regScratch),
		&expr.Range{Op: expr.CmpOpEq, Register: regScratch, FromData: []byte{133}, ToData: []byte{137}},
	}, accept))
	// 3. Excluded networks pass, as source or destination.
	for _, v6 := range []bool{false, true} {
		ep, set := uint16(ethIPv4), s.x4
		if v6 {
			ep, set = ethIPv6, s.x6
		}
		so, do, l := addrFields(v6)
		for _, off := range []uint32{so, do} {
			rules = append(rules, cat(ethProto(ep), []expr.Any{
				loadNet(off, l, regScratch),
				&expr.Lookup{SourceRegister: regScratch, SetName: set.Name, SetID: set.ID},
			}, accept))
		}
	}
	// 4. Every TCP SYN (and SYN-ACK) goes to the dataplane, authorized or
	//    not, and so do FIN and RST: the enforcer sees every connection
	//    end, so its table and flow records follow the kernel's flows
	//    (a few packets per connection, none on the data path). Leaving
	//    the PU, within its budget (budget.go).
	synFinRst := cat(l4Proto(expr.CmpOpEq, unix.IPPROTO_TCP), []expr.Any{
		loadTransport(13, 1, regScratch),
		&expr.Bitwise{SourceRegister: regScratch, DestRegister: regScratch, Len: 1, Mask: []byte{tcpFlagSYN | tcpFlagFIN | tcpFlagRST}, Xor: []byte{0}},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: regScratch, Data: []byte{0}},
	})
	budget := !egress && s.cfg.Budget.Rate > 0
	if budget {
		rules = append(rules, budgetRule(s.cfg.Budget, pu.Name, synFinRst))
	}
	rules = append(rules, cat(synFinRst, steerTo(tap, steerCounter)))
	// 4b. IP fragments go to the dataplane (see fragmentMatches); leaving
	//     the PU, within its budget (a bucket per family).
	for _, m := range fragmentMatches() {
		if budget {
			rules = append(rules, budgetRule(s.cfg.Budget, pu.Name, m))
		}
		rules = append(rules, cat(m, steerTo(tap, steerCounter)))
	}
	// 5. Packets of authorized flows stay in the kernel.
	for _, v6 := range []bool{false, true} {
		ep, set, w := uint16(ethIPv4), sets.a4, uint32(1)
		if v6 {
			ep, set, w = ethIPv6, sets.a6, 4
		}
		so, do, l := addrFields(v6)
		addrs := []expr.Any{loadNet(so, l, regKey), loadNet(do, l, regKey+w)}
		proto := &expr.Meta{Key: expr.MetaKeyL4PROTO, Register: regKey + 2*w}
		lookup := &expr.Lookup{SourceRegister: regKey, SetName: set.Name, SetID: set.ID}
		for _, p := range []uint8{unix.IPPROTO_TCP, unix.IPPROTO_UDP} {
			rules = append(rules, cat(ethProto(ep), l4Proto(expr.CmpOpEq, p), addrs, []expr.Any{
				proto,
				loadTransport(0, 2, regKey+2*w+1),
				loadTransport(2, 2, regKey+2*w+2),
				lookup,
			}, counted(authCounter, accept)))
		}
		// Protocols without ports: the key's port fields are zero.
		rules = append(rules, cat(ethProto(ep), l4Proto(expr.CmpOpNeq, unix.IPPROTO_TCP), l4Proto(expr.CmpOpNeq, unix.IPPROTO_UDP), addrs, []expr.Any{
			proto,
			&expr.Immediate{Register: regKey + 2*w + 1, Data: []byte{0, 0, 0, 0}},
			&expr.Immediate{Register: regKey + 2*w + 2, Data: []byte{0, 0, 0, 0}},
			lookup,
		}, counted(authCounter, accept)))
	}
	// 6. Everything else goes to the dataplane (leaving the PU, within its
	//    budget).
	if budget {
		rules = append(rules, budgetRule(s.cfg.Budget, pu.Name, nil))
	}
	rules = append(rules, steerTo(tap, steerCounter))
	return rules
}

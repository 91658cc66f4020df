package steer

import (
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// fragmentMatches match the IP fragments the chains steer to the
// dataplane (rule 4b), every one, those of
// authorized flows too. A first fragment carries the transport header and
// would match an authorized flow's entry; the later ones carry none and
// match nothing, so they always reached the dataplane, which then dropped
// them because it never saw their first fragment (a 3,000-byte UDP
// datagram of an allowed flow was lost). Seeing every fragment, the
// dataplane forwards the later fragments of a datagram whose first fragment
// it forwarded, and no other (docs/dataplane.md, Fragments).
//
//	ip frag-off & 0x3fff != 0 (more fragments, or an offset) → steer
//	ip6: a fragment header is present                         → steer
func fragmentMatches() [][]expr.Any {
	v4 := cat(ethProto(ethIPv4), []expr.Any{
		loadNet(6, 2, regScratch),
		&expr.Bitwise{SourceRegister: regScratch, DestRegister: regScratch, Len: 2, Mask: []byte{0x3f, 0xff}, Xor: []byte{0, 0}},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: regScratch, Data: []byte{0, 0}},
	})
	v6 := cat(ethProto(ethIPv6), []expr.Any{
		&expr.Exthdr{Op: expr.ExthdrOpIpv6, Type: unix.IPPROTO_FRAGMENT, Offset: 0, Len: 1,
			Flags: unix.NFT_EXTHDR_F_PRESENT, DestRegister: regScratch},
		&expr.Cmp{Op: expr.CmpOpEq, Register: regScratch, Data: []byte{1}},
	})
	return [][]expr.Any{v4, v6}
}

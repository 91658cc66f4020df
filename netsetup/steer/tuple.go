package steer

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"

	"github.com/trireme-go/trireme/ipproto"
)

// Tuple is the 5-tuple of one direction of a flow, as the packet carries it.
// An ICMP (ICMPv6) echo flow has the echo identifier as the port of the side
// that sent the request and 0 as the other's (the dataplane's keys; a
// request from the other side is another flow). For other protocols
// without ports the ports are ignored: the key is the address pair and the
// protocol.
type Tuple struct {
	Src, Dst         netip.Addr
	Proto            ipproto.Proto
	SrcPort, DstPort uint16
}

// Reverse returns the tuple of the other direction.
func (t Tuple) Reverse() Tuple {
	return Tuple{Src: t.Dst, Dst: t.Src, Proto: t.Proto, SrcPort: t.DstPort, DstPort: t.SrcPort}
}

func (t Tuple) String() string {
	return fmt.Sprintf("%d %s:%d->%s:%d", t.Proto, t.Src, t.SrcPort, t.Dst, t.DstPort)
}

// Key sizes: nftables pads every concatenated field to 4 bytes:
// saddr . daddr . l4proto(1+3) . sport(2+2) . dport(2+2).
const (
	key4Len = 4 + 4 + 4 + 4 + 4
	key6Len = 16 + 16 + 4 + 4 + 4
)

// ErrBadTuple is returned for tuples that cannot be a set key.
var ErrBadTuple = errors.New("steer: tuple addresses must both be IPv4 or both IPv6")

// appendKey appends the set key of t and reports whether it is IPv6.
func appendKey(b []byte, t Tuple) ([]byte, bool, error) {
	src, dst := t.Src.Unmap(), t.Dst.Unmap()
	if !src.IsValid() || !dst.IsValid() || src.Is4() != dst.Is4() {
		return b, false, ErrBadTuple
	}
	sp, dp := t.SrcPort, t.DstPort
	if !t.Proto.HasPorts() && t.Proto != ipproto.ICMP && t.Proto != ipproto.ICMPv6 {
		sp, dp = 0, 0
	}
	if src.Is4() {
		a, d := src.As4(), dst.As4()
		b = append(b, a[:]...)
		b = append(b, d[:]...)
	} else {
		a, d := src.As16(), dst.As16()
		b = append(b, a[:]...)
		b = append(b, d[:]...)
	}
	b = append(b, byte(t.Proto), 0, 0, 0)
	b = binary.BigEndian.AppendUint16(b, sp)
	b = append(b, 0, 0)
	b = binary.BigEndian.AppendUint16(b, dp)
	b = append(b, 0, 0)
	return b, src.Is6(), nil
}

// parseKey decodes a set key back into a tuple.
func parseKey(k []byte) (Tuple, error) {
	var t Tuple
	var rest []byte
	switch len(k) {
	case key4Len:
		t.Src = netip.AddrFrom4([4]byte(k[0:4]))
		t.Dst = netip.AddrFrom4([4]byte(k[4:8]))
		rest = k[8:]
	case key6Len:
		t.Src = netip.AddrFrom16([16]byte(k[0:16]))
		t.Dst = netip.AddrFrom16([16]byte(k[16:32]))
		rest = k[32:]
	default:
		return t, fmt.Errorf("steer: set key of %d bytes", len(k))
	}
	t.Proto = ipproto.Proto(rest[0])
	t.SrcPort = binary.BigEndian.Uint16(rest[4:])
	t.DstPort = binary.BigEndian.Uint16(rest[8:])
	return t, nil
}

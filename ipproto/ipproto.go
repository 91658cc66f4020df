// Package ipproto names IP protocol numbers (IANA), as policies, packets,
// flow keys, steering rules and flow records carry them. Tailscale's
// types/ipproto is the model: one byte, named constants, a text form.
package ipproto

import (
	"fmt"
	"strconv"
	"strings"
)

// Proto is an IANA IP protocol number (IPv4 protocol, IPv6 next header).
type Proto uint8

// The protocols trireme handles or names in policies.
const (
	// Any names no protocol: in a policy port range it means every
	// protocol. (Number 0 on the wire is IPv6 hop-by-hop options, which the
	// decoder walks past, so no decoded packet carries it.)
	Any    Proto = 0
	ICMP   Proto = 1 // ICMP for IPv4
	TCP    Proto = 6
	UDP    Proto = 17
	ICMPv6 Proto = 58
	SCTP   Proto = 132
)

var names = [...]struct {
	p    Proto
	name string
}{{Any, "any"}, {ICMP, "icmp"}, {TCP, "tcp"}, {UDP, "udp"}, {ICMPv6, "icmpv6"}, {SCTP, "sctp"}}

// otherPrefix starts the text form of protocols without a name ("ip-47").
const otherPrefix = "ip-"

// Named reports whether p has a name of its own (String is not "ip-N").
func (p Proto) Named() bool {
	for _, n := range names {
		if n.p == p {
			return true
		}
	}
	return false
}

// HasPorts reports whether the protocol's header starts with 16-bit source
// and destination ports that trireme keys flows by.
func (p Proto) HasPorts() bool { return p == TCP || p == UDP }

// String returns the protocol's name ("tcp"), or "ip-N" for one without.
func (p Proto) String() string {
	for _, n := range names {
		if n.p == p {
			return n.name
		}
	}
	return otherPrefix + strconv.Itoa(int(p))
}

// MarshalText returns String's form.
func (p Proto) MarshalText() ([]byte, error) { return []byte(p.String()), nil }

// UnmarshalText parses String's form: a name (any case) or "ip-N" with N
// from 0 to 255.
func (p *Proto) UnmarshalText(text []byte) error {
	s := strings.ToLower(string(text))
	for _, n := range names {
		if n.name == s {
			*p = n.p
			return nil
		}
	}
	if num, ok := strings.CutPrefix(s, otherPrefix); ok && num != "" && num[0] != '+' && num[0] != '-' {
		if v, err := strconv.ParseUint(num, 10, 8); err == nil {
			*p = Proto(v)
			return nil
		}
	}
	return fmt.Errorf("unknown protocol %q (want tcp, udp, sctp, icmp, icmpv6, any or ip-N)", text)
}

// Package reason is the one list of reasons why trireme drops, rejects or
// records a packet or a connection. The token library, the enforcement core,
// flow records and the CLI all speak these codes, so a drop seen in a flow log
// can be looked up in docs/reasons.md by the same name.
//
// A Code is also an error: the per-packet path returns codes, not wrapped
// errors, so reporting a failure never allocates.
package reason

// Code names why a packet or connection was not forwarded as is.
type Code uint8

// The codes. Their names (String) are stable: they appear in flow records,
// metrics and docs. Append new codes at the end of a group; never renumber
// codes that have been released.
const (
	None Code = iota // no drop: the packet was forwarded

	// Token and handshake failures (tokens/).
	MissingToken         // a peer inside the target networks sent no token
	MalformedToken       // a token frame or JWT that does not parse
	UnsupportedVersion   // a token frame of a version this enforcer does not speak
	BadSignature         // a JWT whose signature does not verify
	UntrustedCertificate // a PKI certificate not signed by the CA, expired or of the wrong usage
	ExpiredToken         // a JWT past its exp (or not yet valid)
	NonceMismatch        // a SYN-ACK or ACK that answers another connection's nonce
	BadMAC               // a handshake MAC that does not verify
	VerifyRateLimited    // a source sent more new tokens than its public-key verification budget

	// Policy decisions.
	PolicyDenied   // no rule allowed the connection (whitelist model)
	PolicyRejected // a reject rule matched
	EgressDenied   // the client's egress rules did not allow the connection
	IngressDenied  // the server's ingress rules did not allow the connection

	// Packet and flow problems (dataplane/, flow/).
	Malformed      // a frame that does not parse (truncated, bad header length, ...)
	Unsupported    // a well-formed frame of a protocol trireme does not handle
	Fragment       // an IP fragment trireme cannot attribute to an allowed flow
	UnknownFlow    // a mid-stream packet of a flow the table does not know
	InvalidState   // a packet that does not fit the flow's TCP state
	TableFull      // the flow table is full and nothing could be evicted
	NoRoomForToken // the token does not fit (MTU or TCP option space)
	UnknownPU      // a packet for a PU the enforcer does not know
	Timeout        // a flow that expired before the handshake completed
	OutOfWindow    // a RST (or SYN-ACK) whose numbers do not fit the flow's sequence window
	BadICMPError   // an ICMP error whose outer addresses do not fit the packet it quotes, or oversized
	FlowQuota      // the PU holds its whole share of the flow table and nothing of its own could be evicted

	// A PU's own frames (netsetup/steer anti-spoofing, dataplane).
	SpoofedSource // a frame leaving a PU that names another sender (MAC, IP, ARP or NDP link-layer address)
	RogueRouter   // a router advertisement, redirect or DHCP server reply sent by a PU
	InvalidNDP    // a neighbour discovery or MLD message that is not on-link link plumbing
	PacketBudget  // a packet leaving a PU beyond its packet budget (netsetup/steer), dropped in the kernel

	// The datagram handshake (dataplane/udp_handshake.go).
	HoldFull         // a datagram of a flow whose handshake runs, beyond what may be held for the flow or its PU
	HandshakePending // a datagram of a flow whose handshake this end has not completed

	numCodes
)

var names = [numCodes]string{
	None:                 "none",
	MissingToken:         "missing-token",
	MalformedToken:       "malformed-token",
	UnsupportedVersion:   "unsupported-version",
	BadSignature:         "bad-signature",
	UntrustedCertificate: "untrusted-certificate",
	ExpiredToken:         "expired-token",
	NonceMismatch:        "nonce-mismatch",
	BadMAC:               "bad-mac",
	VerifyRateLimited:    "verify-rate-limited",
	PolicyDenied:         "policy-denied",
	PolicyRejected:       "policy-rejected",
	EgressDenied:         "egress-denied",
	IngressDenied:        "ingress-denied",
	Malformed:            "malformed-packet",
	Unsupported:          "unsupported-protocol",
	Fragment:             "fragment",
	UnknownFlow:          "unknown-flow",
	InvalidState:         "invalid-state",
	TableFull:            "table-full",
	NoRoomForToken:       "no-room-for-token",
	UnknownPU:            "unknown-pu",
	Timeout:              "timeout",
	OutOfWindow:          "out-of-window",
	BadICMPError:         "bad-icmp-error",
	FlowQuota:            "flow-quota",
	SpoofedSource:        "spoofed-source",
	RogueRouter:          "rogue-router",
	InvalidNDP:           "invalid-ndp",
	PacketBudget:         "pu-packet-budget",
	HoldFull:             "hold-full",
	HandshakePending:     "handshake-pending",
}

// String returns the code's stable name, e.g. "missing-token".
func (c Code) String() string {
	if c < numCodes {
		return names[c]
	}
	return "unknown-reason"
}

// Error makes a Code usable as an error without allocation.
func (c Code) Error() string { return c.String() }

// Count is the number of defined codes; arrays of per-reason counters use it.
const Count = int(numCodes)

// Parse returns the code with the given name.
func Parse(name string) (Code, bool) {
	for i, n := range names {
		if n == name {
			return Code(i), true
		}
	}
	return None, false
}

// MarshalText writes the code's name, so JSON flow records carry names.
func (c Code) MarshalText() ([]byte, error) { return []byte(c.String()), nil }

// UnmarshalText reads a code's name.
func (c *Code) UnmarshalText(b []byte) error {
	v, ok := Parse(string(b))
	if !ok {
		return errUnknown(string(b))
	}
	*c = v
	return nil
}

type errUnknown string

func (e errUnknown) Error() string { return "unknown reason " + string(e) }

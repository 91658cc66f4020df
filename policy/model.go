package policy

import (
	"net/netip"

	"github.com/trireme-go/trireme/ipproto"
)

// PortRange is one entry of a rule's ports: a protocol and an inclusive port
// range. {ipproto.TCP, 0, 65535} is "tcp" (every TCP port); {ipproto.Any, 0,
// 65535} is every port of every protocol. Protocols without ports (ICMP) match on the
// protocol alone.
type PortRange struct {
	Protocol    ipproto.Proto
	First, Last uint16
}

// Action is what a matching rule does.
type Action uint8

const (
	// Deny is the verdict when no rule matched (whitelist model). Rules never
	// carry it.
	Deny Action = iota
	Allow
	Reject
)

// ObserveMode says whether a rule is enforced or only reported.
type ObserveMode uint8

const (
	// Enforce: the rule takes part in the decision (the default).
	Enforce ObserveMode = iota
	// ObserveContinue: the rule is reported when it matches but never decides.
	ObserveContinue
	// ObserveApply: the rule decides only where no enforced rule matched.
	ObserveApply
)

// Peer is one entry of a rule's from/to: either a tag selector (Selector
// non-nil) or a CIDR block with holes carved out by Except.
type Peer struct {
	Selector *Selector
	CIDR     netip.Prefix
	Except   []netip.Prefix
}

// Rule is one ingress or egress rule of a policy.
type Rule struct {
	// Peers the rule applies to; empty means every peer.
	Peers []Peer
	// Ports the rule applies to; empty means every port and protocol.
	Ports   []PortRange
	Action  Action
	Log     bool
	Observe ObserveMode
	// Name optionally names the rule; Index is its position in its list.
	Name  string
	Index int
	// Pos is where the rule starts in its file, for messages.
	Pos Position
}

// Policy is a named set of rules for the PUs its selector picks.
type Policy struct {
	Name     string
	Selector *Selector
	Ingress  []Rule
	Egress   []Rule
	Pos      Position
}

// Set is a whole policy file: the networks and every policy.
type Set struct {
	// TargetNetworks hold hosts that run an enforcer: tokens are added toward
	// them and required from them.
	TargetNetworks []netip.Prefix
	// ExcludedNetworks bypass every check.
	ExcludedNetworks []netip.Prefix
	Policies         []Policy
}

// Position is a place in a policy file.
type Position struct {
	File         string
	Line, Column int
}

package steer

import (
	"github.com/google/nftables/expr"
)

// Budget bounds how many packets a second one PU can make the dataplane
// process: the packets leaving the PU that the chain would steer to its
// TAP. Beyond it they are dropped in the kernel, before any copy to
// userspace, and counted (counter <pu>_in_budget, Counters.InOverBudget,
// reason.PacketBudget in the daemon's stats): a PU that floods
// spends its own budget, not the daemon's CPU that other PUs need.
// Packets of authorized flows stay in the kernel and cost no budget;
// packets toward a PU are not budgeted (another PU's flood must not spend
// its victim's budget).
//
// There is a bucket of Rate for each rule that steers: TCP SYN/FIN/RST
// (new and ending connections: two or three per connection), IPv4
// fragments, IPv6 fragments, and the other steered packets (first packets
// of datagram flows, handshake ACKs).
type Budget struct {
	// Rate is packets a second per bucket; 0: no budget.
	Rate uint32
	// Burst is how many packets above the rate pass at once.
	Burst uint32
}

// budgetCounter names the counter of a PU's packets dropped over budget.
func budgetCounter(pu string) string { return counterName(pu, "in", "budget") }

// budgetRule drops the packets that match, beyond the budget's rate. The
// limit's state belongs to the rule: each rule is one bucket.
func budgetRule(b Budget, pu string, match []expr.Any) []expr.Any {
	return cat(match, []expr.Any{
		&expr.Limit{Type: expr.LimitTypePkts, Rate: uint64(b.Rate), Unit: expr.LimitTimeSecond, Burst: b.Burst, Over: true},
	}, counted(budgetCounter(pu), []expr.Any{&expr.Verdict{Kind: expr.VerdictDrop}}))
}

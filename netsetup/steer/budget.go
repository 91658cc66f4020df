package steer

import (
	"fmt"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
)

// Budget bounds how many packets a second one PU can make the dataplane
// process: the packets leaving the PU that the chain would steer to its
// TAP. Beyond it they are dropped in the kernel, before any copy to
// userspace, and counted (counter <pu>_in_budget): a PU that floods
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

// BudgetDrops returns, by PU name, the packets dropped over budget since
// each PU's counters were made (one dump for all PUs).
func (s *Steerer) BudgetDrops() (map[string]uint64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	objs, err := s.conn.GetObj(&nftables.CounterObj{Table: s.table})
	if err != nil {
		return nil, fmt.Errorf("steer: counters: %w", err)
	}
	out := map[string]uint64{}
	for _, o := range objs {
		co, ok := o.(*nftables.CounterObj)
		if !ok || co.Table == nil || co.Table.Name != s.table.Name {
			continue
		}
		if pu, ok := strings.CutSuffix(co.Name, "_in_budget"); ok && s.pus[pu] != nil {
			out[pu] = co.Packets
		}
	}
	return out, nil
}

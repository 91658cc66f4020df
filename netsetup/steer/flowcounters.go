package steer

import (
	"fmt"

	"github.com/google/nftables"
)

// FlowCount is what the kernel counted on one authorized entry (one
// direction of a flow): the packets that stayed in the kernel. The
// packets steered to the dataplane (TCP SYN, FIN and RST, the packets
// before the authorization) are not in it. Bytes are as the hook that
// matched saw the packet: leaving the PU (ingress hook) the IP packet,
// toward the PU (egress hook) the Ethernet frame (measured on 6.18,
// TestRevokeCounted); a GSO super-packet counts once, with its length.
type FlowCount struct {
	Packets, Bytes uint64
}

// FlowCounters returns the kernel's counts of the PU's authorized entries,
// by tuple (each direction its own entry: t counts the packets from the PU
// when t.Src is the PU's address). Entries of sets made before the sets had
// counters (a daemon upgraded in place) are left out.
func (s *Steerer) FlowCounters(pu string) (map[Tuple]FlowCount, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	st, ok := s.pus[pu]
	if !ok {
		return nil, fmt.Errorf("%w: %s", ErrUnknownPU, pu)
	}
	out := map[Tuple]FlowCount{}
	for _, set := range []*nftables.Set{st.sets.a4, st.sets.a6} {
		els, err := s.conn.GetSetElements(set)
		if err != nil {
			return nil, fmt.Errorf("steer: flow counters of %s: %w", set.Name, err)
		}
		for _, e := range els {
			if e.Counter == nil {
				continue
			}
			t, err := parseKey(e.Key)
			if err != nil {
				return nil, err
			}
			// A dump during a resize may list an entry twice: the
			// counter is the entry's either way.
			out[t] = FlowCount{Packets: e.Counter.Packets, Bytes: e.Counter.Bytes}
		}
	}
	return out, nil
}

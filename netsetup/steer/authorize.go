package steer

import (
	"errors"
	"fmt"
	"time"
)

// Authorize lets the flow of t stay in the kernel on the PU's chains, in
// both directions (t and t.Reverse()), for timeout (0: until revoked).
// Authorizing a flow again restarts its timeout: the dataplane refreshes
// long-lived flows this way. TCP SYNs are steered even for authorized flows.
func (s *Steerer) Authorize(pu string, t Tuple, timeout time.Duration) error {
	b := s.NewBatch()
	b.Authorize(pu, t, timeout)
	return b.Commit()
}

// Revoke removes both directions of the flow of t from the PU's authorized
// set. Revoking a flow that is not there (or expired) is not an error.
func (s *Steerer) Revoke(pu string, t Tuple) error {
	b := s.NewBatch()
	b.Revoke(pu, t)
	return b.Commit()
}

// Batch collects authorizations and revocations and applies them in one
// nf_tables transaction (all or nothing) on Commit; batches of more than
// 512 flows are split into several transactions of 512. A Batch is not safe for
// concurrent use; Commit may run concurrently with other Steerer methods.
type Batch struct {
	s   *Steerer
	ops []batchOp
	err error
}

type batchOp struct {
	pu      string
	t       Tuple
	timeout time.Duration
	del     bool
	counts  *FinalCounts // RevokeCounted: the counters, echoed by the delete
}

// NewBatch starts a batch.
func (s *Steerer) NewBatch() *Batch { return &Batch{s: s} }

// Authorize queues Steerer.Authorize.
func (b *Batch) Authorize(pu string, t Tuple, timeout time.Duration) {
	if timeout < 0 || timeout > MaxTimeout {
		b.setErr(fmt.Errorf("steer: timeout %v out of range [0, %v]", timeout, MaxTimeout))
		return
	}
	b.ops = append(b.ops, batchOp{pu: pu, t: t, timeout: timeout})
}

// Revoke queues Steerer.Revoke.
func (b *Batch) Revoke(pu string, t Tuple) {
	b.ops = append(b.ops, batchOp{pu: pu, t: t, del: true})
}

// Len is the number of queued flows.
func (b *Batch) Len() int { return len(b.ops) }

func (b *Batch) setErr(err error) {
	if b.err == nil {
		b.err = err
	}
}

// ErrCountsUnread: Commit applied the batch, but could not read the
// counters its RevokeCounted asked for (they are zero, Found false).
var ErrCountsUnread = errors.New("steer: flow counters not read")

// Commit applies the queued changes and empties the batch.
func (b *Batch) Commit() error {
	ops, err := b.ops, b.err
	b.ops, b.err = b.ops[:0], nil
	if err != nil {
		return err
	}
	if len(ops) == 0 {
		return nil
	}
	s := b.s
	s.mu.Lock()
	defer s.mu.Unlock()
	eops := make([]elemOp, 0, 2*len(ops))
	s.keyBuf = s.keyBuf[:0]
	for _, op := range ops {
		st, ok := s.pus[op.pu]
		if !ok {
			return fmt.Errorf("%w: %s", ErrUnknownPU, op.pu)
		}
		if op.counts != nil {
			*op.counts = FinalCounts{}
		}
		for i, t := range [2]Tuple{op.t, op.t.Reverse()} {
			start := len(s.keyBuf)
			var v6 bool
			s.keyBuf, v6, err = appendKey(s.keyBuf, t)
			if err != nil {
				return fmt.Errorf("%w: %v", err, op.t)
			}
			set := st.sets.a4.Name
			if v6 {
				set = st.sets.a6.Name
			}
			key := s.keyBuf[start:len(s.keyBuf):len(s.keyBuf)]
			e := elemOp{table: st.shard.table.Name, set: set, key: key, timeout: op.timeout, del: op.del}
			if op.counts != nil {
				e.count, e.found = &op.counts.Out, &op.counts.Found
				if i == 1 {
					e.count = &op.counts.In
				}
			}
			eops = append(eops, e)
		}
	}
	// The counters of the entries revoked counted come back with the
	// transaction that deletes them. Counts that could not be read do
	// not undo it: the revokes and authorizations matter more.
	cerr, err := s.elems.commit(eops)
	if err != nil {
		return err
	}
	if cerr != nil {
		for _, op := range ops {
			if op.counts != nil {
				*op.counts = FinalCounts{}
			}
		}
		return fmt.Errorf("%w: %v", ErrCountsUnread, cerr)
	}
	return nil
}

// List returns the PU's authorized entries, both directions of each flow,
// as the kernel holds them (expired entries are not listed). A restarted
// daemon rebuilds its view of authorized flows from it.
//
// One dump is not to be trusted: a dump of a hash set that the kernel is
// resizing (as after many inserts) returns duplicates and misses entries
// (seen on 6.18: 40000 entries dumped, 34715 distinct), and an entry that
// expires and is collected during a dump shifts the kernel's resume point
// (each chunk skips as many entries as were sent): the entry after it is
// missed. Nothing else adds or deletes entries while we hold the lock, so
// every entry a dump returns was there: List keeps the union of the
// duplicate-free dumps and stops when one adds nothing new, then leaves
// out what has expired since it was seen. (Requiring two identical dumps
// instead failed for good on a big set whose entries keep expiring.)
func (s *Steerer) List(pu string) ([]Entry, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	st, ok := s.pus[pu]
	if !ok {
		return nil, fmt.Errorf("%w: %s", ErrUnknownPU, pu)
	}
	type seen struct {
		e  Entry
		at time.Time
	}
	var union map[Tuple]seen
	for attempt := 0; attempt < 50; attempt++ {
		at := time.Now()
		es, intr, err := s.listOnce(st)
		if err != nil {
			return nil, err
		}
		cur := make(map[Tuple]struct{}, len(es))
		for _, e := range es {
			cur[e.Tuple] = struct{}{}
		}
		if len(cur) != len(es) || intr {
			time.Sleep(20 * time.Millisecond) // a resize is under way
			continue
		}
		added := union == nil
		if union == nil {
			union = make(map[Tuple]seen, len(es))
		}
		for _, e := range es {
			if _, ok := union[e.Tuple]; !ok {
				added = true
			}
			union[e.Tuple] = seen{e, at}
		}
		if !added {
			now := time.Now()
			out := make([]Entry, 0, len(union))
			for _, u := range union {
				if u.e.Timeout > 0 || u.e.Expires > 0 {
					left := u.e.Expires - now.Sub(u.at)
					if left <= 0 {
						continue // expired since seen
					}
					u.e.Expires = left
				}
				out = append(out, u.e)
			}
			return out, nil
		}
	}
	return nil, fmt.Errorf("steer: list %s: no consistent dump of the authorized sets", pu)
}

// listOnce dumps the PU's authorized sets once; intr: the kernel flagged
// a dump as interrupted.
func (s *Steerer) listOnce(st *puState) (es []Entry, intr bool, err error) {
	for _, set := range []string{st.sets.a4.Name, st.sets.a6.Name} {
		var in bool
		if es, in, err = s.elems.dumpSet(es, st.shard.table.Name, set); err != nil {
			return nil, false, err
		}
		intr = intr || in
	}
	return es, intr, nil
}

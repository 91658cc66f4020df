package steer_test

import (
	"net/netip"
	"testing"
	"time"

	"github.com/trireme-go/trireme/netsetup/steer"
)

// TestListBigSet: one PU with 100,000 authorized flows (200,000 elements
// in one set, as between one client and one server) is listed whole by a
// restarted Steerer: every flow, both directions, no duplicates.
func TestListBigSet(t *testing.T) {
	const flows = 100000
	node, pus := scaleNode(t, 1)
	s := openSteerer(t, node, 0)
	if err := s.Apply(pus, nil); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	b := s.NewBatch()
	for i := range flows {
		b.Authorize(pus[0].Name, bigFlow(i), 10*time.Minute)
	}
	if err := b.Commit(); err != nil {
		t.Fatal(err)
	}
	t.Logf("%d flows authorized: %v", flows, time.Since(start))
	s.Close()

	s = openSteerer(t, node, 0)
	if err := s.Apply(pus, nil); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		start = time.Now()
		n, d, err := steer.ListOnceLen(s, pus[0].Name)
		t.Logf("one dump: %d entries, %d distinct, %v (%v)", n, d, err, time.Since(start))
	}
	start = time.Now()
	es, err := s.List(pus[0].Name)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("List: %d entries: %v", len(es), time.Since(start))
	seen := make(map[steer.Tuple]bool, len(es))
	for _, e := range es {
		if seen[e.Tuple] {
			t.Fatalf("%v listed twice", e.Tuple)
		}
		seen[e.Tuple] = true
	}
	for i := range flows {
		if f := bigFlow(i); !seen[f] || !seen[f.Reverse()] {
			t.Fatalf("flow %d (%v) not listed (%d of %d entries)", i, f, len(es), 2*flows)
		}
	}
	if len(es) != 2*flows {
		t.Fatalf("%d entries, want %d", len(es), 2*flows)
	}
}

// bigFlow is the i-th of many flows between PU 0 and one server.
func bigFlow(i int) steer.Tuple {
	f := flowOf(0, 0)
	f.SrcPort = uint16(1024 + i%60000)
	f.Dst = netip.AddrFrom4([4]byte{10, 200, 0, byte(1 + i/60000)})
	return f
}

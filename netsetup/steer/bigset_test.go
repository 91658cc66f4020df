package steer_test

import (
	"net/netip"
	"testing"
	"time"

	"github.com/trireme-go/trireme/netsetup/steer"
)

// TestListBigSet: one PU with 100,000 authorized flows (200,000 elements
// in one set, as between one client and one server) is listed whole by a
// restarted Steerer: every flow, both directions, no duplicates, although
// 20,000 other flows of the set expire (and are collected) while it is
// dumped, and none of those is listed expired.
func TestListBigSet(t *testing.T) {
	const flows, short = 100000, 20000
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
	for i := range short { // expiring over the next 2 to 32 s
		b.Authorize(pus[0].Name, bigFlow(flows+i), 2*time.Second+time.Duration(i)*30*time.Second/short)
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
	start = time.Now()
	es, err := s.List(pus[0].Name)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("List: %d entries: %v", len(es), time.Since(start))
	seen := make(map[steer.Tuple]bool, len(es))
	expiring := 0
	for _, e := range es {
		if seen[e.Tuple] {
			t.Fatalf("%v listed twice", e.Tuple)
		}
		seen[e.Tuple] = true
		if e.Timeout < time.Minute {
			expiring++
			if e.Expires <= 0 {
				t.Errorf("%v listed expired (%v left)", e.Tuple, e.Expires)
			}
		}
	}
	t.Logf("%d entries of expiring flows listed", expiring)
	for i := range flows {
		if f := bigFlow(i); !seen[f] || !seen[f.Reverse()] {
			t.Fatalf("flow %d (%v) not listed (%d of %d entries)", i, f, len(es), 2*flows)
		}
	}
	if len(es)-expiring != 2*flows {
		t.Fatalf("%d entries of long flows, want %d", len(es)-expiring, 2*flows)
	}
}

// bigFlow is the i-th of many flows between PU 0 and one server.
func bigFlow(i int) steer.Tuple {
	f := flowOf(0, 0)
	f.SrcPort = uint16(1024 + i%60000)
	f.Dst = netip.AddrFrom4([4]byte{10, 200, 0, byte(1 + i/60000)})
	return f
}

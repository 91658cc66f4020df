package node_test

import (
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/trireme-go/trireme/netsetup/steer"
	"github.com/trireme-go/trireme/node"
	"github.com/trireme-go/trireme/testenv"
)

// maxCrossings is the most frames a short allowed connection between two
// PUs of one node may make cross into the daemon, both PUs' TAPs counted
// (the steering counters): SYN, SYN-ACK and the handshake ACK once each
// (one pass), and the request when it leaves before the flow is in the
// kernel. The FINs (and the last ACK) stay in the kernel: they are logged
// to the daemon, not steered (endlog.go). Through both TAPs (two passes)
// it was 12-13, with one pass and steered FINs 5.2.
const maxCrossings = 4

// TestOnePassCrossings: short connections between two PUs of one node
// cross into the daemon at most maxCrossings times each on average, and
// still work and are recorded as before (records_test.go, flows_test.go
// check the records of such connections: allowed, rejected, denied).
func TestOnePassCrossings(t *testing.T) {
	s := newFlowScene(t, "")
	n := s.d.Node
	st, err := steer.Open(steer.Config{Node: strings.ToLower(n.Name), NetNS: int(n.NS)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	if err := st.Adopt(); err != nil {
		t.Fatal(err)
	}
	pus, err := s.d.Client().ListPUs()
	if err != nil {
		t.Fatal(err)
	}
	steerOf := func(pu *testenv.PU) string {
		for _, p := range pus {
			if slices.Contains(p.IPs, pu.Addr) {
				return node.SteerName(p.ID)
			}
		}
		t.Fatalf("PU %s not listed", pu.Addr)
		return ""
	}
	front, web := steerOf(s.front), steerOf(s.web)
	steered := func() uint64 {
		var sum uint64
		for _, pu := range []string{front, web} {
			c, err := st.Counters(pu)
			if err != nil {
				t.Fatal(err)
			}
			sum += c.InSteered.Packets + c.OutSteered.Packets
		}
		return sum
	}
	srv := netip.AddrPortFrom(s.web.Addr, 8080)
	// A first connection warms the token caches.
	if err := s.front.Echo(srv, "warm", 5*time.Second); err != nil {
		t.Fatal(err)
	}
	settle := func() uint64 {
		// The connections' last frames (FINs, the last ACK) are steered
		// after the echo returns: wait until the counters stop moving.
		last := steered()
		for i := 0; i < 50; i++ {
			time.Sleep(100 * time.Millisecond)
			now := steered()
			if now == last {
				return now
			}
			last = now
		}
		return last
	}
	// Some crossings depend on timing, not on the design: a frame that
	// comes before its flow's kernel authorization lands, or a last ACK
	// after the revocation at the second FIN. On a loaded machine there
	// are more of them. The design's figure is the best of three rounds.
	const conns, rounds = 20, 3
	best := -1.0
	for round := range rounds {
		before := settle()
		for i := 0; i < conns; i++ {
			if err := s.front.Echo(srv, "hello", 5*time.Second); err != nil {
				t.Fatalf("round %d, connection %d: %v", round, i, err)
			}
		}
		after := settle()
		per := float64(after-before) / conns
		t.Logf("round %d: %d frames steered into the daemon for %d connections: %.1f per connection", round, after-before, conns, per)
		if best < 0 || per < best {
			best = per
		}
		if best <= maxCrossings {
			break
		}
	}
	if best > maxCrossings {
		t.Errorf("%.1f frames per connection crossed into the daemon in the best of %d rounds, want at most %d", best, rounds, maxCrossings)
	}
	stats, err := s.d.Client().Stats()
	if err != nil {
		t.Fatal(err)
	}
	if stats.Counters["one-pass"] == 0 || stats.Counters["authorized-now"] == 0 {
		t.Errorf("one-pass %d, authorized-now %d: the connections did not take one pass", stats.Counters["one-pass"], stats.Counters["authorized-now"])
	}
	// Each connection's two FINs, logged where they leave one PU and
	// where they reach the other, judged by both enforcers.
	if got := stats.Counters["logged-ends"]; got < 4*conns {
		t.Errorf("logged-ends %d after %d connections, want at least %d (end-log messages %d, unknown %d, malformed %d, overruns %d)",
			got, conns, 4*conns, stats.Counters["end-log-messages"], stats.Counters["end-log-unknown"],
			stats.Counters["end-log-malformed"], stats.Counters["end-log-overruns"])
	}
}

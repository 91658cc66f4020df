package attacks

import (
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"

	"github.com/trireme-go/trireme/dataplane"
	"github.com/trireme-go/trireme/node"
	"github.com/trireme-go/trireme/testenv"
)

// synFlood sends n SYNs from the attacker to db:9999 (a port nobody may
// reach), each from another source port, paced so the TAP queues keep up.
func synFlood(s *scene, n int) netip.AddrPort {
	s.t.Helper()
	raw := s.attacker.Raw()
	target := netip.AddrPortFrom(s.db.Addr, 9999)
	atkMAC, dbMAC := s.attacker.MACOf(), s.db.MACOf()
	for i := range n {
		src := netip.AddrPortFrom(s.attacker.Addr, uint16(10000+i%50000))
		raw.MustSend(testenv.TCPSegment(atkMAC, dbMAC, src, target, "S", uint32(i), 0, nil))
		if i%200 == 199 {
			time.Sleep(20 * time.Millisecond) // ~10,000 SYNs/s
		}
	}
	return target
}

// quiet waits (up to 15 s) until the drop counter of reason has not moved
// for 2 s, and returns the stats then.
func (s *scene) quiet(reason string) node.Stats {
	s.t.Helper()
	var last uint64
	since := time.Now()
	deadline := time.Now().Add(15 * time.Second)
	for {
		st, err := s.d.Client().Stats()
		if err != nil {
			s.t.Fatal(err)
		}
		if n := st.Drops[reason]; n != last {
			last, since = n, time.Now()
		}
		if time.Since(since) >= 2*time.Second || time.Now().After(deadline) {
			return st
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func logBytes(t *testing.T, path string) int64 {
	t.Helper()
	var n int64
	for _, f := range node.FlowLogFiles(path) {
		if st, err := os.Stat(f); err == nil {
			n += st.Size()
		}
	}
	return n
}

// TestSYNFloodFlowLogAggregated: a PU floods SYNs to a port it may not
// reach, from ever-changing source ports. Nothing reaches db's socket (the
// port is not even served: db's interface sees no SYN), each SYN is refused
// and counted, and the flow log grows by a handful of records: the first
// refusal, then one aggregate per interval whose counts add up to exactly
// the refusals counted (records-aggregated too).
func TestSYNFloodFlowLogAggregated(t *testing.T) {
	s := newScene(t, sceneOptions{PSK: true, Extra: "flowLogAggregate: 1s\n"})
	victim := s.db.Raw()
	// The PUs' own start-up chatter (IPv6 DAD, MLD reports) is refused
	// too: let it pass, so that the refusals counted are the flood's.
	st0 := s.quiet("policy-denied")
	size0 := logBytes(t, s.d.FlowLog)
	const n = 20000
	target := synFlood(s, n)

	// Wait for the last aggregates (written at the end of an interval).
	var sum, records, denied, last uint64
	stable := time.Now()
	deadline := time.Now().Add(15 * time.Second)
	for {
		st, err := s.d.Client().Stats()
		if err != nil {
			t.Fatal(err)
		}
		denied = st.Drops["policy-denied"] - st0.Drops["policy-denied"]
		sum, records = 0, 0
		for _, r := range s.d.Records() {
			if r.Server == target && r.Direction == "ingress" && r.Client.Addr() == s.attacker.Addr {
				sum += max(r.Count, 1)
				records++
			}
		}
		if denied != last {
			last, stable = denied, time.Now()
		}
		// Done when the refusals stopped coming (for more than an
		// interval) and the records account for every one.
		if denied > 0 && sum == denied && time.Since(stable) > 1500*time.Millisecond {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("db's records of the flood account for %d refusals in %d records; %d refusals counted (policy-denied)", sum, records, denied)
		}
		time.Sleep(200 * time.Millisecond)
	}
	st, _ := s.d.Client().Stats()
	drops := map[string]uint64{}
	for k, v := range st.Drops {
		if d := v - st0.Drops[k]; d > 0 {
			drops[k] = d
		}
	}
	t.Logf("drops during the flood: %v", drops)
	grew := logBytes(t, s.d.FlowLog) - size0
	t.Logf("%d SYNs sent, %d refused at db (policy-denied); db's records of them: %d, adding up to %d; flow log grew %d bytes; records-aggregated %d",
		n, denied, records, sum, grew, st.Counters["records-aggregated"]-st0.Counters["records-aggregated"])
	if denied < n/2 {
		t.Errorf("only %d of %d SYNs reached db's enforcer", denied, n)
	}
	// The first ten records, then at most one aggregate per interval of
	// the flood (a few seconds) and the last one.
	if records > 20 {
		t.Errorf("the flood took %d records at db", records)
	}
	if agg := st.Counters["records-aggregated"] - st0.Counters["records-aggregated"]; agg < denied-records {
		t.Errorf("records-aggregated grew by %d, want at least %d", agg, denied-records)
	}
	// Whatever both enforcers write about the flood (the attacker's side
	// folds too): far from one record per SYN.
	if grew > 64<<10 {
		t.Errorf("the flow log grew by %d bytes for %d SYNs", grew, n)
	}
	seen := victim.Capture(300*time.Millisecond, func(p gopacket.Packet) bool {
		tcp, _ := p.Layer(layers.LayerTypeTCP).(*layers.TCP)
		return tcp != nil && tcp.DstPort == 9999
	})
	if len(seen) != 0 {
		t.Errorf("db's interface received %d SYNs of the flood", len(seen))
	}
}

// TestSYNFloodFlowLogRotated: with aggregation off, the same flood writes a
// record per SYN, and the log is rotated: it never takes more than
// (flowLogFiles+1) × flowLogMaxSize.
func TestSYNFloodFlowLogRotated(t *testing.T) {
	const maxSize, files = 64 << 10, 1
	s := newScene(t, sceneOptions{PSK: true, Extra: "flowLogAggregate: 0s\nflowLogMaxSize: 64KiB\nflowLogFiles: 1\n"})
	st0, err := s.d.Client().Stats()
	if err != nil {
		t.Fatal(err)
	}
	const n = 4000 // ~3 MB of records
	synFlood(s, n)
	deadline := time.Now().Add(10 * time.Second)
	var st node.Stats
	for {
		if st, err = s.d.Client().Stats(); err != nil {
			t.Fatal(err)
		}
		if st.Counters["records-written"]-st0.Counters["records-written"] >= n/2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d records written for %d SYNs", st.Counters["records-written"]-st0.Counters["records-written"], n)
		}
		time.Sleep(100 * time.Millisecond)
	}
	// Measure once the writer is done: while it still writes it rotates,
	// and a file listed here may be gone when it is read.
	settle := time.Now().Add(10 * time.Second)
	for prev := uint64(0); ; {
		time.Sleep(500 * time.Millisecond) // the writer's periodic flush
		if st, err = s.d.Client().Stats(); err != nil {
			t.Fatal(err)
		}
		if w := st.Counters["records-written"]; w == prev {
			break
		} else {
			prev = w
		}
		if time.Now().After(settle) {
			t.Fatal("the flow log writer never settled")
		}
	}
	fs := node.FlowLogFiles(s.d.FlowLog)
	total := logBytes(t, s.d.FlowLog)
	t.Logf("%d records written for %d SYNs; log files %v, %d bytes", st.Counters["records-written"]-st0.Counters["records-written"], n, fs, total)
	if len(fs) != files+1 {
		t.Errorf("log files %v, want the log and %d rotated", fs, files)
	}
	for _, f := range fs {
		fi, err := os.Stat(f)
		if err != nil {
			t.Errorf("%s: %v", f, err)
		} else if fi.Size() > maxSize {
			t.Errorf("%s: %d bytes, max %d", f, fi.Size(), maxSize)
		}
	}
	if total > (files+1)*maxSize {
		t.Errorf("the log takes %d bytes, bound %d", total, (files+1)*maxSize)
	}
	if st.Counters["records-dropped"] != 0 {
		t.Errorf("records-dropped %d", st.Counters["records-dropped"])
	}
	var recs []dataplane.Record
	for _, f := range fs {
		if fh, err := os.Open(f); err == nil {
			rs, _ := dataplane.ReadRecords(fh)
			fh.Close()
			recs = append(recs, rs...)
		}
	}
	if len(recs) == 0 {
		t.Error("no record left in the rotated log")
	}
}

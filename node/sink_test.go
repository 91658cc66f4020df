package node

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/trireme-go/trireme/dataplane"
	"github.com/trireme-go/trireme/ipproto"
)

func readLog(t *testing.T, path string) []dataplane.Record {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	rs, err := dataplane.ReadRecords(f)
	if err != nil {
		t.Fatal(err)
	}
	return rs
}

func quietLog() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// record is a flow record of client port p to a server.
func record(action string, client netip.Addr, p int, server netip.AddrPort) *dataplane.Record {
	now := time.Now()
	return &dataplane.Record{Time: now, EndTime: now, End: dataplane.EndDenied, Proto: ipproto.TCP,
		Client: netip.AddrPortFrom(client, uint16(p)), Server: server, Direction: "ingress",
		Local: dataplane.PUInfo{ID: "pu-a"}, Action: action, Reason: "policy-denied",
		Rule: &dataplane.RuleInfo{Policy: "p", Direction: "ingress", Index: 1, Action: action}}
}

var (
	cli = netip.MustParseAddr("10.0.0.9")
	srv = netip.MustParseAddrPort("10.0.0.2:5432")
)

// TestSinkBurst: 40,000 flow ends at once, from several goroutines, are all
// written, none dropped; with a queue far smaller than the burst, the
// callers wait for room instead (back-pressure).
func TestSinkBurst(t *testing.T) {
	for _, queue := range []int{0, 1000} {
		t.Run(fmt.Sprintf("queue %d", queue), func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "flows.jsonl")
			s := newAsyncSink(quietLog())
			if err := s.open(flowLogConfig{Path: path, MaxSize: 1 << 30, Files: 1, Aggregate: 10 * time.Second, QueueCap: queue}); err != nil {
				t.Fatal(err)
			}
			const n, workers = 40000, 8
			var wg sync.WaitGroup
			for w := range workers {
				wg.Go(func() {
					for i := range n / workers {
						// Allowed flows (closed): never aggregated.
						s.Record(record("allow", cli, w*n+i, srv))
					}
				})
			}
			wg.Wait()
			s.close()
			if got := len(readLog(t, path)); got != n {
				t.Errorf("%d records written, want %d", got, n)
			}
			if s.dropped.Load() != 0 || s.written.Load() != n {
				t.Errorf("dropped %d, written %d", s.dropped.Load(), s.written.Load())
			}
			if queue != 0 && s.waits.Load() == 0 {
				t.Errorf("a queue of %d took a burst of %d without waiting", queue, n)
			}
			t.Logf("waits: %d", s.waits.Load())
		})
	}
}

// TestSinkRotation: the log is rotated at MaxSize and keeps Files rotated
// files: nothing beyond, no file over MaxSize, and the newest records are
// all there, in order.
func TestSinkRotation(t *testing.T) {
	path := filepath.Join(t.TempDir(), "flows.jsonl")
	s := newAsyncSink(quietLog())
	const maxSize, files = 64 << 10, 2
	if err := s.open(flowLogConfig{Path: path, MaxSize: maxSize, Files: files}); err != nil {
		t.Fatal(err)
	}
	const n = 5000 // ~1.9 MB of records
	for i := range n {
		s.Record(record("allow", cli, i+1, srv))
	}
	s.close()
	got := FlowLogFiles(path)
	if len(got) != files+1 {
		t.Fatalf("files %v, want the log and %d rotated", got, files)
	}
	if _, err := os.Stat(rotated(path, files+1)); err == nil {
		t.Errorf("%s kept", rotated(path, files+1))
	}
	var all []dataplane.Record
	for i := len(got) - 1; i >= 0; i-- { // oldest first
		st, err := os.Stat(got[i])
		if err != nil || st.Size() > maxSize {
			t.Errorf("%s: %v bytes (%v), max %d", got[i], st.Size(), err, maxSize)
		}
		all = append(all, readLog(t, got[i])...)
	}
	if len(all) == 0 || len(all) >= n {
		t.Fatalf("%d records kept of %d", len(all), n)
	}
	for i, r := range all {
		if want := n - len(all) + i + 1; int(r.Client.Port()) != want {
			t.Fatalf("record %d of the kept ones is client port %d, want %d", i, r.Client.Port(), want)
		}
	}
	// Appending to an existing log: its size counts.
	s = newAsyncSink(quietLog())
	if err := s.open(flowLogConfig{Path: path, MaxSize: maxSize, Files: files}); err != nil {
		t.Fatal(err)
	}
	for i := range 500 {
		s.Record(record("allow", cli, i+1, srv))
	}
	s.close()
	if st, err := os.Stat(path); err != nil || st.Size() > maxSize {
		t.Errorf("after appending: %v %v", st.Size(), err)
	}
}

// TestSinkAggregation: refusals of one key from varying client ports fold
// into one record with a count per interval (the first aggSingles written
// at once); allowed flows, other keys and an aggregation interval of 0 are
// written one by one.
func TestSinkAggregation(t *testing.T) {
	path := filepath.Join(t.TempDir(), "flows.jsonl")
	s := newAsyncSink(quietLog())
	if err := s.open(flowLogConfig{Path: path, MaxSize: 1 << 30, Files: 1, Aggregate: time.Second}); err != nil {
		t.Fatal(err)
	}
	other := netip.MustParseAddrPort("10.0.0.2:5433")
	const flood = 3000
	for i := range flood {
		s.Record(record("deny", cli, 1024+i, srv))
		if i%1000 == 0 {
			s.Record(record("allow", cli, 1024+i, srv))
			s.Record(record("deny", cli, 1024+i, other))
		}
	}
	// Across an interval boundary: one more aggregate, not one record
	// each.
	time.Sleep(1500 * time.Millisecond)
	for i := range flood {
		s.Record(record("deny", cli, 1024+i, srv))
	}
	s.close()
	var allowed, toOther, single int
	var counted, inAggregates uint64
	var aggregates int
	for _, r := range readLog(t, path) {
		inAggregates += r.Count
		switch {
		case r.Action == "allow":
			allowed++
		case r.Server == other:
			toOther++
			counted += max(r.Count, 1)
		case r.Count > 0:
			aggregates++
			counted += r.Count
			if r.Client.Port() != 0 || r.Client.Addr() != cli {
				t.Errorf("aggregate's client %v, want %v:0", r.Client, cli)
			}
		default:
			single++
			counted++
		}
	}
	if allowed != 3 {
		t.Errorf("%d allowed records, want 3", allowed)
	}
	if counted != 2*flood+3 {
		t.Errorf("records account for %d refusals, want %d", counted, 2*flood+3)
	}
	if single != aggSingles || aggregates < 2 || aggregates > 4 {
		t.Errorf("%d single and %d aggregate records of the flood, want %d and 2-4", single, aggregates, aggSingles)
	}
	if got := s.aggregated.Load(); got != inAggregates {
		t.Errorf("aggregated counter %d, aggregate records count %d", got, inAggregates)
	}
	t.Logf("flood of %d: %d single, %d aggregates, %d records to the other port; aggregated counter %d", 2*flood, single, aggregates, toOther, s.aggregated.Load())

	// Off: every record.
	path = filepath.Join(t.TempDir(), "flows.jsonl")
	s = newAsyncSink(quietLog())
	if err := s.open(flowLogConfig{Path: path, MaxSize: 1 << 30, Files: 1}); err != nil {
		t.Fatal(err)
	}
	for i := range 100 {
		s.Record(record("deny", cli, 1024+i, srv))
	}
	s.close()
	if got := len(readLog(t, path)); got != 100 || s.aggregated.Load() != 0 {
		t.Errorf("aggregation off: %d records, %d aggregated", got, s.aggregated.Load())
	}
}

// TestSinkClosed: records after close are counted as dropped, not lost
// silently, and close does not block on an unopened sink.
func TestSinkClosed(t *testing.T) {
	newAsyncSink(quietLog()).close()
	s := newAsyncSink(quietLog())
	if err := s.open(flowLogConfig{Path: filepath.Join(t.TempDir(), "f"), MaxSize: 1 << 20}); err != nil {
		t.Fatal(err)
	}
	s.close()
	s.Record(record("allow", cli, 1, srv))
	if s.dropped.Load() != 1 {
		t.Errorf("dropped %d", s.dropped.Load())
	}
}

// TestSinkLineFormat: the flow log holds, per record, the line
// encoding/json's Encoder writes (the format tools read,
// docs/observability.md), hostile names included; a record whose time
// RFC 3339 cannot write is dropped and counted, as before.
func TestSinkLineFormat(t *testing.T) {
	path := filepath.Join(t.TempDir(), "flows.jsonl")
	s := newAsyncSink(quietLog())
	if err := s.open(flowLogConfig{Path: path, MaxSize: 1 << 30, Files: 1}); err != nil {
		t.Fatal(err)
	}
	var want bytes.Buffer
	enc := json.NewEncoder(&want)
	for i, name := range []string{"web", `q"uote<&>`, "ctl\x00\n\x1f", "bad\xffutf8", "sep\u2028"} {
		r := record("allow", cli, 40000+i, srv)
		r.Local = dataplane.PUInfo{ID: name, Node: "node-a", Tags: []string{"app=" + name, "env=prod"}}
		r.Remote = dataplane.PeerInfo{IP: cli, Node: name, Tags: []string{name}}
		r.VLAN = []uint16{7}
		s.Record(r)
		if err := enc.Encode(r); err != nil {
			t.Fatal(err)
		}
	}
	bad := record("allow", cli, 1, srv)
	bad.EndTime = time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC)
	s.Record(bad)
	s.close()
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want.Bytes()) {
		t.Errorf("flow log:\n%s\nencoding/json:\n%s", got, want.Bytes())
	}
	if s.dropped.Load() != 1 || s.written.Load() != 5 {
		t.Errorf("dropped %d, written %d; want 1 and 5", s.dropped.Load(), s.written.Load())
	}
}

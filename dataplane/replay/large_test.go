package replay_test

import (
	"bufio"
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/trireme-go/trireme/dataplane/pcapio"
	"github.com/trireme-go/trireme/dataplane/replay"
	"github.com/trireme-go/trireme/dataplane/replay/replaytest"
	"github.com/trireme-go/trireme/policy"
)

const allowAll = `
policies:
  - name: all
    selector: "*"
    ingress: [{name: any-in, action: allow}]
    egress: [{name: any-out, action: allow}]
`

// synth writes the capture of spec into dir and returns its path, its
// topology and its packet count.
func synth(tb testing.TB, dir string, spec replaytest.Spec) (string, *replay.Topology, int) {
	tb.Helper()
	path := filepath.Join(dir, "synth.pcap")
	f, err := os.Create(path)
	if err != nil {
		tb.Fatal(err)
	}
	w := bufio.NewWriterSize(f, 1<<20)
	n, err := replaytest.Write(w, spec)
	if ferr := w.Flush(); err == nil {
		err = ferr
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		tb.Fatal(err)
	}
	topo, err := replay.ParseTopology("synth.yaml", []byte(spec.TopologyYAML()))
	if err != nil {
		tb.Fatal(err)
	}
	return path, topo, n
}

func allowAllSet(tb testing.TB) *policy.Set {
	s, err := policy.Parse("allow.yaml", []byte(allowAll))
	if err != nil {
		tb.Fatal(err)
	}
	return s
}

// replayPath replays a capture file the way `trireme replay` does: the
// frames read without a copy, one Replayer.
func replayPath(tb testing.TB, r *replay.Replayer, path string) error {
	rd, c, err := pcapio.Open(path)
	if err != nil {
		tb.Fatal(err)
	}
	defer c.Close()
	for i := 0; ; i++ {
		p, err := rd.NextShared()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		r.Packet(i, p.Time, p.Frame)
	}
}

// TestSynthCapture: the synthetic capture the throughput benchmark
// replays is real traffic to the enforcers: with an allow-all policy every
// connection is allowed and every packet reaches its PU, nothing is
// dropped; with a policy allowing nothing, every connection is denied.
func TestSynthCapture(t *testing.T) {
	spec := replaytest.Spec{PUs: 30, Nodes: 4, Conns: 120, Exchanges: 3, Concurrent: 25}
	path, topo, n := synth(t, t.TempDir(), spec)
	if n != spec.Conns*spec.PacketsPerConn() {
		t.Fatalf("%d packets, want %d", n, spec.Conns*spec.PacketsPerConn())
	}
	r, err := replay.New(replay.Options{Topology: topo, Policy: allowAllSet(t)})
	if err != nil {
		t.Fatal(err)
	}
	if err := replayPath(t, r, path); err != nil {
		t.Fatal(err)
	}
	sum := r.Finish()
	if sum.PacketsIn != n || sum.Forwarded != n || len(sum.Dropped) != 0 || sum.ConnectionsAllowed != spec.Conns ||
		sum.ConnectionsIncomplete != 0 || sum.Flows != 2*spec.Conns {
		t.Fatalf("allow all: %+v", sum)
	}
	deny, err := policy.Parse("deny.yaml", []byte("policies:\n  - name: nothing\n    selector: \"*\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	r, err = replay.New(replay.Options{Topology: topo, Policy: deny})
	if err != nil {
		t.Fatal(err)
	}
	if err := replayPath(t, r, path); err != nil {
		t.Fatal(err)
	}
	if sum := r.Finish(); sum.ConnectionsDenied != spec.Conns || sum.ConnectionsAllowed != 0 || sum.Forwarded != 0 {
		t.Fatalf("deny all: %+v", sum)
	}
}

func cpuTime() time.Duration {
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkReplayLarge replays a large synthetic capture (replaytest.Default:
// 92,000 packets of 2,000 connections between 200 PUs on 20 nodes) from a
// file, as `trireme replay` does: reading, both enforcers of each packet,
// the handshakes' tokens. packets/s is wall time; cpu-ns/packet the
// process's CPU time (all its threads: the GC's too) per packet.
func BenchmarkReplayLarge(b *testing.B) {
	for _, c := range []struct {
		name string
		spec replaytest.Spec
	}{
		{"200PUs-20nodes", replaytest.Default},
		// The same connections between 20 PUs on 4 nodes: 80 first
		// contacts (a token verified cold) instead of 4,000.
		{"20PUs-4nodes", replaytest.Spec{PUs: 20, Nodes: 4}},
	} {
		b.Run(c.name, func(b *testing.B) { benchReplay(b, c.spec) })
	}
}

func benchReplay(b *testing.B, spec replaytest.Spec) {
	spec = spec.WithDefaults()
	path, topo, n := synth(b, b.TempDir(), spec)
	pol := allowAllSet(b)
	b.ReportAllocs()
	var cpu time.Duration
	packets := 0
	for b.Loop() {
		b.StopTimer()
		r, err := replay.New(replay.Options{Topology: topo, Policy: pol})
		if err != nil {
			b.Fatal(err)
		}
		cpu0 := cpuTime()
		b.StartTimer()
		if err := replayPath(b, r, path); err != nil {
			b.Fatal(err)
		}
		sum := r.Finish()
		b.StopTimer()
		cpu += cpuTime() - cpu0
		if sum.Forwarded != n || sum.ConnectionsAllowed != spec.Conns {
			b.Fatal(errors.New("not every packet forwarded"), sum)
		}
		packets += n
		b.StartTimer()
	}
	b.ReportMetric(float64(packets)/b.Elapsed().Seconds(), "packets/s")
	b.ReportMetric(float64(cpu.Nanoseconds())/float64(packets), "cpu-ns/packet")
	b.ReportMetric(0, "ns/op")
}

package loadgen_test

import (
	"context"
	"errors"
	"net/netip"
	"os"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/trireme-go/trireme/netsetup"
	"github.com/trireme-go/trireme/perf"
	"github.com/trireme-go/trireme/perf/loadgen"
)

// kernelPath builds a one-node topology joined by a plain bridge and returns
// a server in the server PU and a client in the client PU. Everything is
// removed at the end of the test, also on failure.
func kernelPath(t *testing.T) (*loadgen.Server, *loadgen.Client) {
	t.Helper()
	topo, err := perf.NewTopology(perf.OneNode, "lgtest")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := topo.Destroy(); err != nil {
			t.Error(err)
		}
	})
	if err := perf.WireBridge(topo); err != nil {
		t.Fatal(err)
	}
	srvNs, err := netsetup.OpenNetnsPath(topo.Server.Netns)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srvNs.Close() })
	cliNs, err := netsetup.OpenNetnsPath(topo.Client.Netns)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cliNs.Close() })
	srv, err := loadgen.Listen(srvNs, netip.AddrPortFrom(topo.Server.Addr, 0))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	cli, err := loadgen.NewClient(cliNs, srv.Addr())
	if err != nil {
		t.Fatal(err)
	}
	if err := cli.Probe(context.Background(), 5*time.Second); err != nil {
		t.Fatal(err)
	}
	return srv, cli
}

func TestKernelPath(t *testing.T) {
	srv, cli := kernelPath(t)
	ctx := context.Background()
	const d = time.Second

	t.Run("conn rate", func(t *testing.T) {
		for _, tc := range []struct {
			clients   int
			latencies bool
		}{{1, true}, {4, false}} {
			before := srv.Accepted()
			r, err := cli.ConnRate(ctx, tc.clients, d, tc.latencies)
			if err != nil {
				t.Fatal(err)
			}
			if r.Conns == 0 || r.Failed != 0 {
				t.Fatalf("%d clients: %d connections, %d failed (%v)", tc.clients, r.Conns, r.Failed, r.FirstErr)
			}
			// Every completed exchange was answered by the server.
			if got := srv.Accepted() - before; got < r.Conns {
				t.Fatalf("%d clients: server accepted %d connections, client completed %d", tc.clients, got, r.Conns)
			}
			if r.Elapsed < d || r.PerSecond() <= 0 {
				t.Fatalf("%d clients: elapsed %v, rate %v", tc.clients, r.Elapsed, r.PerSecond())
			}
			if !tc.latencies {
				if len(r.Connect) != 0 {
					t.Fatalf("latencies recorded without being asked for")
				}
				continue
			}
			if uint64(len(r.Connect)) != r.Conns || len(r.FirstByte) != len(r.Connect) {
				t.Fatalf("%d connect and %d first-byte samples for %d connections", len(r.Connect), len(r.FirstByte), r.Conns)
			}
			for i := range r.Connect {
				if r.Connect[i] <= 0 || r.FirstByte[i] < r.Connect[i] {
					t.Fatalf("connection %d: connect %v, first byte %v", i, r.Connect[i], r.FirstByte[i])
				}
			}
			for name, s := range map[string][]time.Duration{"connect": r.Connect, "first byte": r.FirstByte} {
				l := perf.LatenciesOf(s)
				if l.P50 <= 0 || l.P50 > l.P90 || l.P90 > l.P99 {
					t.Fatalf("%s latencies not ordered: %+v", name, l)
				}
			}
		}
	})

	t.Run("bulk", func(t *testing.T) {
		for _, streams := range []int{1, 4} {
			before := srv.BulkReceived()
			r, err := cli.Bulk(ctx, streams, d)
			if err != nil {
				t.Fatal(err)
			}
			if r.Sent == 0 || r.Sent != r.Received {
				t.Fatalf("%d streams: sent %d, server reported %d", streams, r.Sent, r.Received)
			}
			if got := srv.BulkReceived() - before; got != r.Sent {
				t.Fatalf("%d streams: server counted %d bytes, client sent %d", streams, got, r.Sent)
			}
			if r.Elapsed < d || r.Gbps() <= 0 {
				t.Fatalf("%d streams: elapsed %v, %v Gbit/s", streams, r.Elapsed, r.Gbps())
			}
		}
	})

	t.Run("rtt", func(t *testing.T) {
		r, err := cli.RTT(ctx, d/2)
		if err != nil {
			t.Fatal(err)
		}
		if len(r.Samples) == 0 {
			t.Fatal("no round trips")
		}
		for i, s := range r.Samples {
			if s <= 0 {
				t.Fatalf("sample %d: %v", i, s)
			}
		}
	})
}

// TestHold: held connections answer each check; one the server closed is
// counted as failed and dropped; the server sees them all.
func TestHold(t *testing.T) {
	srv, cli := kernelPath(t)
	before := srv.Accepted()
	h, err := cli.Hold(context.Background(), 50)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	if got := srv.Accepted() - before; got != 50 || h.Len() != 50 {
		t.Fatalf("server accepted %d, held %d, want 50", got, h.Len())
	}
	for range 2 {
		if ok, failed := h.Check(time.Second); ok != 50 || failed != 0 {
			t.Fatalf("check: %d ok, %d failed", ok, failed)
		}
	}
	srv.Close() // closes every connection
	if ok, failed := h.Check(time.Second); ok != 0 || failed != 50 || h.Len() != 0 {
		t.Fatalf("after the server closed them: %d ok, %d failed, %d left", ok, failed, h.Len())
	}
}

// TestParking: held connections parked at both ends stay open with no
// file of this process each, carry data when checked, and close with
// their parking: the check then counts every one as failed.
func TestParking(t *testing.T) {
	srv, cli := kernelPath(t)
	cliPark, err := loadgen.NewParking()
	if err != nil {
		t.Fatal(err)
	}
	defer cliPark.Close()
	srvPark, err := loadgen.NewParking()
	if err != nil {
		t.Fatal(err)
	}
	defer srvPark.Close()
	srv.ParkPings(srvPark)
	const n = 600 // more than one message of files at each end
	fdsBefore := openFiles(t)
	h, err := cli.Hold(context.Background(), n)
	if err != nil {
		t.Fatal(err)
	}
	if err := h.Park(cliPark); err != nil {
		t.Fatal(err)
	}
	if err := srvPark.Flush(); err != nil {
		t.Fatal(err)
	}
	if h.Len() != 0 || cliPark.Len() != n || srvPark.Len() != n {
		t.Fatalf("held %d, parked %d client and %d server ends, want 0, %d, %d", h.Len(), cliPark.Len(), srvPark.Len(), n, n)
	}
	if got := openFiles(t); got > fdsBefore+20 {
		t.Fatalf("%d files open with %d connections parked, %d before", got, n, fdsBefore)
	}
	for range 2 {
		if ok, failed, err := loadgen.CheckParked(cliPark, time.Second); ok != n || failed != 0 || err != nil {
			t.Fatalf("check: %d ok, %d failed, %v", ok, failed, err)
		}
	}
	srvPark.Close() // closes the server ends: the peers reset
	if ok, failed, err := loadgen.CheckParked(cliPark, time.Second); ok != 0 || failed != n || err != nil || cliPark.Len() != 0 {
		t.Fatalf("after the server ends closed: %d ok, %d failed, %v, %d left", ok, failed, err, cliPark.Len())
	}
}

func openFiles(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// A path that refuses connections is counted as failures, not as
// connections, and Probe reports it.
func TestRefused(t *testing.T) {
	srv, cli := kernelPath(t)
	closed := netip.AddrPortFrom(srv.Addr().Addr(), srv.Addr().Port()+1)
	refused, err := cli.To(closed)
	if err != nil {
		t.Fatal(err)
	}
	r, err := refused.ConnRate(context.Background(), 2, 200*time.Millisecond, true)
	if err != nil {
		t.Fatal(err)
	}
	if r.Conns != 0 || r.Failed == 0 || len(r.Connect) != 0 {
		t.Fatalf("refused port: %d connections, %d failed, %d samples", r.Conns, r.Failed, len(r.Connect))
	}
	if !errors.Is(r.FirstErr, unix.ECONNREFUSED) {
		t.Fatalf("first error %v, want connection refused", r.FirstErr)
	}
	if err := refused.Probe(context.Background(), 300*time.Millisecond); !errors.Is(err, unix.ECONNREFUSED) {
		t.Fatalf("Probe: %v, want connection refused", err)
	}
	if _, err := refused.Bulk(context.Background(), 1, 100*time.Millisecond); !errors.Is(err, unix.ECONNREFUSED) {
		t.Fatalf("Bulk: %v, want connection refused", err)
	}
}

func TestReadProc(t *testing.T) {
	// Burn a little CPU so that the sample is not zero.
	deadline := time.Now().Add(50 * time.Millisecond)
	for x := 0; time.Now().Before(deadline); x++ {
		_ = x * x
	}
	s, err := loadgen.ReadProc(unix.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if s.CPU <= 0 || s.RSS == 0 || s.PeakRSS < s.RSS {
		t.Fatalf("sample of self: %+v", s)
	}
	if _, err := loadgen.ReadProc(1 << 30); err == nil {
		t.Fatal("no error for a process that does not exist")
	}
}

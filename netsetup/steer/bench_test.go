package steer_test

import (
	"fmt"
	"io"
	"net"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/trireme-go/trireme/ipproto"
	"github.com/trireme-go/trireme/netsetup/steer"
	"github.com/trireme-go/trireme/testenv"
)

// benchRig: PUs 0 -> 1 are steered through the test forwarder, PUs 2 -> 3
// are plain bridge ports: both paths measured in the same run.
func benchRig(b *testing.B) (*rig, [2][2]*testenv.PU) {
	r := newRig(b, 4, 2)
	f := r.startForwarder()
	b.Cleanup(f.stop)
	p := r.node.PUs
	return r, [2][2]*testenv.PU{{p[2], p[3]}, {p[0], p[1]}}
}

var benchPaths = []string{"bridge", "steered"}

// BenchmarkBulk: one TCP stream, 1 MiB per op (MB/s is the throughput).
func BenchmarkBulk(b *testing.B) {
	_, pairs := benchRig(b)
	for i, name := range benchPaths {
		from, to := pairs[i][0], pairs[i][1]
		ln := to.Listen(0)
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				go func() { defer c.Close(); _, _ = io.Copy(io.Discard, c) }()
			}
		}()
		b.Run(name, func(b *testing.B) {
			c, err := from.Dial(addrOf(ln), 5*time.Second)
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			buf := make([]byte, 1<<20)
			b.SetBytes(int64(len(buf)))
			b.ResetTimer()
			for b.Loop() {
				if _, err := c.Write(buf); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkConnect: one TCP connection set up (and closed) per op; on the
// steered path the SYN, SYN-ACK and handshake ACK cross the forwarder and
// the flow is authorized in both PUs' sets.
func BenchmarkConnect(b *testing.B) {
	_, pairs := benchRig(b)
	for i, name := range benchPaths {
		from, to := pairs[i][0], pairs[i][1]
		ln := to.Listen(0)
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				c.Close()
			}
		}()
		b.Run(name, func(b *testing.B) {
			var one [1]byte
			for b.Loop() {
				c, err := from.Dial(addrOf(ln), 5*time.Second)
				if err != nil {
					b.Fatal(err)
				}
				// Wait for the server's close: the connection was accepted.
				_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
				if _, err := c.Read(one[:]); err != io.EOF {
					b.Fatalf("expected EOF from the server, got %v", err)
				}
				c.(*net.TCPConn).SetLinger(0)
				c.Close()
			}
		})
	}
}

func benchTuple(i int) steer.Tuple {
	return steer.Tuple{
		Src:   netip.AddrFrom4([4]byte{10, 77, 0, 2}),
		Dst:   netip.AddrFrom4([4]byte{10, 78, byte(i >> 8), byte(i)}),
		Proto: ipproto.TCP, SrcPort: uint16(1024 + i%60000), DstPort: 443,
	}
}

// BenchmarkAuthorize: cost of authorizing one flow (both directions) in the
// kernel set, alone and in batches.
func BenchmarkAuthorize(b *testing.B) {
	r := newRig(b, 1, 1)
	for _, size := range []int{1, 64} {
		b.Run(fmt.Sprintf("batch=%d", size), func(b *testing.B) {
			i := 0
			for b.Loop() {
				bt := r.s.NewBatch()
				for k := 0; k < size; k++ {
					bt.Authorize("pu0", benchTuple(i), time.Minute)
					i++
				}
				if err := bt.Commit(); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(i), "ns/flow")
		})
	}
}

// BenchmarkRTT: one 64-byte request and its echo per op on an established
// TCP connection. On the steered path the flow is authorized, so every
// packet stays in the kernel and crosses the PU chains (both PUs' ingress
// and egress hooks): the difference to the bridge path is the per-packet
// cost of the rules.
func BenchmarkRTT(b *testing.B) {
	_, pairs := benchRig(b)
	for i, name := range benchPaths {
		from, to := pairs[i][0], pairs[i][1]
		ln := to.Listen(0)
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				go func() { defer c.Close(); _, _ = io.Copy(c, c) }()
			}
		}()
		b.Run(name, func(b *testing.B) {
			c, err := from.Dial(addrOf(ln), 5*time.Second)
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			msg := make([]byte, 64)
			buf := make([]byte, 64)
			// Warm up: the first round trips cross the forwarder until the
			// flow is authorized.
			for k := 0; k < 50; k++ {
				if _, err := c.Write(msg); err != nil {
					b.Fatal(err)
				}
				if _, err := io.ReadFull(c, buf); err != nil {
					b.Fatal(err)
				}
			}
			time.Sleep(100 * time.Millisecond)
			// The mean is at the mercy of other jobs on the machine: the
			// median and the 10th percentile of each round trip are
			// steadier estimates of the fixed cost.
			rtts := make([]time.Duration, 0, b.N)
			b.ResetTimer()
			for b.Loop() {
				t0 := time.Now()
				if _, err := c.Write(msg); err != nil {
					b.Fatal(err)
				}
				if _, err := io.ReadFull(c, buf); err != nil {
					b.Fatal(err)
				}
				rtts = append(rtts, time.Since(t0))
			}
			slices.Sort(rtts)
			b.ReportMetric(float64(rtts[len(rtts)/2].Nanoseconds()), "p50-ns")
			b.ReportMetric(float64(rtts[len(rtts)/10].Nanoseconds()), "p10-ns")
		})
	}
}

// BenchmarkRevoke: the cost of revoking flows (both entries each) in
// batches, plain and reading the entries' counters first (RevokeCounted:
// what the daemon does at each flow end for its final record). Each op
// authorizes the batch's flows first (not timed), then revokes them.
func BenchmarkRevoke(b *testing.B) {
	r := newRig(b, 1, 1)
	for _, counted := range []bool{false, true} {
		for _, size := range []int{1, 16} {
			b.Run(fmt.Sprintf("counted=%v/batch=%d", counted, size), func(b *testing.B) {
				i := 0
				counts := make([]steer.FinalCounts, size)
				for b.Loop() {
					b.StopTimer()
					bt := r.s.NewBatch()
					for k := 0; k < size; k++ {
						bt.Authorize("pu0", benchTuple(i+k), time.Minute)
					}
					if err := bt.Commit(); err != nil {
						b.Fatal(err)
					}
					b.StartTimer()
					for k := 0; k < size; k++ {
						if counted {
							bt.RevokeCounted("pu0", benchTuple(i), &counts[k])
						} else {
							bt.Revoke("pu0", benchTuple(i))
						}
						i++
					}
					if err := bt.Commit(); err != nil {
						b.Fatal(err)
					}
					if counted && !counts[0].Found {
						b.Fatal("the entry was not found")
					}
				}
				b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(i), "ns/flow")
			})
		}
	}
}

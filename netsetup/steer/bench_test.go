package steer_test

import (
	"io"
	"net"
	"testing"
	"time"

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

package node_test

import (
	"bytes"
	"io"
	"net"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/trireme-go/trireme/node"
)

// TestFlowKernelCounters: the packets of an authorized connection stay in
// the kernel; `trireme flows` still counts them, both ways and on both
// sides, from the counters of the kernel's authorized entries.
func TestFlowKernelCounters(t *testing.T) {
	s := newFlowScene(t, "")
	c, err := s.front.Dial(netip.AddrPortFrom(s.web.Addr, 8080), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// Both sides' entries are in the kernel before the data flows.
	s.d.WaitKernelAuthorized(t, 2)
	const size = 2 << 20
	data := bytes.Repeat([]byte("trireme!"), size/8)
	c.SetDeadline(time.Now().Add(20 * time.Second))
	go c.Write(data)
	got := make([]byte, size)
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatalf("echo of %d bytes: %v", size, err)
	}
	local := c.LocalAddr().String()

	open := func(fs []node.Flow) (egress, ingress *node.Flow) {
		for i := range fs {
			f := &fs[i]
			if f.Client.String() != local || f.End != "established" {
				continue
			}
			if f.Direction == "egress" {
				egress = f
			} else {
				ingress = f
			}
		}
		return
	}
	fs := s.waitFlows(t, func(fs []node.Flow) bool { e, i := open(fs); return e != nil && i != nil }, "--proto", "tcp", "--port", "8080")
	egress, ingress := open(fs)
	for _, tc := range []struct {
		name string
		f    *node.Flow
		sent uint64 // bytes the PU sent
		recv uint64
	}{
		{"client (egress)", egress, egress.BytesOut, egress.BytesIn},
		{"server (ingress)", ingress, ingress.BytesIn, ingress.BytesOut},
	} {
		t.Logf("%s: %d/%d packets, %d/%d bytes out/in", tc.name, tc.f.PacketsOut, tc.f.PacketsIn, tc.f.BytesOut, tc.f.BytesIn)
		if !tc.f.KernelCounted {
			t.Errorf("%s: the record has no kernel counts: %+v", tc.name, tc.f)
		}
		// Payload plus headers: at least the 2 MiB each way.
		if tc.sent < size || tc.recv < size || tc.f.PacketsOut < 2 || tc.f.PacketsIn < 2 {
			t.Errorf("%s: %d/%d packets, %d/%d bytes out/in; want at least %d bytes each way", tc.name,
				tc.f.PacketsOut, tc.f.PacketsIn, tc.f.BytesOut, tc.f.BytesIn, size)
		}
	}
	// The flow log's interim record has the dataplane's counts only: the
	// data never passed the daemon.
	for _, r := range s.d.Records() {
		if r.Client.String() == local && r.End == "established" && r.BytesOut+r.BytesIn >= size {
			t.Errorf("the dataplane saw the data: %+v", r)
		}
	}
}

// TestFinalRecordKernelCounters: the final record of a connection the
// kernel carried holds what the kernel counted, to the end: the counts of
// the open flow (read from the kernel while it was open) plus the few
// packets of its end (FINs and their ACKs, or the RST), for both ends'
// records, closed by FINs, reset, revoked by a policy change (the server's
// record), its PU removed (the client's record).
func TestFinalRecordKernelCounters(t *testing.T) {
	s := newFlowScene(t, "onPolicyChange: reset\n")
	srv := netip.AddrPortFrom(s.web.Addr, 8080)
	pus, err := s.d.Client().ListPUs()
	if err != nil {
		t.Fatal(err)
	}
	var frontID string
	for _, p := range pus {
		if p.Name == s.frontN {
			frontID = p.ID
		}
	}
	policy, err := os.ReadFile(s.d.PolicyPath)
	if err != nil {
		t.Fatal(err)
	}
	for i, tc := range []struct {
		name string
		// the ends of the client's (egress) and server's (ingress)
		// records; "": not judged (that side's flow goes on)
		egressEnd, ingressEnd string
		end                   func(t *testing.T, c net.Conn)
	}{
		{"fin", "closed", "closed", func(t *testing.T, c net.Conn) { c.Close() }},
		{"rst", "reset", "reset", func(t *testing.T, c net.Conn) {
			c.(*net.TCPConn).SetLinger(0)
			c.Close()
		}},
		{"revoked", "", "revoked", func(t *testing.T, c net.Conn) {
			// The web no longer admits the frontend on 8080.
			s.d.SetPolicy(strings.Replace(string(policy), "ports: [tcp/8080, tcp/9090]", "ports: [tcp/9090]", 1))
			s.d.SetPolicy(string(policy))
		}},
		{"pu-removed", "pu-removed", "", func(t *testing.T, c net.Conn) {
			if err := s.d.Client().DetachPU(frontID); err != nil {
				t.Fatal(err)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := s.front.Dial(srv, 5*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			s.d.WaitKernelAuthorized(t, 2*uint64(i+1))
			const size = 1 << 20
			data := bytes.Repeat([]byte("trireme!"), size/8)
			c.SetDeadline(time.Now().Add(20 * time.Second))
			go c.Write(data)
			if _, err := io.ReadFull(c, make([]byte, size)); err != nil {
				t.Fatalf("echo of %d bytes: %v", size, err)
			}
			local := c.LocalAddr().String()
			records := func(fs []node.Flow, egressEnd, ingressEnd string) (egress, ingress *node.Flow) {
				for i := range fs {
					f := &fs[i]
					if f.Client.String() != local {
						continue
					}
					if f.Direction == "egress" && string(f.End) == egressEnd {
						egress = f
					}
					if f.Direction == "ingress" && string(f.End) == ingressEnd {
						ingress = f
					}
				}
				return
			}
			// The open flow, with the kernel's counts so far.
			fs := s.waitFlows(t, func(fs []node.Flow) bool {
				e, i := records(fs, "established", "established")
				return e != nil && i != nil && e.KernelCounted && i.KernelCounted
			}, "--proto", "tcp", "--port", "8080")
			openE, openI := records(fs, "established", "established")
			tc.end(t, c)
			// The final records, once the flow ended (closed: after the
			// closing timer).
			deadline := time.Now().Add(20 * time.Second)
			var finE, finI *node.Flow
			for {
				var fs []node.Flow
				for _, r := range s.d.Records() {
					fs = append(fs, node.Flow{Record: r})
				}
				finE, finI = records(fs, tc.egressEnd, tc.ingressEnd)
				if (finE != nil || tc.egressEnd == "") && (finI != nil || tc.ingressEnd == "") {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("no final records (%q, %q) of %s in the flow log:\n%s", tc.egressEnd, tc.ingressEnd, local, dumpFlows(fs))
				}
				time.Sleep(100 * time.Millisecond)
			}
			for _, side := range []struct {
				name      string
				open, fin *node.Flow
			}{{"client (egress)", openE, finE}, {"server (ingress)", openI, finI}} {
				o, f := side.open, side.fin
				if f == nil {
					continue
				}
				t.Logf("%s: open %d/%d packets %d/%d bytes; %s %d/%d packets %d/%d bytes (kernel counted: %v)", side.name,
					o.PacketsOut, o.PacketsIn, o.BytesOut, o.BytesIn, f.End, f.PacketsOut, f.PacketsIn, f.BytesOut, f.BytesIn, f.KernelCounted)
				if !f.KernelCounted {
					t.Errorf("%s: the final record has no kernel counts", side.name)
				}
				// All the data had been echoed when the open flow was
				// read: the end adds at most its FIN, RST and ACK segments
				// (at most 4 each way: a late delayed ACK, FIN, the ACK
				// of the peer's FIN, RST), without payload (at most 14 +
				// 40 + 60 bytes of headers each).
				for _, d := range []struct {
					dir                      string
					openP, finP, openB, finB uint64
				}{
					{"out", o.PacketsOut, f.PacketsOut, o.BytesOut, f.BytesOut},
					{"in", o.PacketsIn, f.PacketsIn, o.BytesIn, f.BytesIn},
				} {
					if d.finP < d.openP || d.finB < d.openB || d.finP-d.openP > 4 || d.finB-d.openB > 114*(d.finP-d.openP) {
						t.Errorf("%s %s: %d packets %d bytes at the end, %d packets %d bytes while open", side.name, d.dir, d.finP, d.finB, d.openP, d.openB)
					}
					if d.finB < size {
						t.Errorf("%s %s: %d bytes, less than the %d bytes of payload", side.name, d.dir, d.finB, size)
					}
				}
			}
		})
	}
}

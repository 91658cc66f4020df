package node_test

import (
	"bytes"
	"io"
	"net/netip"
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
	s.d.WaitKernelAuthorized(2)
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

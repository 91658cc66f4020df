package steer_test

import (
	"bytes"
	"net/netip"
	"testing"
	"time"
)

// TestSteeredFragments: every fragment of a datagram goes to the dataplane,
// also on an authorized flow (rule 4b): a 3,000-byte datagram (three
// fragments at MTU 1,500) leaves nothing to the authorized-flow rules,
// while a small datagram of the same flow does stay in the kernel.
func TestSteeredFragments(t *testing.T) {
	r := newRig(t, 2, 2)
	f := r.startForwarder()
	t.Cleanup(f.stop)
	client, server := r.node.PUs[0], r.node.PUs[1]
	srv := server.ListenUDP(0)
	go func() {
		buf := make([]byte, 65536)
		for {
			n, from, err := srv.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			_, _ = srv.WriteToUDPAddrPort(buf[:n], from)
		}
	}()
	cl := client.ListenUDP(0)
	dst := netip.MustParseAddrPort(srv.LocalAddr().String())
	buf := make([]byte, 65536)
	roundTrip := func(msg []byte) {
		t.Helper()
		if _, err := cl.WriteToUDPAddrPort(msg, dst); err != nil {
			t.Fatal(err)
		}
		_ = cl.SetReadDeadline(time.Now().Add(3 * time.Second))
		n, _, err := cl.ReadFromUDPAddrPort(buf)
		if err != nil || !bytes.Equal(buf[:n], msg) {
			t.Fatalf("%d-byte datagram: answer of %d bytes, %v", len(msg), n, err)
		}
	}
	roundTrip([]byte("authorize the flow"))
	roundTrip([]byte("in the kernel now"))
	before, _ := r.s.Counters("pu0")
	roundTrip(bytes.Repeat([]byte("f"), 3000))
	after, _ := r.s.Counters("pu0")
	if d := after.InAuthorized.Packets - before.InAuthorized.Packets; d != 0 {
		t.Errorf("%d fragments of the datagram leaving pu0 passed as an authorized flow's packets", d)
	}
	if d := after.OutAuthorized.Packets - before.OutAuthorized.Packets; d != 0 {
		t.Errorf("%d fragments of the answer passed as an authorized flow's packets", d)
	}
	if d := after.InSteered.Packets - before.InSteered.Packets; d < 3 {
		t.Errorf("%d frames steered for a datagram of three fragments", d)
	}
	roundTrip([]byte("small again"))
	last, _ := r.s.Counters("pu0")
	if last.InAuthorized.Packets != after.InAuthorized.Packets+1 {
		t.Errorf("a small datagram of the flow did not stay in the kernel: %+v -> %+v", after, last)
	}
	f.check(t)
}

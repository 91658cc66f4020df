package steer_test

import (
	"bytes"
	"net/netip"
	"testing"
	"time"

	"github.com/trireme-go/trireme/ipproto"
	"github.com/trireme-go/trireme/tokens"
)

// TestSteeredDatagramMarker (rule 4c): on a UDP flow authorized in the
// kernel, datagrams toward a PU stay in the kernel, except those that start
// with the datagram handshake's marker: each of those goes through the
// PU's TAP (the dataplane judges it), so a handshake message never reaches
// an application unseen.
func TestSteeredDatagramMarker(t *testing.T) {
	r := newRig(t, 2, 2)
	f := r.startForwarder()
	t.Cleanup(f.stop)
	client, server := r.node.PUs[0], r.node.PUs[1]
	srv := server.ListenUDP(0)
	cl := client.ListenUDP(0)
	dst := netip.MustParseAddrPort(srv.LocalAddr().String())
	me := netip.MustParseAddrPort(cl.LocalAddr().String())
	buf := make([]byte, 2048)
	roundTrip := func(toClient []byte) {
		t.Helper()
		if _, err := cl.WriteToUDPAddrPort([]byte("q"), dst); err != nil {
			t.Fatal(err)
		}
		_ = srv.SetReadDeadline(time.Now().Add(3 * time.Second))
		if _, _, err := srv.ReadFromUDPAddrPort(buf); err != nil {
			t.Fatal(err)
		}
		if _, err := srv.WriteToUDPAddrPort(toClient, me); err != nil {
			t.Fatal(err)
		}
		_ = cl.SetReadDeadline(time.Now().Add(3 * time.Second))
		n, _, err := cl.ReadFromUDPAddrPort(buf)
		if err != nil || !bytes.Equal(buf[:n], toClient) {
			t.Fatalf("answer %q, %v", buf[:n], err)
		}
	}
	for range 10 { // authorized after the first round trip
		roundTrip([]byte("plain"))
	}
	plain := f.byProto[ipproto.UDP].Load()
	for range 20 {
		roundTrip([]byte("plain"))
	}
	if n := f.byProto[ipproto.UDP].Load() - plain; n > 2 {
		t.Fatalf("%d plain datagrams of an authorized flow went through the TAPs", n)
	}
	before := f.byProto[ipproto.UDP].Load()
	marked := append(tokens.DatagramMarker[:4:4], "looks like a handshake message"...)
	for range 20 {
		roundTrip(marked)
	}
	if n := f.byProto[ipproto.UDP].Load() - before; n < 20 {
		t.Fatalf("%d of 20 marked datagrams toward the PU went through its TAP", n)
	}
	f.check(t)
}

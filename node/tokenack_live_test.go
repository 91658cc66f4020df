package node_test

import (
	"bytes"
	"io"
	"net/netip"
	"testing"
	"time"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"

	"github.com/trireme-go/trireme/testenv"
	"github.com/trireme-go/trireme/tokens"
)

// TestLateTokenACKNotData: a segment carrying the handshake's marker
// option and a frame, on a connection the kernel already passes (what the
// client's enforcer sends when it answers a SYN-ACK the server's kernel
// sent again), must not reach the server's application as data: the
// kernel steers it and the enforcer takes the frame out. Before, the
// fast path passed it, the server's TCP took the frame's bytes as the
// client's next data and the stream was shifted for good (the connection
// hung: the failure seen in the API-server conformance under load). Here
// the client PU sends such a segment by hand, with the connection's own
// sequence numbers, between two writes of its socket: the server reads
// exactly what the client's socket wrote.
func TestLateTokenACKNotData(t *testing.T) {
	d, front, web, ln := newFrontWeb(t)
	got := make(chan []byte, 1)
	reply := make(chan struct{})
	go func() {
		c, err := ln.Accept()
		if err != nil {
			got <- nil
			return
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(20 * time.Second))
		hello := make([]byte, 5)
		if _, err := io.ReadFull(c, hello); err != nil {
			got <- nil
			return
		}
		<-reply
		_, _ = c.Write([]byte("ok"))
		// Everything else the client sends, until it closes.
		rest, _ := io.ReadAll(c)
		got <- append(hello, rest...)
	}()
	c, err := front.Dial(netip.AddrPortFrom(web.Addr, 7000), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	d.WaitKernelAuthorized(t, 2) // both sides of the flow pass in the kernel

	// The server's "ok" gives the connection's sequence numbers.
	raw := front.Raw()
	seen := make(chan gopacket.Packet, 1)
	go func() {
		ps := raw.Capture(2*time.Second, func(p gopacket.Packet) bool {
			tcp, ok := p.Layer(layers.LayerTypeTCP).(*layers.TCP)
			return ok && tcp.SrcPort == 7000 && string(tcp.Payload) == "ok"
		})
		if len(ps) == 0 {
			seen <- nil
			return
		}
		seen <- ps[0]
	}()
	time.Sleep(200 * time.Millisecond) // the capture is reading
	close(reply)
	ok := make([]byte, 2)
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(c, ok); err != nil || string(ok) != "ok" {
		t.Fatalf("reply: %q, %v", ok, err)
	}
	p := <-seen
	if p == nil {
		t.Fatal("the server's reply was not seen at the client's interface")
	}
	srv := p.Layer(layers.LayerTypeTCP).(*layers.TCP)
	ip := p.Layer(layers.LayerTypeIPv4).(*layers.IPv4)
	eth := p.Layer(layers.LayerTypeEthernet).(*layers.Ethernet)

	// The client's next sequence number is what the server acknowledged.
	frame := []byte{1, 3, 0, 36} // an ACK frame's header (version 1, type 3, 36 bytes)
	frame = append(frame, bytes.Repeat([]byte{'X'}, 32)...)
	tcp := &layers.TCP{SrcPort: srv.DstPort, DstPort: srv.SrcPort, Seq: srv.Ack, Ack: srv.Seq + 2, ACK: true, Window: 502,
		Options: []layers.TCPOption{{OptionType: tokens.OptionKind, OptionLength: 4, OptionData: tokens.Option[2:]}}}
	ip4 := testenv.IPv4(netip.AddrFrom4([4]byte(ip.DstIP.To4())), netip.AddrFrom4([4]byte(ip.SrcIP.To4())), layers.IPProtocolTCP)
	_ = tcp.SetNetworkLayerForChecksum(ip4)
	raw.MustSend(testenv.Frame(testenv.Eth(eth.DstMAC, eth.SrcMAC, layers.EthernetTypeIPv4), ip4, tcp, gopacket.Payload(frame)))
	time.Sleep(200 * time.Millisecond)

	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write([]byte("world")); err != nil {
		t.Fatal(err)
	}
	c.(interface{ CloseWrite() error }).CloseWrite()
	select {
	case b := <-got:
		if string(b) != "helloworld" {
			t.Fatalf("the server read %q, want %q (a token frame reached it as data)", b, "helloworld")
		}
	case <-time.After(15 * time.Second):
		t.Fatal("the server read nothing more: the stream is shifted")
	}
	if st, err := d.Client().Stats(); err != nil || st.Counters["late-tokens"] != 1 {
		t.Fatalf("late-tokens: %d, want 1 (%v)", st.Counters["late-tokens"], err)
	}
}

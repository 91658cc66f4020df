package node

import (
	"bytes"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"

	"github.com/trireme-go/trireme/dataplane"
	"github.com/trireme-go/trireme/dataplane/packet"
	"github.com/trireme-go/trireme/identity"
	"github.com/trireme-go/trireme/ipproto"
	"github.com/trireme-go/trireme/netsetup/frameport"
	"github.com/trireme-go/trireme/netsetup/vnet"
	"github.com/trireme-go/trireme/policy"
	"github.com/trireme-go/trireme/reason"
	"github.com/trireme-go/trireme/tokens"
)

// memPU is a PU of a frame path whose ports are in memory.
type memPU struct {
	fp               *framePath
	pu               *dataplane.PU
	fromApp, fromNet *frameport.Chan
	toPU, toNet      *frameport.Chan
	mu               sync.Mutex
	notes            []dataplane.Note
	loops            sync.WaitGroup
}

func newMemPU(t *testing.T, ip netip.Addr) *memPU {
	t.Helper()
	enf := newMemEnforcer(t, `
targetNetworks: [10.0.0.0/8]
policies:
  - name: all
    selector: "*"
    ingress: [{name: any-in, action: allow}]
    egress: [{name: any-out, action: allow}]
`)
	m := &memPU{fromApp: frameport.NewChan(16), fromNet: frameport.NewChan(16), toPU: frameport.NewChan(16), toNet: frameport.NewChan(16)}
	m.fp = &framePath{enf: enf, log: slog.New(slog.DiscardHandler), notes: func(ns []dataplane.Note) {
		m.mu.Lock()
		m.notes = append(m.notes, ns...)
		m.mu.Unlock()
	}}
	m.pu = enf.AddPU("web", identity.NewTags(map[string]string{"app": "web"}), &puPorts{
		steer: "puweb", ips: []netip.Addr{ip}, fromApp: m.fromApp, fromNet: m.fromNet, toPU: m.toPU, toNet: m.toNet})
	for _, dir := range []dataplane.Direction{dataplane.FromApp, dataplane.FromNet} {
		m.loops.Add(1)
		go func() {
			defer m.loops.Done()
			m.fp.readLoop(m.pu, dir)
		}()
	}
	t.Cleanup(func() {
		for _, c := range []*frameport.Chan{m.fromApp, m.fromNet, m.toPU, m.toNet} {
			c.Close()
		}
		m.loops.Wait()
	})
	return m
}

// send writes frame, behind a plain virtio-net header, to port.
func send(t *testing.T, port *frameport.Chan, frame []byte) {
	t.Helper()
	b := make([]byte, vnet.HdrLen+len(frame))
	copy(b[vnet.HdrLen:], frame)
	if err := (vnet.Hdr{}).Encode(b); err != nil {
		t.Fatal(err)
	}
	if err := port.Write(b); err != nil {
		t.Fatal(err)
	}
}

// recv returns the next frame written to port (without its header).
func recv(t *testing.T, port *frameport.Chan) []byte {
	t.Helper()
	got := make(chan []byte, 1)
	go func() {
		b := make([]byte, 1<<16+vnet.HdrLen)
		n, err := port.Read(b)
		if err != nil {
			got <- nil
			return
		}
		got <- b[vnet.HdrLen:n]
	}()
	select {
	case f := <-got:
		if f == nil {
			t.Fatal("port closed")
		}
		return f
	case <-time.After(5 * time.Second):
		t.Fatal("no frame written")
	}
	return nil
}

// TestFrameLoopInMemory runs the daemon's frame loop over ports in memory
// (no root, no TAP): a SYN leaves with its token, a datagram leaves
// unchanged and its flow is authorized by name, a frame flooded toward
// the PU for another host is dropped and counted, a SYN without token
// from a peer in the target networks is refused with a RST to the peer.
func TestFrameLoopInMemory(t *testing.T) {
	web := netip.MustParseAddr("10.1.0.1")
	m := newMemPU(t, web)
	mac := net.HardwareAddr{2, 0, 0, 0, 0, 1}
	peer := net.HardwareAddr{2, 0, 0, 0, 0, 2}

	syn := tcpSegment(t, mac, peer, netip.AddrPortFrom(web, 40000), netip.MustParseAddrPort("10.1.0.2:80"), "S", 100, 0, nil)
	send(t, m.fromApp, syn)
	out := recv(t, m.toNet)
	var p packet.Packet
	if code := p.Decode(out); code != reason.None || p.Flags != packet.SYN {
		t.Fatalf("SYN: %v %+v", code, p)
	}
	if _, ok := packet.FindOption(&p, tokens.Option); !ok || len(out) <= len(syn) {
		t.Fatalf("SYN left without its token (%d bytes, was %d)", len(out), len(syn))
	}

	dns := udpDatagram(t, mac, peer, netip.AddrPortFrom(web, 5353), netip.MustParseAddrPort("192.0.2.1:53"), []byte("query"))
	send(t, m.fromApp, dns)
	if out := recv(t, m.toNet); !bytes.Equal(out, dns) {
		t.Fatalf("datagram changed on its way:\n got %x\nwant %x", out, dns)
	}

	// Flooded toward the PU, for 10.1.0.9: dropped, counted; the next
	// frame for the PU is the first one delivered.
	send(t, m.fromNet, udpDatagram(t, peer, mac, netip.MustParseAddrPort("10.1.0.2:53"), netip.MustParseAddrPort("10.1.0.9:5353"), []byte("x")))
	reply := udpDatagram(t, peer, mac, netip.MustParseAddrPort("192.0.2.1:53"), netip.AddrPortFrom(web, 5353), []byte("answer"))
	send(t, m.fromNet, reply)
	if out := recv(t, m.toPU); !bytes.Equal(out, reply) {
		t.Fatalf("toward the PU: got %x, want the reply %x", out, reply)
	}
	if n := m.fp.stats.foreignFrames.Load(); n != 1 {
		t.Fatalf("foreign frames: %d, want 1", n)
	}

	// A SYN without token from a target peer: a RST goes back to it.
	send(t, m.fromNet, tcpSegment(t, peer, mac, netip.MustParseAddrPort("10.1.0.3:41000"), netip.AddrPortFrom(web, 22), "S", 7, 0, nil))
	rst := recv(t, m.toNet)
	if p.Decode(rst) != reason.None || p.Flags&packet.RST == 0 || p.Dst != netip.MustParseAddr("10.1.0.3") || p.Ack != 8 {
		t.Fatalf("no RST to the peer: %+v", p)
	}
	if n := m.fp.enf.Stats().Drops[reason.MissingToken]; n != 1 {
		t.Fatalf("missing-token drops: %d", n)
	}

	// The datagram's flow was authorized, named by the PU's handle (the
	// notes follow the frame they belong to: wait for them).
	authorized := func() bool {
		m.mu.Lock()
		defer m.mu.Unlock()
		for _, n := range m.notes {
			if n.Kind == dataplane.Authorize && n.Proto == ipproto.UDP && portsOf(n.PU).steer == "puweb" {
				return true
			}
		}
		return false
	}
	for deadline := time.Now().Add(5 * time.Second); !authorized(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			m.mu.Lock()
			t.Fatalf("no authorization of the datagram flow: %+v", m.notes)
		}
	}
	if m.fp.stats.ioErrors.Load() != 0 {
		t.Fatalf("io errors: %d", m.fp.stats.ioErrors.Load())
	}
}

// tcpSegment and udpDatagram build Ethernet/IPv4 frames with valid
// checksums (testenv has the same, but imports node).
func tcpSegment(t *testing.T, srcMAC, dstMAC net.HardwareAddr, src, dst netip.AddrPort, flags string, seq, ack uint32, payload []byte) []byte {
	ip := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolTCP, SrcIP: src.Addr().AsSlice(), DstIP: dst.Addr().AsSlice()}
	tcp := &layers.TCP{SrcPort: layers.TCPPort(src.Port()), DstPort: layers.TCPPort(dst.Port()), Seq: seq, Ack: ack, Window: 64240,
		SYN: bytes.ContainsRune([]byte(flags), 'S'), ACK: bytes.ContainsRune([]byte(flags), 'A')}
	_ = tcp.SetNetworkLayerForChecksum(ip)
	return serialize(t, srcMAC, dstMAC, ip, tcp, gopacket.Payload(payload))
}

func udpDatagram(t *testing.T, srcMAC, dstMAC net.HardwareAddr, src, dst netip.AddrPort, payload []byte) []byte {
	ip := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolUDP, SrcIP: src.Addr().AsSlice(), DstIP: dst.Addr().AsSlice()}
	udp := &layers.UDP{SrcPort: layers.UDPPort(src.Port()), DstPort: layers.UDPPort(dst.Port())}
	_ = udp.SetNetworkLayerForChecksum(ip)
	return serialize(t, srcMAC, dstMAC, ip, udp, gopacket.Payload(payload))
}

func serialize(t *testing.T, srcMAC, dstMAC net.HardwareAddr, ls ...gopacket.SerializableLayer) []byte {
	t.Helper()
	buf := gopacket.NewSerializeBuffer()
	eth := &layers.Ethernet{SrcMAC: srcMAC, DstMAC: dstMAC, EthernetType: layers.EthernetTypeIPv4}
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, append([]gopacket.SerializableLayer{eth}, ls...)...); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// newMemEnforcer is an enforcer for the in-memory frame-path tests: PSK
// tokens, the policy in policyYAML, flows released to the (absent) kernel.
func newMemEnforcer(t *testing.T, policyYAML string) *dataplane.Enforcer {
	t.Helper()
	sec, err := tokens.NewPSK(bytes.Repeat([]byte("k"), 32))
	if err != nil {
		t.Fatal(err)
	}
	te, err := tokens.New(tokens.Config{Node: "mem", Secrets: sec})
	if err != nil {
		t.Fatal(err)
	}
	enf, err := dataplane.New(dataplane.Config{Tokens: te, Policy: compilePolicy(t, policyYAML), KernelBypass: true})
	if err != nil {
		t.Fatal(err)
	}
	return enf
}

// compilePolicy parses and compiles a policy text.
func compilePolicy(t testing.TB, text string) *policy.Engine {
	t.Helper()
	set, err := policy.Parse("test.yaml", []byte(text))
	if err != nil {
		t.Fatal(err)
	}
	e, err := policy.Compile(set)
	if err != nil {
		t.Fatal(err)
	}
	return e
}

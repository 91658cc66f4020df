package node

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/google/gopacket/layers"

	"github.com/trireme-go/trireme/dataplane"
	"github.com/trireme-go/trireme/dataplane/packet"
	"github.com/trireme-go/trireme/identity"
	"github.com/trireme-go/trireme/netsetup/frameport"
	"github.com/trireme-go/trireme/netsetup/vnet"
	"github.com/trireme-go/trireme/reason"
	"github.com/trireme-go/trireme/tokens"
)

// eventLog is the order in which a one-pass rig's frames were written to
// the PUs' ports and flows were put in the kernel.
type eventLog struct {
	mu     sync.Mutex
	events []string
}

func (l *eventLog) add(e string) {
	l.mu.Lock()
	l.events = append(l.events, e)
	l.mu.Unlock()
}

func (l *eventLog) all() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.events...)
}

// loggedPort is a port in memory that logs each frame written to it.
type loggedPort struct {
	*frameport.Chan
	name string
	log  *eventLog
}

func (p loggedPort) Write(b []byte) error {
	var pk packet.Packet
	what := "frame"
	if pk.Decode(b[vnet.HdrLen:]) == reason.None {
		what = flagString(pk.Flags)
	}
	p.log.add(p.name + ":" + what)
	return p.Chan.Write(b)
}

func flagString(f uint8) string {
	s := ""
	for _, x := range []struct {
		bit uint8
		c   string
	}{{packet.SYN, "S"}, {packet.ACK, "A"}, {packet.FIN, "F"}, {packet.RST, "R"}} {
		if f&x.bit != 0 {
			s += x.c
		}
	}
	return s
}

// onePassRig is a frame path with two PUs of the node bridge, front and
// web, over ports in memory; both share the bridge's injection port.
type onePassRig struct {
	fp         *framePath
	log        *eventLog
	toNet      *frameport.Chan
	front, web *rigPU
	mu         sync.Mutex
	queued     []dataplane.Note
	authorized [][]dataplane.Note
	failAuth   bool
}

type rigPU struct {
	pu               *dataplane.PU
	pp               *puPorts
	ip               netip.Addr
	mac              net.HardwareAddr
	fromApp, fromNet *frameport.Chan
	toPU             *frameport.Chan
}

func newOnePassRig(t *testing.T) *onePassRig {
	t.Helper()
	enf := newMemEnforcer(t, `
targetNetworks: [10.0.0.0/8]
policies:
  - name: web
    selector: "app=web"
    ingress: [{name: from-front, action: allow, from: [{selector: app=front}], ports: [tcp/80]}]
  - name: front
    selector: "app=front"
    egress: [{name: any-out, action: allow}]
`)
	r := &onePassRig{log: &eventLog{}, toNet: frameport.NewChan(64)}
	r.fp = &framePath{enf: enf, log: slog.New(slog.DiscardHandler),
		notes: func(ns []dataplane.Note) {
			r.mu.Lock()
			r.queued = append(r.queued, ns...)
			r.mu.Unlock()
		},
		authorizeNow: func(ns []dataplane.Note) error {
			r.mu.Lock()
			defer r.mu.Unlock()
			names := ""
			for _, n := range ns {
				names += " " + portsOf(n.PU).steer
			}
			r.log.add("authorize:" + names)
			if r.failAuth {
				return errors.New("transaction refused")
			}
			r.authorized = append(r.authorized, append([]dataplane.Note(nil), ns...))
			return nil
		}}
	var loops sync.WaitGroup
	var ports []*frameport.Chan
	add := func(name, tag string, ip netip.Addr, mac net.HardwareAddr) *rigPU {
		p := &rigPU{ip: ip, mac: mac, fromApp: frameport.NewChan(64), fromNet: frameport.NewChan(64), toPU: frameport.NewChan(64)}
		p.pp = &puPorts{steer: "pu" + name, ips: []netip.Addr{ip}, mac: [6]byte(mac), onePass: true,
			fromApp: p.fromApp, fromNet: p.fromNet, toPU: loggedPort{p.toPU, name, r.log}, toNet: loggedPort{r.toNet, "net", r.log}}
		p.pu = enf.AddPU(name, identity.NewTags(map[string]string{"app": tag}), p.pp)
		r.fp.peers.add(p.pp.mac, p.pu)
		for _, dir := range []dataplane.Direction{dataplane.FromApp, dataplane.FromNet} {
			loops.Add(1)
			go func() {
				defer loops.Done()
				r.fp.readLoop(p.pu, dir)
			}()
		}
		ports = append(ports, p.fromApp, p.fromNet, p.toPU)
		return p
	}
	r.front = add("front", "front", netip.MustParseAddr("10.1.0.1"), net.HardwareAddr{2, 0, 0, 0, 0, 1})
	r.web = add("web", "web", netip.MustParseAddr("10.1.0.2"), net.HardwareAddr{2, 0, 0, 0, 0, 2})
	// Both PUs' toNet share one injection port (the bridge's): the same
	// value in both, as the daemon does.
	r.web.pp.toNet = r.front.pp.toNet
	t.Cleanup(func() {
		for _, c := range append(ports, r.toNet) {
			c.Close()
		}
		loops.Wait()
	})
	return r
}

// expectNone fails if a frame is written to port within a short while.
func expectNone(t *testing.T, port *frameport.Chan, what string) {
	t.Helper()
	got := make(chan int, 1)
	go func() {
		b := make([]byte, 1<<16+vnet.HdrLen)
		n, err := port.Read(b)
		if err != nil {
			n = -1
		}
		got <- n
	}()
	select {
	case n := <-got:
		if n >= 0 {
			t.Fatalf("%s: a frame of %d bytes was written", what, n-vnet.HdrLen)
		}
	case <-time.After(200 * time.Millisecond):
		// The reader goroutine ends when the port closes at cleanup.
	}
}

func decoded(t *testing.T, f []byte) *packet.Packet {
	t.Helper()
	p := new(packet.Packet)
	if code := p.Decode(f); code != reason.None {
		t.Fatalf("frame does not decode: %v", code)
	}
	return p
}

// TestOnePassHandshake: a connection between two PUs of the node bridge
// takes one pass per frame: each frame leaving one PU is decided by both
// enforcers and written straight to the other PU's port (never to the
// bridge), tokens added and taken off on the way; both sides' flows are put
// in the kernel, in one transaction, before the handshake's last ACK
// reaches the server.
func TestOnePassHandshake(t *testing.T) {
	r := newOnePassRig(t)
	cli := netip.AddrPortFrom(r.front.ip, 40000)
	srv := netip.AddrPortFrom(r.web.ip, 80)

	send(t, r.front.fromApp, tcpSegment(t, r.front.mac, r.web.mac, cli, srv, "S", 100, 0, nil))
	syn := decoded(t, recv(t, r.web.toPU))
	if syn.Flags != packet.SYN || syn.Src != r.front.ip || syn.SrcPort != 40000 {
		t.Fatalf("web got %+v, want front's SYN", syn)
	}
	if _, ok := packet.FindOption(syn, tokens.Option); ok {
		t.Fatal("the SYN reached web with its token")
	}

	send(t, r.web.fromApp, tcpSegment(t, r.web.mac, r.front.mac, srv, cli, "SA", 500, 101, nil))
	synack := decoded(t, recv(t, r.front.toPU))
	if synack.Flags != packet.SYN|packet.ACK || synack.Ack != 101 {
		t.Fatalf("front got %+v, want web's SYN-ACK", synack)
	}
	if _, ok := packet.FindOption(synack, tokens.Option); ok {
		t.Fatal("the SYN-ACK reached front with its token")
	}

	send(t, r.front.fromApp, tcpSegment(t, r.front.mac, r.web.mac, cli, srv, "A", 101, 501, nil))
	ack := decoded(t, recv(t, r.web.toPU))
	if ack.Flags != packet.ACK || ack.Ack != 501 || ack.PayloadLen() != 0 {
		t.Fatalf("web got %+v, want front's handshake ACK", ack)
	}
	request := tcpSegment(t, r.front.mac, r.web.mac, cli, srv, "A", 101, 501, []byte("hello"))
	send(t, r.front.fromApp, request)
	if got := recv(t, r.web.toPU); !bytes.Equal(got, request) {
		t.Fatalf("request changed on its way:\n got %x\nwant %x", got, request)
	}
	expectNone(t, r.toNet, "bridge")

	want := []string{"web:S", "front:SA", "authorize: pufront puweb", "web:A", "web:A"}
	if got := r.log.all(); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("events %q, want %q", got, want)
	}
	if n := r.fp.stats.onePass.Load(); n != 4 {
		t.Errorf("one-pass frames: %d, want 4", n)
	}
	if n := r.fp.stats.authorizedNow.Load(); n != 2 {
		t.Errorf("flows authorized before the ACK: %d, want 2", n)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, n := range r.queued {
		if n.Kind == dataplane.Authorize {
			t.Errorf("an authorization was queued besides: %+v", n)
		}
	}
	for _, n := range r.authorized[0] {
		local, remote := cli, srv
		if n.PU == r.web.pu {
			local, remote = srv, cli
		}
		if n.Local != local || n.Remote != remote {
			t.Errorf("authorized %v -> %v for %s, want %v -> %v", n.Local, n.Remote, portsOf(n.PU).steer, local, remote)
		}
	}
}

// TestOnePassAuthorizeFails: when the kernel transaction fails, the ACK is
// still delivered and both flows are queued for the kernel loop (until
// they are in, their packets pass through the dataplane).
func TestOnePassAuthorizeFails(t *testing.T) {
	r := newOnePassRig(t)
	r.failAuth = true
	cli := netip.AddrPortFrom(r.front.ip, 40001)
	srv := netip.AddrPortFrom(r.web.ip, 80)
	send(t, r.front.fromApp, tcpSegment(t, r.front.mac, r.web.mac, cli, srv, "S", 100, 0, nil))
	recv(t, r.web.toPU)
	send(t, r.web.fromApp, tcpSegment(t, r.web.mac, r.front.mac, srv, cli, "SA", 500, 101, nil))
	recv(t, r.front.toPU)
	send(t, r.front.fromApp, tcpSegment(t, r.front.mac, r.web.mac, cli, srv, "A", 101, 501, nil))
	if ack := decoded(t, recv(t, r.web.toPU)); ack.Flags != packet.ACK {
		t.Fatalf("web got %+v, want the ACK", ack)
	}
	if n := r.fp.stats.authorizeNowErrors.Load(); n != 1 {
		t.Errorf("failed transactions: %d, want 1", n)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		r.mu.Lock()
		got := map[string]bool{}
		for _, n := range r.queued {
			if n.Kind == dataplane.Authorize {
				got[portsOf(n.PU).steer] = true
			}
		}
		r.mu.Unlock()
		if got["pufront"] && got["puweb"] {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("authorizations queued for %v, want both PUs", got)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestOnePassOnlyForThePeer: a frame leaving front takes the bridge (the
// normal path: injection port, the receiver's steering and TAP) unless it
// is exactly a TCP segment to web's MAC and one of web's addresses, web
// being there. The bridge then decides: a frame the shortcut does not
// take cannot reach web's port by it.
func TestOnePassOnlyForThePeer(t *testing.T) {
	gw := net.HardwareAddr{2, 0, 0, 0, 0, 0xfe}
	bcast := net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}
	other := netip.MustParseAddr("10.1.0.9")
	for i, tc := range []struct {
		name  string
		frame func(r *onePassRig, port uint16) []byte
	}{
		{"web's MAC, another address", func(r *onePassRig, port uint16) []byte {
			return tcpSegment(t, r.front.mac, r.web.mac, netip.AddrPortFrom(r.front.ip, port), netip.AddrPortFrom(other, 80), "S", 1, 0, nil)
		}},
		{"web's address, the gateway's MAC (routed)", func(r *onePassRig, port uint16) []byte {
			return tcpSegment(t, r.front.mac, gw, netip.AddrPortFrom(r.front.ip, port), netip.AddrPortFrom(r.web.ip, 80), "S", 1, 0, nil)
		}},
		{"web's address, broadcast MAC", func(r *onePassRig, port uint16) []byte {
			return tcpSegment(t, r.front.mac, bcast, netip.AddrPortFrom(r.front.ip, port), netip.AddrPortFrom(r.web.ip, 80), "S", 1, 0, nil)
		}},
		{"front's own MAC and address", func(r *onePassRig, port uint16) []byte {
			return tcpSegment(t, r.front.mac, r.front.mac, netip.AddrPortFrom(r.front.ip, port), netip.AddrPortFrom(r.front.ip, 80), "S", 1, 0, nil)
		}},
		{"UDP to web", func(r *onePassRig, port uint16) []byte {
			return udpDatagram(t, r.front.mac, r.web.mac, netip.AddrPortFrom(r.front.ip, port), netip.AddrPortFrom(r.web.ip, 53), []byte("q"))
		}},
		{"VLAN-tagged, to web", func(r *onePassRig, port uint16) []byte {
			return vlanSYN(t, r.front.mac, r.web.mac, netip.AddrPortFrom(r.front.ip, port), netip.AddrPortFrom(r.web.ip, 80))
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newOnePassRig(t)
			send(t, r.front.fromApp, tc.frame(r, uint16(41000+i)))
			out := recv(t, r.toNet)
			if len(out) == 0 {
				t.Fatal("nothing on the bridge")
			}
			expectNone(t, r.web.toPU, "web's port")
			if n := r.fp.stats.onePass.Load(); n != 0 {
				t.Errorf("one-pass frames: %d, want 0", n)
			}
		})
	}

	// Two PUs claiming one MAC: the bridge decides which gets the frame.
	t.Run("a MAC two PUs claim", func(t *testing.T) {
		r := newOnePassRig(t)
		r.fp.peers.add(r.web.pp.mac, r.front.pu)
		send(t, r.front.fromApp, tcpSegment(t, r.front.mac, r.web.mac, netip.AddrPortFrom(r.front.ip, 42000), netip.AddrPortFrom(r.web.ip, 80), "S", 1, 0, nil))
		recv(t, r.toNet)
		expectNone(t, r.web.toPU, "web's port")
	})

	// web removed from the enforcer between its SYN-ACK and front's ACK
	// (detached mid-handshake): the ACK takes the bridge, web's enforcer
	// decides nothing more.
	t.Run("web removed mid-handshake", func(t *testing.T) {
		r := newOnePassRig(t)
		cli := netip.AddrPortFrom(r.front.ip, 42001)
		srv := netip.AddrPortFrom(r.web.ip, 80)
		send(t, r.front.fromApp, tcpSegment(t, r.front.mac, r.web.mac, cli, srv, "S", 100, 0, nil))
		recv(t, r.web.toPU)
		send(t, r.web.fromApp, tcpSegment(t, r.web.mac, r.front.mac, srv, cli, "SA", 500, 101, nil))
		recv(t, r.front.toPU)
		var out dataplane.Output
		r.fp.enf.RemovePU(r.web.pu, time.Now(), &out)
		send(t, r.front.fromApp, tcpSegment(t, r.front.mac, r.web.mac, cli, srv, "A", 101, 501, nil))
		if p := decoded(t, recv(t, r.toNet)); p.Flags != packet.ACK {
			t.Fatalf("bridge got %+v, want the ACK", p)
		}
		expectNone(t, r.web.toPU, "web's port")
		r.mu.Lock()
		defer r.mu.Unlock()
		for _, ns := range r.authorized {
			for _, n := range ns {
				if n.PU == r.web.pu {
					t.Errorf("the removed PU's flow was authorized: %+v", n)
				}
			}
		}
	})
}

// TestOnePassDenied: a connection web's policy refuses (front -> web:22)
// is refused in one pass as on the normal path: front gets a RST, web
// never sees the SYN, and the RST answering it goes to front's port only.
func TestOnePassDenied(t *testing.T) {
	r := newOnePassRig(t)
	cli := netip.AddrPortFrom(r.front.ip, 43000)
	send(t, r.front.fromApp, tcpSegment(t, r.front.mac, r.web.mac, cli, netip.AddrPortFrom(r.web.ip, 22), "S", 100, 0, nil))
	// web's enforcer refuses the SYN with a RST toward the network: front's
	// steering then hands it to front's enforcer (normal path).
	rst := decoded(t, recv(t, r.toNet))
	if rst.Flags&packet.RST == 0 || rst.Dst != r.front.ip || rst.Ack != 101 {
		t.Fatalf("bridge got %+v, want web's RST to front", rst)
	}
	expectNone(t, r.web.toPU, "web's port")
	if n := r.fp.enf.Stats().Drops[reason.PolicyDenied]; n != 1 {
		t.Errorf("policy-denied drops: %d, want 1", n)
	}
}

func vlanSYN(t *testing.T, srcMAC, dstMAC net.HardwareAddr, src, dst netip.AddrPort) []byte {
	ip := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolTCP, SrcIP: src.Addr().AsSlice(), DstIP: dst.Addr().AsSlice()}
	tcp := &layers.TCP{SrcPort: layers.TCPPort(src.Port()), DstPort: layers.TCPPort(dst.Port()), Seq: 1, Window: 64240, SYN: true}
	_ = tcp.SetNetworkLayerForChecksum(ip)
	f := serialize(t, srcMAC, dstMAC, ip, tcp)
	// Insert an 802.1Q tag (VID 5) after the MACs.
	tagged := append([]byte(nil), f[:12]...)
	tagged = append(tagged, 0x81, 0x00, 0x00, 0x05)
	return append(tagged, f[12:]...)
}

// TestPeerOfDoesNotAllocate: finding the receiving PU of a frame is on the
// per-packet path.
func TestPeerOfDoesNotAllocate(t *testing.T) {
	r := newOnePassRig(t)
	f := r.fp.newFrameIO(r.front.pu)
	var p packet.Packet
	if code := p.Decode(tcpSegment(t, r.front.mac, r.web.mac, netip.AddrPortFrom(r.front.ip, 44000), netip.AddrPortFrom(r.web.ip, 80), "A", 1, 1, []byte("data"))); code != reason.None {
		t.Fatal(code)
	}
	if got := f.peerOf(&p); got != r.web.pu {
		t.Fatalf("peerOf = %v, want web", got)
	}
	if n := testing.AllocsPerRun(100, func() { f.peerOf(&p) }); n != 0 {
		t.Fatalf("peerOf allocates %v times", n)
	}
}

package attacks

import (
	"bytes"
	mrand "math/rand/v2"
	"net"
	"net/netip"
	"syscall"
	"testing"
	"time"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"

	"github.com/trireme-go/trireme/netsetup"
	"github.com/trireme-go/trireme/testenv"
)

// synDataPolicy: db accepts web and frontend on tcp/5432; web's egress
// allows db, frontend's allows nothing: a connection frontend -> db passes
// db's ingress at the SYN and is refused by frontend's egress at the
// SYN-ACK.
const synDataPolicy = `targetNetworks: [10.77.0.0/16, fd00:77::/64]
policies:
  - name: db
    selector: app=db
    ingress:
      - {name: from-web-and-frontend, from: [{selector: "app in (web, frontend)"}], ports: [tcp/5432], action: allow}
  - name: web
    selector: app=web
    egress:
      - {name: to-db, to: [{selector: app=db}], ports: [tcp/5432], action: allow}
`

// tfoCookie is a TCP Fast Open option with an 8-byte cookie (RFC 7413).
var tfoCookie = layers.TCPOption{OptionType: 34, OptionLength: 10, OptionData: []byte{1, 2, 3, 4, 5, 6, 7, 8}}

// TestSYNDataBeforeDecision (item 6): frontend sends SYNs to db:5432
// carrying data (TCP Fast Open with a cookie, 407 bytes; and 1,400 bytes,
// which left no room for the token when the data stayed). db's ingress
// allows frontend, frontend's egress refuses db, at the SYN-ACK. Not a
// byte of the data reaches db: its enforcer delivers the SYN without
// payload or Fast Open option (the client's enforcer took them off before
// the token went on), db's socket accepts and reads nothing, and
// frontend's enforcer refuses the connection (policy-denied). No
// no-room-for-token either.
func TestSYNDataBeforeDecision(t *testing.T) {
	s := newScene(t, sceneOptions{Policy: synDataPolicy})
	v := serveVictim(t, s.db, s.db.Addr, 5432)
	raw := s.frontend.Raw()
	seen := s.db.Raw()
	silenceRSTs(t, s.frontend) // its kernel knows nothing of the crafted SYNs
	dbMAC := s.db.MACOf()
	for i, n := range []int{407, 1400} {
		secret := bytes.Repeat([]byte("SECRET-"), n/7+1)[:n]
		port := uint16(47000 + i)
		before := dropsOf(t, s.d)
		raw.MustSend(seg{srcMAC: raw.MAC, dstMAC: dbMAC, src: netip.AddrPortFrom(s.frontend.Addr, port), dst: v.Addr,
			flags: "S", seq: mrand.Uint32(), opts: []layers.TCPOption{mss, tfoCookie}, payload: secret}.frame())
		waitDropOn(t, s.d, before, "policy-denied")
		syns := seen.Capture(300*time.Millisecond, func(p gopacket.Packet) bool {
			tcp := tcpOf(p)
			return tcp != nil && tcp.SYN && !tcp.ACK && uint16(tcp.SrcPort) == port
		})
		if len(syns) == 0 {
			t.Fatalf("%d bytes: db's ingress allows frontend, yet no SYN reached db", n)
		}
		for _, p := range syns {
			tcp := tcpOf(p)
			if len(tcp.Payload) != 0 || bytes.Contains(p.Data(), []byte("SECRET")) {
				t.Fatalf("%d bytes: the SYN reached db with %d bytes of payload", n, len(tcp.Payload))
			}
			for _, o := range tcp.Options {
				if o.OptionType == 34 || hasMarker(tcp) {
					t.Fatalf("%d bytes: the SYN reached db with option %v", n, o)
				}
			}
		}
		if d := dropsOf(t, s.d); d["no-room-for-token"] != 0 {
			t.Fatalf("%d bytes: no-room-for-token %d", n, d["no-room-for-token"])
		}
	}
	time.Sleep(200 * time.Millisecond)
	if a, r := v.Accepted(), v.Read(); len(a) != 0 || r != "" {
		t.Fatalf("db accepted %v and read %q", a, r)
	}
}

// TestFastOpenStillWorks (item 6): web's kernel sends real TCP Fast Open
// SYNs (tcp_fastopen=5: data on the SYN without a cookie). Its enforcer
// takes the data off the SYN, db's SYN-ACK acknowledges the SYN alone, and
// web's kernel sends the data again after the handshake: the echo works,
// and the only SYN that reached db carried no payload.
func TestFastOpenStillWorks(t *testing.T) {
	s := newScene(t, sceneOptions{Policy: synDataPolicy})
	srv := s.db.ServeEcho(5432)
	seen := s.db.Raw()
	sent := testenv.Sniff(t, s.web.NS, "eth0") // what web's kernel sends
	if err := s.web.Do(func() error {
		return netsetup.WriteSysctl("/proc/sys/net/ipv4/tcp_fastopen", "5")
	}); err != nil {
		t.Fatal(err)
	}
	var c net.Conn
	err := s.web.Do(func() error {
		d := net.Dialer{Timeout: 3 * time.Second, Control: func(_, _ string, rc syscall.RawConn) error {
			var serr error
			if err := rc.Control(func(fd uintptr) {
				serr = syscall.SetsockoptInt(int(fd), syscall.IPPROTO_TCP, 30 /* TCP_FASTOPEN_CONNECT */, 1)
			}); err != nil {
				return err
			}
			return serr
		}}
		var err error
		c, err = d.Dial("tcp4", srv.String())
		return err
	})
	if err != nil {
		t.Fatalf("web -> db:5432 with Fast Open: %v", err)
	}
	defer c.Close()
	if err := testenv.EchoConn(c, "fast-open-data", 3*time.Second); err != nil {
		t.Fatalf("echo over Fast Open: %v", err)
	}
	client := netip.MustParseAddrPort(c.LocalAddr().String())
	if got := sent.Capture(300*time.Millisecond, func(p gopacket.Packet) bool {
		tcp := tcpOf(p)
		return tcp != nil && tcp.SYN && uint16(tcp.SrcPort) == client.Port() && string(tcp.Payload) == "fast-open-data"
	}); len(got) == 0 {
		t.Fatal("web's kernel did not put the data on its SYN (tcp_fastopen not honoured?): the test proves nothing")
	}
	var syns, data int
	for _, p := range seen.Capture(300*time.Millisecond, fromPort(client.Port())) {
		tcp := tcpOf(p)
		switch {
		case tcp.SYN && len(tcp.Payload) != 0:
			t.Fatalf("a SYN with %d bytes of payload reached db", len(tcp.Payload))
		case tcp.SYN:
			syns++
		case string(tcp.Payload) == "fast-open-data":
			data++
		}
	}
	if syns == 0 || data == 0 {
		t.Fatalf("at db: %d SYNs, %d data segments after the handshake", syns, data)
	}
}
